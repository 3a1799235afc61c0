//! The `failover` suite: the outage a client sees when the master fails, hapd beside keepalived
//! in the same run, alternating, per fault kind and advert interval.
//!
//! Each trial is a fresh lab: n0 (priority 110, master) and n1 (priority 100) run the daemon
//! and a tiny TCP service on port 8080 that answers with the node's name; the client connects
//! to the VIP every 5 ms. A fault hits n0; the outage is the longest run of failed probes (from
//! the first failure to the next answer), the takeover the time until n1 first answers.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;

use crate::report::{median_spread, Report, Table};

pub(crate) const VIP: &str = "198.18.0.100";
pub(crate) const VIP6: &str = "2001:2::100";
pub(crate) const PORT: u16 = 8080;
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Where the service listens when hapd's proxy is in front of it.
const SERVICE_BEHIND_PROXY: u16 = 8081;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Daemon {
    Hapd,
    Keepalived,
}

impl Daemon {
    /// Both daemons, the first alternating from round to round.
    pub(crate) fn alternating(round: usize) -> [Daemon; 2] {
        if round.is_multiple_of(2) {
            [Daemon::Hapd, Daemon::Keepalived]
        } else {
            [Daemon::Keepalived, Daemon::Hapd]
        }
    }
}

/// The family the pair runs VRRP and the client reaches the VIP in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Ip {
    V4,
    V6,
}

impl Ip {
    fn vip(self) -> &'static str {
        match self {
            Ip::V4 => VIP,
            Ip::V6 => VIP6,
        }
    }

    /// The VIP with its prefix.
    fn vip_net(self) -> String {
        match self {
            Ip::V4 => format!("{VIP}/24"),
            Ip::V6 => format!("{VIP6}/64"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// n0's cable is pulled (its bridge port goes down): nothing more from n0.
    HostCrash,
    /// The daemon on n0 is killed with SIGKILL; n0's service keeps running.
    Kill9,
    /// The daemon on n0 stops on SIGTERM.
    GracefulStop,
    /// n0's service dies; the daemon's track script notices.
    ServiceDown,
    /// n0's proxy loses its upstream. hapd: the proxy in the daemon, in front of the service,
    /// reports it through `track_proxy`. keepalived: the guide's setup, where the web server
    /// is what dies and a track script notices (as for "service down").
    ProxyUnhealthy,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::HostCrash,
        Fault::Kill9,
        Fault::GracefulStop,
        Fault::ServiceDown,
        Fault::ProxyUnhealthy,
    ];

    /// The faults of the IPv6 rows (the issue's: the others exercise nothing of the family).
    const IPV6: [Fault; 3] = [Fault::HostCrash, Fault::GracefulStop, Fault::ServiceDown];

    fn name(self) -> &'static str {
        match self {
            Fault::HostCrash => "host crash",
            Fault::Kill9 => "kill -9",
            Fault::GracefulStop => "graceful stop",
            Fault::ServiceDown => "service down",
            Fault::ProxyUnhealthy => "proxy unhealthy",
        }
    }
}

struct Outcome {
    outage: Duration,
    takeover: Duration,
}

pub fn run(quick: bool) -> anyhow::Result<Report> {
    let hapd = crate::hapd_bin()?;
    let mut report = Report::new("failover", quick);
    let intervals: &[u64] = if quick { &[10] } else { &[10, 1000] };
    let rounds = if quick { 1 } else { 3 };
    let mut raw = Vec::new();
    let mut tables = Vec::new();
    let total = intervals.len() * Fault::ALL.len() * rounds * 2;
    let (t_start, mut done) = (Instant::now(), 0usize);
    for &interval in intervals {
        let mut rows = Vec::new();
        let (mut plot_h, mut plot_k) = (Vec::new(), Vec::new());
        for fault in Fault::ALL {
            let mut samples: Samples = Default::default();
            for round in 0..rounds {
                // Alternate which daemon goes first each round.
                let order = Daemon::alternating(round);
                for d in order {
                    let left = if done == 0 {
                        String::new()
                    } else {
                        let per = t_start.elapsed().as_secs_f64() / done as f64;
                        format!(", about {:.0} s left", per * (total - done) as f64)
                    };
                    done += 1;
                    println!(
                        "[failover] {interval} ms adverts, {}, {d:?}, round {}/{rounds} ({done}/{total}{left})",
                        fault.name(),
                        round + 1
                    );
                    let o = trial(&hapd, d, fault, interval, Ip::V4)
                        .with_context(|| format!("{d:?} {} at {interval} ms", fault.name()))?;
                    raw.push(sample(&mut samples, d, fault, interval, round, &o));
                }
            }
            let (row, h, k) = outage_row(fault, &samples);
            plot_h.push(h);
            plot_k.push(k);
            rows.push(row);
        }
        tables.push(Table {
            title: format!("Client-visible outage, adverts every {interval} ms"),
            columns: outage_columns(),
            rows,
            notes: vec![
                format!("{rounds} round(s) per cell, daemons alternating, each fault at a random phase of the advert cycle. Outage: longest run of failed probes (5 ms apart) around the fault. Takeover: fault to the first answer from the backup."),
                "kill -9 leaves n0's service and VIP in place, so clients are served until the backup takes over: the outage is near zero for both; the takeover column shows the detection.".into(),
                "service down: hapd's track_script runs every 10 ms (fall 1); keepalived's vrrp_script every 1 s (its smallest interval, fall 1).".into(),
                "proxy unhealthy: clients reach the service through hapd's proxy on the VIP; its upstream (n0's service) stops; the proxy ejects it at the first refused connection (health checks every 10 ms otherwise) and track_proxy (weight -50) hands over at once. keepalived has no proxy: the guide's Apache is the service and its check script (every 1 s) notices.".into(),
            ],
            plot: Some(crate::plot::Plot {
                title: format!("Client-visible outage by fault, adverts every {interval} ms"),
                y_label: "outage ms (median)".into(),
                categories: Fault::ALL.iter().map(|f| f.name().to_string()).collect(),
                series: vec![("hapd".into(), plot_h), ("keepalived".into(), plot_k)],
            }),
        });
    }
    let (v6_table, v6_raw) = ipv6_outages(&hapd, rounds)?;
    tables.push(v6_table);
    let (load_table, load_raw) = under_load(&hapd, quick)?;
    tables.push(load_table);
    let (moves_table, moves_raw) = crate::moves::planned_moves(&hapd, quick)?;
    tables.push(moves_table);
    let (attack_table, attack_raw) = attacks(&hapd, quick)?;
    tables.push(attack_table);
    let (spoof_table, spoof_raw) = crate::spoof::spoofed_peers(&hapd, quick)?;
    tables.push(spoof_table);
    report.tables = tables;
    report.raw = serde_json::json!({
        "outages": raw, "ipv6_outages": v6_raw, "under_load": load_raw, "planned_moves": moves_raw, "attacks": attack_raw, "spoofed_peers": spoof_raw,
    });
    Ok(report)
}

