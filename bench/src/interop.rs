//! The `interop` suite: hapd and keepalived 2.4.3 as the two nodes of one virtual router with
//! `auth_hmac` (the same key on both), in both roles, VRRP v3 and v2 over IPv4 and v3 over IPv6,
//! multicast and unicast: election, failover and takeover back, with the VIP checked from a
//! client and every advert of the other side verified (no rejection on either). A failed check
//! fails the suite.
//!
//! ```text
//!   h0 198.18.0.1 2001:2::1 keepalived 2.4.3 ─┐
//!   h1 198.18.0.2 2001:2::2 hapd ─────────────┼── bridge   VIP 198.18.0.100 or 2001:2::100
//!   h2 198.18.0.3 2001:2::3 client ───────────┘
//! ```
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;

use crate::report::{Report, Table};

const VIP: &str = "198.18.0.100";
const VIP6: &str = "2001:2::100";
const KEY: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[derive(Clone, Copy)]
struct Case {
    version: u8,
    /// Over IPv6 (VRRPv3 only).
    v6: bool,
    unicast: bool,
    /// hapd has the higher priority (else keepalived does).
    hapd_master: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "v{}{} {}, {} master",
            self.version,
            if self.v6 { " IPv6" } else { "" },
            if self.unicast { "unicast" } else { "multicast" },
            if self.hapd_master {
                "hapd"
            } else {
                "keepalived"
            }
        )
    }
    /// keepalived's advert_int and hapd's advert_interval.
    fn interval(&self) -> (&'static str, &'static str) {
        if self.version == 3 {
            ("0.1", "100ms")
        } else {
            ("1", "1s")
        }
    }
    /// How long an election or a takeover may take at this interval.
    fn slow(&self) -> Duration {
        if self.version == 3 {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        }
    }
}

pub fn run(quick: bool) -> anyhow::Result<Report> {
    let ka = crate::keepalived243::binary()?;
    let hapd = crate::hapd_bin()?;
    let mut cases = Vec::new();
    for (version, v6) in [(3, false), (2, false), (3, true)] {
        for unicast in [false, true] {
            for hapd_master in [true, false] {
                cases.push(Case {
                    version,
                    v6,
                    unicast,
                    hapd_master,
                });
            }
        }
    }
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut failed = Vec::new();
    for c in &cases {
        println!("[interop] {}", c.name());
        match scenario(&ka, &hapd, *c, quick) {
            Ok((times, signed)) => {
                rows.push(vec![
                    c.name(),
                    "pass".into(),
                    format!("{}", times[0]),
                    format!("{}", times[1]),
                    format!("{}", times[2]),
                    format!("{signed}"),
                ]);
                raw.push(serde_json::json!({ "case": c.name(), "ok": true,
                    "election_ms": times[0], "failover_ms": times[1], "takeover_ms": times[2],
                    "hapd_accepted_signed": signed }));
            }
            Err(e) => {
                println!("[interop] {}: FAILED: {e:#}", c.name());
                rows.push(vec![
                    c.name(),
                    format!("FAILED: {e:#}"),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
                raw.push(
                    serde_json::json!({ "case": c.name(), "ok": false, "error": format!("{e:#}") }),
                );
                failed.push(c.name());
            }
        }
    }
    let mut report = Report::new("interop", quick);
    report.tables = vec![Table {
        title: "hapd with keepalived 2.4.3, auth_hmac on both".into(),
        columns: vec![
            "case".into(),
            "result".into(),
            "election ms".into(),
            "failover ms".into(),
            "takeover back ms".into(),
            "signed adverts hapd verified".into(),
        ],
        rows,
        notes: vec![
            "Each case: the master starts, the backup joins and must stay backup; the master stops \
             (SIGTERM: a priority-0 advert) and the backup takes over; the master returns and takes \
             back (preemption). Every step is checked from the client (ping to the VIP) and on the \
             VIP's place. hapd's status must show no rejected advert, keepalived's log no \
             authentication error. v3 at 100 ms adverts, v2 at 1 s (whole seconds only)."
                .into(),
            "IPv6: both send from their link-local addresses, which are each other's peers; \
             keepalived's unicast IPv6 adverts need unicast_ttl 255 (its default there is the \
             kernel's hop limit, 64, which RFC 9568 section 7.1 and hapd's guard refuse)."
                .into(),
            format!(
                "auth_hmac {{ key 1 {KEY}; active_key 1 }} on keepalived (mode enforce, anti-replay \
                 time), the same key on hapd. keepalived {} built from ../shared/vendor.",
                "2.4.3"
            ),
        ],
        plot: None,
    }];
    report.raw = serde_json::Value::Array(raw);
    if !failed.is_empty() {
        let (json, md) = report.write()?;
        bail!(
            "interop failed: {} (report: {}, {})",
            failed.join("; "),
            json.display(),
            md.display()
        );
    }
    Ok(report)
}

fn keepalived(lab: &Lab, ka: &Path, c: Case, priority: u8) -> anyhow::Result<Proc> {
    let (interval, _) = c.interval();
    let unicast = match (c.unicast, c.v6) {
        (false, _) => String::new(),
        (true, false) => {
            "  unicast_src_ip 198.18.0.1\n  unicast_peer {\n    198.18.0.2\n  }\n".into()
        }
        (true, true) => format!(
            "  unicast_ttl 255\n  unicast_peer {{\n    {}\n  }}\n",
            lab.link_local(1, "eth0")?
        ),
    };
    let vip = if c.v6 {
        format!("{VIP6}/64")
    } else {
        format!("{VIP}/24")
    };
    let conf = lab.dir().join("keepalived.conf");
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id KA\n  vrrp_version {}\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int {interval}\n{unicast}  auth_hmac {{\n    key 1 {KEY}\n    \
             active_key 1\n  }}\n  virtual_ipaddress {{\n    {vip} dev eth0\n  }}\n}}\n",
            c.version
        ),
    )?;
    let d = lab.dir().display().to_string();
    let child = lab.spawn(
        0,
        &[
            ka.to_str().context("keepalived path")?,
            "-n",
            "-l",
            "-D",
            "-f",
            &conf.display().to_string(),
            "-p",
            &format!("{d}/ka.pid"),
            "-r",
            &format!("{d}/ka-vrrp.pid"),
        ],
    )?;
    Ok(Proc::new("keepalived-2.4.3", child))
}

