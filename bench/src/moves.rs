//! Part of the `failover` suite: planned moves seen by a pooled client. 30 kept-alive HTTP/1.1
//! connections to the VIP each send a request every 50 ms (idle in between) and a new
//! connection opens every 20 ms ([`hapd_lab::pool`]), while the master stops gracefully, the
//! stopped node comes back and preempts, or (hapd only: keepalived has no such commands) a
//! drill steps the master down and hands back, or `hapd upgrade` replaces the master's daemon. hapd (VRRP and its proxy, 10 ms adverts) beside
//! keepalived + nginx (the guide's setup), alternating, in the same run.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use hapd_lab::{
    pool::{Pool, Shape},
    proc::Proc,
    Lab,
};
use nix::sys::signal::Signal;

use crate::{
    failover::{hapd_config, nginx, start, start_pair, Daemon, PORT, VIP},
    report::{median_spread, Table},
};

/// The moves measured.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Move {
    /// SIGTERM to the master's daemon.
    GracefulStop,
    /// The stopped node's daemon starts again and preempts the backup, which is alive.
    PreemptBack,
    /// `hapd drill`: step-down, then hand-back.
    Drill,
    /// `hapd upgrade`: the master's daemon replaced by a new process (the VIP stays).
    Upgrade,
}

impl Move {
    const ALL: [Move; 4] = [
        Move::GracefulStop,
        Move::PreemptBack,
        Move::Drill,
        Move::Upgrade,
    ];

    /// keepalived + nginx have no such command.
    fn hapd_only(self) -> bool {
        matches!(self, Move::Drill | Move::Upgrade)
    }

    fn name(self) -> &'static str {
        match self {
            Move::GracefulStop => "graceful stop",
            Move::PreemptBack => "stopped node returns and preempts",
            Move::Drill => "drill (step-down and hand-back)",
            Move::Upgrade => "hitless upgrade (hapd upgrade)",
        }
    }
}

/// What one trial measured.
struct Seen {
    requests: u64,
    failed: u64,
    slowest_new: Duration,
    /// hapd: how long the node that handed over kept the address for its flows.
    drain: Option<Duration>,
}

