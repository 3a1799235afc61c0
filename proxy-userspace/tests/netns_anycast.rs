//! `[[anycast]]` with real BIRD 2: a router and two nodes, each node running BIRD and hapd
//! (its proxy on the anycast address, a backend that names the node). The router learns the
//! prefix from every node that announces it (eBGP with BFD, `merge paths`: one kernel route
//! with a nexthop per node) and loses it when a node's proxy turns unhealthy, when hapd stops
//! (before its proxy drains), and gets it back after rise and hold-down. The two nodes are also
//! a VRRP pair on the same interface (one guard for both).
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

use hapd_lab::{
    bird::{self, birdc, Bird},
    host_addr,
    proc::Proc,
    Lab,
};
use nix::sys::signal::Signal;
use proxy_kit::LabBackends;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const PREFIX: std::net::Ipv4Addr = bird::PREFIX;

/// The router's BIRD with a session to nodes 1..=n.
fn router_bird(n: usize) -> String {
    let nodes: Vec<_> = (1..=n).map(host_addr).collect();
    bird::router_config(host_addr(0), &nodes)
}

/// Node `i`'s BIRD.
fn node_bird(i: usize) -> String {
    bird::node_config(host_addr(i), Some(host_addr(0)), "hapd_web")
}

/// A node's BIRD without a router (the static protocol is what counts).
fn alone_bird() -> String {
    bird::node_config(host_addr(0), None, "hapd_web")
}

/// The two-node lab's group.
const TWO: [&str; 2] = ["198.18.0.2", "198.18.0.3"];

fn hapd_config(lab: &mut Lab, i: usize, socket: &Path) -> String {
    hapd_config_for(lab, i, socket, &TWO)
}

/// Node `i`'s config in a group of `peers`, its upstream `servers` and `backups`.
fn node_config(
    lab: &mut Lab,
    i: usize,
    socket: &Path,
    peers: &[&str],
    servers: &[String],
    backups: &[String],
) -> String {
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    bird::hapd_node_config(
        lab,
        i,
        &bird::Node {
            servers,
            backups,
            upstream_extra: "",
            peers: &peers,
            bird_socket: socket,
            xdp: "generic",
        },
    )
    .unwrap()
}

/// Node `i`'s config in a group of `peers`, in front of its backend on 127.0.0.1:8081.
fn hapd_config_for(lab: &mut Lab, i: usize, socket: &Path, peers: &[&str]) -> String {
    node_config(lab, i, socket, peers, &["127.0.0.1:8081".into()], &[])
}

