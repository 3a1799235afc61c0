//! VRRPv3 over IPv6 in the lab: two hapd nodes elect on IPv6, the backup takes over when the
//! master's host dies (the client follows the unsolicited neighbour advertisement within a
//! second), the master preempts back, stops gracefully, heals a split brain and cleans a stale
//! address after kill -9; IPv4 and IPv6 instances side by side; a forged IPv6 advert flood
//! changes nothing.
//!
//! ```text
//!   h0 2001:2::1 (fe80::…) hapd A (110) ──┐
//!   h1 2001:2::2 (fe80::…) hapd B (100) ──┼── bridge      VIP 2001:2::100
//!   h2 2001:2::3           client ────────┘
//! ```
use std::{
    path::Path,
    time::{Duration, Instant},
};

use hapd_lab::{frames::Advert, proc::Proc, Lab};
use nix::sys::signal::Signal;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP6: &str = "2001:2::100";
const VIP4: &str = "198.18.0.100";

/// Node `i`'s config: an IPv6 instance (VRID 51) whose peers are the other nodes' link-local
/// addresses, and `extra` after it.
fn config(lab: &mut Lab, i: usize, priority: u8, nodes: usize, extra: &str) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peers: Vec<String> = (0..nodes)
        .filter(|&j| j != i)
        .map(|j| format!("\"{}\"", lab.link_local(j, "eth0").unwrap()))
        .collect();
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
peers = [{}]
{extra}
"#,
        pin_dir.display(),
        peers.join(", ")
    )
}

