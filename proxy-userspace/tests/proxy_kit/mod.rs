//! What the proxy tests share: certificates made on the fly, real backends on loopback, and
//! clients (hyper over TCP and rustls, raw sockets for malformed requests).
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_userspace::{config::Config, proxy};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "hapd-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A root CA, an intermediate, and leaves signed by the intermediate.
pub struct Pki {
    pub root_pem: String,
    pub root_der: CertificateDer<'static>,
    inter: rcgen::Certificate,
    inter_key: rcgen::KeyPair,
    pub inter_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "hapd test root");
        let root = p.self_signed(&root_key).unwrap();
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "hapd test intermediate");
        let inter = p.signed_by(&inter_key, &root, &root_key).unwrap();
        Pki {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            inter_pem: inter.pem(),
            inter,
            inter_key,
        }
    }

    /// A leaf for `names` (PEM certificate, PEM key).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = p.signed_by(&key, &self.inter, &self.inter_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `names` valid until `not_after` (PEM certificate, PEM key).
    pub fn leaf_until(&self, names: &[&str], y: i32, m: u8, d: u8) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = p.signed_by(&key, &self.inter, &self.inter_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf as `<stem>.crt`, `<stem>.key`, and the intermediate as `<stem>-chain.crt`.
    pub fn write_leaf(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> (PathBuf, PathBuf, PathBuf) {
        let (c, k) = self.leaf(names);
        let cp = dir.join(format!("{stem}.crt"));
        let kp = dir.join(format!("{stem}.key"));
        let ch = dir.join(format!("{stem}-chain.crt"));
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        std::fs::write(&ch, &self.inter_pem).unwrap();
        (cp, kp, ch)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }
}

/// A backend: answers with what it saw, as JSON, plus a few special paths.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BBody = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> BBody {
    Full::new(s.into()).boxed()
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(bind: SocketAddr, name: &str) -> Backend {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let accepts = Arc::new(AtomicUsize::new(0));
        let (n, h, c) = (name.to_string(), healthy.clone(), hits.clone());
        let acc = accepts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                acc.fetch_add(1, Ordering::Relaxed);
                let (n, h, c) = (n.clone(), h.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h, c) = (n.clone(), h.clone(), c.clone());
                        async move { Ok::<_, Infallible>(backend(req, &n, &h, &c, addr).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            healthy,
            hits,
            accepts,
            task,
        }
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

async fn backend(
    mut req: Request<Incoming>,
    name: &str,
    healthy: &AtomicBool,
    hits: &AtomicUsize,
    me: SocketAddr,
) -> Response<BBody> {
    let path = req.uri().path().to_string();
    if path == "/health" || path == "/api/health" {
        let ok = healthy.load(Ordering::Relaxed);
        let mut r = Response::new(full(if ok { "ok" } else { "down" }));
        *r.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return r;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let mut resp = match path.as_str() {
        p if p.ends_with("/slow") => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        p if p.ends_with("/redirect") => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(
                "location",
                format!("http://{me}/api/next?x=1").parse().unwrap(),
            );
            r.headers_mut().insert(
                "content-location",
                format!("http://{me}/api/here").parse().unwrap(),
            );
            r
        }
        p if p.ends_with("/echo") => {
            // Streams the request body back as it arrives.
            let body = req.into_body();
            let mut r = Response::new(body.map_err(|_| unreachable_infallible()).boxed());
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            return r;
        }
        p if p.ends_with("/stream") => {
            let chunks = (0..5).map(|i| {
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!("chunk{i};"))))
            });
            Response::new(StreamBody::new(futures::stream::iter(chunks)).boxed())
        }
        p if p.ends_with("/ws") => {
            if req.headers().get("upgrade").is_none() {
                let mut r = Response::new(full("want upgrade"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            }
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    use futures_util::{SinkExt, StreamExt};
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(m)) = rx.next().await {
                        if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert(
                "sec-websocket-accept",
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key)
                    .parse()
                    .unwrap(),
            );
            return r;
        }
        _ => {
            let headers: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let seen = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            Response::new(full(seen.to_string()))
        }
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp.headers_mut()
        .insert("server", "Backend/1.2.3 (Unix)".parse().unwrap());
    resp
}

fn unreachable_infallible() -> Infallible {
    panic!("the backend's echo body failed")
}

/// A proxy started from TOML text (`{dir}` replaced by the scratch directory).
pub fn start_proxy(toml: &str) -> proxy::ProxyHandle {
    let (cfg, _) = Config::parse(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    proxy::start(&cfg).unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn addr_of(p: &proxy::ProxyHandle, listener: &str) -> SocketAddr {
    p.bound
        .iter()
        .find(|(n, _)| n == listener)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("no listener {listener}"))
}

/// A response read completely.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
    pub version: hyper::Version,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

/// One HTTP/1.1 request on a new plain connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    request(
        addr,
        Request::get(path)
            .header("host", host)
            .body(String::new())
            .unwrap(),
    )
    .await
}

pub async fn request(addr: SocketAddr, req: Request<String>) -> Got {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(tx.send_request(req).await.unwrap()).await
}

/// A TLS connection with SNI `sni`; returns the stream (for the certificate and ALPN).
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), s)
        .await
}