/// BIRD in host `i` with `config`; its control socket once it answers.
fn start_bird(lab: &Lab, i: usize, config: &str) -> (Proc, PathBuf) {
    let b = Bird::start(lab, i, config).unwrap();
    (b.proc, b.socket)
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
    bird::nexthops(lab, 0)
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
    let (_router, rsock) = start_bird(&lab, 0, &router_bird(2));
    let b1 = LabBackends::start(&lab, 1, &[("127.0.0.1:8081", "n1")]);
    let _b2 = LabBackends::start(&lab, 2, &[("127.0.0.1:8081", "n2")]);
    let mut birds = Vec::new();
    let mut nodes = Vec::new();
    for i in [1usize, 2] {
        let (p, sock) = start_bird(&lab, i, &node_bird(i));
        birds.push(p);
        // The nodes are also a VRRP pair on the same interface: one guard program serves
        // both the instance and the group.
        let cfg = format!(
            "{}\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {}\n\
             advert_interval = \"100ms\"\nvirtual_ips = [\"198.18.0.100/24\"]\n\
             peers = [\"{}\"]\nxdp = \"generic\"\n",
            hapd_config(&mut lab, i, &sock),
            if i == 1 { 110 } else { 100 },
            host_addr(3 - i),
        );
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
    // The VRRP pair beside it: node 1 master, node 2 backup hearing it through the guard.
    let vrrp = |i: usize| lab.hapd_status(i, Path::new(HAPD)).unwrap();
    wait("node 1 MASTER of VI_1", Duration::from_secs(5), || {
        vrrp(1)["instances"][0]["state"] == "MASTER"
    });
    let st2 = vrrp(2);
    assert_eq!(st2["instances"][0]["state"], "BACKUP", "{st2}");
    let heard = st2["guard"]["counters"]["accepted"].as_u64().unwrap_or(0);
    assert!(heard > 0, "node 2's guard accepted no advert: {st2}");
    let vrrp_changes = |nodes: &[Proc]| -> Vec<Vec<String>> {
        nodes
            .iter()
            .map(|n| n.grep("VI_1: "))
            .map(|v| v.into_iter().filter(|l| l.contains(" => ")).collect())
            .collect()
    };
    let settled = vrrp_changes(&nodes);
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

    // Through every anycast change above, the VRRP pair held: no state change on either.
    assert_eq!(
        vrrp_changes(&nodes),
        settled,
        "VRRP state changes beside the anycast group"
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

/// Connections that an ECMP change sends to another node survive it (second chance), in a
/// lab shaped as the issue asks: a router running BIRD (eBGP with BFD at 50 ms x 3 to each
/// node, `merge paths`, plain hash-threshold ECMP on the L4 hash), three nodes each running
/// BIRD, hapd and a backend that names the node, and a client behind the router that keeps 30
/// connections, each sending a request every 50 ms, and opens a new one every 20 ms.
///
/// ```text
///   client h4 198.18.100.2 ── router h0 198.18.100.1 / 198.18.0.1 ─┬─ bridge ─ node h1 198.18.0.2
///                                                                   ├─ node h2 198.18.0.3
///                                                                   └─ node h3 198.18.0.4
/// ```
#[test]
fn connections_survive_ecmp_changes_through_second_chance() {
    const PEERS: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];
    let mut lab = Lab::new(5).unwrap();
    bird::router_and_client(&lab, 3).unwrap();
    let router = router_bird(3);
    let (_router, rsock) = start_bird(&lab, 0, &router);
    let mut backends = Vec::new();
    let mut birds = Vec::new();
    let mut nodes = Vec::new();
    let mut configs = Vec::new();
    for i in 1..=3usize {
        // Each node's backend answers on the node's address: its own proxy's server, and a
        // backup server of the other nodes' proxies.
        let own = format!("{}:8081", PEERS[i - 1]);
        backends.push(LabBackends::start(&lab, i, &[(&own, &format!("node-{i}"))]));
        let (p, sock) = start_bird(&lab, i, &node_bird(i));
        birds.push(p);
        let backups: Vec<String> = PEERS
            .iter()
            .filter(|p| **p != PEERS[i - 1])
            .map(|p| format!("{p}:8081"))
            .collect();
        let cfg = node_config(
            &mut lab,
            i,
            &sock,
            &PEERS,
            std::slice::from_ref(&own),
            &backups,
        );
        nodes.push(lab.start_hapd(i, Path::new(HAPD), &cfg).unwrap());
        configs.push(cfg);
    }
    let all = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];
    let took = wait("three nexthops", Duration::from_secs(15), || {
        nexthops(&lab) == all
    });
    eprintln!("announced by all three nodes {took:?} after they started");
    for i in 1..=3 {
        let on = |lab: &Lab| {
            anycast_status(lab, i)["second_chance"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let t0 = Instant::now();
        while !on(&lab).starts_with("on: 2 of 2") {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "node {i}: second chance: {}",
                on(&lab)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pool = hapd_lab::pool::Pool::start(
        &lab,
        4,
        hapd_lab::pool::Shape {
            addr: format!("{PREFIX}:8080").parse().unwrap(),
            host: "app".into(),
            path: "/who".into(),
            connections: 30,
            every: Duration::from_millis(50),
            new_every: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        },
    )
    .unwrap();
    let seen = pool.seen.clone();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=3 {
        assert!(
            seen.by(&format!("node-{i}")) > 0,
            "node {i} served nothing: {}",
            seen.report()
        );
    }
    let failed = || seen.failed.load(Ordering::Relaxed);
    assert_eq!(failed(), 0, "{}", seen.report());

    let forwarded = |lab: &Lab| -> u64 {
        (1..=3)
            .map(|i| {
                lab.hapd_status(i, Path::new(HAPD)).unwrap()["guard"]["counters"]["flow_forwarded"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };

    // Node 2's upstream fails: the router's BGP session to it goes down (the router's side of
    // the uplink), while the node and its segment to the other nodes stay. The router takes
    // its route away and moves the flows of every node; second chance brings each back to
    // the node that holds it, and none fails.
    birdc(&lab, 0, &rsock, &["disable", "node2"]);
    let took = wait("node 2 withdrawn", Duration::from_secs(1), || {
        nexthops(&lab) == ["198.18.0.2", "198.18.0.4"]
    });
    eprintln!("node 2's route withdrawn {took:?} after its uplink failed");
    std::thread::sleep(Duration::from_secs(1));
    let sent_on = forwarded(&lab);
    eprintln!("{sent_on} segment(s) sent on by second chance");
    assert!(
        sent_on > 0,
        "the ECMP change moved no flow: {}",
        seen.report()
    );
    assert_eq!(failed(), 0, "uplink failure: {}", seen.report());
    // The uplink is back: node 2 rejoins the ECMP set, and none fails.
    birdc(&lab, 0, &rsock, &["enable", "node2"]);
    wait("node 2 back", Duration::from_secs(10), || {
        nexthops(&lab) == all
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(failed(), 0, "node 2 rejoining: {}", seen.report());

    // Node 2's upstream fails (its backend's health check fails): its proxy turns unhealthy
    // (a backup does not count) and the route is withdrawn within 1 s. The connections it
    // still holds, those the router sends elsewhere coming back by second chance, are served
    // by its backup servers (the other nodes' backends), and none fails.
    let held = seen.held_by("node-2");
    backends[1].healthy[0].store(false, Ordering::Relaxed);
    let took = wait("node 2 withdrawn", Duration::from_secs(1), || {
        nexthops(&lab) == ["198.18.0.2", "198.18.0.4"]
    });
    eprintln!(
        "node 2's route withdrawn {took:?} after its upstream failed; it held {held} connection(s)"
    );
    let st = lab.hapd_status(2, Path::new(HAPD)).unwrap();
    assert_eq!(st["proxy"]["healthy"], false, "{st}");
    std::thread::sleep(Duration::from_millis(300));
    let by_node2 = seen.by("node-2");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(failed(), 0, "upstream failure: {}", seen.report());
    assert_eq!(
        seen.by("node-2"),
        by_node2,
        "node 2's backend answered after it failed: {}",
        seen.report()
    );
    assert_eq!(seen.held_by("node-2"), 0, "{}", seen.report());
    let st = lab.hapd_status(2, Path::new(HAPD)).unwrap();
    assert!(
        st["proxy"]["connections"].as_u64().unwrap_or(0) > 0 || held == 0,
        "node 2 held {held} connection(s) and now none: {st}"
    );
    backends[1].healthy[0].store(true, Ordering::Relaxed);
    wait("node 2 back", Duration::from_secs(5), || {
        nexthops(&lab) == all
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(failed(), 0, "node 2 rejoining: {}", seen.report());

    // Node 3 stops gracefully: withdrawn first, its connections end at request boundaries,
    // and none fails; started again, it rejoins, and none fails.
    nodes[2].signal(Signal::SIGTERM).unwrap();
    let st = nodes[2].wait(Duration::from_secs(15)).unwrap();
    assert!(st.success(), "{}", nodes[2].lines().join("\n"));
    assert_eq!(nexthops(&lab), ["198.18.0.2", "198.18.0.3"]);
    assert_eq!(failed(), 0, "graceful stop: {}", seen.report());
    nodes[2] = lab.start_hapd(3, Path::new(HAPD), &configs[2]).unwrap();
    wait("node 3 back", Duration::from_secs(5), || {
        nexthops(&lab) == all
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(failed(), 0, "node 3 rejoining: {}", seen.report());

    // Node 1's host drops off the network (its switch port goes down; the host keeps its
    // addresses and routes, as a host cut off or hung does): only the connections it held
    // fail, and new connections succeed again within 300 ms.
    let held = seen.held_by("node-1");
    let killed = seen.elapsed();
    lab.set_port(1, false).unwrap();
    let took = wait(
        "node 1 gone from the router",
        Duration::from_secs(2),
        || nexthops(&lab) == ["198.18.0.3", "198.18.0.4"],
    );
    eprintln!("node 1's route gone {took:?} after its link went down");
    // The other nodes leave it out of their walks once it stops answering.
    for i in [2, 3] {
        let t = wait("node 1 left out", Duration::from_secs(1), || {
            anycast_status(&lab, i)["second_chance"]
                .as_str()
                .is_some_and(|s| s.contains("198.18.0.2: no answer"))
        });
        eprintln!("node {i} left node 1 out {t:?} after the route was gone");
    }
    std::thread::sleep(hapd_lab::pool::CONNECT_TIMEOUT + Duration::from_secs(2));
    let lost = failed();
    // New connections that reached node 1 before the router left it out are its too.
    let new_lost = seen
        .new_connections_since(killed)
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .count() as u64;
    eprintln!(
        "node 1's host died holding {held} connection(s): {lost} request(s) failed, \
         {new_lost} of them on new connections"
    );
    assert!(
        lost.saturating_sub(new_lost) <= held,
        "more kept-alive connections failed than node 1 held ({held}): {}",
        seen.report()
    );
    let late = seen
        .new_connections_since(killed)
        .into_iter()
        .filter(|(at, took, ok)| !ok || *took > Duration::from_millis(500) && *at > killed)
        .map(|(at, ..)| at - killed)
        .max();
    eprintln!("new connections slow or failing until {late:?} after the link went down");
    assert!(
        late.is_none_or(|l| l <= Duration::from_millis(300)),
        "new connections started {late:?} after the host died still failed or waited: {}",
        seen.report()
    );
    // Node 1 comes back: it rejoins the ECMP set, serves again, and nothing more fails. The
    // wait covers the pool's longest new connection (connect timeout and request timeout),
    // so that a connection lost at the return is counted here.
    lab.set_port(1, true).unwrap();
    wait("node 1 back", Duration::from_secs(10), || {
        nexthops(&lab) == all
    });
    let by_node1 = seen.by("node-1");
    std::thread::sleep(hapd_lab::pool::CONNECT_TIMEOUT + Duration::from_secs(2));
    assert_eq!(failed(), lost, "node 1 rejoining: {}", seen.report());
    assert!(
        seen.by("node-1") > by_node1,
        "node 1 serves nothing since it returned: {}",
        seen.report()
    );
    let seen = pool.stop();
    eprintln!("pool: {}", seen.report());
    for n in &mut nodes {
        let _ = n.stop(Signal::SIGTERM, Duration::from_secs(10));
    }
    for mut b in birds {
        let _ = b.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
}