fn has_vip6(lab: &Lab, i: usize) -> bool {
    let out = lab
        .exec(i, &["ip", "-6", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet6 {VIP6}/64"))
}

fn client_reaches(lab: &Lab, addr: &str, wait: &str) -> bool {
    lab.exec(2, &["ping", "-c", "1", "-W", wait, addr]).is_ok()
}

/// The MAC of host `i`'s eth0.
fn mac(lab: &Lab, i: usize) -> String {
    let out = lab
        .exec(i, &["cat", "/sys/class/net/eth0/address"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The Ethernet address the client's neighbour cache holds for the IPv6 VIP.
fn client_neighbour_mac(lab: &Lab) -> String {
    let out = lab.exec(2, &["ip", "-6", "neigh", "show", VIP6]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

fn wait_master(p: &mut Proc, count: usize) {
    p.wait_for("=> MASTER", count, Duration::from_secs(5))
        .unwrap();
}

fn start_pair(lab: &mut Lab) -> (Proc, Proc, String) {
    let (ca, cb) = (config(lab, 0, 110, 2, ""), config(lab, 1, 100, 2, ""));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    (a, b, ca)
}

#[test]
fn ipv6_pair_elects_fails_over_preempts_and_cleans_up() {
    let mut lab = Lab::new(3).unwrap();
    let (mut a, mut b, ca) = start_pair(&mut lab);
    let ll0 = lab.link_local(0, "eth0").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        b.grep("=> MASTER").is_empty(),
        "B must stay backup:\n{}",
        b.lines().join("\n")
    );
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    assert!(client_reaches(&lab, VIP6, "1"));
    assert_eq!(client_neighbour_mac(&lab), mac(&lab, 0));
    // Status: the family, and B knows A by its link-local address.
    let st = lab.hapd_status(1, Path::new(HAPD)).unwrap();
    let inst = &st["instances"][0];
    assert_eq!(inst["family"], "IPv6", "{st}");
    assert_eq!(inst["state"], "BACKUP", "{st}");
    assert_eq!(
        inst["master"].as_str().unwrap_or_default(),
        format!("{ll0} (priority 110)"),
        "{st}"
    );
    assert!(
        inst["kernel_timer"]
            .as_str()
            .unwrap_or_default()
            .starts_with("in use"),
        "B sleeps on its guard's timer: {st}"
    );

    // A's host dies (its switch port goes dark): B takes over, and its unsolicited neighbour
    // advertisements move the client to it within a second.
    lab.set_port(0, false).unwrap();
    let t0 = Instant::now();
    while !client_reaches(&lab, VIP6, "0.1") {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the client did not reach the backup within 1 s:\n{}",
            b.lines().join("\n")
        );
    }
    let took = t0.elapsed();
    assert_eq!(client_neighbour_mac(&lab), mac(&lab, 1), "after {took:?}");
    assert_eq!(b.grep("=> MASTER (master down)").len(), 1);
    assert!(has_vip6(&lab, 1));

    // The host comes back: A (its link was down: FAULT) recovers and preempts; the client
    // follows A's advertisements back.
    lab.set_port(0, true).unwrap();
    a.wait_for("FAULT => BACKUP (recovered)", 1, Duration::from_secs(5))
        .unwrap();
    wait_master(&mut a, 2);
    b.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    assert_eq!(client_neighbour_mac(&lab), mac(&lab, 0));
    assert!(client_reaches(&lab, VIP6, "1"));

    // Graceful stop of A: priority 0, B takes over after Skew_Time.
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    wait_master(&mut b, 2);
    assert_eq!(
        b.grep("=> MASTER (master resigned (priority 0))").len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    assert!(!has_vip6(&lab, 0), "A removed the VIP when it stopped");
    assert!(client_reaches(&lab, VIP6, "1"));

    // A comes back and preempts; then kill -9: no goodbye, B takes over after
    // Master_Down_Interval and A's VIP stays behind until A starts again.
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    a.stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    wait_master(&mut b, 3);
    assert!(has_vip6(&lab, 0), "kill -9 leaves the VIP on A");
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    assert_eq!(
        a.grep("removed 1 virtual address(es) left on eth0 by an earlier run")
            .len(),
        1,
        "{}",
        a.lines().join("\n")
    );
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    assert!(client_reaches(&lab, VIP6, "1"));
    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap()
            .success());
    }
    assert!(!has_vip6(&lab, 0) && !has_vip6(&lab, 1));
}

#[test]
fn ipv6_split_brain_heals_with_a_neighbour_advertisement() {
    let mut lab = Lab::new(3).unwrap();
    let (_a, mut b, _) = start_pair(&mut lab); // _a: A must keep running
                                               // The client knows A (an unsolicited advertisement updates a neighbour entry; it
                                               // creates none).
    assert!(client_reaches(&lab, VIP6, "1"));
    assert_eq!(client_neighbour_mac(&lab), mac(&lab, 0));
    // Cut the link between the nodes only: isolated bridge ports cannot reach each other, but
    // both still reach the client.
    lab.isolate_port(0, true).unwrap();
    lab.isolate_port(1, true).unwrap();
    wait_master(&mut b, 1);
    assert!(
        has_vip6(&lab, 0) && has_vip6(&lab, 1),
        "split brain: both hold the VIP"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        client_neighbour_mac(&lab),
        mac(&lab, 1),
        "the client follows B's unsolicited neighbour advertisement"
    );
    assert!(client_reaches(&lab, VIP6, "1"));
    // Heal: one master is left within an advert interval or two, and A re-announces the
    // address (neighbour advertisements with the override flag): the client follows.
    lab.isolate_port(0, false).unwrap();
    lab.isolate_port(1, false).unwrap();
    b.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    assert_eq!(
        client_neighbour_mac(&lab),
        mac(&lab, 0),
        "the client follows the neighbour advertisement"
    );
    assert!(client_reaches(&lab, VIP6, "1"));
}

/// One daemon runs an IPv4 and an IPv6 instance with the same VRID (each family has its own
/// VRID space): both elect, both addresses are served, status shows each family.
#[test]
fn ipv4_and_ipv6_instances_side_by_side() {
    let mut lab = Lab::new(3).unwrap();
    let v4 = |i: usize, priority: u8| {
        format!(
            "[[vrrp]]\nname = \"VI_4\"\ninterface = \"eth0\"\nvrid = 51\npriority = {priority}\n\
             advert_interval = \"50ms\"\nvirtual_ips = [\"{VIP4}/24\"]\npeers = [\"198.18.0.{}\"]\n",
            2 - i
        )
    };
    let ca = config(&mut lab, 0, 110, 2, &v4(0, 110));
    let cb = config(&mut lab, 1, 100, 2, &v4(1, 100));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.grep("=> MASTER").is_empty(), "{}", b.lines().join("\n"));
    assert!(client_reaches(&lab, VIP6, "1") && client_reaches(&lab, VIP4, "1"));
    let st = lab.hapd_status(0, Path::new(HAPD)).unwrap();
    let families: Vec<(String, String, String)> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["family"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        families,
        [
            ("VI_6".into(), "IPv6".into(), "MASTER".into()),
            ("VI_4".into(), "IPv4".into(), "MASTER".into())
        ],
        "{st}"
    );
}

/// A host that is no peer floods forged IPv6 adverts (priority 255, from its own link-local
/// address, and from the master's with the wrong hop limit): the guard drops them all and
/// nobody moves.
#[test]
fn a_forged_ipv6_advert_flood_changes_nothing() {
    let mut lab = Lab::new(3).unwrap();
    let (a, b, _) = start_pair(&mut lab);
    let me = lab.link_local(2, "eth0").unwrap().octets();
    let ll0 = lab.link_local(0, "eth0").unwrap().octets();
    let forged = Advert {
        priority: 255,
        interval: 5,
        ..Advert::v3_ipv6(me)
    };
    let routed = Advert {
        priority: 255,
        ttl: 64,
        ..Advert::v3_ipv6(ll0)
    };
    let sent = lab
        .flood(2, &[forged.frame(), routed.frame()], Duration::from_secs(2))
        .unwrap();
    assert!(sent > 1000, "{sent} frames");
    std::thread::sleep(Duration::from_millis(200));
    for (p, n) in [(&a, 1), (&b, 0)] {
        assert_eq!(p.grep("=> MASTER").len(), n, "{}", p.lines().join("\n"));
        assert!(p.grep("=> BACKUP").len() <= 1, "{}", p.lines().join("\n"));
    }
    assert!(has_vip6(&lab, 0) && !has_vip6(&lab, 1));
    let st = lab.hapd_status(1, Path::new(HAPD)).unwrap();
    let c = &st["guard"]["counters"];
    let (not_peer, ttl) = (
        c["drop_not_peer"].as_u64().unwrap_or(0),
        c["drop_ttl"].as_u64().unwrap_or(0),
    );
    assert!(not_peer > 500 && ttl > 500, "{st}");
}
