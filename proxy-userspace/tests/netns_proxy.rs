//! The whole daemon: two hapd nodes whose proxies listen on the VIP (bound with IP_FREEBIND,
//! so the backup listens too) in front of their own backend. When the master's upstream fails
//! its health checks, `track_proxy` hands the VIP to the other node, and clients at the VIP
//! are answered by the healthy proxy; when it recovers, the master takes it back.
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110) ─┐
//!   h1 198.18.0.2 hapd B (100) ─┼─ bridge     VIP 198.18.0.100:8080
//!   h2 198.18.0.3 backends a:8001, b:8002
//!   h3 198.18.0.4 client (curl) ┘
//! ```
mod proxy_kit;

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use hapd_lab::Lab;
use nix::sys::signal::Signal;
use proxy_kit::{answered_by, wait_until, LabBackends};

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn node(lab: &mut Lab, i: usize, priority: u8, backend_port: u16) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peer = lab.host(1 - i).addr;
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = "50ms"
virtual_ips = ["{VIP}/24"]
peers = ["{peer}"]
track_proxy = {{ weight = -50 }}

[[listener]]
name = "web"
bind = ["{VIP}:8080"]

[[upstream]]
name = "app"
servers = ["198.18.0.3:{backend_port}"]
health_check = {{ path = "/health", interval = "100ms", timeout = "100ms", fall = 1, rise = 1 }}

[[vhost]]
server_names = ["app"]
listeners = ["web"]
  [[vhost.route]]
  prefix = "/"
  upstream = "app"
"#,
        pin_dir.display(),
    )
}

/// Which backend answered a client at the VIP (`None`: no answer).
fn answered(lab: &Lab) -> Option<String> {
    answered_by(lab, 3, &format!("http://{VIP}:8080/who"), "app")
}

#[test]
fn an_unhealthy_upstream_moves_the_vip_to_the_healthy_proxy() {
    let mut lab = Lab::new(4).unwrap();
    // Backends in h2, each with a health switch.
    let backends = LabBackends::start(
        &lab,
        2,
        &[("198.18.0.3:8001", "a"), ("198.18.0.3:8002", "b")],
    );
    let healthy_a = backends.healthy[0].clone();
    let (ca, cb) = (node(&mut lab, 0, 110, 8001), node(&mut lab, 1, 100, 8002));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(5)).unwrap();
    // The backup listens on the VIP it does not hold.
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    assert_eq!(
        b.grep(&format!("{VIP}:8080")).len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    wait_until("an answer from a", || {
        answered(&lab).as_deref() == Some("a")
    });

    // a's health check fails: A's proxy is unhealthy, B takes the VIP, clients reach b.
    healthy_a.store(false, Ordering::Relaxed);
    b.wait_for("=> MASTER", 1, Duration::from_secs(3)).unwrap();
    assert_eq!(
        a.grep("proxy unhealthy").len(),
        1,
        "{}",
        a.lines().join("\n")
    );
    wait_until("an answer from b", || {
        answered(&lab).as_deref() == Some("b")
    });

    // Recovery: A's proxy is healthy again and A preempts back.
    healthy_a.store(true, Ordering::Relaxed);
    a.wait_for("=> MASTER", 2, Duration::from_secs(3)).unwrap();
    wait_until("an answer from a again", || {
        answered(&lab).as_deref() == Some("a")
    });

    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(15))
            .unwrap()
            .success());
    }
    drop(backends);
}

const VIP6: &str = "2001:2::100";

/// A node for the IPv6 test: an IPv6 instance, a plain and a TLS listener on the IPv6 VIP, a
/// listener that redirects to HTTPS, an IPv6 upstream, and allow lists by IPv6 prefix.
fn node6(lab: &mut Lab, i: usize, priority: u8, cert: &Path, key: &Path, chain: &Path) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peer = lab.link_local(1 - i, "eth0").unwrap();
    let log = lab.dir().join(format!("access{i}.log"));
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"

[[vrrp]]
name = "VI_6"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = "50ms"
virtual_ips = ["{VIP6}/64"]
peers = ["{peer}"]

[[tls.certificate]]
cert = "{}"
key = "{}"
chain = "{}"

[[listener]]
name = "web"
bind = ["[{VIP6}]:8080"]

[[listener]]
name = "secure"
bind = ["[{VIP6}]:8443"]
tls = true

[[listener]]
name = "redirect"
bind = ["[{VIP6}]:8081"]

[[upstream]]
name = "app"
servers = ["[2001:2::3]:8001"]

