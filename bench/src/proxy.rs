//! The `proxy` suite: hapd beside nginx, HAProxy and Apache (Debian packages), each in front of
//! the same backend on loopback, under the same load in the same run. All of them run for the
//! whole suite and each load is measured on one after the other, in an order that rotates.
//! Loads: wrk keep-alive over plain HTTP and over TLS, wrk with `Connection: close` over TLS (a
//! handshake per request), h2load over HTTP/2. The memory held by idle client
//! connections is measured here too, for the `idle` suite ([`idle_connections`]).
//!
//! Every proxy gets two workers (the machine's cores), each pinned to a core where the proxy can
//! do that (hapd by default, nginx `worker_cpu_affinity auto`, HAProxy `cpu-map`; Apache's event
//! MPM has no such setting), no access log, kept-alive upstream connections, TLS 1.2/1.3 with the
//! same ECDSA P-256 certificate, and the guide's work on every request: the client's Host kept,
//! X-Forwarded-For, -Proto and -Host added, four security headers set on every answer (checked
//! once per proxy before it is measured, [`check_guide_headers`]).
use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::json;

use crate::{
    plot::Plot,
    report::{median_spread, Report, Table},
};

/// Below the ephemeral port range (32768..), so no client socket holds them.
const BACKEND: u16 = 18_000;

/// The guide's HSTS header, which every proxy sets on every response (with three more).
const HSTS: &str = "max-age=63072000; includeSubDomains; preload";

struct Peer {
    name: &'static str,
    plain: u16,
    tls: u16,
}

const PEERS: [Peer; 4] = [
    Peer {
        name: "hapd",
        plain: 18_080,
        tls: 18_443,
    },
    Peer {
        name: "nginx",
        plain: 19_080,
        tls: 19_443,
    },
    Peer {
        name: "haproxy",
        plain: 20_080,
        tls: 20_443,
    },
    Peer {
        name: "apache2",
        plain: 21_080,
        tls: 21_443,
    },
];

/// How the suite places the processes on the machine's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// One CPU for the proxy (started under `taskset -c 1`: one worker or thread), the other
    /// for the load tool and the backend (`taskset -c 0`): what one core of a proxy host
    /// serves, the figure an operator sizing a fleet uses, whatever CPU a proxy leaves the
    /// load tool.
    PerCore,
    /// Everything on both CPUs; each proxy with two workers, pinned where it can be.
    SharedCores,
}

/// The proxy's CPU and the load tool's and backend's, in the per-core method.
const PROXY_CPU: usize = 1;
const LOAD_CPU: usize = 0;

impl Method {
    pub(crate) const ALL: [Method; 2] = [Method::PerCore, Method::SharedCores];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Method::PerCore => "one CPU each",
            Method::SharedCores => "shared CPUs",
        }
    }

    /// The CPU the proxies are confined to, if any.
    fn proxy_cpu(self) -> Option<usize> {
        (self == Method::PerCore).then_some(PROXY_CPU)
    }

    /// The CPU the load tool and the backend are confined to, if any.
    fn load_cpu(self) -> Option<usize> {
        (self == Method::PerCore).then_some(LOAD_CPU)
    }

    /// Workers (processes or threads) each proxy runs.
    fn workers(self) -> u32 {
        match self {
            Method::PerCore => 1,
            Method::SharedCores => 2,
        }
    }
}

/// A command running `program`, confined to `cpu` if one is given (`taskset -c`, which
/// execs the program: the process keeps its pid and process group).
fn on_cpu(cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Confines the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Busy and total time of each CPU so far, in ticks (`/proc/stat`'s `cpuN` lines; idle and
/// iowait are not busy).
fn cpu_times() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Each CPU's utilisation between two [`cpu_times`], in %.
fn utilisation(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                f64::NAN
            } else {
                a.0.saturating_sub(b.0) as f64 * 100.0 / total as f64
            }
        })
        .collect()
}

/// A child process killed (with its process group) when dropped.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        crate::cleanup::unregister(self.0.id() as i32);
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
        eprintln!("  {} needed SIGKILL", self.1);
    }
}

fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Running> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    crate::cleanup::register(child.id() as i32);
    Ok(Running(child, name))
}

fn wait_port(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > end {
            bail!(
                "{what} is not listening on {port}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    std::fs::write(
        dir.join("both.pem"),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(())
}

/// Fails when something listens on a peer's ports already: with `SO_REUSEPORT` (hapd sets it)
/// a stale process would share the port with the peer under test and take part of the load,
/// which happened once and halved hapd's figures. A plain bind, without `SO_REUSEPORT`, fails
/// on any listener.
fn ports_free(peer: &Peer) -> anyhow::Result<()> {
    for port in [peer.plain, peer.tls] {
        std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!(
                "port {port} for {} is taken: a process left from an earlier run? (ss -ltnp)",
                peer.name
            )
        })?;
    }
    Ok(())
}