/// Outages and takeovers in ms of hapd (`[0]`) and keepalived (`[1]`).
type Samples = [(Vec<f64>, Vec<f64>); 2];

/// Adds trial `o` to `samples`; its raw record.
fn sample(
    samples: &mut Samples,
    d: Daemon,
    fault: Fault,
    interval: u64,
    round: usize,
    o: &Outcome,
) -> serde_json::Value {
    let slot = if d == Daemon::Hapd { 0 } else { 1 };
    let (outage, takeover) = (
        o.outage.as_secs_f64() * 1000.0,
        o.takeover.as_secs_f64() * 1000.0,
    );
    samples[slot].0.push(outage);
    samples[slot].1.push(takeover);
    serde_json::json!({
        "daemon": format!("{d:?}"), "fault": fault.name(), "advert_ms": interval, "round": round,
        "outage_ms": outage, "takeover_ms": takeover,
    })
}

/// The columns of an outage table ([`outage_row`]).
fn outage_columns() -> Vec<String> {
    [
        "fault on the master",
        "hapd outage ms (median, spread)",
        "keepalived outage ms",
        "keepalived / hapd",
        "hapd takeover ms",
        "keepalived takeover ms",
    ]
    .map(String::from)
    .to_vec()
}

/// A fault's row of an outage table, and the median outages of hapd and keepalived.
fn outage_row(fault: Fault, samples: &Samples) -> (Vec<String>, f64, f64) {
    let (ho, ko) = (median_spread(&samples[0].0), median_spread(&samples[1].0));
    let ratio = if ho.0 > 0.0 {
        format!("{:.1}x", ko.0 / ho.0)
    } else {
        "n/a (no outage)".into()
    };
    let row = vec![
        fault.name().to_string(),
        format!("{:.0} ({:.0}..{:.0})", ho.0, ho.1, ho.2),
        format!("{:.0} ({:.0}..{:.0})", ko.0, ko.1, ko.2),
        ratio,
        format!("{:.0}", median_spread(&samples[0].1).0),
        format!("{:.0}", median_spread(&samples[1].1).0),
    ];
    (row, ho.0, ko.0)
}

/// The IPv6 rows: the same trials with VRRPv3 over IPv6 (keepalived on IPv6 beside hapd), the
/// client reaching the IPv6 VIP, adverts every 10 ms.
fn ipv6_outages(hapd: &Path, rounds: usize) -> anyhow::Result<(Table, serde_json::Value)> {
    let interval = 10;
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for fault in Fault::IPV6 {
        let mut samples: Samples = Default::default();
        for round in 0..rounds {
            for d in Daemon::alternating(round) {
                println!(
                    "[failover] IPv6, {interval} ms adverts, {}, {d:?}, round {}/{rounds}",
                    fault.name(),
                    round + 1
                );
                let o = trial(hapd, d, fault, interval, Ip::V6)
                    .with_context(|| format!("IPv6 {d:?} {}", fault.name()))?;
                raw.push(sample(&mut samples, d, fault, interval, round, &o));
            }
        }
        rows.push(outage_row(fault, &samples).0);
    }
    let table = Table {
        title: format!("IPv6: client-visible outage, adverts every {interval} ms"),
        columns: outage_columns(),
        rows,
        notes: vec![format!(
            "VRRPv3 over IPv6 on both (keepalived 2.2.7: its VIP decides the family), the VIP {VIP6}/64, \
             the client probing [{VIP6}]:{PORT} every 5 ms; the backup announces the address with \
             unsolicited neighbour advertisements. {rounds} round(s) per cell, daemons alternating; \
             the rest as in the IPv4 tables."
        )],
        plot: None,
    };
    Ok((table, serde_json::Value::Array(raw)))
}

/// A client that asks the VIP every [`PROBE_EVERY`] from a lab host until stopped, counting
/// the answers that `good` accepts (it gets who answered, `None` for no answer).
pub(crate) struct Probing {
    on: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<(u64, u64)>>,
}

impl Probing {
    pub(crate) fn start(
        lab: &Lab,
        client: usize,
        good: fn(Option<&str>) -> bool,
    ) -> anyhow::Result<Probing> {
        let on = Arc::new(AtomicBool::new(true));
        let p = on.clone();
        let thread = lab.spawn_in_netns(client, move || {
            let (mut ok, mut all) = (0u64, 0u64);
            let mut next = Instant::now();
            while p.load(Ordering::Relaxed) {
                all += 1;
                ok += u64::from(good(probe().as_deref()));
                next += PROBE_EVERY;
                if let Some(w) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
            (ok, all)
        })?;
        Ok(Probing { on, thread })
    }

    /// Stops it: (good answers, probes).
    pub(crate) fn stop(self) -> anyhow::Result<(u64, u64)> {
        self.on.store(false, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("prober panicked"))?
            .context("prober")
    }
}

/// CPU time so far of every thread of the daemons of the pair (hosts 0 and 1), see
/// [`ns_cpu_tasks`]; [`cpu_between`] tells what they spent between two readings.
pub(crate) fn pair_cpu(lab: &Lab) -> anyhow::Result<Vec<BTreeMap<(String, String), u64>>> {
    lab.hosts()[..2]
        .iter()
        .map(|h| ns_cpu_tasks(&h.netns))
        .collect()
}

/// The CPU time spent between two [`pair_cpu`] readings (per thread: see [`grown`]).
pub(crate) fn cpu_between(
    before: &[BTreeMap<(String, String), u64>],
    after: &[BTreeMap<(String, String), u64>],
) -> Duration {
    Duration::from_nanos(before.iter().zip(after).map(|(b, a)| grown(b, a)).sum())
}

/// Per thread of every process in `ns` (keyed by pid and tid): what `read` makes of the
/// thread's file `file` in `/proc/PID/task/TID/`.
fn ns_tasks(
    ns: &str,
    file: &str,
    read: impl Fn(&str) -> u64,
) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()?;
    let mut tasks = BTreeMap::new();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in dir.filter_map(Result::ok) {
            if let Ok(text) = std::fs::read_to_string(t.path().join(file)) {
                let tid = t.file_name().to_string_lossy().to_string();
                tasks.insert((pid.to_string(), tid), read(&text));
            }
        }
    }
    Ok(tasks)
}

