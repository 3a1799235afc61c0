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
