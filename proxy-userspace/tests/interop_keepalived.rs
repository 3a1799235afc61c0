//! keepalived (Debian's) as the other node, in both roles: election, failover, takeover back.
//! VRRPv3 with keepalived's checksum (IPv4 pseudo-header), VRRPv2 with PASS authentication and
//! VRRPv3 over IPv6 interoperate; the RFC 9568 message-only checksum is one keepalived 2.2
//! cannot speak, and hapd's guard shows the mismatch as `drop_checksum`.
//!
//! ```text
//!   h0 198.18.0.1 2001:2::1 keepalived ──┐
//!   h1 198.18.0.2 2001:2::2 hapd ────────┼── bridge      VIP 198.18.0.100 or 2001:2::100
//!   h2 198.18.0.3 2001:2::3 client ──────┘
//! ```
use std::{path::Path, time::Duration};

use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;
use proxy_userspace::dataplane::xdp::pinned_counters;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";
const VIP6: &str = "2001:2::100";
const PASS: &str = "secret42";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    V3,
    V2Pass,
    /// VRRPv3 over IPv6.
    V6,
}

impl Variant {
    /// The virtual address and its prefix.
    fn vip(self) -> String {
        match self {
            Variant::V6 => format!("{VIP6}/64"),
            _ => format!("{VIP}/24"),
        }
    }
}