[[vhost]]
server_names = ["app"]
listeners = ["web", "secure"]
access_log = "{}"
  [[vhost.route]]
  prefix = "/mine"
  upstream = "app"
  allow = ["2001:2::4/128"]
  [[vhost.route]]
  prefix = "/theirs"
  upstream = "app"
  allow = ["2001:2::/120", "198.18.0.0/24"]
  [[vhost.route]]
  prefix = "/elsewhere"
  upstream = "app"
  allow = ["2001:db8::/32"]
  [[vhost.route]]
  prefix = "/"
  upstream = "app"

[[vhost]]
server_names = ["app"]
listeners = ["redirect"]
redirect_https = true
"#,
        pin_dir.display(),
        cert.display(),
        key.display(),
        chain.display(),
        log.display(),
    )
}

/// `curl` in the client host (h3) with `args`; the output, or what went wrong.
fn curl(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut argv = vec!["curl", "-s", "-g", "-m", "2"];
    argv.extend_from_slice(args);
    lab.command(3, &argv).output().unwrap()
}

/// IPv6 end to end: a client at 2001:2::4 reaches an IPv6 upstream through the IPv6 VIP, in
/// plain HTTP and over TLS; X-Forwarded-For, the access log and the allow lists see its IPv6
/// address; a redirect to HTTPS keeps the brackets; when the master stops, the backup (which
/// listens on the VIP it does not hold) answers.
#[test]
fn ipv6_clients_reach_an_ipv6_upstream_through_the_ipv6_vip() {
    let mut lab = Lab::new(4).unwrap();
    let backends = LabBackends::start(&lab, 2, &[("[2001:2::3]:8001", "a")]);
    let pki = proxy_kit::Pki::new();
    let dir = lab.dir().to_path_buf();
    let (c, k, ch) = pki.write_leaf(&dir, "app", &["app"]);
    let root = dir.join("root.pem");
    std::fs::write(&root, &pki.root_pem).unwrap();
    let (ca, cb) = (
        node6(&mut lab, 0, 110, &c, &k, &ch),
        node6(&mut lab, 1, 100, &c, &k, &ch),
    );
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(5)).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    let plain = format!("http://[{VIP6}]:8080");
    let seen = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    wait_until("an answer at the IPv6 VIP", || {
        seen(&curl(&lab, &["-H", "Host: app", &format!("{plain}/who")]))["backend"] == "a"
    });
    let v = seen(&curl(&lab, &["-H", "Host: app", &format!("{plain}/who")]));
    assert_eq!(v["headers"]["x-forwarded-for"], "2001:2::4", "{v}");
    // No preserve_host: the upstream's own authority, bracketed.
    assert_eq!(v["headers"]["host"], "[2001:2::3]:8001", "{v}");
    assert_eq!(v["headers"]["x-forwarded-host"], "app", "{v}");

    // TLS: the name resolves to the IPv6 VIP, the chain verifies against the test root.
    let resolve = format!("app:8443:[{VIP6}]");
    let root_arg = root.display().to_string();
    let tls = curl(
        &lab,
        &[
            "--cacert",
            &root_arg,
            "--resolve",
            &resolve,
            "https://app:8443/who",
        ],
    );
    let v = seen(&tls);
    assert_eq!(v["backend"], "a", "{}", proxy_kit::said(&tls));
    assert_eq!(v["headers"]["x-forwarded-for"], "2001:2::4", "{v}");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");

    // Allow lists by IPv6 prefix.
    let code = |path: &str| {
        let out = curl(
            &lab,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: app",
                &format!("{plain}{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(code("/mine"), "200", "2001:2::4/128");
    assert_eq!(code("/theirs"), "200", "2001:2::/120");
    assert_eq!(code("/elsewhere"), "403", "2001:db8::/32");

    // A redirect to HTTPS names the IPv6 host in brackets.
    let out = curl(
        &lab,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}",
            &format!("http://[{VIP6}]:8081/x?y=1"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("https://[{VIP6}]/x?y=1")
    );

    // The access log has the client's IPv6 address, Apache style.
    let log = std::fs::read_to_string(dir.join("access0.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.starts_with("2001:2::4 - - [")),
        "{log}"
    );

    // The master stops: the backup takes the VIP and answers.
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
    b.wait_for("=> MASTER", 1, Duration::from_secs(3)).unwrap();
    wait_until("an answer from the backup", || {
        seen(&curl(&lab, &["-H", "Host: app", &format!("{plain}/who")]))["backend"] == "a"
    });
    let tls = curl(
        &lab,
        &[
            "--cacert",
            &root_arg,
            "--resolve",
            &resolve,
            "https://app:8443/who",
        ],
    );
    assert_eq!(seen(&tls)["backend"], "a", "{}", proxy_kit::said(&tls));
    assert!(b
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
    drop(backends);
}
