//! Part of the `failover` suite: a host on the segment spoofs each peer's own address (TTL 255,
//! priority 255, a valid checksum; half the adverts with a forged `auth_hmac` trailer), first
//! paced as in the issue (20 a second each way), then as a flood from one thread at the
//! highest rate it reaches. Against four pairs at 100 ms adverts: hapd with `auth_hmac`, hapd
//! without it, keepalived 2.4.3 with `auth_hmac`, and Debian's keepalived 2.2.7 (no
//! `auth_hmac`). What a client sees at the VIP, the state changes of both nodes and the CPU of
//! both daemons.
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hapd_lab::{
    frames::{Advert, Hmac},
    proc::Proc,
    Lab,
};
use nix::sys::signal::Signal;

use crate::{
    failover::{cpu_between, pair_cpu, probe, serve_both, Probing, VIP},
    report::{median_spread, Table},
};

const KEY: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Advert interval of every pair (the issue's attack ran at 100 ms).
const ADVERT_MS: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pair {
    HapdAuth,
    Hapd,
    Keepalived243Auth,
    Keepalived227,
}

impl Pair {
    const ALL: [Pair; 4] = [
        Pair::HapdAuth,
        Pair::Hapd,
        Pair::Keepalived243Auth,
        Pair::Keepalived227,
    ];
    fn name(self) -> &'static str {
        match self {
            Pair::HapdAuth => "hapd, auth_hmac",
            Pair::Hapd => "hapd, no auth_hmac",
            Pair::Keepalived243Auth => "keepalived 2.4.3, auth_hmac",
            Pair::Keepalived227 => "keepalived 2.2.7 (no auth_hmac)",
        }
    }
    fn is_hapd(self) -> bool {
        matches!(self, Pair::HapdAuth | Pair::Hapd)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// 20 spoofed adverts a second each way (each with and without a forged trailer).
    Paced,
    /// As fast as one `sendmmsg` thread goes: the master's address, to the backup.
    Flood,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Paced => "spoofed peers, 20/s each way",
            Phase::Flood => "spoofed master, flood",
        }
    }
}

struct Harm {
    sent_per_s: f64,
    lost_pct: f64,
    changes: usize,
    cpu_pct: f64,
}

fn changes(p: &Proc, pair: Pair) -> usize {
    if pair.is_hapd() {
        p.grep(" => ").len()
    } else {
        p.grep("Entering ").len()
    }
}

fn start(lab: &mut Lab, hapd: &Path, ka243: &Path, pair: Pair, i: usize) -> anyhow::Result<Proc> {
    let priority = if i == 0 { 110 } else { 100 };
    if pair.is_hapd() {
        let pin = lab.bpffs()?.join(format!("n{i}"));
        let peer = lab.host(1 - i).addr;
        let auth = if pair == Pair::HapdAuth {
            format!("auth_hmac = {{ keys = {{ 1 = \"{KEY}\" }}, active_key = 1 }}\n")
        } else {
            String::new()
        };
        let config = format!(
            "[node]\nname = \"n{i}\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
             vrid = 51\npriority = {priority}\nadvert_interval = \"{ADVERT_MS}ms\"\n\
             virtual_ips = [\"{VIP}/24\"]\npeers = [\"{peer}\"]\n{auth}",
            pin.display()
        );
        return lab.start_hapd(i, hapd, &config);
    }
    let (bin, auth, lvs): (PathBuf, String, &[&str]) = match pair {
        Pair::Keepalived243Auth => (
            ka243.to_owned(),
            format!("  auth_hmac {{\n    key 1 {KEY}\n    active_key 1\n  }}\n"),
            &[],
        ),
        // Debian's build has LVS: -P runs VRRP only.
        _ => (PathBuf::from("keepalived"), String::new(), &["-P"]),
    };
    let conf = lab.dir().join(format!("ka{i}.conf"));
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id N{i}\n  vrrp_version 3\n}}\n\
             vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
             priority {priority}\n  advert_int {}\n{auth}  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n}}\n",
            ADVERT_MS as f64 / 1000.0
        ),
    )?;
    let dir = lab.dir().display().to_string();
    let mut argv = vec![bin.to_str().context("keepalived path")?, "-n", "-l"];
    argv.extend_from_slice(lvs);
    let conf = conf.display().to_string();
    let (pid, vpid) = (format!("{dir}/ka{i}.pid"), format!("{dir}/ka{i}-vrrp.pid"));
    argv.extend_from_slice(&["-f", &conf, "-p", &pid, "-r", &vpid]);
    let child = lab.spawn(i, &argv)?;
    Ok(Proc::new("keepalived", child))
}

/// The spoofed adverts: priority 255 from `src`, without and with a forged trailer.
fn spoofed(src: [u8; 4], n: u16) -> [Vec<u8>; 2] {
    let plain = Advert {
        priority: 255,
        interval: ADVERT_MS as u16 / 10,
        ..Advert::v3(src)
    };
    // A fresh timestamp, a sequence number ahead of anything real, a key guessed wrong.
    let forged = Advert {
        hmac: Some(Hmac::new(1, &[0x42; 32], Hmac::now_seq(n) + (1 << 32))),
        ..plain.clone()
    };
    [plain.frame(), forged.frame()]
}

