//! `[[anycast]]` with real BIRD 2: a router and two nodes, each node running BIRD and hapd
//! (its proxy on the anycast address, a backend that names the node). The router learns the
//! prefix from every node that announces it (eBGP with BFD, `merge paths`: one kernel route
//! with a nexthop per node) and loses it when a node's proxy turns unhealthy, when hapd stops
//! (before its proxy drains), and gets it back after rise and hold-down.
//!
//! ```text
//!   h0 198.18.0.1 router: BIRD (AS 65000, BFD, merge paths), the client ─┐
//!   h1 198.18.0.2 node1: BIRD (AS 65001) + hapd + backend "n1"          ─┼─ bridge
//!   h2 198.18.0.3 node2: BIRD (AS 65001) + hapd + backend "n2"          ─┘
//!   anycast 198.18.10.100/32, proxy on :8080
//! ```
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;
use proxy_kit::LabBackends;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const PREFIX: &str = "198.18.10.100";

fn router_bird() -> String {
    "log stderr all;
router id 198.18.0.1;
protocol device { scan time 10; }
protocol bfd { interface \"eth0\" { interval 50 ms; multiplier 3; }; }
protocol kernel {
  ipv4 { import none; export where source = RTS_BGP; };
  merge paths yes;
}
template bgp node {
  local 198.18.0.1 as 65000;
  bfd on;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 { import where net = 198.18.10.100/32; export none; };
}
protocol bgp node1 from node { neighbor 198.18.0.2 as 65001; }
protocol bgp node2 from node { neighbor 198.18.0.3 as 65001; }
"
    .into()
}

fn node_bird(i: usize) -> String {
    let me = format!("198.18.0.{}", i + 1);
    format!(
        "log stderr all;
router id {me};
protocol device {{ scan time 10; }}
protocol bfd {{ interface \"eth0\" {{ interval 50 ms; multiplier 3; }}; }}
protocol static hapd_web {{
  disabled;
  ipv4;
  route {PREFIX}/32 blackhole;
}}
protocol bgp uplink {{
  local {me} as 65001;
  neighbor 198.18.0.1 as 65000;
  bfd on;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ import none; export where proto = \"hapd_web\"; }};
}}
"
    )
}

/// A node's BIRD without a router (the static protocol is what counts).
fn alone_bird() -> String {
    let c = node_bird(0);
    c[..c.find("protocol bgp").unwrap()].to_owned()
}

fn hapd_config(lab: &mut Lab, i: usize, socket: &Path) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let control = lab.dir().join(format!("h{i}.sock"));
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"
admin = "198.18.0.{}:9100"
control_socket = "{}"

[server]
drain_timeout = "2s"

[[listener]]
name = "web"
bind = ["{PREFIX}:8080"]

[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]
health_check = {{ path = "/health", interval = "100ms", timeout = "100ms", fall = 1, rise = 1 }}

[[vhost]]
server_names = ["app"]
listeners = ["web"]
  [[vhost.route]]
  prefix = "/"
  upstream = "app"

[[anycast]]
name = "web"
prefixes = ["{PREFIX}/32"]
interface = "eth0"
peers = ["198.18.0.2", "198.18.0.3"]
bird_socket = "{}"
bird_protocol = "hapd_web"
track_proxy = true
rise = "300ms"
hold_down = "1s"
"#,
        pin_dir.display(),
        i + 1,
        control.display(),
        socket.display(),
    )
}

/// BIRD in host `i` with `config`; its control socket once it answers.
fn start_bird(lab: &Lab, i: usize, config: &str) -> (Proc, PathBuf) {
    let cfg = lab.dir().join(format!("bird{i}.conf"));
    let sock = lab.dir().join(format!("bird{i}.ctl"));
    let pid = lab.dir().join(format!("bird{i}.pid"));
    std::fs::write(&cfg, config).unwrap();
    let p = Proc::new(
        "bird",
        lab.spawn(
            i,
            &[
                "bird",
                "-f",
                "-c",
                cfg.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
                "-P",
                pid.to_str().unwrap(),
            ],
        )
        .unwrap(),
    );
    wait("BIRD answers", Duration::from_secs(5), || {
        birdc(lab, i, &sock, &["show", "status"]).contains("Daemon is up")
    });
    (p, sock)
}

fn birdc(lab: &Lab, i: usize, sock: &Path, args: &[&str]) -> String {
    let mut argv = vec!["birdc", "-s", sock.to_str().unwrap()];
    argv.extend_from_slice(args);
    lab.command(i, &argv)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn wait(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// The router's kernel nexthops for the prefix.
fn nexthops(lab: &Lab) -> Vec<String> {
    let out = lab
        .command(0, &["ip", "route", "show", &format!("{PREFIX}/32")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut hops: Vec<String> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn anycast_status(lab: &Lab, i: usize) -> serde_json::Value {
    lab.hapd_status(i, Path::new(HAPD)).unwrap()["anycast"][0].clone()
}

#[test]
fn the_prefix_is_announced_while_the_proxy_is_healthy_and_withdrawn_first_on_stop() {
    let mut lab = Lab::new(3).unwrap();
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
    ] {
        lab.exec(0, &["sysctl", "-q", "-w", &format!("{k}={v}")])
            .unwrap();
    }
    let (_router, rsock) = start_bird(&lab, 0, &router_bird());
    let b1 = LabBackends::start(&lab, 1, &[("127.0.0.1:8081", "n1")]);
    let _b2 = LabBackends::start(&lab, 2, &[("127.0.0.1:8081", "n2")]);
    let mut birds = Vec::new();
    let mut nodes = Vec::new();
    for i in [1usize, 2] {
        let (p, sock) = start_bird(&lab, i, &node_bird(i));
        birds.push(p);
        let cfg = hapd_config(&mut lab, i, &sock);
        nodes.push(lab.start_hapd(i, Path::new(HAPD), &cfg).unwrap());
    }
    // Both nodes announce once their proxies have been healthy for rise: the router has one
    // route with a nexthop per node, and its clients reach both.
    let took = wait("two nexthops", Duration::from_secs(10), || {
        nexthops(&lab) == ["198.18.0.2", "198.18.0.3"]
    });
    eprintln!("announced by both nodes {took:?} after they started");
    let st = anycast_status(&lab, 1);
    assert_eq!(st["announced"], true, "{st}");
    assert_eq!(st["state"], "announced", "{st}");
    assert!(st["bird"].as_str().unwrap_or("").contains("BIRD"), "{st}");
    let mut seen = std::collections::BTreeSet::new();
    let url = format!("http://{PREFIX}:8080/who");
    for _ in 0..40 {
        if let Some(b) = proxy_kit::answered_by(&lab, 0, &url, "app") {
            seen.insert(b);
        }
    }
    assert_eq!(
        seen.iter().map(String::as_str).collect::<Vec<_>>(),
        ["n1", "n2"],
        "connections reach both nodes"
    );

    // Node 1's upstream fails: its proxy turns unhealthy and it withdraws at once.
    b1.healthy[0].store(false, Ordering::Relaxed);
    let took = wait("node 1 withdrawn", Duration::from_secs(1), || {
        nexthops(&lab) == ["198.18.0.3"]
    });
    eprintln!("node 1's route withdrawn {took:?} after its upstream failed");
    let st = anycast_status(&lab, 1);
    assert_eq!(st["announced"], false, "{st}");
    assert!(st["state"].as_str().unwrap().contains("unhealthy"), "{st}");
    let metrics = lab
        .command(0, &["curl", "-s", "http://198.18.0.2:9100/metrics"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("hapd_anycast_announced{group=\"web\"} 0")
            && metrics.contains("hapd_anycast_withdrawals_total{group=\"web\"} 1"),
        "{metrics}"
    );
    // Healthy again: back after the hold-down (1 s) and rise (300 ms), not before.
    let back = Instant::now();
    b1.healthy[0].store(true, Ordering::Relaxed);
    wait("node 1 back", Duration::from_secs(5), || {
        nexthops(&lab) == ["198.18.0.2", "198.18.0.3"]
    });
    assert!(
        back.elapsed() >= Duration::from_millis(300),
        "re-announced {:?} after recovering: before rise",
        back.elapsed()
    );

    // An operator drains node 1: withdrawn at once, its kept-alive connections told to close
    // at their next response; undrained, it comes back.
    let cfg1 = lab.dir().join("h1.toml");
    let drain = |verb: &str| {
        let o = lab
            .command(
                1,
                &[
                    HAPD,
                    "anycast",
                    "--config",
                    cfg1.to_str().unwrap(),
                    verb,
                    "web",
                ],
            )
            .output()
            .unwrap();
        let said = proxy_kit::said(&o);
        assert!(o.status.success(), "{verb}: {said}");
        said
    };
    let said = drain("drain");
    assert!(said.contains("withdrawn (drained)"), "{said}");
    assert_eq!(nexthops(&lab), ["198.18.0.3"], "{said}");
    let st = anycast_status(&lab, 1);
    assert!(st["state"].as_str().unwrap().contains("drained"), "{st}");
    drain("undrain");
    wait(
        "node 1 back after the drain",
        Duration::from_secs(5),
        || nexthops(&lab) == ["198.18.0.2", "198.18.0.3"],
    );

    // A graceful stop withdraws first: the route goes while hapd still runs.
    nodes[1].signal(Signal::SIGTERM).unwrap();
    let took = wait("node 2 withdrawn on stop", Duration::from_secs(2), || {
        nexthops(&lab) == ["198.18.0.2"]
    });
    eprintln!("node 2's route withdrawn {took:?} after SIGTERM");
    let st = nodes[1].wait(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", nodes[1].lines().join("\n"));
    let log = nodes[1].lines().join("\n");
    assert!(log.contains("anycast web: withdrawing"), "{log}");
    assert_eq!(
        birdc(
            &lab,
            2,
            &lab.dir().join("bird2.ctl"),
            &["show", "protocols", "hapd_web"]
        )
        .lines()
        .filter(|l| l.starts_with("hapd_web"))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())
        .collect::<Vec<_>>(),
        ["down"],
        "BIRD's protocol is disabled after the stop"
    );
    let _ = rsock;
    let _ = nodes[0].stop(Signal::SIGTERM, Duration::from_secs(10));
    for mut b in birds {
        let _ = b.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
}

#[test]
fn bird_unreachable_or_refusing_is_shown_retried_and_checked() {
    let mut lab = Lab::new(1).unwrap();
    let _b = LabBackends::start(&lab, 0, &[("127.0.0.1:8081", "n0")]);
    // No BIRD yet: hapd runs, says why the prefix is not announced, and retries.
    let sock = lab.dir().join("bird0.ctl");
    let cfg = hapd_config(&mut lab, 0, &sock);
    let mut h = lab.start_hapd(0, Path::new(HAPD), &cfg).unwrap();
    wait("an error in status", Duration::from_secs(5), || {
        anycast_status(&lab, 0)["error"]
            .as_str()
            .is_some_and(|e| e.contains("bird0.ctl"))
    });
    let st = anycast_status(&lab, 0);
    assert_eq!(st["announced"], false, "{st}");
    // `hapd check` sees it too, as a warning (BIRD may start after hapd).
    let cfg_path = lab.dir().join("h0.toml");
    let o = lab
        .command(0, &[HAPD, "check", "--config", cfg_path.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("warning: anycast web:") && out.contains("retry"),
        "{out}"
    );
    // BIRD starts (as a node without a router: BGP stays down, the protocol is what counts).
    let (mut bird, _) = start_bird(&lab, 0, &alone_bird().replace("hapd_web", "another_web"));
    // It has no protocol hapd_web: refused, by name, in status and in `hapd check`.
    wait("unknown protocol in status", Duration::from_secs(5), || {
        anycast_status(&lab, 0)["error"]
            .as_str()
            .is_some_and(|e| e.contains("no protocol named \"hapd_web\""))
    });
    let o = lab
        .command(0, &[HAPD, "check", "--config", cfg_path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("anycast web") && err.contains("hapd_web"),
        "{err}"
    );
    // The right config: announced (the static protocol up) within a retry and rise.
    let _ = bird.stop(Signal::SIGTERM, Duration::from_secs(5));
    let (mut bird, sock) = start_bird(&lab, 0, &alone_bird());
    wait("announced", Duration::from_secs(5), || {
        anycast_status(&lab, 0)["announced"] == true
    });
    let shown = birdc(&lab, 0, &sock, &["show", "protocols", "hapd_web"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("hapd_web") && l.split_whitespace().nth(3) == Some("up")),
        "{shown}"
    );
    let _ = h.stop(Signal::SIGTERM, Duration::from_secs(10));
    let shown = birdc(&lab, 0, &sock, &["show", "protocols", "hapd_web"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("hapd_web") && l.split_whitespace().nth(3) == Some("down")),
        "withdrawn at the stop: {shown}"
    );
    let _ = bird.stop(Signal::SIGTERM, Duration::from_secs(5));
}
