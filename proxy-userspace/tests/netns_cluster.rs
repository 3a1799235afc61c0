//! `[cluster]` on a running pair: parity digests exchanged over mutual TLS (drift seen by both
//! nodes within one exchange of a reload, shown in status and metrics, a drill refused), `hapd
//! check --peer`, a third host refused, and certificate sync (a renewal on the master served
//! by the standby within seconds and without a failed handshake; a bad push refused with the
//! standby's files and service untouched).
//!
//! ```text
//!   h0 198.18.0.1 hapd node0 (110), admin :9100, cluster :9440 ─┐
//!   h1 198.18.0.2 hapd node1 (100), admin :9100, cluster :9440 ─┼─ bridge   VIP 198.18.0.100
//!   h2 198.18.0.3 backend a:8001                                │
//!   h3 198.18.0.4 client, and the third host                   ─┘
//! ```
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hapd_lab::Lab;
use nix::sys::signal::Signal;
use proxy_kit::{run, text, LabBackends, Pki};
use rustls::pki_types::{pem::PemObject as _, CertificateDer};

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";
/// The drift test's exchange interval: long enough that an exchange within seconds of a
/// reload is the one the reload started.
const SLOW_S: u64 = 60;
/// The certificate test's: a refused push is retried only at an interval.
const INTERVAL_S: u64 = 5;

/// The two PKIs: the service's certificates and the cluster's.
struct Pkis {
    web: Pki,
    cluster: Pki,
    dir: PathBuf,
}

impl Pkis {
    /// Writes the cluster CA and each node's cluster certificate (with its intermediate) and
    /// the site certificate every node starts with (valid until 2030).
    fn new(lab: &Lab) -> Pkis {
        let dir = lab.dir().to_path_buf();
        let p = Pkis {
            web: Pki::new(),
            cluster: Pki::new(),
            dir,
        };
        std::fs::create_dir_all(p.dir.join("cluster")).unwrap();
        std::fs::write(p.dir.join("cluster/ca.crt"), &p.cluster.root_pem).unwrap();
        for node in ["node0", "node1", "node3"] {
            let (c, k) = p.cluster.leaf(&[node]);
            std::fs::write(
                p.dir.join(format!("cluster/{node}.crt")),
                format!("{c}{}", p.cluster.inter_pem),
            )
            .unwrap();
            std::fs::write(p.dir.join(format!("cluster/{node}.key")), k).unwrap();
        }
        let site = p.web.leaf_until(&["www.example"], 2030, 1, 1);
        for i in 0..2 {
            std::fs::create_dir_all(p.dir.join(format!("h{i}"))).unwrap();
            p.write_site(i, &site);
            std::fs::write(p.site(i, "chain.crt"), &p.web.inter_pem).unwrap();
        }
        p
    }

    fn site(&self, i: usize, file: &str) -> PathBuf {
        self.dir.join(format!("h{i}/{file}"))
    }

    /// Node `i`'s site certificate and key files hold `cert` and `key`.
    fn assert_site(&self, i: usize, (cert, key): &(String, String)) {
        assert_eq!(
            &std::fs::read_to_string(self.site(i, "site.crt")).unwrap(),
            cert
        );
        assert_eq!(
            &std::fs::read_to_string(self.site(i, "site.key")).unwrap(),
            key
        );
    }

    /// Writes node `i`'s site certificate and key, as a renewal hook would.
    fn write_site(&self, i: usize, (cert, key): &(String, String)) {
        std::fs::write(self.site(i, "site.key"), key).unwrap();
        std::fs::write(self.site(i, "site.crt"), cert).unwrap();
    }
}

fn node(
    lab: &mut Lab,
    p: &Pkis,
    i: usize,
    priority: u8,
    extra_route: &str,
    interval_s: u64,
) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let (me, peer) = (lab.host(i).addr, lab.host(1 - i).addr);
    let d = p.dir.display();
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{pin}"
admin = "{me}:9100"
control_socket = "{d}/h{i}.sock"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = "50ms"
virtual_ips = ["{VIP}/24"]
peers = ["{peer}"]

