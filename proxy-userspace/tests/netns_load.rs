//! Failover under load (short form; the long one with keepalived + nginx beside it is
//! `cargo xtask bench failover`): wrk keeps 32 connections busy against the VIP while the
//! master stops gracefully, is killed, or its host dies. On a graceful stop no request may
//! fail; otherwise only requests on connections open to the old master may (at most 32), and
//! the VIP answers again at once.
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110) + backend 127.0.0.1:8081 ─┐
//!   h1 198.18.0.2 hapd B (100) + backend 127.0.0.1:8081 ─┼─ bridge   VIP 198.18.0.100:8080
//!   h2 198.18.0.3 client (wrk)                          ─┘
//! ```
mod proxy_kit;

use std::{path::Path, time::Duration};

use hapd_lab::{
    proc::Proc,
    wrk::{self, Wrk},
    Lab,
};
use nix::sys::signal::Signal;
use proxy_kit::{answered_by, wait_until, LabBackends};

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";
const CONNECTIONS: u64 = 32;

fn node(lab: &mut Lab, i: usize, priority: u8) -> String {
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
advert_interval = "10ms"
virtual_ips = ["{VIP}/24"]
peers = ["{peer}"]

[[listener]]
name = "web"
bind = ["{VIP}:8080"]

[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

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

enum Fault {
    Graceful,
    Kill9,
    HostCrash,
}

/// Runs wrk from h2 for 4 s, applies `fault` to A after 1 s; wrk's counts.
fn under_load(fault: Fault) -> (Wrk, String) {
    let mut lab = Lab::new(3).unwrap();
    let _b0 = LabBackends::start(&lab, 0, &[("127.0.0.1:8081", "a")]);
    let _b1 = LabBackends::start(&lab, 1, &[("127.0.0.1:8081", "b")]);
    let (ca, cb) = (node(&mut lab, 0, 110), node(&mut lab, 1, 100));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(5)).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    let url = format!("http://{VIP}:8080/who");
    wait_until("an answer from a", || {
        answered_by(&lab, 2, &url, "app").as_deref() == Some("a")
    });
    let wrk = lab
        .spawn(
            2,
            &[
                "wrk",
                "-t1",
                &format!("-c{CONNECTIONS}"),
                "-d4s",
                "--timeout",
                "1s",
                "-H",
                "Host: app",
                &url,
            ],
        )
        .unwrap();
    let mut wrk = Proc::new("wrk", wrk);
    std::thread::sleep(Duration::from_secs(1));
    match fault {
        Fault::Graceful => {
            a.signal(Signal::SIGTERM).unwrap();
        }
        Fault::Kill9 => {
            a.stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
        }
        Fault::HostCrash => {
            // A's cable is pulled: its port on the bridge goes down, A notices nothing.
            let st = std::process::Command::new("ip")
                .args(["-n", lab.switch(), "link", "set", "p0", "down"])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    b.wait_for("=> MASTER", 1, Duration::from_secs(3)).unwrap();
    // The VIP answers again at once (the new master's proxy), long before wrk ends.
    wait_until("an answer from b", || {
        answered_by(&lab, 2, &url, "app").as_deref() == Some("b")
    });
    let st = wrk.wait(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", wrk.lines().join("\n"));
    let text = wrk.lines().join("\n");
    let w = wrk::parse(&text);
    let _ = a.stop(Signal::SIGTERM, Duration::from_secs(5));
    let _ = b.stop(Signal::SIGTERM, Duration::from_secs(5));
    eprintln!("{text}");
    assert!(w.requests > 1000, "{text}");
    (w, text)
}

#[test]
fn a_graceful_stop_under_load_fails_no_request() {
    let (w, text) = under_load(Fault::Graceful);
    assert_eq!((w.failed, w.refused), (0, 0), "{text}");
}

/// Each of wrk's connections loses the request it had open on A when A died, and nothing
/// more: the kernel closes a dead process's client connections before its listening sockets,
/// and wrk reconnects at once, but the guard (which stays attached: its link is pinned)
/// drops connection requests from the moment A's main thread exits (`hapd_exit`), so they are
/// retried and reach B instead of being taken by the closing listener and reset (before that
/// watch, 32 to 66 failed here).
#[test]
fn a_killed_master_fails_at_most_the_requests_open_on_it() {
    let (w, text) = under_load(Fault::Kill9);
    assert!(w.failed + w.refused <= CONNECTIONS, "{text}");
}

#[test]
fn a_dead_host_fails_at_most_the_requests_open_on_it() {
    let (w, text) = under_load(Fault::HostCrash);
    assert!(w.failed + w.refused <= CONNECTIONS, "{text}");
}