fn trial(hapd: &Path, ka243: &Path, pair: Pair, phase: Phase, secs: u64) -> anyhow::Result<Harm> {
    let mut lab = Lab::new(4)?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve_both(&lab, &stop)?;
    let result = (|| {
        let mut n0 = start(&mut lab, hapd, ka243, pair, 0)?;
        let ready = Instant::now() + Duration::from_secs(10);
        while lab.in_netns(2, || Ok(probe())).ok().flatten().as_deref() != Some("n0") {
            anyhow::ensure!(
                Instant::now() < ready,
                "n0 never served the VIP:\n{}",
                n0.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut n1 = start(&mut lab, hapd, ka243, pair, 1)?;
        std::thread::sleep(Duration::from_millis(1000));
        let (c0, c1) = (changes(&n0, pair), changes(&n1, pair));
        let cpu0 = pair_cpu(&lab)?;
        let prober = Probing::start(&lab, 2, |who| who == Some("n0"))?;
        let (a0, a1) = (lab.host(0).addr.octets(), lab.host(1).addr.octets());
        let t0 = Instant::now();
        let mut sent = 0u64;
        match phase {
            Phase::Paced => {
                let mut n = 0u16;
                let mut next = t0;
                while t0.elapsed() < Duration::from_secs(secs) {
                    // n1's address towards the master and n0's towards the backup.
                    let mut frames = spoofed(a1, n).to_vec();
                    frames.extend(spoofed(a0, n));
                    lab.send_frames(3, &frames)?;
                    sent += frames.len() as u64;
                    n = n.wrapping_add(1);
                    next += Duration::from_millis(50);
                    if let Some(w) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                }
            }
            Phase::Flood => {
                let frames: Vec<Vec<u8>> = (0..32u16).flat_map(|n| spoofed(a0, n)).collect();
                sent = lab.flood(3, &frames, Duration::from_secs(secs))?;
            }
        }
        let wall = t0.elapsed();
        let cpu1 = pair_cpu(&lab)?;
        let (ok, all) = prober.stop()?;
        let moved = changes(&n0, pair) - c0 + changes(&n1, pair) - c1;
        let _ = n1.stop(Signal::SIGTERM, Duration::from_secs(10));
        let _ = n0.stop(Signal::SIGTERM, Duration::from_secs(10));
        Ok(Harm {
            sent_per_s: sent as f64 / wall.as_secs_f64(),
            lost_pct: if all == 0 {
                100.0
            } else {
                (all - ok) as f64 * 100.0 / all as f64
            },
            changes: moved,
            cpu_pct: cpu_between(&cpu0, &cpu1).as_secs_f64() / wall.as_secs_f64() * 100.0,
        })
    })();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    result
}

/// The table: every pair under both phases.
pub fn spoofed_peers(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let ka243 = crate::keepalived243::binary()?;
    let (secs, rounds) = if quick { (3, 1) } else { (10, 3) };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for phase in [Phase::Paced, Phase::Flood] {
        for pair in Pair::ALL {
            let mut harms = Vec::new();
            for round in 0..rounds {
                println!(
                    "[failover] spoofed-peer attack: {}, {}, {secs} s, round {}/{rounds}",
                    phase.name(),
                    pair.name(),
                    round + 1
                );
                let h = trial(hapd, &ka243, pair, phase, secs)
                    .with_context(|| format!("{} under {}", pair.name(), phase.name()))?;
                raw.push(serde_json::json!({
                    "pair": pair.name(), "phase": phase.name(), "round": round,
                    "sent_per_s": h.sent_per_s, "vip_lost_pct": h.lost_pct,
                    "state_changes": h.changes, "cpu_pct": h.cpu_pct,
                }));
                harms.push(h);
            }
            let med =
                |f: &dyn Fn(&Harm) -> f64| median_spread(&harms.iter().map(f).collect::<Vec<_>>());
            let (lost, lost_lo, lost_hi) = med(&|h| h.lost_pct);
            rows.push(vec![
                phase.name().into(),
                pair.name().into(),
                format!("{:.0}", med(&|h| h.sent_per_s).0),
                format!("{lost:.1} ({lost_lo:.1}..{lost_hi:.1})"),
                format!("{:.0}", med(&|h| h.changes as f64).0),
                format!("{:.1}", med(&|h| h.cpu_pct).0),
            ]);
        }
    }
    let table = Table {
        title: format!(
            "A host spoofing the peers' own addresses, against pairs at {ADVERT_MS} ms adverts"
        ),
        columns: vec![
            "attack".into(),
            "pair".into(),
            "spoofed adverts/s".into(),
            "VIP probes not answered by the master %".into(),
            "state changes (both nodes)".into(),
            "CPU of both daemons, % of one core".into(),
        ],
        rows,
        notes: vec![
            format!(
                "{secs} s per attack, {rounds} round(s), medians (spread); a client asks the VIP every \
                 5 ms and counts the answers that do not come from the master n0. The intruder sends \
                 VRRPv3 priority-255 adverts with TTL 255 and a valid checksum, half of them with an \
                 auth_hmac trailer whose MAC is made with a wrong key (fresh timestamp, sequence \
                 number one second ahead). Paced: n1's address to the master and n0's to the backup, \
                 20 a second each way of each kind. Flood: n0's address, `sendmmsg` from one thread as \
                 fast as it goes, on the same 2 cores as the pair."
            ),
            "hapd lists the other node in `peers` in both its rows: the peer filter is no defence \
             against a spoofed peer address, only auth_hmac is. keepalived runs without unicast \
             peers (multicast), as in the guide."
                .into(),
        ],
        plot: None,
    };
    Ok((table, serde_json::json!({ "spoofed_peers": raw })))
}