[tls]
[[tls.certificate]]
cert = "{crt}"
key = "{key}"
chain = "{chain}"

[[listener]]
name = "web"
bind = ["{VIP}:8080"]

[[listener]]
name = "tls"
bind = ["0.0.0.0:8443"]
tls = true

[[upstream]]
name = "app"
servers = ["198.18.0.3:8001"]

[[vhost]]
server_names = ["www.example"]
listeners = ["web", "tls"]
{extra_route}
  [[vhost.route]]
  prefix = "/"
  upstream = "app"

[cluster]
listen = "{me}:9440"
peers = [{{ name = "node{other}", address = "{peer}:9440" }}]
ca = "{d}/cluster/ca.crt"
cert = "{d}/cluster/node{i}.crt"
key = "{d}/cluster/node{i}.key"
exchange_interval = "{interval_s}s"
timeout = "2s"
sync_certificates = true
"#,
        pin = pin_dir.display(),
        other = 1 - i,
        crt = p.site(i, "site.crt").display(),
        key = p.site(i, "site.key").display(),
        chain = p.site(i, "chain.crt").display(),
    )
}

fn cfg_path(lab: &Lab, i: usize) -> String {
    lab.dir().join(format!("h{i}.toml")).display().to_string()
}

fn status(lab: &Lab, i: usize) -> serde_json::Value {
    lab.hapd_status(i, Path::new(HAPD)).unwrap()
}

/// What node `i` says of its one peer.
fn peer_view(lab: &Lab, i: usize) -> serde_json::Value {
    status(lab, i)["cluster"]["peers"][0].clone()
}

/// `hapd drill` on node0 without asking the peer's admin endpoint (the cluster's view of it
/// decides parity).
fn drill(lab: &Lab, cfg: &str) -> Output {
    run(
        lab,
        0,
        &[
            "drill",
            "--config",
            cfg,
            "--probe",
            &format!("http://{VIP}:8080/"),
            "--no-peer-check",
        ],
    )
}

