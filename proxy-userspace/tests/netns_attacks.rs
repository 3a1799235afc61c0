//! Attacks on a running pair from a host on the same segment that is not a peer: forged
//! priority-255 adverts (v3; v2 with the right password), a peer's address spoofed from behind
//! a router (TTL 64), and a flood. The VIP stays where it is, no state changes, every drop is
//! counted by reason, and the real master's adverts still get through.
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110) ─┐
//!   h1 198.18.0.2 hapd B (100) ─┼─ bridge     VIP 198.18.0.100
//!   h2 198.18.0.3 intruder     ─┘
//! ```
use std::{
    path::Path,
    time::{Duration, Instant},
};

use hapd_lab::{frames::Advert, proc::Proc, Lab};
use nix::sys::signal::Signal;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn config(lab: &mut Lab, i: usize, priority: u8, vrrp: &str) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peer = lab.host(1 - i).addr;
    format!(
        "[node]\nname = \"node{i}\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
         vrid = 51\npriority = {priority}\nvirtual_ips = [\"{VIP}/24\"]\npeers = [\"{peer}\"]\n{vrrp}\n",
        pin_dir.display()
    )
}

/// `hapd status --json` of host `i`.
fn status(lab: &Lab, i: usize) -> serde_json::Value {
    lab.hapd_status(i, Path::new(HAPD)).unwrap()
}

fn counter(st: &serde_json::Value, name: &str) -> u64 {
    st["guard"]["counters"][name].as_u64().unwrap()
}

fn has_vip(lab: &Lab, i: usize) -> bool {
    let out = lab.exec(i, &["ip", "-4", "addr", "show", "eth0"]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains(VIP)
}

/// A and B started, A elected; their transitions so far.
fn pair(lab: &mut Lab, vrrp: &str) -> (Proc, Proc) {
    let (ca, cb) = (config(lab, 0, 110, vrrp), config(lab, 1, 100, vrrp));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    a.wait_for("=> MASTER", 1, Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (a, b)
}

/// Nothing moved: A master once, B never, the VIP on A only.
fn unmoved(lab: &Lab, a: &Proc, b: &Proc) {
    assert_eq!(a.grep("=> MASTER").len(), 1, "{}", a.lines().join("\n"));
    assert!(a.grep("MASTER =>").is_empty(), "{}", a.lines().join("\n"));
    assert!(b.grep("=> MASTER").is_empty(), "{}", b.lines().join("\n"));
    assert!(has_vip(lab, 0) && !has_vip(lab, 1));
}

fn stop(mut a: Proc, mut b: Proc) {
    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap()
            .success());
    }
}

#[test]
fn forged_v3_adverts_and_a_spoofed_peer_change_nothing_and_are_counted() {
    let mut lab = Lab::new(3).unwrap();
    let (a, b) = pair(&mut lab, "advert_interval = \"50ms\"");
    let before = status(&lab, 1);
    let forged = Advert {
        priority: 255,
        ..Advert::v3(lab.host(2).addr.octets())
    }
    .frame();
    // A's own address, from behind a router.
    let spoofed = Advert {
        priority: 255,
        ttl: 64,
        ..Advert::v3(lab.host(0).addr.octets())
    }
    .frame();
    lab.send_frames(2, &vec![forged; 5000]).unwrap();
    lab.send_frames(2, &vec![spoofed; 5000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unmoved(&lab, &a, &b);
    let after = status(&lab, 1);
    assert_eq!(
        counter(&after, "drop_not_peer") - counter(&before, "drop_not_peer"),
        5000
    );
    assert_eq!(
        counter(&after, "drop_ttl") - counter(&before, "drop_ttl"),
        5000
    );
    // B still hears A (and only A) and wakes for none of the forgeries.
    let i = &after["instances"][0];
    assert_eq!(i["master"], "198.18.0.1 (priority 110)", "{after}");
    assert!(
        b.grep("priority 255").is_empty(),
        "{}",
        b.lines().join("\n")
    );
    stop(a, b);
}

#[test]
fn forged_v2_adverts_with_the_right_password_change_nothing() {
    let mut lab = Lab::new(3).unwrap();
    let (a, b) = pair(
        &mut lab,
        "version = 2\nadvert_interval = \"1s\"\nauth_pass = \"secret42\"",
    );
    let before = status(&lab, 1);
    let forged = Advert {
        priority: 255,
        ..Advert::v2(lab.host(2).addr.octets(), "secret42")
    }
    .frame();
    lab.send_frames(2, &vec![forged; 3000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unmoved(&lab, &a, &b);
    let after = status(&lab, 1);
    assert_eq!(
        counter(&after, "drop_not_peer") - counter(&before, "drop_not_peer"),
        3000
    );
    assert_eq!(counter(&after, "drop_auth"), counter(&before, "drop_auth"));
    stop(a, b);
}

/// Run time of every thread of `pid` so far (`/proc/PID/task/TID/schedstat`, nanoseconds).
fn cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// The short form of the flood case (the bench runs the long one): forged adverts as fast as
/// one AF_PACKET socket sends them for 2 s against a pair at 10 ms adverts.
#[test]
fn a_flood_changes_nothing_costs_the_daemons_little_and_real_adverts_get_through() {
    let mut lab = Lab::new(3).unwrap();
    let (a, b) = pair(&mut lab, "advert_interval = \"10ms\"");
    let before = status(&lab, 1);
    let (cpu_a, cpu_b) = (cpu(a.pid()), cpu(b.pid()));
    let forged = Advert {
        priority: 255,
        ..Advert::v3(lab.host(2).addr.octets())
    }
    .frame();
    let batch = vec![forged; 20_000];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(2) {
        lab.send_frames(2, &batch).unwrap();
        sent += batch.len() as u64;
    }
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let after = status(&lab, 1);
    let (used_a, used_b) = (cpu(a.pid()) - cpu_a, cpu(b.pid()) - cpu_b);
    eprintln!(
        "flood: {sent} forged adverts in {wall:?} ({:.0}/s); CPU A {used_a:?}, B {used_b:?}",
        sent as f64 / wall.as_secs_f64()
    );
    unmoved(&lab, &a, &b);
    let dropped = counter(&after, "drop_not_peer") - counter(&before, "drop_not_peer");
    assert!(dropped >= sent * 9 / 10, "{dropped} of {sent} dropped");
    // A's adverts (one every 10 ms) kept arriving at B during the flood.
    let heard = after["instances"][0]["adverts_received"].as_u64().unwrap()
        - before["instances"][0]["adverts_received"].as_u64().unwrap();
    assert!(
        heard as f64 >= wall.as_millis() as f64 / 10.0 * 0.8,
        "B heard {heard} adverts"
    );
    // The daemons never see the flood: the guard drops it in the kernel.
    for (who, used) in [("A", used_a), ("B", used_b)] {
        assert!(
            used.as_secs_f64() < 0.2 * wall.as_secs_f64(),
            "{who} used {used:?} of CPU in {wall:?}"
        );
    }
    stop(a, b);
}