fn start(peer: &Peer, dir: &Path, method: Method) -> anyhow::Result<Vec<Running>> {
    ports_free(peer)?;
    let cpu = method.proxy_cpu();
    let workers = method.workers();
    let d = dir.display();
    let log = dir.join(format!("{}.log", peer.name));
    let (p, t) = (peer.plain, peer.tls);
    let running = match peer.name {
        "hapd" => {
            let cfg = format!(
                r#"[node]
name = "bench"
admin = "127.0.0.1:0"
[tls]
protocols = ["1.2", "1.3"]
[[tls.certificate]]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
[[listener]]
name = "plain"
bind = ["127.0.0.1:{p}"]
[[listener]]
name = "tls"
bind = ["127.0.0.1:{t}"]
tls = true
[[upstream]]
name = "backend"
servers = ["127.0.0.1:{BACKEND}"]
[[vhost]]
server_names = ["localhost"]
listeners = ["plain", "tls"]
preserve_host = true
response_headers = {{ "Strict-Transport-Security" = "{HSTS}", "X-Content-Type-Options" = "nosniff", "X-Frame-Options" = "DENY", "Referrer-Policy" = "strict-origin-when-cross-origin" }}
  [[vhost.route]]
  prefix = "/"
  upstream = "backend"
"#
            );
            let path = dir.join("hapd.toml");
            std::fs::write(&path, cfg)?;
            vec![spawn(
                "hapd",
                // hapd runs one worker per CPU of its affinity mask.
                on_cpu(cpu, crate::hapd_bin()?)
                    .args(["run", "--config"])
                    .arg(&path)
                    .env("HAPD_LOG", "warn"),
                &log,
            )?]
        }
        "nginx" => {
            let affinity = if cpu.is_some() {
                ""
            } else {
                "worker_cpu_affinity auto;"
            };
            let cfg = format!(
                r#"worker_processes {workers};
{affinity}
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
daemon off;
events {{ worker_connections 16384; }}
worker_rlimit_nofile 16384;
http {{
  access_log off;
  server_tokens off;
  client_body_temp_path {d}/nginx-body;
  proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fcgi;
  uwsgi_temp_path {d}/nginx-uwsgi;
  scgi_temp_path {d}/nginx-scgi;
  keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{p};
    listen 127.0.0.1:{t} ssl http2;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      add_header Strict-Transport-Security "{HSTS}" always;
      add_header X-Content-Type-Options nosniff always;
      add_header X-Frame-Options DENY always;
      add_header Referrer-Policy strict-origin-when-cross-origin always;
    }}
  }}
}}
"#
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, cfg)?;
            vec![spawn(
                "nginx",
                on_cpu(cpu, "nginx").arg("-c").arg(&path).arg("-p").arg(dir),
                &log,
            )?]
        }
        "haproxy" => {
            let cpu_map = if cpu.is_some() {
                ""
            } else {
                "  cpu-map auto:1/1-2 0-1\n"
            };
            let cfg = format!(
                r#"global
  nbthread {workers}
{cpu_map}  maxconn 9990
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 15s
frontend fe
  bind 127.0.0.1:{p}
  bind 127.0.0.1:{t} ssl crt {d}/both.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  option forwardfor
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-after-response set-header Strict-Transport-Security "{HSTS}"
  http-after-response set-header X-Content-Type-Options nosniff
  http-after-response set-header X-Frame-Options DENY
  http-after-response set-header Referrer-Policy strict-origin-when-cross-origin
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{BACKEND}
"#
            );
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, cfg)?;
            vec![spawn(
                "haproxy",
                on_cpu(cpu, "haproxy").arg("-db").arg("-f").arg(&path),
                &log,
            )?]
        }
        "apache2" => {
            let m = "/usr/lib/apache2/modules";
            // The event MPM's processes are its workers: one (64 threads) on one CPU.
            let (server_limit, max_workers) = if cpu.is_some() { (1, 64) } else { (4, 256) };
            let cfg = format!(
                r#"ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/apache2.pid
Mutex file:{d} default
ServerName localhost
User www-data
Group www-data
ErrorLog {d}/apache2-error.log
LogLevel warn
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_http_module {m}/mod_proxy_http.so
LoadModule ssl_module {m}/mod_ssl.so
LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so
LoadModule http2_module {m}/mod_http2.so
LoadModule headers_module {m}/mod_headers.so
ServerTokens Prod
KeepAlive On
KeepAliveTimeout 15
MaxKeepAliveRequests 0
ServerLimit {server_limit}
StartServers {workers}
ThreadsPerChild 64
MaxRequestWorkers {max_workers}
SSLSessionCache shmcb:{d}/ssl_scache(512000)
Listen 127.0.0.1:{p}
Listen 127.0.0.1:{t}
ProxyPreserveHost On
Header always set Strict-Transport-Security "{HSTS}"
Header always set X-Content-Type-Options "nosniff"
Header always set X-Frame-Options "DENY"
Header always set Referrer-Policy "strict-origin-when-cross-origin"
<VirtualHost 127.0.0.1:{p}>
  RequestHeader set X-Forwarded-Proto "http"
  ProxyPass / http://127.0.0.1:{BACKEND}/
  ProxyPassReverse / http://127.0.0.1:{BACKEND}/
</VirtualHost>
<VirtualHost 127.0.0.1:{t}>
  SSLEngine on
  SSLCertificateFile {d}/cert.pem
  SSLCertificateKeyFile {d}/key.pem
  SSLProtocol -all +TLSv1.2 +TLSv1.3
  Protocols h2 http/1.1
  RequestHeader set X-Forwarded-Proto "https"
  ProxyPass / http://127.0.0.1:{BACKEND}/
  ProxyPassReverse / http://127.0.0.1:{BACKEND}/
</VirtualHost>
"#
            );
            let path = dir.join("apache2.conf");
            std::fs::write(&path, cfg)?;
            vec![spawn(
                "apache2",
                on_cpu(cpu, "apache2")
                    .arg("-f")
                    .arg(&path)
                    .arg("-DFOREGROUND"),
                &log,
            )?]
        }
        other => bail!("unknown peer {other}"),
    };
    wait_port(p, peer.name, &log)?;
    wait_port(t, peer.name, &log)?;
    Ok(running)
}