/// The drain time in a hapd log line "...; addresses released after 53.2ms", or after an
/// upgrade "upgrade: 30 connection(s) drained in 61.2ms; exiting".
fn drain_of(p: &Proc) -> Option<Duration> {
    let (line, marker) = match p.grep("addresses released after").pop() {
        Some(l) => (l, "released after "),
        None => (p.grep("connection(s) drained in").pop()?, "drained in "),
    };
    let t = line.split(marker).nth(1)?;
    let t = t.split_whitespace().next()?.trim_end_matches(';');
    let (n, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// hapd on node `i` with its admin endpoint (for the drill) and its control socket (for the
/// upgrade).
fn start_hapd(lab: &mut Lab, hapd: &Path, i: usize) -> anyhow::Result<Proc> {
    let me = lab.host(i).addr;
    let sock = lab.dir().join(format!("h{i}.sock"));
    let config = hapd_config(lab, i, 10, None, true)?
        .replacen(
            "[node]\n",
            &format!(
                "[node]\nadmin = \"{me}:9100\"\ncontrol_socket = \"{}\"\n",
                sock.display()
            ),
            1,
        )
        .replacen("\npeers = [", "\nxdp = \"generic\"\npeers = [", 1);
    lab.start_hapd(i, hapd, &config)
}

/// `hapd <command> --config <node 0's config> <args>` in node 0; its output is in the error
/// when it fails.
fn hapd_on_n0(lab: &Lab, hapd: &Path, command: &str, args: &[&str]) -> anyhow::Result<()> {
    let cfg = lab.dir().join("h0.toml");
    let mut argv = vec![
        hapd.to_str().context("hapd path")?,
        command,
        "--config",
        cfg.to_str().context("lab path")?,
    ];
    argv.extend_from_slice(args);
    lab.exec(0, &argv)
        .map(drop)
        .with_context(|| format!("hapd {command}"))
}

fn trial(hapd: &Path, d: Daemon, m: Move) -> anyhow::Result<Seen> {
    let mut lab = Lab::new(3)?;
    let mut nginxes = Vec::new();
    for i in 0..2 {
        nginxes.push(nginx(&lab, i, d == Daemon::Keepalived)?);
    }
    let result = (|| {
        let (mut n0, mut n1) = match d {
            Daemon::Hapd => {
                let mut n0 = start_hapd(&mut lab, hapd, 0)?;
                n0.wait_for("=> MASTER", 1, Duration::from_secs(5))?;
                let n1 = start_hapd(&mut lab, hapd, 1)?;
                (n0, n1)
            }
            Daemon::Keepalived => start_pair(&mut lab, hapd, d, 10, [None, None], false)?,
        };
        std::thread::sleep(Duration::from_millis(500));
        let pool = Pool::start(
            &lab,
            2,
            Shape {
                addr: format!("{VIP}:{PORT}").parse()?,
                host: "vip".into(),
                path: "/".into(),
                connections: 30,
                every: Duration::from_millis(50),
                new_every: Duration::from_millis(20),
                timeout: Duration::from_secs(2),
            },
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let moved = (|| {
            match m {
                Move::GracefulStop => {
                    n0.signal(Signal::SIGTERM)?;
                    n0.wait(Duration::from_secs(15))?;
                }
                Move::PreemptBack => {
                    n0.stop(Signal::SIGTERM, Duration::from_secs(15))?;
                    std::thread::sleep(Duration::from_secs(1));
                    n0 = match d {
                        Daemon::Hapd => start_hapd(&mut lab, hapd, 0)?,
                        Daemon::Keepalived => start(&mut lab, hapd, d, 0, 10, None, false)?,
                    };
                    // The preempted node drains its flows (hapd) before the pool stops.
                    if d == Daemon::Hapd {
                        n1.wait_for("addresses released after", 1, Duration::from_secs(15))?;
                    }
                }
                Move::Upgrade => {
                    if d != Daemon::Hapd {
                        bail!("keepalived has no upgrade command");
                    }
                    hapd_on_n0(&lab, hapd, "upgrade", &[])?;
                    // The old process drains and exits; the new one is stopped with the lab.
                    n0.wait(Duration::from_secs(15))?;
                }
                Move::Drill => {
                    if d != Daemon::Hapd {
                        bail!("keepalived has no drill");
                    }
                    let probe = format!("http://{VIP}:{PORT}/");
                    let peer = format!("{}:9100", lab.host(1).addr);
                    hapd_on_n0(
                        &lab,
                        hapd,
                        "drill",
                        &["--probe", &probe, "--peer-admin", &peer],
                    )?;
                }
            }
            Ok(())
        })();
        std::thread::sleep(Duration::from_millis(1500));
        let seen = pool.stop();
        moved?;
        let drain = match (d, m) {
            (Daemon::Keepalived, _) => None,
            (Daemon::Hapd, Move::PreemptBack) => drain_of(&n1),
            (Daemon::Hapd, _) => drain_of(&n0),
        };
        let _ = n1.stop(Signal::SIGTERM, Duration::from_secs(15));
        let _ = n0.stop(Signal::SIGTERM, Duration::from_secs(15));
        Ok(Seen {
            requests: seen.requests.load(std::sync::atomic::Ordering::Relaxed),
            failed: seen.failed.load(std::sync::atomic::Ordering::Relaxed),
            slowest_new: seen.slowest_new(),
            drain,
        })
    })();
    for mut n in nginxes {
        let _ = n.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
    result
}

/// Planned moves with a pooled client: failed requests, the slowest new connection and
/// hapd's drain time per move, hapd beside keepalived + nginx.
pub fn planned_moves(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let rounds = if quick { 1 } else { 3 };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let (mut plot_h, mut plot_k) = (Vec::new(), Vec::new());
    for m in Move::ALL {
        // [daemon] -> (failed, slowest new ms, drain ms)
        let mut got: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
        for round in 0..rounds {
            for d in Daemon::alternating(round) {
                if m.hapd_only() && d == Daemon::Keepalived {
                    continue;
                }
                println!(
                    "[failover] planned move with a pooled client, {}, {d:?}, round {}/{rounds}",
                    m.name(),
                    round + 1
                );
                let s = trial(hapd, d, m)
                    .with_context(|| format!("{d:?}: {} with a pooled client", m.name()))?;
                let slot = usize::from(d == Daemon::Keepalived);
                got[slot].0.push(s.failed as f64);
                got[slot].1.push(s.slowest_new.as_secs_f64() * 1000.0);
                if let Some(t) = s.drain {
                    got[slot].2.push(t.as_secs_f64() * 1000.0);
                }
                raw.push(serde_json::json!({
                    "daemon": format!("{d:?}"), "move": m.name(), "round": round,
                    "requests": s.requests, "failed": s.failed,
                    "slowest_new_ms": s.slowest_new.as_secs_f64() * 1000.0,
                    "drain_ms": s.drain.map(|t| t.as_secs_f64() * 1000.0),
                }));
            }
        }
        let cell = |v: &[f64], digits: usize| {
            if v.is_empty() {
                return "n/a".to_string();
            }
            let (m, lo, hi) = median_spread(v);
            format!("{m:.digits$} ({lo:.digits$}..{hi:.digits$})")
        };
        plot_h.push(median_spread(&got[0].0).0);
        plot_k.push(if got[1].0.is_empty() {
            0.0
        } else {
            median_spread(&got[1].0).0
        });
        rows.push(vec![
            m.name().to_string(),
            cell(&got[0].0, 0),
            cell(&got[0].1, 0),
            cell(&got[0].2, 0),
            if m.hapd_only() {
                "no such command".into()
            } else {
                cell(&got[1].0, 0)
            },
            if m.hapd_only() {
                "n/a".into()
            } else {
                cell(&got[1].1, 0)
            },
        ]);
    }
    let table = Table {
        title: "Planned moves with a pooled client: requests lost and new connections delayed".into(),
        columns: vec![
            "planned move".into(),
            "hapd failed requests (median, spread)".into(),
            "hapd slowest new connection ms".into(),
            "hapd drain ms".into(),
            "keepalived + nginx failed requests".into(),
            "keepalived + nginx slowest new connection ms".into(),
        ],
        rows,
        notes: vec![
            format!("A pooled client on a third host: 30 kept-alive HTTP/1.1 connections to the VIP, a request on each every 50 ms (idle in between; reopened when the server closes one), and a new connection every 20 ms; failed: a request on an open connection without an answer within 2 s, or a connection that could not be opened. Slowest new connection: connect to the end of its first response. Adverts every 10 ms; {rounds} round(s), daemons alternating."),
            "hapd: its own proxy on the VIP in front of nginx (127.0.0.1). keepalived: the guide's setup with nginx as the proxy on the VIP in front of the same backend; keepalived has no drill command, and no upgrade (nginx's binary upgrade, USR2, is a procedure of its own, not measured here).".into(),
            "Upgrade: `hapd upgrade` on the master replaces its daemon with a new process of the same binary (listening sockets, pinned guard and VRRP state handed over; the VIP does not move); drain: the old process's connections ended at request boundaries, until it exits.".into(),
            "\"Stopped node returns\" is one trial with two moves: the master stops gracefully, starts again a second later and preempts the backup, which is alive; its counts cover both (keepalived + nginx lose a request on each of the 30 connections at each move).".into(),
            "hapd carries the flows across the move: the node that lets the VIP go keeps its address for its open connections (no ARP answers), ends each at its next response, and its XDP guard sends it the segments that reach the new owner for flows the new owner has no socket for; new connections go to the new owner at once. Drain: from the successor being heard to the address released (the node that let the VIP go).".into(),
            "The guard runs in generic XDP here: on the lab's veth pairs a native XDP_TX frame does not reach the other host (docs/guard.md).".into(),
        ],
        plot: Some(crate::plot::Plot {
            title: "Requests lost in planned moves (pooled client)".into(),
            y_label: "failed requests (median)".into(),
            categories: Move::ALL.iter().map(|m| m.name().to_string()).collect(),
            series: vec![("hapd".into(), plot_h), ("keepalived + nginx".into(), plot_k)],
        }),
    };
    Ok((table, serde_json::json!({ "planned_moves": raw })))
}