fn keepalived(lab: &Lab, v: Variant, priority: u8) -> Proc {
    let (version, interval, auth) = match v {
        Variant::V3 | Variant::V6 => (3, "0.1", String::new()),
        Variant::V2Pass => (
            2,
            "1",
            format!("authentication {{\n    auth_type PASS\n    auth_pass {PASS}\n  }}"),
        ),
    };
    let vip = v.vip();
    let conf = lab.dir().join("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id KA\n  vrrp_version {version}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {interval}\n  {auth}\n  virtual_ipaddress {{\n    {vip} dev eth0\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let d = lab.dir().display().to_string();
    let child = lab
        .spawn(
            0,
            &[
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                &conf.display().to_string(),
                "-p",
                &format!("{d}/ka.pid"),
                "-r",
                &format!("{d}/ka-vrrp.pid"),
            ],
        )
        .unwrap();
    Proc::new("keepalived", child)
}

fn hapd_config(lab: &mut Lab, v: Variant, priority: u8, checksum: &str) -> String {
    let pin_dir = lab.bpffs().unwrap().join("hapd");
    let (version, interval, auth) = match v {
        Variant::V3 | Variant::V6 => (3, "100ms", String::new()),
        Variant::V2Pass => (2, "1s", format!("auth_pass = \"{PASS}\"")),
    };
    // keepalived sends IPv6 adverts from its link-local address.
    let peer = match v {
        Variant::V6 => lab.link_local(0, "eth0").unwrap().to_string(),
        _ => "198.18.0.1".into(),
    };
    let vip = v.vip();
    format!(
        "[node]\nname = \"hapd\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\n\
         priority = {priority}\nversion = {version}\nadvert_interval = \"{interval}\"\nvirtual_ips = [\"{vip}\"]\n\
         peers = [\"{peer}\"]\n{auth}\n{}\n",
        pin_dir.display(),
        if v == Variant::V3 { format!("v3_checksum = \"{checksum}\"") } else { String::new() }
    )
}

fn has_vip(lab: &Lab, v: Variant, i: usize) -> bool {
    let out = lab.exec(i, &["ip", "addr", "show", "dev", "eth0"]).unwrap();
    let inet = if v == Variant::V6 { "inet6" } else { "inet" };
    String::from_utf8_lossy(&out.stdout).contains(&format!("{inet} {} ", v.vip()))
}

fn wait_vip(lab: &Lab, v: Variant, i: usize, timeout: Duration) {
    let end = std::time::Instant::now() + timeout;
    while !has_vip(lab, v, i) || has_vip(lab, v, 1 - i) {
        assert!(
            std::time::Instant::now() < end,
            "VIP not (only) on host {i} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client_reaches_vip(lab: &Lab, v: Variant) -> bool {
    let vip = if v == Variant::V6 { VIP6 } else { VIP };
    lab.exec(2, &["ping", "-c", "1", "-W", "1", vip]).is_ok()
}

/// hapd has the higher priority: it is elected, keepalived takes over when hapd stops, and
/// hapd takes back when it returns.
fn hapd_as_master(v: Variant) {
    let slow = if v == Variant::V2Pass { 10 } else { 3 };
    let mut lab = Lab::new(3).unwrap();
    let cfg = hapd_config(&mut lab, v, 110, "pseudo-header");
    let mut h = lab.start_hapd(1, Path::new(HAPD), &cfg).unwrap();
    h.wait_for("=> MASTER", 1, Duration::from_secs(slow))
        .unwrap();
    wait_vip(&lab, v, 1, Duration::from_secs(slow));
    // keepalived joins a running master and must stay backup.
    let mut ka = keepalived(&lab, v, 100);
    ka.wait_for("Entering BACKUP STATE", 1, Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(if v == Variant::V2Pass {
        4_500
    } else {
        500
    }));
    assert_eq!(
        ka.grep("Entering MASTER STATE").len(),
        0,
        "keepalived stays backup:\n{}",
        ka.lines().join("\n")
    );
    assert!(client_reaches_vip(&lab, v));

    assert!(h
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    ka.wait_for("Entering MASTER STATE", 1, Duration::from_secs(slow))
        .unwrap();
    wait_vip(&lab, v, 0, Duration::from_secs(slow));
    assert!(client_reaches_vip(&lab, v));

    let mut h = lab.start_hapd(1, Path::new(HAPD), &cfg).unwrap();
    h.wait_for(
        "=> MASTER (preempting a lower-priority master)",
        1,
        Duration::from_secs(slow),
    )
    .unwrap();
    ka.wait_for("Entering BACKUP STATE", 2, Duration::from_secs(slow))
        .unwrap();
    wait_vip(&lab, v, 1, Duration::from_secs(slow));
    assert!(client_reaches_vip(&lab, v));
    let c = pinned_counters(&lab.bpffs().unwrap().join("hapd")).unwrap();
    assert!(
        c.accepted > 0 && c.drop_checksum == 0 && c.drop_auth == 0,
        "{c:?}"
    );
    assert!(h
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    let _ = ka.stop(Signal::SIGTERM, Duration::from_secs(5));
}

/// keepalived has the higher priority: hapd follows it, takes over when keepalived stops
/// (keepalived resigns with priority 0), and yields when it returns.
fn keepalived_as_master(v: Variant) {
    let slow = if v == Variant::V2Pass { 10 } else { 3 };
    let mut lab = Lab::new(3).unwrap();
    let cfg = hapd_config(&mut lab, v, 100, "pseudo-header");
    let mut ka = keepalived(&lab, v, 110);
    ka.wait_for("Entering MASTER STATE", 1, Duration::from_secs(slow))
        .unwrap();
    let mut h = lab.start_hapd(1, Path::new(HAPD), &cfg).unwrap();
    h.wait_for("INIT => BACKUP", 1, Duration::from_secs(5))
        .unwrap();
    wait_vip(&lab, v, 0, Duration::from_secs(slow));
    std::thread::sleep(Duration::from_millis(if v == Variant::V2Pass {
        4_500
    } else {
        500
    }));
    assert!(
        h.grep("=> MASTER").is_empty(),
        "hapd follows keepalived:\n{}",
        h.lines().join("\n")
    );

    let _ = ka.stop(Signal::SIGTERM, Duration::from_secs(5));
    h.wait_for(
        "=> MASTER (master resigned (priority 0))",
        1,
        Duration::from_secs(slow),
    )
    .unwrap();
    wait_vip(&lab, v, 1, Duration::from_secs(slow));
    assert!(client_reaches_vip(&lab, v));

    let mut ka = keepalived(&lab, v, 110);
    h.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(slow),
    )
    .unwrap();
    ka.wait_for("Entering MASTER STATE", 1, Duration::from_secs(slow))
        .unwrap();
    wait_vip(&lab, v, 0, Duration::from_secs(slow));
    assert!(client_reaches_vip(&lab, v));
    assert!(h
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    let _ = ka.stop(Signal::SIGTERM, Duration::from_secs(5));
}

#[test]
fn v3_hapd_master_keepalived_backup() {
    hapd_as_master(Variant::V3);
}

#[test]
fn v3_keepalived_master_hapd_backup() {
    keepalived_as_master(Variant::V3);
}

#[test]
fn ipv6_hapd_master_keepalived_backup() {
    hapd_as_master(Variant::V6);
}

#[test]
fn ipv6_keepalived_master_hapd_backup() {
    keepalived_as_master(Variant::V6);
}

#[test]
fn v2_pass_hapd_master_keepalived_backup() {
    hapd_as_master(Variant::V2Pass);
}

#[test]
fn v2_pass_keepalived_master_hapd_backup() {
    keepalived_as_master(Variant::V2Pass);
}

/// hapd with the RFC 9568 message-only checksum cannot understand keepalived 2.2 (which always
/// includes the pseudo-header): the guard drops its adverts as bad checksums, visibly.
#[test]
fn v3_message_only_checksum_is_not_keepalived_and_says_so() {
    let mut lab = Lab::new(3).unwrap();
    let cfg = hapd_config(&mut lab, Variant::V3, 100, "message-only");
    let mut ka = keepalived(&lab, Variant::V3, 110);
    ka.wait_for("Entering MASTER STATE", 1, Duration::from_secs(3))
        .unwrap();
    let h = lab.start_hapd(1, Path::new(HAPD), &cfg).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let c = pinned_counters(&lab.bpffs().unwrap().join("hapd")).unwrap();
    assert!(c.drop_checksum >= 3, "{c:?}");
    assert_eq!(c.accepted, 0, "{c:?}");
    assert!(h.grep("advert from").is_empty(), "{}", h.lines().join("\n"));
}