/// Requests that reached the backend without all of X-Forwarded-For, -Proto and -Host.
static UNFORWARDED: AtomicU64 = AtomicU64::new(0);

/// Checks that `peer` does the guide's work on a request: the backend got the X-Forwarded
/// headers (of every request so far) and the answer carries the guide's response headers. A
/// proxy configured to do less would be measured doing less.
fn check_guide_headers(peer: &Peer) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", peer.plain))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .with_context(|| format!("{}: reading an answer", peer.name))?;
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in [
        format!("strict-transport-security: {HSTS}"),
        "x-content-type-options: nosniff".into(),
        "x-frame-options: deny".into(),
        "referrer-policy: strict-origin-when-cross-origin".into(),
    ] {
        let h = h.to_ascii_lowercase();
        if !head.lines().any(|l| l == h) {
            bail!("{}: the answer lacks `{h}`:\n{head}", peer.name);
        }
    }
    let n = UNFORWARDED.load(Ordering::Relaxed);
    if n > 0 {
        bail!(
            "{}: {n} request(s) reached the backend without X-Forwarded-For/-Proto/-Host",
            peer.name
        );
    }
    Ok(())
}

/// The shared backend: a hyper server answering every request with the same 128 bytes, on its
/// own thread until dropped.
struct Backend {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The backend, its threads confined to `cpu` if one is given.
fn backend(cpu: Option<usize>) -> anyhow::Result<Backend> {
    use hyper::{service::service_fn, Response};
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || {
            if let Some(c) = cpu {
                pin_thread(c);
            }
        })
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", BACKEND)))
        .with_context(|| format!("binding the backend to 127.0.0.1:{BACKEND}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        if let Some(c) = cpu {
            pin_thread(c);
        }
        rt.block_on(async move {
            let body = bytes::Bytes::from(vec![b'x'; 128]);
            let serve = async {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let body = body.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let b = body.clone();
                            let h = req.headers();
                            if !["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                                .iter()
                                .all(|n| h.contains_key(*n))
                            {
                                UNFORWARDED.fetch_add(1, Ordering::Relaxed);
                            }
                            async move {
                                Ok::<_, std::convert::Infallible>(Response::new(
                                    http_body_util::Full::new(b),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            };
            tokio::select! {
                () = serve => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime ends every connection task and closes the listener.
        rt.shutdown_timeout(Duration::from_millis(200));
    });
    Ok(Backend {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    Plain,
    TlsKeepAlive,
    TlsHandshakes,
    Http2,
}

impl Load {
    pub(crate) const ALL: [Load; 4] = [
        Load::Plain,
        Load::TlsKeepAlive,
        Load::TlsHandshakes,
        Load::Http2,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Load::Plain => "HTTP/1.1 keep-alive",
            Load::TlsKeepAlive => "TLS keep-alive",
            Load::TlsHandshakes => "TLS, new connection per request",
            Load::Http2 => "HTTP/2 (h2load)",
        }
    }

    /// The load tool's connections: fewer for handshakes, where wrk's one thread is the limit.
    fn connections(self) -> u32 {
        match self {
            Load::TlsHandshakes | Load::Http2 => 16,
            Load::Plain | Load::TlsKeepAlive => 64,
        }
    }
}

struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU the proxy (all its processes and threads) spent per request, in µs.
    cpu_us: f64,
    /// Time the hypervisor ran something else on this machine's CPUs during the load (ms, all
    /// CPUs together): a round with steal is slower for reasons outside the machine.
    steal_ms: f64,
    /// Each CPU's utilisation during the load, %.
    cpu_util: Vec<f64>,
}

/// CPU steal so far, all CPUs together, in ms (the `cpu` line of /proc/stat, 8th value, in
/// USER_HZ ticks of 10 ms).
fn steal_ms() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?;
            line.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |ticks| ticks * 10.0)
}

fn parse_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => return None,
    })
}

/// Runs `load` against `peer` (process group `pgid`) and measures the proxy's CPU meanwhile.
fn run_load(
    load: Load,
    peer: &Peer,
    secs: u64,
    pgid: u32,
    method: Method,
) -> anyhow::Result<Sample> {
    let before = group_cpu_ns(pgid);
    let stolen = steal_ms();
    let cpus = cpu_times();
    let (mut sample, requests) = load_only(load, peer, secs, method)?;
    let spent = group_cpu_ns(pgid).saturating_sub(before);
    sample.steal_ms = steal_ms() - stolen;
    sample.cpu_util = utilisation(&cpus, &cpu_times());
    sample.cpu_us = if requests > 0.0 {
        spent as f64 / 1000.0 / requests
    } else {
        f64::NAN
    };
    Ok(sample)
}

/// The load tool's figures and the requests it completed.
fn load_only(load: Load, peer: &Peer, secs: u64, method: Method) -> anyhow::Result<(Sample, f64)> {
    match load {
        Load::Http2 => {
            let out = on_cpu(method.load_cpu(), "h2load")
                .args(["-D", &secs.to_string(), "-m", "10", "-t", "1"])
                .args(["-c", &load.connections().to_string()])
                .arg(format!("https://localhost:{}/", peer.tls))
                .output()
                .context("running h2load (Debian package nghttp2-client)")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rps = text
                .lines()
                .find(|l| l.starts_with("finished in"))
                .and_then(|l| l.split(", ").nth(1))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("h2load output:\n{text}"))?;
            let clean = text.lines().any(|l| {
                l.starts_with("requests:") && l.contains(" 0 failed") && l.contains(" 0 errored")
            });
            if !clean {
                bail!("h2load saw failures against {}:\n{text}", peer.name);
            }
            // h2load reports the mean and the spread, not percentiles.
            let mean = text
                .lines()
                .find(|l| l.trim_start().starts_with("time for request:"))
                .and_then(|l| l.split_whitespace().nth(5))
                .and_then(parse_ms)
                .unwrap_or(f64::NAN);
            let done: f64 = text
                .lines()
                .find(|l| l.starts_with("requests:"))
                .and_then(|l| l.split(", ").find(|p| p.ends_with(" succeeded")))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            Ok((
                Sample {
                    rps,
                    p50_ms: mean,
                    p99_ms: f64::NAN,
                    cpu_us: f64::NAN,
                    steal_ms: f64::NAN,
                    cpu_util: Vec::new(),
                },
                done,
            ))
        }
        _ => {
            let (url, extra): (String, &[&str]) = match load {
                Load::Plain => (format!("http://127.0.0.1:{}/", peer.plain), &[]),
                Load::TlsKeepAlive => (format!("https://localhost:{}/", peer.tls), &[]),
                _ => (
                    format!("https://localhost:{}/", peer.tls),
                    &["-H", "Connection: close"],
                ),
            };
            let conns = load.connections().to_string();
            let out = on_cpu(method.load_cpu(), "wrk")
                .args([
                    "-t",
                    "1",
                    "-c",
                    &conns,
                    "-d",
                    &format!("{secs}s"),
                    "--latency",
                ])
                .args(extra)
                .arg(&url)
                .output()
                .context("running wrk")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rps: f64 = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("wrk output:\n{text}"))?;
            let pct = |p: &str| {
                text.lines()
                    .map(str::trim)
                    .find(|l| l.starts_with(p))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(parse_ms)
                    .unwrap_or(f64::NAN)
            };
            if let Some(l) = text.lines().find(|l| l.contains("Non-2xx or 3xx")) {
                bail!("{}: {l}", peer.name);
            }
            let done: f64 = text
                .lines()
                .map(str::trim)
                .find(|l| l.contains(" requests in "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            Ok((
                Sample {
                    rps,
                    p50_ms: pct("50%"),
                    p99_ms: pct("99%"),
                    cpu_us: f64::NAN,
                    steal_ms: f64::NAN,
                    cpu_util: Vec::new(),
                },
                done,
            ))
        }
    }
}

/// The processes of `pgid`'s process group.
fn group_pids(pgid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
                after.split_whitespace().nth(2).and_then(|s| s.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// CPU time of every thread of every process in `pgid`'s process group, in ns.
fn group_cpu_ns(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Resident memory of every process in `pgid`'s process group, in KiB.
fn group_rss_kib(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .map(|pid| crate::report::rss_kib(&pid.to_string()))
        .sum()
}

/// Memory a proxy holds for `n` idle keep-alive client connections (each sent one request),
/// and how many of them were answered within 15 s (a proxy may leave some in its backlog).
fn idle_memory(peer: &Peer, pgid: u32, n: usize) -> anyhow::Result<(u64, u64, usize)> {
    use std::io::{Read, Write};
    let before = group_rss_kib(pgid);
    let mut conns = Vec::with_capacity(n);
    let addr = SocketAddr::from(([127, 0, 0, 1], peer.plain));
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        conns.push(s);
    }
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answered = 0;
    for s in &mut conns {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left))?;
        if matches!(s.read(&mut buf), Ok(k) if k > 0) {
            answered += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = group_rss_kib(pgid);
    drop(conns);
    Ok((before, after, answered))
}

/// The peers `--peers` names, all of them when it names none.
fn chosen(names: &[String]) -> anyhow::Result<Vec<&'static Peer>> {
    if names.is_empty() {
        return Ok(PEERS.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        let Some(p) = PEERS.iter().find(|p| p.name == n.trim()) else {
            bail!(
                "--peers: unknown proxy {n:?}; known: {}",
                PEERS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            );
        };
        if !out.iter().any(|o: &&Peer| o.name == p.name) {
            out.push(p);
        }
    }
    Ok(out)
}

pub fn run(quick: bool, only: &[String]) -> anyhow::Result<Report> {
    let peers = chosen(only)?;
    // Five rounds: the peers' own figures swing by a fifth from round to round here.
    let rounds = if quick { 1 } else { 5 };
    let secs = if quick { 2 } else { 5 };
    let (dir, _cleanup) = setup()?;
    let mut report = Report::new("proxy", quick);
    if !only.is_empty() {
        let names: Vec<&str> = peers.iter().map(|p| p.name).collect();
        report
            .command
            .push_str(&format!(" --peers {}", names.join(",")));
    }
    let mut raw = serde_json::Map::new();
    // The per-core method first: its tables are the headline.
    for method in Method::ALL {
        let (tables, method_raw) = measure(method, &peers, &dir, rounds, secs)?;
        report.tables.extend(tables);
        raw.insert(
            method.label().to_string(),
            serde_json::Value::Object(method_raw),
        );
    }
    let (scan, scan_raw) = tls_scan(&dir)?;
    report.tables.push(scan);
    raw.insert("testssl".into(), scan_raw);
    report.raw = serde_json::Value::Object(raw);
    Ok(report)
}

/// Every load on every peer placed by `method`, `rounds` times: a table per load and one of
/// p99 latencies, and the samples.
fn measure(
    method: Method,
    peers: &[&'static Peer],
    dir: &Path,
    rounds: usize,
    secs: u64,
) -> anyhow::Result<(Vec<Table>, serde_json::Map<String, serde_json::Value>)> {
    let loads = Load::ALL;
    let _backend = start_backend(method.load_cpu(), dir)?;

    // Every proxy runs for the whole suite (an idle one only waits on its sockets), so that
    // one load is measured on all of them back to back: the machine's speed drifts over minutes
    // (hapd, same binary: 66k req/s plain keep-alive at noon, 89k an hour later), and
    // measuring each proxy's four loads in one block put that drift between the proxies.
    let mut running = Vec::new();
    for peer in peers {
        let procs = start(peer, dir, method)?;
        let pgid = procs.first().map_or(0, |p| p.0.id());
        // Warm up: connections, TLS session caches, upstream keep-alive.
        let _ = load_only(Load::Plain, peer, 1, method);
        check_guide_headers(peer)?;
        running.push((procs, pgid));
    }

    let total_runs = rounds * peers.len() * loads.len();
    let t0 = Instant::now();
    let mut done = 0;
    // samples[load][peer] = per-round samples
    let mut samples: Vec<Vec<Vec<Sample>>> = (0..loads.len())
        .map(|_| (0..peers.len()).map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (li, &load) in loads.iter().enumerate() {
            // Rotate the order so no proxy is always first after a change of load (the
            // handshake load leaves thousands of sockets in TIME_WAIT behind it).
            let n = peers.len();
            for pi in (0..n).map(|k| (k + round + li) % n) {
                let peer = &peers[pi];
                done += 1;
                let left = (t0.elapsed().as_secs_f64() / done as f64) * (total_runs - done) as f64;
                println!(
                    "[proxy] {}, round {}/{rounds} {:>7} {:<32} ({done}/{total_runs}, about {:.0} s left)",
                    method.label(),
                    round + 1,
                    peer.name,
                    load.label(),
                    left
                );
                samples[li][pi].push(run_load(load, peer, secs, running[pi].1, method)?);
            }
        }
    }
    drop(running);

    let mut tables = Vec::new();
    let mut raw = serde_json::Map::new();
    // p99 per proxy for the wrk loads (h2load gives no percentiles).
    let mut p99s: Vec<(String, Vec<f64>)> = peers
        .iter()
        .map(|p| (p.name.to_string(), Vec::new()))
        .collect();
    for (li, load) in loads.iter().enumerate() {
        let rps: Vec<Vec<f64>> = samples[li]
            .iter()
            .map(|s| s.iter().map(|x| x.rps).collect())
            .collect();
        let med: Vec<(f64, f64, f64)> = rps.iter().map(|r| median_spread(r)).collect();
        // The others than hapd: hapd's ratios are to the best of them, theirs too.
        let others: Vec<usize> = (0..peers.len())
            .filter(|&i| peers[i].name != "hapd")
            .collect();
        let best_peer = others.iter().map(|&i| med[i].0).fold(f64::NAN, f64::max);
        let others_rps: Vec<&[f64]> = others.iter().map(|&i| rps[i].as_slice()).collect();
        let mut rows = Vec::new();
        for (pi, peer) in peers.iter().enumerate() {
            let paired = round_by_round_ratio(&rps[pi], &others_rps);
            let p50 =
                median_spread(&samples[li][pi].iter().map(|x| x.p50_ms).collect::<Vec<_>>()).0;
            let p99 =
                median_spread(&samples[li][pi].iter().map(|x| x.p99_ms).collect::<Vec<_>>()).0;
            if !matches!(load, Load::Http2) {
                p99s[pi].1.push(p99);
            }
            let cpu =
                median_spread(&samples[li][pi].iter().map(|x| x.cpu_us).collect::<Vec<_>>()).0;
            // Each CPU's utilisation during the load, median of the rounds.
            let util: Vec<String> = (0..2)
                .map(|c| {
                    let v: Vec<f64> = samples[li][pi]
                        .iter()
                        .filter_map(|x| x.cpu_util.get(c).copied())
                        .collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.0}", median_spread(&v).0)
                    }
                })
                .collect();
            rows.push(vec![
                peer.name.to_string(),
                format!("{:.0}", med[pi].0),
                format!("{:.0}..{:.0}", med[pi].1, med[pi].2),
                if p50.is_nan() {
                    "-".into()
                } else {
                    format!("{p50:.2}")
                },
                if p99.is_nan() {
                    "-".into()
                } else {
                    format!("{p99:.2}")
                },
                format!("{cpu:.1}"),
                if best_peer.is_nan() {
                    "-".into()
                } else {
                    format!("{:.2}", med[pi].0 / best_peer)
                },
                paired.map_or("-".into(), |r| format!("{r:.2}")),
                util.join(" / "),
            ]);
            raw.insert(
                format!("{}/{}", load.label(), peer.name),
                json!(samples[li][pi]
                    .iter()
                    .map(|s| json!({"rps": s.rps, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "cpu_us": s.cpu_us, "steal_ms": s.steal_ms, "cpu_util_pct": s.cpu_util}))
                    .collect::<Vec<_>>()),
            );
        }
        let mut notes = vec![
            match method {
                Method::PerCore => format!(
                    "One CPU each: every proxy confined to CPU {PROXY_CPU} (taskset) with one \
                     worker or thread (hapd: one worker from its affinity mask; nginx \
                     worker_processes 1; HAProxy nbthread 1; Apache one process of 64 \
                     threads); the load tool and the backend confined to CPU {LOAD_CPU}. CPU \
                     use: each CPU's utilisation during the load (/proc/stat), CPU \
                     {LOAD_CPU} / CPU {PROXY_CPU}."
                ),
                Method::SharedCores => "Shared CPUs: the proxies (two workers each, pinned \
                     one per CPU where the proxy can do that), the load tool and the backend \
                     all run on both CPUs; a proxy's figure also depends on how much CPU it \
                     leaves the load tool. CPU use: CPU 0 / CPU 1 during the load."
                    .to_string(),
            },
            if matches!(load, Load::Http2) {
                format!(
                    "h2load: {} connections, 10 streams each; the p50 column is h2load's mean time per request.",
                    load.connections()
                )
            } else {
                format!(
                    "wrk: 1 thread, {} connections, {secs} s per round.",
                    load.connections()
                )
            },
            "Ratio to best peer: this proxy's median over the best median of nginx, HAProxy and \
             Apache. Round by round: in each round this proxy's figure over the best of the \
             three in that round (measured seconds apart), then the median of those ratios; the \
             machine's speed drifts from round to round, and this ratio compares figures taken \
             under the same drift."
                .into(),
            "Proxy CPU: every thread of every process of the proxy (/proc/*/task/*/schedstat) \
             during the load, divided by the requests the load tool completed; median of the \
             rounds. It is steadier than req/s, which also moves with how the two cores are \
             shared with the load tool and the backend."
                .into(),
        ];
        let stolen: Vec<String> = peers
            .iter()
            .enumerate()
            .filter(|(pi, _)| samples[li][*pi].iter().any(|x| x.steal_ms > 0.0))
            .map(|(pi, p)| {
                let per_round: Vec<String> = samples[li][pi]
                    .iter()
                    .map(|x| format!("{:.0}", x.steal_ms))
                    .collect();
                format!("{} {}", p.name, per_round.join("/"))
            })
            .collect();
        if !stolen.is_empty() {
            notes.push(format!(
                "CPU steal (the hypervisor running something else on these CPUs, /proc/stat) per round, ms: {}.",
                stolen.join("; ")
            ));
        }
        tables.push(Table {
            title: format!("{} ({})", load.label(), method.label()),
            columns: [
                "proxy",
                "req/s (median)",
                "spread",
                "p50 ms",
                "p99 ms",
                "proxy CPU µs/req",
                "ratio to best peer",
                "round by round",
                "CPU use % (CPU 0 / CPU 1)",
            ]
            .map(String::from)
            .to_vec(),
            rows,
            notes,
            plot: Some(Plot {
                title: format!("{} ({}): requests per second", load.label(), method.label()),
                y_label: "req/s (median)".into(),
                categories: peers.iter().map(|p| p.name.to_string()).collect(),
                series: vec![("req/s".into(), med.iter().map(|m| m.0).collect())],
            }),
        });
    }
    let wrk_loads: Vec<String> = loads
        .iter()
        .filter(|l| !matches!(l, Load::Http2))
        .map(|l| l.label().to_string())
        .collect();
    let rows = wrk_loads
        .iter()
        .enumerate()
        .map(|(li, name)| {
            std::iter::once(name.clone())
                .chain(p99s.iter().map(|(_, v)| format!("{:.2}", v[li])))
                .collect()
        })
        .collect();
    tables.push(Table {
        title: format!("p99 latency by load ({})", method.label()),
        columns: std::iter::once("load".to_string())
            .chain(peers.iter().map(|p| format!("{} p99 ms", p.name)))
            .collect(),
        rows,
        notes: vec![
            "Medians of the rounds' p99 from wrk --latency (h2load reports no percentiles).".into(),
        ],
        plot: Some(Plot {
            title: format!("p99 latency by load ({})", method.label()),
            y_label: "p99 ms (median)".into(),
            categories: wrk_loads,
            series: p99s,
        }),
    });
    Ok((tables, raw))
}

/// The median over rounds of `mine[r]` divided by the best of `others[..][r]`: a comparison of
/// figures measured in the same round. `None` without others or rounds.
pub(crate) fn round_by_round_ratio(mine: &[f64], others: &[&[f64]]) -> Option<f64> {
    let ratios: Vec<f64> = mine
        .iter()
        .enumerate()
        .filter_map(|(r, &m)| {
            let best = others
                .iter()
                .filter_map(|o| o.get(r).copied())
                .fold(f64::NAN, f64::max);
            (best > 0.0).then(|| m / best)
        })
        .collect();
    (!ratios.is_empty()).then(|| median_spread(&ratios).0)
}

/// The scratch directory (certificates, configs, logs), its remover, and the backend.
fn setup() -> anyhow::Result<(PathBuf, Cleanup)> {
    // Raise the descriptor limit to the hard limit: the idle test holds 10k connections.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    let dir = std::env::temp_dir().join(format!("hapd-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cleanup = Cleanup(dir.clone());
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    write_certs(&dir)?;
    Ok((dir, cleanup))
}

/// The backend, confined to `cpu` if one is given, once it listens.
fn start_backend(cpu: Option<usize>, dir: &Path) -> anyhow::Result<Backend> {
    let backend = backend(cpu)?;
    wait_port(BACKEND, "backend", &dir.join("none"))?;
    Ok(backend)
}

/// Memory each proxy holds for idle keep-alive client connections (the `idle` suite).
pub fn idle_connections(quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    // 10k was asked for; HAProxy reserves two descriptors per connection and this machine's
    // hard limit is 20000, which caps its maxconn just under 10k.
    let idle_conns = if quick { 2_000 } else { 9_500 };
    let rounds = if quick { 1 } else { 3 };
    let (dir, _cleanup) = setup()?;
    let _backend = start_backend(None, &dir)?;
    // (rss before KiB, rss after KiB, answered) per proxy, one per round.
    let mut runs: Vec<Vec<(u64, u64, usize)>> = vec![Vec::new(); PEERS.len()];
    let total = rounds * PEERS.len();
    let mut done = 0;
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..PEERS.len()).collect()
        } else {
            (0..PEERS.len()).rev().collect()
        };
        for &i in &order {
            let peer = &PEERS[i];
            done += 1;
            println!(
                "[idle] round {}/{rounds}: {} with {idle_conns} idle connections ({done}/{total})",
                round + 1,
                peer.name,
            );
            let procs = start(peer, &dir, Method::SharedCores)?;
            runs[i].push(idle_memory(peer, procs[0].0.id(), idle_conns)?);
            drop(procs);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let mut rows = Vec::new();
    let mut per_conn = Vec::new();
    let mut raw = serde_json::Map::new();
    for (i, peer) in PEERS.iter().enumerate() {
        let kib: Vec<f64> = runs[i]
            .iter()
            .map(|&(b, a, n)| a.saturating_sub(b) as f64 / n.max(1) as f64)
            .collect();
        let (m, lo, hi) = median_spread(&kib);
        per_conn.push(m);
        let answered = runs[i].iter().map(|r| r.2).min().unwrap_or(0);
        let before = median_spread(&runs[i].iter().map(|r| r.0 as f64).collect::<Vec<_>>()).0;
        let after = median_spread(&runs[i].iter().map(|r| r.1 as f64).collect::<Vec<_>>()).0;
        rows.push(vec![
            peer.name.to_string(),
            answered.to_string(),
            format!("{:.1}", before / 1024.0),
            format!("{:.1}", after / 1024.0),
            format!("{m:.2} ({lo:.2}..{hi:.2})"),
        ]);
        raw.insert(
            peer.name.to_string(),
            json!(runs[i]
                .iter()
                .map(
                    |&(b, a, n)| json!({"connections": idle_conns, "answered": n,
                                         "rss_before_kib": b, "rss_after_kib": a})
                )
                .collect::<Vec<_>>()),
        );
    }
    let leanest = per_conn[1..].iter().copied().fold(f64::INFINITY, f64::min);
    Ok((
        Table {
            title: format!("Memory with {idle_conns} idle keep-alive connections"),
            columns: [
                "proxy",
                "answered (fewest of the rounds)",
                "RSS before (MiB)",
                "RSS with connections (MiB)",
                "KiB per answered connection (median, spread)",
            ]
            .map(String::from)
            .to_vec(),
            rows,
            notes: vec![
                format!("{rounds} round(s), proxies alternating. RSS of every process of the proxy (all workers), after one request on each connection; a connection a proxy does not answer within 15 s stays in its accept backlog."),
                format!("hapd holds {:.1} times the memory per connection of the leanest peer.", per_conn[0] / leanest),
            ],
            plot: Some(Plot {
                title: format!("Memory per idle connection ({idle_conns} connections)"),
                y_label: "KiB per connection (median)".into(),
                categories: PEERS.iter().map(|p| p.name.to_string()).collect(),
                series: vec![("KiB".into(), per_conn)],
            }),
        },
        serde_json::Value::Object(raw),
    ))
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the TLS scan's hapd listens (below the ephemeral range, like the others).
const SCAN_PORT: u16 = 22_443;

/// testssl.sh against hapd with the guide's TLS settings and HSTS header.
fn tls_scan(dir: &Path) -> anyhow::Result<(Table, serde_json::Value)> {
    println!("[proxy] TLS scan of hapd with testssl (about 10 s)");
    let d = dir.display();
    let cfg = format!(
        r#"[node]
name = "scan"
admin = "127.0.0.1:0"
[tls]
protocols = ["1.2", "1.3"]
cipher_suites = ["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256",
  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]
[[tls.certificate]]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
[[listener]]
name = "tls"
bind = ["127.0.0.1:{SCAN_PORT}"]
tls = true
[[upstream]]
name = "backend"
servers = ["127.0.0.1:{BACKEND}"]
[[vhost]]
server_names = ["localhost"]
listeners = ["tls"]
response_headers = {{ "Strict-Transport-Security" = "{HSTS}" }}
  [[vhost.route]]
  prefix = "/"
  upstream = "backend"
"#
    );
    let path = dir.join("scan.toml");
    std::fs::write(&path, cfg)?;
    let log = dir.join("scan.log");
    let running = spawn(
        "hapd",
        Command::new(crate::hapd_bin()?)
            .args(["run", "--config"])
            .arg(&path)
            .env("HAPD_LOG", "warn"),
        &log,
    )?;
    wait_port(SCAN_PORT, "hapd (scan)", &log)?;
    let found = hapd_lab::testssl::scan(&format!("https://localhost:{SCAN_PORT}/"), dir);
    drop(running);
    let found = found?;
    let problems = hapd_lab::testssl::problems(&found);
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "testssl.sh"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let rows = found
        .iter()
        .map(|f| vec![f.id.clone(), f.severity.clone(), f.finding.clone()])
        .collect();
    let table = Table {
        title: "TLS scan of hapd (testssl.sh)".into(),
        columns: vec!["check".into(), "severity".into(), "finding".into()],
        rows,
        notes: vec![
            format!(
                "testssl.sh {version} (`testssl --protocols --std -h`) against hapd with the guide's protocols, cipher suites and HSTS header. Verdict: {}.",
                if problems.is_empty() {
                    "no SSL, no TLS 1.0/1.1, no weak cipher category, HSTS sent".to_string()
                } else {
                    format!("problems: {}", problems.join("; "))
                }
            ),
        ],
        plot: None,
    };
    let raw = serde_json::json!(found
        .iter()
        .map(|f| serde_json::json!({"id": f.id, "severity": f.severity, "finding": f.finding}))
        .collect::<Vec<_>>());
    Ok((table, raw))
}

#[cfg(test)]
mod tests {
    use super::round_by_round_ratio;

    #[test]
    fn round_by_round_ratio_divides_by_the_best_peer_of_each_round() {
        // Round 1 is slow for everyone; the ratio of medians would mix rounds.
        let mine = [50.0, 120.0, 110.0];
        let others: [&[f64]; 2] = [&[40.0, 100.0, 100.0], &[45.0, 80.0, 105.0]];
        // 50/45, 120/100, 110/105 -> 1.11, 1.2, 1.048; median 1.11.
        let r = round_by_round_ratio(&mine, &others).unwrap();
        assert!((r - 50.0 / 45.0).abs() < 1e-9, "{r}");
        assert_eq!(round_by_round_ratio(&mine, &[]), None);
        // A round without any peer figure is left out.
        let r = round_by_round_ratio(&[10.0, 30.0], &[&[20.0]]).unwrap();
        assert!((r - 0.5).abs() < 1e-9, "{r}");
    }
}