fn hapd_config(lab: &mut Lab, c: Case, priority: u8) -> anyhow::Result<String> {
    let pin_dir = lab.bpffs()?.join("hapd");
    let (_, interval) = c.interval();
    let (vip, peer) = if c.v6 {
        (format!("{VIP6}/64"), lab.link_local(0, "eth0")?.to_string())
    } else {
        (format!("{VIP}/24"), "198.18.0.1".to_string())
    };
    Ok(format!(
        "[node]\nname = \"hapd\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
         vrid = 51\npriority = {priority}\nversion = {}\nadvert_interval = \"{interval}\"\n\
         virtual_ips = [\"{vip}\"]\npeers = [\"{peer}\"]\nunicast = {}\n\
         auth_hmac = {{ keys = {{ 1 = \"{KEY}\" }}, active_key = 1 }}\n",
        pin_dir.display(),
        c.version,
        c.unicast
    ))
}

fn has_vip(lab: &Lab, c: Case, i: usize) -> bool {
    let want = if c.v6 {
        format!("inet6 {VIP6}/64")
    } else {
        format!("inet {VIP}/24")
    };
    lab.exec(i, &["ip", "addr", "show", "dev", "eth0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&want))
        .unwrap_or(false)
}

/// Waits until the VIP is on host `i` only and the client reaches it; returns how long it took.
fn wait_vip(
    lab: &Lab,
    c: Case,
    i: usize,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<u64> {
    while !has_vip(lab, c, i) || has_vip(lab, c, 1 - i) {
        if since.elapsed() > timeout {
            bail!("the VIP is not (only) on host {i} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = since.elapsed().as_millis() as u64;
    let vip = if c.v6 { VIP6 } else { VIP };
    lab.exec(2, &["ping", "-c", "1", "-W", "1", vip])
        .context("the client does not reach the VIP")?;
    Ok(took)
}

fn hapd_status(lab: &Lab, hapd: &Path) -> anyhow::Result<serde_json::Value> {
    let cfg = lab.dir().join("h1.toml");
    let out = lab.exec(
        1,
        &[
            hapd.to_str().context("hapd path")?,
            "status",
            "--json",
            "--config",
            cfg.to_str().context("path")?,
        ],
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Nothing rejected on either side.
fn clean(lab: &Lab, hapd: &Path, ka: &Proc) -> anyhow::Result<u64> {
    let st = hapd_status(lab, hapd)?;
    let auth = &st["instances"][0]["auth"];
    for (k, v) in auth["rejected"].as_object().context("auth status")? {
        if v.as_u64() != Some(0) {
            bail!("hapd rejected keepalived's adverts ({k} {v}): {auth}");
        }
    }
    let bad: Vec<String> = ka
        .lines()
        .into_iter()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("authentication") || l.contains("hmac") || l.contains("trailer")
        })
        .collect();
    if !bad.is_empty() {
        bail!("keepalived complained:\n{}", bad.join("\n"));
    }
    Ok(auth["accepted_signed"].as_u64().unwrap_or(0))
}

/// One case; returns (election, failover, takeover back) in ms and the signed adverts hapd
/// verified.
fn scenario(ka_bin: &Path, hapd: &Path, c: Case, quick: bool) -> anyhow::Result<([u64; 3], u64)> {
    let mut lab = Lab::new(3)?;
    let slow = c.slow();
    let settle = if quick { slow / 3 } else { slow / 2 };
    let (hi, lo) = (110, 100);
    let (hapd_prio, ka_prio) = if c.hapd_master { (hi, lo) } else { (lo, hi) };
    let cfg = hapd_config(&mut lab, c, hapd_prio)?;
    // The master starts alone and is elected.
    let t0 = Instant::now();
    if c.hapd_master {
        let mut h = lab.start_hapd(1, hapd, &cfg)?;
        h.wait_for("=> MASTER", 1, slow)?;
        let election = wait_vip(&lab, c, 1, t0, slow)?;
        let mut ka = keepalived(&lab, ka_bin, c, ka_prio)?;
        ka.wait_for("Entering BACKUP STATE", 1, Duration::from_secs(5))?;
        std::thread::sleep(settle);
        if !ka.grep("Entering MASTER STATE").is_empty() {
            bail!("keepalived did not stay backup:\n{}", ka.lines().join("\n"));
        }
        wait_vip(&lab, c, 1, Instant::now(), slow)?;
        // The master stops: a priority-0 advert, the backup takes over.
        let t = Instant::now();
        h.stop(Signal::SIGTERM, Duration::from_secs(5))?;
        ka.wait_for("Entering MASTER STATE", 1, slow)?;
        let failover = wait_vip(&lab, c, 0, t, slow)?;
        // The master returns and takes back.
        let t = Instant::now();
        h = lab.start_hapd(1, hapd, &cfg)?;
        h.wait_for("=> MASTER (preempting a lower-priority master)", 1, slow)?;
        ka.wait_for("Entering BACKUP STATE", 2, slow)?;
        let takeover = wait_vip(&lab, c, 1, t, slow)?;
        std::thread::sleep(settle);
        let signed = clean(&lab, hapd, &ka)?;
        let _ = h.stop(Signal::SIGTERM, Duration::from_secs(5));
        let _ = ka.stop(Signal::SIGTERM, Duration::from_secs(5));
        Ok(([election, failover, takeover], signed))
    } else {
        let mut ka = keepalived(&lab, ka_bin, c, ka_prio)?;
        ka.wait_for("Entering MASTER STATE", 1, slow)?;
        let election = wait_vip(&lab, c, 0, t0, slow)?;
        let mut h = lab.start_hapd(1, hapd, &cfg)?;
        h.wait_for("INIT => BACKUP", 1, Duration::from_secs(5))?;
        std::thread::sleep(settle);
        if !h.grep("=> MASTER").is_empty() {
            bail!("hapd did not stay backup:\n{}", h.lines().join("\n"));
        }
        let before = clean(&lab, hapd, &ka)?;
        if before == 0 {
            bail!("hapd verified none of keepalived's signed adverts");
        }
        wait_vip(&lab, c, 0, Instant::now(), slow)?;
        let t = Instant::now();
        ka.stop(Signal::SIGTERM, Duration::from_secs(5))?;
        h.wait_for("=> MASTER (master resigned (priority 0))", 1, slow)?;
        let failover = wait_vip(&lab, c, 1, t, slow)?;
        let t = Instant::now();
        ka = keepalived(&lab, ka_bin, c, ka_prio)?;
        h.wait_for("MASTER => BACKUP (higher-priority master)", 1, slow)?;
        ka.wait_for("Entering MASTER STATE", 1, slow)?;
        let takeover = wait_vip(&lab, c, 0, t, slow)?;
        std::thread::sleep(settle);
        let signed = clean(&lab, hapd, &ka)?;
        let _ = h.stop(Signal::SIGTERM, Duration::from_secs(5));
        let _ = ka.stop(Signal::SIGTERM, Duration::from_secs(5));
        Ok(([election, failover, takeover], signed))
    }
}