/// What the threads of `after` added since `before` (a thread new since then counts from 0).
/// A thread that ended in between is in neither sum: its last moments are not counted (the
/// runtime's blocking threads end after 10 s idle), which can only undercount, never wrap.
fn grown(before: &BTreeMap<(String, String), u64>, after: &BTreeMap<(String, String), u64>) -> u64 {
    after
        .iter()
        .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .sum()
}

/// CPU time so far of every thread of every process in `ns`, in nanoseconds of run time
/// (`/proc/PID/task/TID/schedstat`, first field: finer than the 10 ms ticks of `stat`).
fn ns_cpu_tasks(ns: &str) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    ns_tasks(ns, "schedstat", |stat| {
        stat.split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    })
}

/// Context switches so far of every thread of every process in `ns` (voluntary and not, from
/// `/proc/PID/task/TID/status`): how often the daemon was woken or preempted.
fn ns_switches(ns: &str) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    ns_tasks(ns, "status", |status| {
        status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    })
}

/// Resident memory of every process in `ns`, in KiB.
fn ns_rss_kib(ns: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(crate::report::rss_kib)
        .sum())
}

/// CPU used by an idle pair (master and backup, 10 ms adverts, no faults): both daemons'
/// processes, as a percentage of one core.
pub fn idle(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let (secs, rounds): (u64, usize) = if quick { (3, 1) } else { (10, 3) };
    // The setups, by slot: hapd (VRRP alone), hapd with its proxy and admin endpoint (no
    // health checks: nothing the operator asked to run periodically), keepalived.
    const NAMES: [&str; 4] = [
        "hapd",
        "hapd with its proxy",
        "keepalived",
        "hapd with its proxy, under a watchdog",
    ];
    let mut pct: [Vec<f64>; 4] = Default::default();
    let mut rss: [Vec<f64>; 4] = Default::default();
    // [setup][node 0 (master), node 1 (backup)]: context switches per second.
    let mut cs: [[Vec<f64>; 2]; 4] = Default::default();
    // Watchdog pings the service manager's stand-in received (setup 3).
    let mut pings = 0usize;
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for slot in order {
            println!(
                "[idle] CPU, memory and wake-ups of a {} pair at 10 ms adverts, {secs} s, round {}/{rounds}",
                NAMES[slot],
                round + 1
            );
            let mut lab = Lab::new(2)?;
            let mut procs = Vec::new();
            // Setup 3: what systemd does for the shipped unit (Type=notify, WatchdogSec=10s):
            // a notify socket and WATCHDOG_USEC, so that hapd pings every 5 s.
            let mut notify = Vec::new();
            for i in 0..2 {
                procs.push(match slot {
                    0 => start(&mut lab, hapd, Daemon::Hapd, i, 10, None, false)?,
                    1 | 3 => {
                        let me = lab.host(i).addr;
                        let d = lab.dir().join(format!("tls{i}"));
                        std::fs::create_dir_all(&d)?;
                        crate::proxy::write_certs(&d)?;
                        let d = d.display();
                        let config = hapd_config(&mut lab, i, 10, None, false)?
                            .replacen("[node]\n", &format!("[node]\nadmin = \"{me}:9100\"\n"), 1)
                            + &format!(
                                "\n[tls]\n[[tls.certificate]]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n\n\
                                 [[listener]]\nname = \"web\"\nbind = [\"{VIP}:{PORT}\"]\ntls = true\n\n\
                                 [[upstream]]\nname = \"svc\"\nservers = [\"127.0.0.1:{SERVICE_BEHIND_PROXY}\"]\n\n\
                                 [[vhost]]\nserver_names = [\"vip\"]\nlisteners = [\"web\"]\n  [[vhost.route]]\n  \
                                 prefix = \"/\"\n  upstream = \"svc\"\n"
                            );
                        if slot == 1 {
                            lab.start_hapd(i, hapd, &config)?
                        } else {
                            let sock = lab.dir().join(format!("notify{i}.sock"));
                            let listen = std::os::unix::net::UnixDatagram::bind(&sock)?;
                            listen.set_nonblocking(true)?;
                            notify.push(listen);
                            let cfg = lab.dir().join(format!("h{i}.toml"));
                            std::fs::write(&cfg, &config)?;
                            let env = format!("NOTIFY_SOCKET={}", sock.display());
                            let argv = [
                                "env",
                                &env,
                                "WATCHDOG_USEC=10000000",
                                hapd.to_str().context("hapd's path")?,
                                "run",
                                "--config",
                                cfg.to_str().context("the lab's path")?,
                            ];
                            let mut p = Proc::new("hapd", lab.spawn(i, &argv)?);
                            p.wait_for("hapd ready", 1, Duration::from_secs(10))?;
                            p
                        }
                    }
                    _ => start(&mut lab, hapd, Daemon::Keepalived, i, 10, None, false)?,
                });
            }
            // Settle: election done, scripts started.
            std::thread::sleep(Duration::from_secs(1));
            let ns: Vec<String> = lab.hosts().iter().map(|h| h.netns.clone()).collect();
            // Per thread, so that a thread ending in the window cannot make a sum go back.
            let cpu0 = pair_cpu(&lab)?;
            let switches0 = ns
                .iter()
                .map(|n| ns_switches(n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs(secs));
            let cpu1 = pair_cpu(&lab)?;
            let switches1 = ns
                .iter()
                .map(|n| ns_switches(n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let elapsed = t0.elapsed().as_secs_f64();
            pct[slot].push(cpu_between(&cpu0, &cpu1).as_secs_f64() / elapsed * 100.0);
            for node in 0..2 {
                cs[slot][node].push(grown(&switches0[node], &switches1[node]) as f64 / elapsed);
            }
            let kib: u64 = ns
                .iter()
                .map(|n| ns_rss_kib(n))
                .sum::<anyhow::Result<u64>>()?;
            rss[slot].push(kib as f64 / 1024.0);
            // The pings that arrived (each a datagram with WATCHDOG=1 among its lines).
            let mut buf = [0u8; 512];
            for n in &notify {
                while let Ok(k) = n.recv(&mut buf) {
                    if String::from_utf8_lossy(&buf[..k])
                        .lines()
                        .any(|l| l == "WATCHDOG=1")
                    {
                        pings += 1;
                    }
                }
            }
            for mut p in procs {
                let _ = p.stop(Signal::SIGTERM, Duration::from_secs(10));
            }
        }
    }
    let cpu = |slot: usize| {
        let (m, lo, hi) = median_spread(&pct[slot]);
        format!("{m:.2} ({lo:.2}..{hi:.2})")
    };
    let switches = |slot: usize, node: usize| {
        let (m, lo, hi) = median_spread(&cs[slot][node]);
        format!("{m:.1} ({lo:.1}..{hi:.1})")
    };
    let per_advert = |slot: usize| median_spread(&cs[slot][0]).0 / 100.0;
    let (h, k) = (median_spread(&pct[0]).0, median_spread(&pct[2]).0);
    let table = Table {
        title: "Idle CPU, memory and wake-ups of a pair at 10 ms adverts".into(),
        columns: vec![
            "daemon".into(),
            "% of one core (median, spread)".into(),
            "RSS of both nodes, MiB (median)".into(),
            "master: context switches/s (per advert)".into(),
            "backup: context switches/s".into(),
        ],
        rows: (0..4)
            .map(|slot| {
                vec![
                    format!("{} (pair)", NAMES[slot]),
                    cpu(slot),
                    format!("{:.1}", median_spread(&rss[slot]).0),
                    format!("{} ({:.2})", switches(slot, 0), per_advert(slot)),
                    switches(slot, 1),
                ]
            })
            .collect(),
        notes: vec![
            format!(
                "{rounds} round(s) of {secs} s; every process in both nodes' namespaces, no track \
                 scripts. hapd / keepalived CPU = {:.2}. \"hapd with its proxy\": a TLS listener on \
                 the VIP (its certificate files watched for renewals), an upstream without health \
                 checks and the admin endpoint (the proxy's worker threads, its control thread and \
                 the admin thread idle). \"under a watchdog\": the same, started as systemd starts \
                 the shipped unit (a notify socket and WATCHDOG_USEC for WatchdogSec=10s), so that \
                 it pings every 5 s after checking that each proxy thread answers ({pings} pings \
                 received in all rounds).",
                if k > 0.0 { h / k } else { f64::NAN }
            ),
            "Context switches: voluntary and involuntary, of every thread of every process in \
             the node's namespace (/proc/PID/task/TID/status), per second; per advert: the \
             master's divided by its 100 adverts a second. hapd's backup sleeps until its \
             guard's master-down timer runs out (a kernel bpf_timer re-armed by each advert) \
             and looks at it every 5 s; keepalived's backup wakes for every advert. Targets \
             (issue 22): backup <= 2/s, master <= 1.1 per advert."
                .into(),
        ],
        plot: Some(crate::plot::Plot {
            title: "Wake-ups of an idle backup at 10 ms adverts".into(),
            y_label: "context switches per second (median)".into(),
            categories: NAMES.iter().map(|n| n.to_string()).collect(),
            series: vec![(
                "backup".into(),
                (0..4).map(|slot| median_spread(&cs[slot][1]).0).collect(),
            )],
        }),
    };
    Ok((
        table,
        serde_json::json!({
            "setups": NAMES,
            "pct": pct, "rss_mib": rss,
            "switches_per_s": cs.iter().map(|c| serde_json::json!({"master": c[0], "backup": c[1]})).collect::<Vec<_>>(),
        }),
    ))
}

/// The service of n0 and n1 ([`serve`], always up) on every address, until `stop`.
pub(crate) fn serve_both(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<Option<anyhow::Result<()>>>>> {
    ["n0", "n1"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let (u, s) = (Arc::new(AtomicBool::new(true)), stop.clone());
            lab.spawn_in_netns(i, move || serve(name, ("0.0.0.0", PORT), u, s))
        })
        .collect()
}

/// A service that answers every HTTP request with `name` (and closes), on `bind`, while `up`
/// is true (when it turns false the listener closes: connections are refused) and until `stop`.
pub(crate) fn serve(
    name: &'static str,
    bind: (&'static str, u16),
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut listener: Option<TcpListener> = None;
    while !stop.load(Ordering::Relaxed) {
        if !up.load(Ordering::Relaxed) {
            listener = None;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => {
                let l = TcpListener::bind(bind)?;
                l.set_nonblocking(true)?;
                listener.insert(l)
            }
        };
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                // Read the request head (it is small and comes at once), then answer.
                let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    )
                    .as_bytes(),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One probe: an HTTP request to the VIP; who answered (the body of a 200).
pub(crate) fn probe() -> Option<String> {
    probe_at(Ip::V4)
}

/// [`probe`] of the VIP of `ip`.
pub(crate) fn probe_at(ip: Ip) -> Option<String> {
    let addr = SocketAddr::new(ip.vip().parse().ok()?, PORT);
    // Short timeouts keep the 5 ms cadence while nobody answers (everything is on one machine:
    // an answer takes well under a millisecond).
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") && !body.is_empty()).then(|| body.to_string())
}

/// `flag`: with a track script that checks the file (None: no track script).
pub(crate) fn hapd_config(
    lab: &mut Lab,
    i: usize,
    interval: u64,
    flag: Option<&Path>,
    proxy: bool,
) -> anyhow::Result<String> {
    hapd_config_ip(lab, i, interval, flag, proxy, Ip::V4)
}

/// [`hapd_config`] for the family `ip` (IPv6: the peer is the other node's link-local
/// address, where its adverts come from).
fn hapd_config_ip(
    lab: &mut Lab,
    i: usize,
    interval: u64,
    flag: Option<&Path>,
    proxy: bool,
    ip: Ip,
) -> anyhow::Result<String> {
    let pin = lab.bpffs()?.join(format!("n{i}"));
    let peer = match ip {
        Ip::V4 => lab.host(1 - i).addr.to_string(),
        Ip::V6 => lab.link_local(1 - i, "eth0")?.to_string(),
    };
    let vip_net = ip.vip_net();
    let bind = match ip {
        Ip::V4 => format!("{VIP}:{PORT}"),
        Ip::V6 => format!("[{VIP6}]:{PORT}"),
    };
    let script = match flag {
        // The proxy in front of the service on 127.0.0.1:SERVICE_BEHIND_PROXY.
        _ if proxy => format!(
            "track_proxy = {{ weight = -50 }}\n\n[[listener]]\nname = \"web\"\nbind = [\"{bind}\"]\n\n\
             [[upstream]]\nname = \"svc\"\nservers = [\"127.0.0.1:{SERVICE_BEHIND_PROXY}\"]\nconnect_timeout = \"5ms\"\n\
             health_check = {{ path = \"/\", interval = \"10ms\", timeout = \"10ms\", fall = 1, rise = 1 }}\n\n\
             [[vhost]]\nserver_names = [\"vip\"]\nlisteners = [\"web\"]\n  [[vhost.route]]\n  prefix = \"/\"\n  upstream = \"svc\"\n"
        ),
        Some(f) => format!(
            "track_scripts = [\"chk_web\"]\n\n[[track_script]]\nname = \"chk_web\"\n\
             command = [\"/usr/bin/test\", \"-e\", \"{}\"]\ninterval = \"10ms\"\ntimeout = \"1s\"\n\
             weight = -20\nfall = 1\nrise = 1\n",
            f.display()
        ),
        None => String::new(),
    };
    Ok(format!(
        "[node]\nname = \"n{i}\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\n\
         priority = {}\nadvert_interval = \"{interval}ms\"\nvirtual_ips = [\"{vip_net}\"]\npeers = [\"{peer}\"]\n{script}",
        pin.display(),
        if i == 0 { 110 } else { 100 },
    ))
}

fn keepalived_config(i: usize, interval: u64, flag: Option<&Path>, ip: Ip) -> String {
    let vip_net = ip.vip_net();
    let (script, track) = match flag {
        Some(f) => (
            format!(
                "vrrp_script chk_web {{\n  script \"/usr/bin/test -e {}\"\n  interval 1\n  weight -20\n  fall 1\n  rise 1\n}}\n",
                f.display()
            ),
            "  track_script {\n    chk_web\n  }\n",
        ),
        None => (String::new(), ""),
    };
    format!(
        "global_defs {{\n  router_id N{i}\n  vrrp_version 3\n  enable_script_security\n  script_user root\n}}\n{script}\
         vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {}\n  advert_int {}\n\
         virtual_ipaddress {{\n    {vip_net} dev eth0\n  }}\n{track}}}\n",
        if i == 0 { 110 } else { 100 },
        interval as f64 / 1000.0
    )
}

pub(crate) fn start(
    lab: &mut Lab,
    hapd: &Path,
    d: Daemon,
    i: usize,
    interval: u64,
    flag: Option<&Path>,
    proxy: bool,
) -> anyhow::Result<Proc> {
    start_ip(lab, hapd, d, i, interval, flag, proxy, Ip::V4)
}

/// [`start`] for the family `ip`.
#[allow(clippy::too_many_arguments)]
fn start_ip(
    lab: &mut Lab,
    hapd: &Path,
    d: Daemon,
    i: usize,
    interval: u64,
    flag: Option<&Path>,
    proxy: bool,
    ip: Ip,
) -> anyhow::Result<Proc> {
    match d {
        Daemon::Hapd => {
            let config = hapd_config_ip(lab, i, interval, flag, proxy, ip)?;
            lab.start_hapd(i, hapd, &config)
        }
        Daemon::Keepalived => {
            let conf = lab.dir().join(format!("ka{i}.conf"));
            std::fs::write(&conf, keepalived_config(i, interval, flag, ip))?;
            let dir = lab.dir().display().to_string();
            let conf = conf.display().to_string();
            let child = lab.spawn(
                i,
                &[
                    "keepalived",
                    "-n",
                    "-l",
                    "-P",
                    "-f",
                    &conf,
                    "-p",
                    &format!("{dir}/ka{i}.pid"),
                    "-r",
                    &format!("{dir}/ka{i}-vrrp.pid"),
                ],
            )?;
            Ok(Proc::new("keepalived", child))
        }
    }
}

/// Starts n0 alone, waits until it serves the VIP (so that it is the master), then n1.
pub(crate) fn start_pair(
    lab: &mut Lab,
    hapd: &Path,
    d: Daemon,
    interval: u64,
    flags: [Option<&Path>; 2],
    proxy: bool,
) -> anyhow::Result<(Proc, Proc)> {
    start_pair_ip(lab, hapd, d, interval, flags, proxy, Ip::V4)
}

/// [`start_pair`] for the family `ip`.
fn start_pair_ip(
    lab: &mut Lab,
    hapd: &Path,
    d: Daemon,
    interval: u64,
    flags: [Option<&Path>; 2],
    proxy: bool,
    ip: Ip,
) -> anyhow::Result<(Proc, Proc)> {
    let n0 = start_ip(lab, hapd, d, 0, interval, flags[0], proxy, ip)?;
    let ready = Instant::now() + Duration::from_secs(10);
    while lab
        .in_netns(2, move || Ok(probe_at(ip)))
        .ok()
        .flatten()
        .as_deref()
        != Some("n0")
    {
        if Instant::now() > ready {
            bail!("n0 never served the VIP:\n{}", n0.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let n1 = start_ip(lab, hapd, d, 1, interval, flags[1], proxy, ip)?;
    Ok((n0, n1))
}

/// A host crash (n0's bridge port goes down) or a kill -9 of n0's daemon.
fn crash_or_kill(lab: &Lab, n0: &mut Proc, d: Daemon, fault: Fault) -> anyhow::Result<()> {
    match (fault, d) {
        (Fault::HostCrash, _) => lab.set_port(0, false)?,
        (Fault::Kill9, Daemon::Hapd) => {
            n0.stop(Signal::SIGKILL, Duration::from_secs(5))?;
        }
        (Fault::Kill9, Daemon::Keepalived) => {
            // Every keepalived process of n0 (the parent and its VRRP child).
            let conf = lab.dir().join("ka0.conf").display().to_string();
            let _ = std::process::Command::new("pkill")
                .args(["-9", "-f", &conf])
                .status();
        }
        _ => bail!("{} is neither a crash nor a kill", fault.name()),
    }
    Ok(())
}

fn trial(hapd: &Path, d: Daemon, fault: Fault, interval: u64, ip: Ip) -> anyhow::Result<Outcome> {
    let mut lab = Lab::new(3)?;
    let behind_proxy = d == Daemon::Hapd && fault == Fault::ProxyUnhealthy;
    let stop = Arc::new(AtomicBool::new(false));
    let up: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(true))).collect();
    let flags: Vec<_> = (0..2).map(|i| lab.dir().join(format!("ok{i}"))).collect();
    let mut servers = Vec::new();
    for (i, name) in ["n0", "n1"].into_iter().enumerate() {
        std::fs::write(&flags[i], "")?;
        let (u, s) = (up[i].clone(), stop.clone());
        let bind = if behind_proxy {
            ("127.0.0.1", SERVICE_BEHIND_PROXY)
        } else if ip == Ip::V6 {
            ("::", PORT)
        } else {
            ("0.0.0.0", PORT)
        };
        servers.push(lab.spawn_in_netns(i, move || serve(name, bind, u, s))?);
    }
    let result = (|| {
        let (mut n0, mut n1) = start_pair_ip(
            &mut lab,
            hapd,
            d,
            interval,
            [Some(&flags[0]), Some(&flags[1])],
            behind_proxy,
            ip,
        )?;
        std::thread::sleep(Duration::from_millis(300 + 4 * interval));
        // The prober: every 5 ms, from the client, until told to stop.
        let probing = Arc::new(AtomicBool::new(true));
        let p = probing.clone();
        let t_base = Instant::now();
        let prober = lab.spawn_in_netns(2, move || {
            let mut log: Vec<(Duration, Option<String>)> = Vec::new();
            let mut next = Instant::now();
            while p.load(Ordering::Relaxed) {
                let t = t_base.elapsed();
                log.push((t, probe_at(ip)));
                next += PROBE_EVERY;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            log
        })?;
        // The fault lands at a random phase of the advert cycle: with a fixed delay every trial
        // would hit the same phase and compare phases instead of daemons.
        let phase = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
            % (interval * 1_000_000);
        std::thread::sleep(Duration::from_millis(200) + Duration::from_nanos(phase));
        let t0 = t_base.elapsed();
        match fault {
            Fault::HostCrash | Fault::Kill9 => crash_or_kill(&lab, &mut n0, d, fault)?,
            Fault::GracefulStop => {
                n0.stop(Signal::SIGTERM, Duration::from_secs(10))?;
            }
            Fault::ServiceDown | Fault::ProxyUnhealthy => {
                up[0].store(false, Ordering::Relaxed);
                std::fs::remove_file(&flags[0])?;
            }
        }
        // Wait until n1 has answered for 300 ms in a row (or give up).
        let limit = Instant::now() + Duration::from_millis(1_500 + 5 * interval);
        std::thread::sleep(Duration::from_millis(300));
        while Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        probing.store(false, Ordering::Relaxed);
        let log = prober
            .join()
            .map_err(|_| anyhow::anyhow!("prober panicked"))?
            .context("prober")?;
        let _ = n1.stop(Signal::SIGTERM, Duration::from_secs(10));
        let _ = n0.stop(Signal::SIGTERM, Duration::from_secs(10));
        outcome(&log, t0)
    })();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    result
}

/// Longest run of failed probes after (or spanning) `t0`, and the time from `t0` to the first
/// answer from n1.
fn outcome(log: &[(Duration, Option<String>)], t0: Duration) -> anyhow::Result<Outcome> {
    let mut outage = Duration::ZERO;
    let mut fail_start: Option<Duration> = None;
    for (t, who) in log
        .iter()
        .filter(|(t, _)| *t + Duration::from_millis(50) >= t0)
    {
        match (who, fail_start) {
            (None, None) => fail_start = Some(*t),
            (Some(_), Some(s)) => {
                outage = outage.max(*t - s);
                fail_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = fail_start {
        bail!(
            "the service never came back (failing since {:?} after the fault)",
            s.saturating_sub(t0)
        );
    }
    let takeover = log
        .iter()
        .find(|(t, who)| *t >= t0 && who.as_deref() == Some("n1"))
        .map(|(t, _)| *t - t0)
        .context("n1 never answered")?;
    Ok(Outcome { outage, takeover })
}

/// nginx on lab host `i`: a backend answering `n<i>` on 127.0.0.1:SERVICE_BEHIND_PROXY and,
/// with `proxy`, the guide's reverse proxy on port PORT (all addresses, so on the VIP too) in
/// front of it with kept-alive upstream connections (what keepalived fails over).
pub(crate) fn nginx(lab: &Lab, i: usize, proxy: bool) -> anyhow::Result<Proc> {
    let front = if proxy {
        format!(
            "  upstream be {{ server 127.0.0.1:{SERVICE_BEHIND_PROXY}; keepalive 64; }}\n  \
             server {{ listen {PORT}; location / {{ proxy_pass http://be; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}\n"
        )
    } else {
        String::new()
    };
    nginx_with(
        lab,
        i,
        "nginx",
        &format!(
            "  server {{ listen 127.0.0.1:{SERVICE_BEHIND_PROXY}; location / {{ return 200 \"n{i}\"; }} }}\n{front}"
        ),
    )
}

/// nginx named `name` on lab host `i`, one worker, with `http` inside its `http` block; its
/// files in a directory of the lab. Returns once nginx has written its pid file (it prints
/// nothing when it listens).
pub(crate) fn nginx_with(lab: &Lab, i: usize, name: &str, http: &str) -> anyhow::Result<Proc> {
    let d = lab.dir().join(format!("{name}{i}"));
    std::fs::create_dir_all(&d)?;
    // One left by an nginx of this directory that was killed would say "started" at once.
    let pid = d.join("nginx.pid");
    let _ = std::fs::remove_file(&pid);
    let dd = d.display();
    let conf = format!(
        "worker_processes 1;\npid {dd}/nginx.pid;\nerror_log {dd}/error.log;\ndaemon off;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  \
         client_body_temp_path {dd}/body;\n  proxy_temp_path {dd}/proxy;\n  fastcgi_temp_path {dd}/fcgi;\n  \
         uwsgi_temp_path {dd}/uwsgi;\n  scgi_temp_path {dd}/scgi;\n{http}}}\n"
    );
    let path = d.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let p = path.display().to_string();
    let child = lab.spawn(i, &["nginx", "-c", &p, "-p", &dd.to_string()])?;
    let proc = Proc::new(name, child);
    let t0 = Instant::now();
    while !pid.exists() {
        if t0.elapsed() > Duration::from_secs(5) {
            anyhow::bail!(
                "nginx {name} in host {i} did not start: {}",
                proc.lines().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(proc)
}

/// Connections wrk keeps busy in the under-load runs.
const LOAD_CONNECTIONS: u32 = 32;

/// One run: wrk keeps LOAD_CONNECTIONS connections busy against the VIP for 4 s and `fault`
/// hits n0 after 1.5 s; wrk's counts.
fn load_trial(hapd: &Path, d: Daemon, fault: Fault) -> anyhow::Result<hapd_lab::wrk::Wrk> {
    let mut lab = Lab::new(3)?;
    let proxy_in_nginx = d == Daemon::Keepalived;
    let mut nginxes = Vec::new();
    for i in 0..2 {
        nginxes.push(nginx(&lab, i, proxy_in_nginx)?);
    }
    let result = (|| {
        let (mut n0, mut n1) = start_pair(&mut lab, hapd, d, 10, [None, None], d == Daemon::Hapd)?;
        std::thread::sleep(Duration::from_millis(500));
        let url = format!("http://{VIP}:{PORT}/");
        let c = format!("-c{LOAD_CONNECTIONS}");
        let mut wrk = Proc::new(
            "wrk",
            lab.spawn(2, &["wrk", "-t1", &c, "-d4s", "--timeout", "1s", &url])?,
        );
        std::thread::sleep(Duration::from_millis(1500));
        match fault {
            Fault::HostCrash | Fault::Kill9 => crash_or_kill(&lab, &mut n0, d, fault)?,
            Fault::GracefulStop => n0.signal(Signal::SIGTERM)?,
            _ => bail!("{} is not run under load", fault.name()),
        }
        let st = wrk.wait(Duration::from_secs(15))?;
        if !st.success() {
            bail!("wrk failed:\n{}", wrk.lines().join("\n"));
        }
        let w = hapd_lab::wrk::parse(&wrk.lines().join("\n"));
        let _ = n1.stop(Signal::SIGTERM, Duration::from_secs(10));
        let _ = n0.stop(Signal::SIGTERM, Duration::from_secs(10));
        Ok(w)
    })();
    for mut n in nginxes {
        let _ = n.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
    result
}

/// Failover under load: failed requests and refused connections with wrk keeping 32
/// connections busy, hapd (VRRP and its proxy) beside keepalived + nginx, per fault.
pub fn under_load(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let rounds = if quick { 1 } else { 3 };
    let faults = [Fault::GracefulStop, Fault::Kill9, Fault::HostCrash];
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let (mut plot_h, mut plot_k) = (Vec::new(), Vec::new());
    for fault in faults {
        let mut failed: [Vec<f64>; 2] = Default::default();
        let mut refused: [Vec<f64>; 2] = Default::default();
        for round in 0..rounds {
            for d in Daemon::alternating(round) {
                println!(
                    "[failover] under load (wrk -c{LOAD_CONNECTIONS}), {}, {d:?}, round {}/{rounds}",
                    fault.name(),
                    round + 1
                );
                let w = load_trial(hapd, d, fault)
                    .with_context(|| format!("{d:?} {} under load", fault.name()))?;
                let slot = if d == Daemon::Hapd { 0 } else { 1 };
                failed[slot].push(w.failed as f64);
                refused[slot].push(w.refused as f64);
                raw.push(serde_json::json!({
                    "daemon": format!("{d:?}"), "fault": fault.name(), "round": round,
                    "requests": w.requests, "failed": w.failed, "refused": w.refused,
                }));
            }
        }
        let m = |v: &[f64]| median_spread(v);
        let (hf, kf, hr, kr) = (m(&failed[0]), m(&failed[1]), m(&refused[0]), m(&refused[1]));
        plot_h.push(hf.0 + hr.0);
        plot_k.push(kf.0 + kr.0);
        rows.push(vec![
            fault.name().to_string(),
            format!("{:.0} ({:.0}..{:.0})", hf.0, hf.1, hf.2),
            format!("{:.0}", hr.0),
            format!("{:.0} ({:.0}..{:.0})", kf.0, kf.1, kf.2),
            format!("{:.0}", kr.0),
        ]);
    }
    let table = Table {
        title: format!("Failover under load: requests lost with {LOAD_CONNECTIONS} busy connections"),
        columns: vec![
            "fault on the master".into(),
            "hapd failed requests (median, spread)".into(),
            "hapd refused connections".into(),
            "keepalived + nginx failed requests".into(),
            "keepalived + nginx refused connections".into(),
        ],
        rows,
        notes: vec![
            format!("wrk -t1 -c{LOAD_CONNECTIONS} -d4s --timeout 1s against the VIP, the fault 1.5 s in; adverts every 10 ms; {rounds} round(s), daemons alternating. Failed: wrk's read errors, timeouts and non-2xx answers (requests on open connections). Refused: connect and write errors (connections that took no request)."),
            "hapd: its own proxy on the VIP in front of nginx (127.0.0.1). keepalived: the guide's setup with nginx as the proxy on the VIP in front of the same backend.".into(),
            "graceful stop: hapd resigns at once and keeps its address for its open connections, which end after their current request while its guard sends their segments back from the new master; new connections go to the new master. kill -9 kills hapd's proxy with it; keepalived's nginx survives (the VIP's connections then die at the takeover).".into(),
        ],
        plot: Some(crate::plot::Plot {
            title: format!("Requests lost under load ({LOAD_CONNECTIONS} connections)"),
            y_label: "failed + refused (median)".into(),
            categories: faults.iter().map(|f| f.name().to_string()).collect(),
            series: vec![("hapd".into(), plot_h), ("keepalived + nginx".into(), plot_k)],
        }),
    };
    Ok((table, serde_json::json!({ "under_load": raw })))
}

/// The attacks the issue describes, against a pair at 10 ms adverts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attack {
    /// A host that is not a peer sends priority-255 adverts for the VRID, 100 a second.
    Forged255,
    /// The same host sends priority-50 adverts as fast as one AF_PACKET socket can.
    Flood,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::Forged255 => "forged priority 255, paced",
            Attack::Flood => "flood of priority-50 adverts",
        }
    }
}

/// What an attack did to a pair.
struct Harm {
    /// Share of client probes to the VIP that failed during the attack, in percent.
    failed_pct: f64,
    /// State changes of either node during the attack.
    changes: usize,
    /// CPU of both nodes' daemons during the attack, % of one core.
    cpu_pct: f64,
    /// Forged adverts sent per second.
    rate: f64,
}

fn state_changes(p: &Proc, d: Daemon) -> usize {
    match d {
        Daemon::Hapd => p.grep(" => ").len(),
        Daemon::Keepalived => p.grep("Entering ").len(),
    }
}

fn attack_trial(hapd: &Path, d: Daemon, attack: Attack, secs: u64) -> anyhow::Result<Harm> {
    let mut lab = Lab::new(4)?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve_both(&lab, &stop)?;
    let result = (|| {
        let (mut n0, mut n1) = start_pair(&mut lab, hapd, d, 10, [None, None], false)?;
        std::thread::sleep(Duration::from_millis(500));
        let (c0, c1) = (state_changes(&n0, d), state_changes(&n1, d));
        let cpu0 = pair_cpu(&lab)?;
        let prober = Probing::start(&lab, 2, |who| who.is_some())?;
        let priority = if attack == Attack::Forged255 { 255 } else { 50 };
        let forged = hapd_lab::frames::Advert {
            priority,
            interval: 1,
            ..hapd_lab::frames::Advert::v3(lab.host(3).addr.octets())
        }
        .frame();
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut next = t0;
        while t0.elapsed() < Duration::from_secs(secs) {
            match attack {
                Attack::Forged255 => {
                    lab.send_frames(3, std::slice::from_ref(&forged))?;
                    sent += 1;
                    next += Duration::from_millis(10);
                    if let Some(w) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                }
                Attack::Flood => {
                    let batch = vec![forged.clone(); 20_000];
                    lab.send_frames(3, &batch)?;
                    sent += batch.len() as u64;
                }
            }
        }
        let wall = t0.elapsed();
        let cpu1 = pair_cpu(&lab)?;
        let (ok, all) = prober.stop()?;
        let changes = state_changes(&n0, d) - c0 + state_changes(&n1, d) - c1;
        let _ = n1.stop(Signal::SIGTERM, Duration::from_secs(10));
        let _ = n0.stop(Signal::SIGTERM, Duration::from_secs(10));
        Ok(Harm {
            failed_pct: if all == 0 {
                100.0
            } else {
                (all - ok) as f64 * 100.0 / all as f64
            },
            changes,
            cpu_pct: cpu_between(&cpu0, &cpu1).as_secs_f64() / wall.as_secs_f64() * 100.0,
            rate: sent as f64 / wall.as_secs_f64(),
        })
    })();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    result
}

/// Forged adverts and a flood from a host that is not a peer, hapd beside keepalived.
pub fn attacks(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let (secs, rounds) = if quick { (3, 1) } else { (10, 3) };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for attack in [Attack::Forged255, Attack::Flood] {
        let mut cells: [Vec<Harm>; 2] = Default::default();
        for round in 0..rounds {
            for d in Daemon::alternating(round) {
                println!(
                    "[failover] attack: {} for {secs} s, {d:?}, round {}/{rounds}",
                    attack.name(),
                    round + 1
                );
                let h = attack_trial(hapd, d, attack, secs)
                    .with_context(|| format!("{d:?} {}", attack.name()))?;
                raw.push(serde_json::json!({
                    "daemon": format!("{d:?}"), "attack": attack.name(), "round": round,
                    "failed_pct": h.failed_pct, "changes": h.changes, "cpu_pct": h.cpu_pct,
                    "forged_per_s": h.rate,
                }));
                cells[usize::from(d == Daemon::Keepalived)].push(h);
            }
        }
        for (slot, name) in [(0, "hapd"), (1, "keepalived")] {
            let c = &cells[slot];
            let med =
                |f: &dyn Fn(&Harm) -> f64| median_spread(&c.iter().map(f).collect::<Vec<_>>()).0;
            rows.push(vec![
                attack.name().to_string(),
                name.to_string(),
                format!("{:.0}", med(&|h| h.rate)),
                format!("{:.1}", med(&|h| h.failed_pct)),
                format!("{:.0}", med(&|h| h.changes as f64)),
                format!("{:.1}", med(&|h| h.cpu_pct)),
            ]);
        }
    }
    let table = Table {
        title: "Forged adverts from a host that is not a peer, against a pair at 10 ms adverts".into(),
        columns: vec![
            "attack".into(),
            "daemon".into(),
            "forged adverts/s".into(),
            "client probes failed %".into(),
            "state changes".into(),
            "CPU of both daemons, % of one core".into(),
        ],
        rows,
        notes: vec![
            format!("{secs} s per attack, {rounds} round(s), medians; a client probes the VIP every 5 ms meanwhile. VRRP v3, VRID 51; the intruder is a third host on the segment sending from its own address. Forged priority 255: one advert per 10 ms at most (each send also costs a few ms: the rate column is what was sent); flood: batches of 20,000 from one AF_PACKET socket, as fast as it goes while the daemons under attack share the 2 cores."),
            "keepalived runs the guide's setup (multicast, no unicast peers: it accepts adverts from any source). hapd lists the other node in `peers`; its XDP guard drops everything else before it reaches userspace.".into(),
        ],
        plot: None,
    };
    Ok((table, serde_json::json!({ "attacks": raw })))
}
