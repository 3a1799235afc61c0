//! Two hapd nodes in the lab: first election, graceful stop, preempt back, kill -9 with the
//! stale VIP removed at restart. A third host is the client that reaches the VIP.
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110) ──┐
//!   h1 198.18.0.2 hapd B (100) ──┼── bridge      VIP 198.18.0.100
//!   h2 198.18.0.3 client ────────┘
//! ```
use std::{path::Path, time::Duration};

use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn config(lab: &mut Lab, i: usize, priority: u8) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peer = if i == 0 { "198.18.0.2" } else { "198.18.0.1" };
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
"#,
        pin_dir.display()
    )
}

fn has_vip(lab: &Lab, i: usize) -> bool {
    let out = lab
        .exec(i, &["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/24"))
}

fn client_reaches_vip(lab: &Lab) -> bool {
    lab.exec(2, &["ping", "-c", "1", "-W", "1", VIP]).is_ok()
}

fn wait_master(p: &mut Proc, count: usize) {
    p.wait_for("=> MASTER", count, Duration::from_secs(5))
        .unwrap();
}

#[test]
fn two_nodes_elect_fail_over_and_preempt_back() {
    let mut lab = Lab::new(3).unwrap();
    let (ca, cb) = (config(&mut lab, 0, 110), config(&mut lab, 1, 100));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();

    // First election: A (110) wins.
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        b.grep("=> MASTER").is_empty(),
        "B must stay backup:\n{}",
        b.lines().join("\n")
    );
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));

    // Graceful stop of A: priority 0, B takes over after Skew_Time.
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    wait_master(&mut b, 1);
    assert_eq!(
        b.grep("=> MASTER (master resigned (priority 0))").len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    assert!(!has_vip(&lab, 0), "A removed the VIP when it stopped");
    assert!(has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));

    // A comes back and preempts.
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    wait_master(&mut a, 1);
    assert_eq!(
        a.grep("=> MASTER (preempting a lower-priority master)")
            .len(),
        1,
        "{}",
        a.lines().join("\n")
    );
    b.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));

    // kill -9 A: no goodbye; B takes over after Master_Down_Interval; A's VIP stays behind.
    a.stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    wait_master(&mut b, 2);
    assert_eq!(
        b.grep("=> MASTER (master down)").len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    assert!(has_vip(&lab, 0), "kill -9 leaves the VIP on A");
    // Restart A: the stale VIP goes before the election, then A preempts again.
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
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));
    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap()
            .success());
    }
    assert!(!has_vip(&lab, 0) && !has_vip(&lab, 1));
}