/// Waits up to `limit` for `cond`; how long it took.
fn within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// `curl` from host `i`: the exit code, the HTTP status and the body.
fn curl(lab: &Lab, i: usize, args: &[&str]) -> (i32, u16, String) {
    let mut argv = vec!["curl", "-s", "-m", "3", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = lab.command(i, &argv).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

/// The metric line `name{labels} value` of node `i`, its value.
fn metric(lab: &Lab, i: usize, series: &str) -> Option<f64> {
    let (_, code, body) = curl(
        lab,
        i,
        &[&format!("http://{}:9100/metrics", lab.host(i).addr)],
    );
    assert_eq!(code, 200);
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The leaf certificate `addr:8443` serves for www.example, from host 3.
fn served(lab: &Lab, web: &Pki, addr: std::net::Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    let config = web.client_config(&[]);
    lab.in_netns(3, move || handshake(&config, addr))
}

fn handshake(
    config: &Arc<rustls::ClientConfig>,
    addr: std::net::Ipv4Addr,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp =
        std::net::TcpStream::connect_timeout(&(addr, 8443).into(), Duration::from_secs(3))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut conn = rustls::ClientConnection::new(config.clone(), "www.example".try_into()?)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    Ok(leaf.to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Starts the pair (node0 master) and waits until both are in parity.
fn pair(lab: &mut Lab, p: &Pkis, interval_s: u64) -> (hapd_lab::proc::Proc, hapd_lab::proc::Proc) {
    let (ca, cb) = (
        node(lab, p, 0, 110, "", interval_s),
        node(lab, p, 1, 100, "", interval_s),
    );
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(5)).unwrap();
    let b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    // The node started first reaches the other as soon as that one calls it, not an interval
    // later.
    let took = within(
        "both nodes in parity and reachable",
        Duration::from_secs(10),
        || {
            [0, 1].iter().all(|&i| {
                let v = peer_view(lab, i);
                v["parity"] == "in parity" && v["reachable"] == true
            })
        },
    );
    eprintln!("in parity {took:?} after the second node started");
    (a, b)
}

fn stop(procs: [&mut hapd_lab::proc::Proc; 2]) {
    for p in procs {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(15))
            .unwrap()
            .success());
    }
}

#[test]
fn drift_is_seen_by_both_nodes_within_one_exchange_and_a_third_host_is_refused() {
    let mut lab = Lab::new(4).unwrap();
    let p = Pkis::new(&lab);
    let backends = LabBackends::start(&lab, 2, &[("198.18.0.3:8001", "a")]);
    let (mut a, mut b) = pair(&mut lab, &p, SLOW_S);
    let (sa, sb) = (cfg_path(&lab, 0), cfg_path(&lab, 1));
    let st = status(&lab, 0);
    assert_eq!(st["cluster"]["in_parity"], true, "{st}");
    assert_eq!(metric(&lab, 0, "hapd_cluster_in_parity"), Some(1.0));
    assert_eq!(
        metric(&lab, 0, r#"hapd_cluster_peer_up{peer="node1"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &lab,
            0,
            r#"hapd_parity_drift{peer="node1",section="routes"}"#
        ),
        Some(0.0)
    );
    let o = run(&lab, 0, &["check", "--config", &sa, "--peer", "node1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("in parity with node1 (running)"),
        "{}",
        text(&o)
    );

    // A route added on node1 and reloaded: both see the drift, sooner than an interval.
    let changed = node(
        &mut lab,
        &p,
        1,
        100,
        "  [[vhost.route]]\n  prefix = \"/api/\"\n  upstream = \"app\"",
        SLOW_S,
    );
    std::fs::write(&sb, &changed).unwrap();
    // Checked against the running peer before it goes live: it differs.
    let o = run(
        &lab,
        1,
        &["check", "--config", &sb, "--peer", "198.18.0.1:9440"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("drift from node0 (running) in: routes"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("/api/"),
        "both values shown: {}",
        text(&o)
    );
    let o = run(&lab, 1, &["reload", "--config", &sb]);
    assert!(o.status.success(), "{}", text(&o));
    let took = within("drift on both nodes", Duration::from_secs(5), || {
        peer_view(&lab, 0)["parity"] == "drift: routes"
            && peer_view(&lab, 1)["parity"] == "drift: routes"
    });
    eprintln!("drift seen by both nodes {took:?} after the reload");
    let view = peer_view(&lab, 0);
    let d = &view["drift"][0];
    assert_eq!(d["section"], "routes", "{view}");
    assert_ne!(d["ours"], d["theirs"], "{view}");
    assert!(
        d["theirs_shown"].as_str().unwrap().contains("/api/"),
        "{view}"
    );
    assert!(
        !d["ours_shown"].as_str().unwrap().contains("/api/"),
        "{view}"
    );
    assert_eq!(status(&lab, 0)["cluster"]["in_parity"], false);
    assert_eq!(
        metric(
            &lab,
            0,
            r#"hapd_parity_drift{peer="node1",section="routes"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &lab,
            0,
            r#"hapd_parity_drift{peer="node1",section="vhosts"}"#
        ),
        Some(0.0)
    );
    let o = run(&lab, 0, &["status", "--config", &sa]);
    assert!(
        text(&o).contains("peer node1 at 198.18.0.2:9440: drift: routes"),
        "{}",
        text(&o)
    );

    // A drill with drift is refused, and nothing moves.
    let o = drill(&lab, &sa);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("refused: the nodes' configurations differ (node1: drift: routes)"),
        "{}",
        text(&o)
    );
    assert_eq!(status(&lab, 0)["instances"][0]["state"], "MASTER");

    // Reverted: in parity again within one exchange.
    let original = node(&mut lab, &p, 1, 100, "", SLOW_S);
    std::fs::write(&sb, &original).unwrap();
    let o = run(&lab, 1, &["reload", "--config", &sb]);
    assert!(o.status.success(), "{}", text(&o));
    within("parity again", Duration::from_secs(5), || {
        peer_view(&lab, 0)["parity"] == "in parity" && peer_view(&lab, 1)["parity"] == "in parity"
    });

    // A third host cannot read the digests or push: no certificate, a peer's name from
    // another CA, a cluster certificate naming no peer, even a peer's own certificate (the
    // address is no peer's: closed before any TLS work).
    let own_crt = p.dir.join("cluster/node1.crt").display().to_string();
    let own_key = p.dir.join("cluster/node1.key").display().to_string();
    let rogue = Pki::new();
    let (rc, rk) = rogue.leaf(&["node1"]);
    let rogue_crt = p.dir.join("rogue.crt");
    let rogue_key = p.dir.join("rogue.key");
    std::fs::write(&rogue_crt, format!("{rc}{}", rogue.inter_pem)).unwrap();
    std::fs::write(&rogue_key, rk).unwrap();
    let ca_file = p.dir.join("cluster/ca.crt").display().to_string();
    let third_crt = p.dir.join("cluster/node3.crt").display().to_string();
    let third_key = p.dir.join("cluster/node3.key").display().to_string();
    let (rogue_crt, rogue_key) = (
        rogue_crt.display().to_string(),
        rogue_key.display().to_string(),
    );
    let resolve = "node0:9440:198.18.0.1";
    let before = status(&lab, 0)["cluster"]["refused_connections"]
        .as_u64()
        .unwrap();
    for (what, creds) in [
        ("no certificate", vec![]),
        (
            "another CA",
            vec!["--cert", &rogue_crt, "--key", &rogue_key],
        ),
        (
            "no configured peer",
            vec!["--cert", &third_crt, "--key", &third_key],
        ),
        (
            "a peer's certificate",
            vec!["--cert", &own_crt, "--key", &own_key],
        ),
    ] {
        for (method, path) in [("GET", "/v1/parity"), ("POST", "/v1/certificate")] {
            let mut args = vec!["--cacert", &ca_file, "--resolve", resolve, "-X", method];
            args.extend_from_slice(&creds);
            let url = format!("https://node0:9440{path}");
            args.push(&url);
            let (rc, code, body) = curl(&lab, 3, &args);
            assert!(
                rc != 0 && code != 200,
                "{what}: {method} {path} answered {code}: {body}"
            );
            assert!(!body.contains("parity"), "{what}: {body}");
        }
    }
    let after = status(&lab, 0)["cluster"]["refused_connections"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 8, "every attempt refused and counted");
    assert!(
        !a.grep("cluster: connection from 198.18.0.4:")
            .iter()
            .any(|l| !l.contains("not a peer's address")),
        "{}",
        a.lines().join("\n")
    );
    assert!(!a.grep("cluster: connection from 198.18.0.4").is_empty());
    // From the peer's host, its certificate gets through (curl as a client of the channel).
    let (rc, code, body) = curl(
        &lab,
        1,
        &[
            "--cacert",
            &ca_file,
            "--resolve",
            resolve,
            "--cert",
            &own_crt,
            "--key",
            &own_key,
            "https://node0:9440/v1/parity",
        ],
    );
    assert!(
        rc == 0 && code == 200 && body.contains("\"node\":\"node0\""),
        "{rc} {code} {body}"
    );

    // An upgrade of node1 hands its cluster socket to the new process, which answers on it.
    let old_pid = b.pid();
    let o = run(&lab, 1, &["upgrade", "--config", &sb]);
    assert!(o.status.success(), "{}\n{}", text(&o), b.lines().join("\n"));
    assert!(
        b.wait(Duration::from_secs(15)).unwrap().success(),
        "{}",
        b.lines().join("\n")
    );
    let new = status(&lab, 1)["pid"].as_u64().unwrap();
    assert_ne!(new, u64::from(old_pid));
    within(
        "the new node1 answering on the channel",
        Duration::from_secs(10),
        || {
            let o = run(&lab, 0, &["check", "--config", &sa, "--peer", "node1"]);
            text(&o).contains("in parity with node1 (running)")
        },
    );
    within("the new node1 exchanging", Duration::from_secs(10), || {
        let v = peer_view(&lab, 1);
        v["parity"] == "in parity" && v["reachable"] == true
    });
    let new = nix::unistd::Pid::from_raw(new as i32);
    nix::sys::signal::kill(new, Signal::SIGTERM).unwrap();
    within("the new node1 stopping", Duration::from_secs(15), || {
        nix::sys::signal::kill(new, None).is_err()
    });

    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
    drop(backends);
}

#[test]
fn a_renewed_certificate_is_served_by_the_standby_and_a_bad_push_is_refused() {
    let mut lab = Lab::new(4).unwrap();
    let p = Pkis::new(&lab);
    let backends = LabBackends::start(&lab, 2, &[("198.18.0.3:8001", "a")]);
    let (mut a, mut b) = pair(&mut lab, &p, INTERVAL_S);
    let standby = lab.host(1).addr;
    let old = std::fs::read_to_string(p.site(1, "site.crt")).unwrap();
    assert_eq!(served(&lab, &p.web, standby).unwrap(), der(&old));

    // Handshakes with the standby all along: none may fail. One that times out on a loaded
    // machine is counted apart: it says nothing about the certificate.
    let stop_probe = Arc::new(AtomicBool::new(false));
    let (ok, slow, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let prober = {
        let (stop_probe, ok, slow, failed) =
            (stop_probe.clone(), ok.clone(), slow.clone(), failed.clone());
        let config = p.web.client_config(&[]);
        lab.spawn_in_netns(3, move || {
            while !stop_probe.load(Ordering::Relaxed) {
                match handshake(&config, standby) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                        if e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                            matches!(
                                io.kind(),
                                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                            )
                        }) =>
                    {
                        slow.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .unwrap()
    };

    // The master's certificate is renewed (written as a renewal hook writes it).
    let renewed = p.web.leaf_until(&["www.example"], 2031, 1, 1);
    p.write_site(0, &renewed);
    let took = within(
        "the standby serving the renewed certificate",
        Duration::from_secs(5),
        || served(&lab, &p.web, standby).is_ok_and(|d| d == der(&renewed.0)),
    );
    eprintln!(
        "the standby served the renewed certificate {took:?} after it was written on the master"
    );
    p.assert_site(1, &renewed);
    within(
        "parity after the renewal",
        Duration::from_secs(INTERVAL_S + 3),
        || {
            peer_view(&lab, 0)["parity"] == "in parity"
                && peer_view(&lab, 1)["parity"] == "in parity"
        },
    );
    assert_eq!(peer_view(&lab, 0)["cert_sync"]["pushed"], 1);
    let view = peer_view(&lab, 1);
    assert_eq!(view["cert_sync"]["received"], 1, "{view}");
    assert!(
        view["cert_sync"]["last"]
            .as_str()
            .unwrap()
            .contains("applied"),
        "{view}"
    );

    // A renewal whose key does not match: the master keeps serving what it has, pushes the
    // files, and the standby refuses them.
    let (mismatched, _) = p.web.leaf_until(&["www.example"], 2032, 1, 1);
    std::fs::write(p.site(0, "site.crt"), &mismatched).unwrap();
    // The master's own reload fails (it serves on what it has), so the push waits for its next
    // periodic exchange.
    within(
        "the standby refusing the push",
        Duration::from_secs(2 * INTERVAL_S + 3),
        || peer_view(&lab, 1)["cert_sync"]["refused"] == 1,
    );
    let view = peer_view(&lab, 1);
    let last = view["cert_sync"]["last"].as_str().unwrap();
    assert!(
        last.contains("refused") && last.contains("does not belong"),
        "{view}"
    );
    assert_eq!(view["cert_sync"]["last_failed"], true);
    let master = peer_view(&lab, 0);
    assert!(
        master["cert_sync"]["push_failures"].as_u64().unwrap() >= 1,
        "{master}"
    );
    assert!(metric(
        &lab,
        1,
        r#"hapd_cert_sync_total{peer="node0",direction="received",result="failed"}"#
    )
    .is_some_and(|v| v >= 1.0));
    assert!(metric(
        &lab,
        0,
        r#"hapd_cert_sync_total{peer="node1",direction="sent",result="failed"}"#
    )
    .is_some_and(|v| v >= 1.0));
    assert_eq!(served(&lab, &p.web, standby).unwrap(), der(&renewed.0));
    p.assert_site(1, &renewed);
    p.write_site(0, &renewed);

    // An older certificate pushed over the channel with the master's credentials: refused,
    // and the standby serves on what it has.
    let older = p.web.leaf_until(&["www.example"], 2029, 1, 1);
    let push = serde_json::json!({
        "index": 0,
        "cert": p.site(0, "site.crt"),
        "certificate": older.0,
        "chain": p.web.inter_pem,
        "key": older.1,
    });
    let body_file = p.dir.join("push.json");
    std::fs::write(&body_file, push.to_string()).unwrap();
    let d = p.dir.display().to_string();
    let (rc, code, body) = curl(
        &lab,
        0,
        &[
            "--cacert",
            &format!("{d}/cluster/ca.crt"),
            "--cert",
            &format!("{d}/cluster/node0.crt"),
            "--key",
            &format!("{d}/cluster/node0.key"),
            "--resolve",
            "node1:9440:198.18.0.2",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!("@{}", body_file.display()),
            "https://node1:9440/v1/certificate",
        ],
    );
    assert_eq!((rc, code), (0, 409), "{body}");
    let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["verdict"], "refused", "{body}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("older than the certificate in this node's files"),
        "{body}"
    );
    assert_eq!(served(&lab, &p.web, standby).unwrap(), der(&renewed.0));
    assert_eq!(
        std::fs::read_to_string(p.site(1, "site.crt")).unwrap(),
        renewed.0
    );

    stop_probe.store(true, Ordering::Relaxed);
    prober.join().unwrap().unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "failed handshakes with the standby: {failed:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too few handshakes: {} ({} timed out)",
        ok.load(Ordering::Relaxed),
        slow.load(Ordering::Relaxed)
    );

    // A renewal while the standby is down: it gets the certificate as soon as it is back.
    assert!(b
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
    let later = p.web.leaf_until(&["www.example"], 2033, 1, 1);
    p.write_site(0, &later);
    // Unheard for two intervals and a timeout, the peer's digests count as unknown: no drift
    // gauges, and a drill is refused.
    let took = within(
        "node1's digests going stale on node0",
        Duration::from_secs(2 * INTERVAL_S + 2 + 5),
        || {
            peer_view(&lab, 0)["parity"]
                .as_str()
                .is_some_and(|s| s.starts_with("unknown (last heard"))
        },
    );
    eprintln!("stale {took:?} after node1 stopped");
    assert_eq!(
        metric(
            &lab,
            0,
            r#"hapd_parity_drift{peer="node1",section="routes"}"#
        ),
        None
    );
    assert_eq!(metric(&lab, 0, "hapd_cluster_in_parity"), Some(0.0));
    let sa = cfg_path(&lab, 0);
    let o = drill(&lab, &sa);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("node1: unknown (last heard"),
        "{}",
        text(&o)
    );
    let cb = node(&mut lab, &p, 1, 100, "", INTERVAL_S);
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    let took = within(
        "the restarted standby serving the certificate renewed while it was down",
        Duration::from_secs(INTERVAL_S),
        || served(&lab, &p.web, standby).is_ok_and(|d| d == der(&later.0)),
    );
    eprintln!("the restarted standby caught up {took:?} after it was ready");
    within(
        "parity with the restarted standby",
        Duration::from_secs(10),
        || {
            peer_view(&lab, 0)["parity"] == "in parity"
                && peer_view(&lab, 1)["parity"] == "in parity"
        },
    );
    stop([&mut a, &mut b]);
    drop(backends);
}