/// One request over a new TLS connection (HTTP/2 when ALPN picks it).
pub async fn tls_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
    req: Request<String>,
) -> Got {
    let s = tls_connect(addr, cfg, sni).await.unwrap();
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        collect(tx.send_request(req).await.unwrap()).await
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        collect(tx.send_request(req).await.unwrap()).await
    }
}

/// `n` connections opened one right after the other, each sending `GET /x` for `host` with
/// no `Connection: close`; returned once every one has had a 200 head back, still open.
pub async fn answered_and_kept_open(addr: SocketAddr, host: &str, n: usize) -> Vec<TcpStream> {
    let request = format!("GET /x HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    conns
}

/// Sends raw bytes, returns everything the proxy answers until it closes (or 5 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw text.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Backends running in a lab host's network namespace, each with its health switch; stopped
/// when dropped.
pub struct LabBackends {
    /// One per backend, in the order given: false makes its `/health` answer 503.
    pub healthy: Vec<Arc<AtomicBool>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<()>>>,
}

impl LabBackends {
    /// Starts one [`Backend`] per `(address, name)` in host `i`.
    pub fn start(lab: &hapd_lab::Lab, i: usize, specs: &[(&str, &str)]) -> LabBackends {
        let specs: Vec<(SocketAddr, String)> = specs
            .iter()
            .map(|(a, n)| (a.parse().unwrap(), n.to_string()))
            .collect();
        let (flags_tx, flags_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = lab
            .spawn_in_netns(i, move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                let backends: Vec<Backend> = rt.block_on(async {
                    let mut v = Vec::new();
                    for (addr, name) in &specs {
                        v.push(Backend::start_on(*addr, name).await);
                    }
                    v
                });
                flags_tx
                    .send(backends.iter().map(|b| b.healthy.clone()).collect())
                    .unwrap();
                let _ = stop_rx.recv();
                drop(backends);
            })
            .unwrap();
        LabBackends {
            healthy: flags_rx.recv().unwrap(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for LabBackends {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A command's standard output and error, as one text (for assertions and their messages).
/// `hapd ARGS` in lab host `i`, run to its end.
pub fn run(lab: &hapd_lab::Lab, i: usize, args: &[&str]) -> std::process::Output {
    let mut argv = vec![env!("CARGO_BIN_EXE_hapd")];
    argv.extend_from_slice(args);
    lab.command(i, &argv).output().unwrap()
}

/// A command's exit status and output, for an assertion's message.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Which backend answered `url` (curl from lab host `i`, 1 s at most); `None`: no answer.
pub fn answered_by(lab: &hapd_lab::Lab, i: usize, url: &str, host: &str) -> Option<String> {
    let out = lab
        .command(
            i,
            &["curl", "-s", "-m", "1", "-H", &format!("Host: {host}"), url],
        )
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["backend"].as_str().map(str::to_string)
}

/// Polls `cond` every 20 ms for up to 5 s; panics naming `what` if it never holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config with one TLS listener on 127.0.0.1:`port`, one vhost for app.example-corp.com
/// with an upstream that refuses connections, and the admin endpoint on 127.0.0.1:`admin`
/// (0: any free port).
pub fn one_tls_vhost(
    cert: &std::path::Path,
    key: &std::path::Path,
    chain: Option<&std::path::Path>,
    port: u16,
    admin: u16,
) -> String {
    let chain = chain.map_or(String::new(), |c| format!("chain = \"{}\"\n", c.display()));
    format!(
        r#"
[node]
name = "n"
admin = "127.0.0.1:{admin}"
[[tls.certificate]]
cert = "{}"
key = "{}"
{chain}
[[listener]]
name = "https"
bind = ["127.0.0.1:{port}"]
tls = true
[[upstream]]
name = "u"
servers = ["127.0.0.1:9"]
[[vhost]]
server_names = ["app.example-corp.com"]
listeners = ["https"]
  [[vhost.route]]
  prefix = "/"
  upstream = "u"
"#,
        cert.display(),
        key.display()
    )
}

/// The CPUs a thread may run on, from /proc (`Cpus_allowed_list`, e.g. "0-1,3").
pub fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hapd run --config cfg` here, with its output captured, once it says it is ready.
pub fn run_hapd(cfg: &Path) -> hapd_lab::proc::Proc {
    run_hapd_by(std::process::Command::new(env!("CARGO_BIN_EXE_hapd")), cfg)
}

/// [`run_hapd`] with the command that starts it: the hapd binary itself, or a wrapper such as
/// `taskset` given the binary as its first argument.
pub fn run_hapd_by(mut cmd: std::process::Command, cfg: &Path) -> hapd_lab::proc::Proc {
    let child = cmd
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = hapd_lab::proc::Proc::new("hapd", child);
    p.wait_for("hapd ready", 1, Duration::from_secs(10))
        .unwrap();
    p
}
