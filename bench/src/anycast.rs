//! `anycast` suite: three nodes announce one service prefix by BGP to a router that spreads
//! flows over them (ECMP), and a pooled client behind the router sees what each event costs:
//! a node's upstream failing and coming back, a node stopping gracefully and rejoining, a
//! node's host dying and coming back. hapd (`[[anycast]]`: its proxy, BIRD driven by its
//! health, second chance in XDP) beside the common pattern (BIRD, nginx as the proxy with the
//! other nodes' backends as `backup`, and a health-check script that enables and disables the
//! same BIRD protocol), alternating, in the same run.
//!
//! ```text
//!   client h4 ── router h0 (BIRD: eBGP + BFD 50 ms x 3, merge paths, L4-hash ECMP)
//!                    └─ segment ─ node h1, h2, h3: BIRD + (hapd | nginx + script) + backend
//! ```
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use hapd_lab::{
    bird::{self, Bird, PORT, PREFIX, PROTOCOL},
    host_addr,
    pool::{Pool, Seen, Shape},
    proc::Proc,
    Lab,
};
use nix::sys::signal::Signal;

use crate::{
    failover::nginx_with,
    report::{median_spread, Report, Table},
};

/// Nodes in the group (hosts 1..=NODES); the client is host NODES + 1.
const NODES: usize = 3;
const CLIENT: usize = NODES + 1;
const BACKEND_PORT: u16 = 8081;
/// How long the pooled client waits for an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Hapd,
    /// BIRD + nginx + a health-check script.
    Common,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Hapd => "hapd",
            Setup::Common => "BIRD + nginx + health script",
        }
    }

    /// Both, the first one alternating by round.
    fn alternating(round: usize) -> [Setup; 2] {
        if round.is_multiple_of(2) {
            [Setup::Hapd, Setup::Common]
        } else {
            [Setup::Common, Setup::Hapd]
        }
    }
}

/// The events, in the order one run goes through them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    /// Node 2's backend process stops: its health check fails, it withdraws.
    UpstreamFails,
    /// Node 2's backend starts again: it announces again.
    UpstreamBack,
    /// Node 3 stops gracefully (hapd: SIGTERM; the common pattern: the health script is
    /// stopped, which disables the protocol, and nginx quits gracefully a second later).
    GracefulStop,
    /// Node 3 starts again and rejoins.
    Rejoin,
    /// Node 1's host drops off the network (its switch port goes down; the host keeps its
    /// addresses and routes).
    HostDies,
    /// Node 1's switch port comes back.
    HostBack,
}

impl Event {
    const ALL: [Event; 6] = [
        Event::UpstreamFails,
        Event::UpstreamBack,
        Event::GracefulStop,
        Event::Rejoin,
        Event::HostDies,
        Event::HostBack,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::UpstreamFails => "a node's upstream fails",
            Event::UpstreamBack => "its upstream comes back",
            Event::GracefulStop => "a node stops gracefully",
            Event::Rejoin => "it starts again and rejoins",
            Event::HostDies => "a node's host dies",
            Event::HostBack => "its host comes back",
        }
    }

    /// The router's nexthops once the event has taken effect.
    fn nexthops_after(self) -> Vec<String> {
        let gone = match self {
            Event::UpstreamFails => Some(2),
            Event::GracefulStop => Some(3),
            Event::HostDies => Some(1),
            Event::UpstreamBack | Event::Rejoin | Event::HostBack => None,
        };
        (1..=NODES)
            .filter(|i| Some(*i) != gone)
            .map(|i| host_addr(i).to_string())
            .collect()
    }
}

/// What one event cost in one run.
#[derive(Default, Clone)]
struct Cost {
    failed: u64,
    causes: BTreeMap<&'static str, u64>,
    /// From the event to the router's route having changed.
    route: Option<Duration>,
    /// From the event to the start of the last new connection that failed after it (0: none
    /// failed).
    new_gap: Duration,
    /// Host death: the kept-alive connections the dead node held (they cannot survive).
    held: Option<u64>,
}

pub fn run(quick: bool) -> anyhow::Result<Report> {
    let hapd = crate::hapd_bin()?;
    let rounds = if quick { 1 } else { 3 };
    let mut report = Report::new("anycast", quick);
    // [setup][event] -> one Cost per round
    let mut got: [Vec<Vec<Cost>>; 2] = [vec![Vec::new(); 6], vec![Vec::new(); 6]];
    let mut raw = Vec::new();
    for round in 0..rounds {
        for setup in Setup::alternating(round) {
            println!("[anycast] {}, round {}/{rounds}", setup.name(), round + 1);
            let costs = trial(&hapd, setup).with_context(|| setup.name().to_string())?;
            for (k, c) in costs.into_iter().enumerate() {
                raw.push(serde_json::json!({
                    "setup": setup.name(), "round": round, "event": Event::ALL[k].name(),
                    "failed": c.failed, "causes": c.causes,
                    "route_ms": c.route.map(|t| t.as_secs_f64() * 1000.0),
                    "new_connection_gap_ms": c.new_gap.as_secs_f64() * 1000.0,
                    "held_by_dead_node": c.held,
                }));
                got[usize::from(setup == Setup::Common)][k].push(c);
            }
        }
    }
    report.tables.push(table(&got, rounds));
    let (cost, cost_raw) = local_cost(&hapd, quick)?;
    report.tables.push(cost);
    report.raw = serde_json::json!({ "events": raw, "local_flow_cost": cost_raw });
    Ok(report)
}

fn table(got: &[Vec<Vec<Cost>>; 2], rounds: usize) -> Table {
    let cell = |v: Vec<f64>, digits: usize| {
        if v.is_empty() {
            return "n/a".to_string();
        }
        let (m, lo, hi) = median_spread(&v);
        if rounds == 1 {
            format!("{m:.digits$}")
        } else {
            format!("{m:.digits$} ({lo:.digits$}..{hi:.digits$})")
        }
    };
    let causes = |cs: &[Cost]| {
        let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
        for c in cs {
            for (k, n) in &c.causes {
                *sum.entry(k).or_default() += n;
            }
        }
        if sum.is_empty() {
            "-".to_string()
        } else {
            sum.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut rows = Vec::new();
    let mut plot = [Vec::new(), Vec::new()];
    for (k, e) in Event::ALL.iter().enumerate() {
        for s in 0..2 {
            let cs = &got[s][k];
            let failed: Vec<f64> = cs.iter().map(|c| c.failed as f64).collect();
            plot[s].push(if failed.is_empty() {
                f64::NAN
            } else {
                median_spread(&failed).0
            });
            let held: Vec<f64> = cs.iter().filter_map(|c| c.held.map(|h| h as f64)).collect();
            rows.push(vec![
                e.name().to_string(),
                [Setup::Hapd, Setup::Common][s].name().to_string(),
                cell(failed, 0),
                if held.is_empty() {
                    "-".into()
                } else {
                    cell(held, 0)
                },
                causes(cs),
                cell(
                    cs.iter()
                        .filter_map(|c| c.route.map(|t| t.as_secs_f64() * 1000.0))
                        .collect(),
                    0,
                ),
                cell(
                    cs.iter()
                        .map(|c| c.new_gap.as_secs_f64() * 1000.0)
                        .collect(),
                    0,
                ),
            ]);
        }
    }
    Table {
        title: "Anycast: requests lost when the ECMP set changes".into(),
        columns: vec![
            "event".into(),
            "setup".into(),
            "failed requests (median, spread)".into(),
            "connections the dead node held".into(),
            "failures by cause (all rounds)".into(),
            "route changed after ms".into(),
            "new connections failing for ms".into(),
        ],
        rows,
        notes: vec![
            format!("A router (BIRD 2: eBGP with BFD 50 ms x 3 to each node, `merge paths`, plain hash-threshold ECMP on the L4 hash) and three nodes on one segment, each running BIRD 2 (the prefix in a `protocol static {PROTOCOL}`, disabled at start), a backend (nginx answering its node's name on the node's address) and the proxy on {PREFIX}:{PORT}; a client behind the router keeps 30 kept-alive HTTP/1.1 connections, each sending a request every 50 ms (idle in between, reopened when the server closes one), and opens a new connection every 20 ms. Failed: a request on an open connection without an answer within 2 s, or a connection that could not be opened. {rounds} round(s), setups alternating; each run goes through the events in the order listed, in one lab."),
            "hapd: `[[anycast]]` with `track_proxy` (health check every 100 ms, fall 1, rise 300 ms, hold-down 1 s), its upstream being its node's backend with the other nodes' backends as `backup_servers` (connect timeout 1 s), second chance in generic XDP. Common pattern: the same BIRD configs; nginx as the proxy with the same upstream (`backup` servers, `max_fails=1 fail_timeout=1s`, `proxy_connect_timeout 1s`); a shell loop that checks the backend's /health every 100 ms with curl and runs `birdc enable|disable` when the answer changes (what anycast-healthchecker and Wikimedia's pattern do, at a faster interval).".into(),
            "Upstream fails: node 2's backend process stops (both proxies then use the backups). Graceful stop: hapd gets SIGTERM (it withdraws, then ends its connections at request boundaries); in the common pattern the health script is stopped (its trap disables the protocol) and nginx quits gracefully (SIGQUIT) a second later, the careful runbook. Host dies: node 1's switch port goes down (the host keeps its configuration; it comes back when the port does); the requests on the connections it held cannot be answered by anyone (its row's second count). Route changed: from the event to the router's kernel route having the new nexthop set (BFD for a dead host). New connections failing: from the event to the start of the last new connection that failed. The dead node's connections: those established to its proxy port just before (`ss`).".into(),
            "Why they differ: when the nexthop set changes, the router's hash-threshold ECMP moves flows of the nodes that stay, not only those of the node that left or joined; a node that receives a segment of a flow it has no socket for answers with a reset. hapd's XDP program sends such a segment on to the node that holds the flow (second chance); the common pattern has no such path.".into(),
        ],
        plot: Some(crate::plot::Plot {
            title: "Requests lost when the ECMP set changes (pooled client)".into(),
            y_label: "failed requests (median)".into(),
            categories: Event::ALL.iter().map(|e| e.name().to_string()).collect(),
            series: vec![
                (Setup::Hapd.name().into(), plot[0].clone()),
                (Setup::Common.name().into(), plot[1].clone()),
            ],
        }),
    }
}

/// The processes of one node.
struct Node {
    backend: Option<Proc>,
    bird: Bird,
    /// hapd, or nginx as the proxy.
    proxy: Option<Proc>,
    /// The common pattern's health-check script.
    script: Option<Proc>,
}

/// One run of every event for `setup`, in a lab of its own.
fn trial(hapd: &Path, setup: Setup) -> anyhow::Result<Vec<Cost>> {
    let mut lab = Lab::new(NODES + 2)?;
    bird::router_and_client(&lab, NODES)?;
    let nodes_addrs: Vec<Ipv4Addr> = (1..=NODES).map(host_addr).collect();
    let mut router = Bird::start(&lab, 0, &bird::router_config(host_addr(0), &nodes_addrs))?;
    let mut nodes: Vec<Node> = Vec::new();
    let result = (|| {
        for i in 1..=NODES {
            let backend = backend(&lab, i)?;
            let bird = Bird::start(
                &lab,
                i,
                &bird::node_config(host_addr(i), Some(host_addr(0)), PROTOCOL),
            )?;
            nodes.push(Node {
                backend: Some(backend),
                bird,
                proxy: None,
                script: None,
            });
            if setup == Setup::Common {
                lab.exec(
                    i,
                    &["ip", "addr", "add", &format!("{PREFIX}/32"), "dev", "lo"],
                )?;
            }
            start_proxy(&mut lab, hapd, setup, i, &mut nodes[i - 1])?;
        }
        let all = Event::HostBack.nexthops_after();
        wait_nexthops(&lab, &all, Duration::from_secs(20)).context("every node announcing")?;
        let pool = Pool::start(
            &lab,
            CLIENT,
            Shape {
                addr: format!("{PREFIX}:{PORT}").parse()?,
                host: "app".into(),
                path: "/who".into(),
                connections: 30,
                every: Duration::from_millis(50),
                new_every: Duration::from_millis(20),
                timeout: REQUEST_TIMEOUT,
            },
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        let mut costs = Vec::new();
        let events = (|| {
            for e in Event::ALL {
                costs.push(event(&mut lab, hapd, setup, &mut nodes, &pool.seen, e)?);
            }
            Ok::<_, anyhow::Error>(())
        })();
        let seen = pool.stop();
        events?;
        for i in 1..=NODES {
            if seen.by(&format!("node-{i}")) == 0 {
                bail!("node {i} served nothing: {}", seen.report());
            }
        }
        Ok(costs)
    })();
    for mut n in nodes {
        if let Some(mut s) = n.script.take() {
            let _ = s.stop(Signal::SIGKILL, Duration::from_secs(2));
        }
        if let Some(mut p) = n.proxy.take() {
            let _ = p.stop(Signal::SIGTERM, Duration::from_secs(10));
        }
        if let Some(mut b) = n.backend.take() {
            let _ = b.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
        let _ = n.bird.proc.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
    let _ = router.proc.stop(Signal::SIGTERM, Duration::from_secs(5));
    result
}

/// Makes `e` happen and measures what it cost.
fn event(
    lab: &mut Lab,
    hapd: &Path,
    setup: Setup,
    nodes: &mut [Node],
    seen: &Seen,
    e: Event,
) -> anyhow::Result<Cost> {
    println!("[anycast]   {}", e.name());
    let failed0 = seen.failed.load(Ordering::Relaxed);
    let causes0 = seen.causes.lock().map(|c| c.clone()).unwrap_or_default();
    let held = (e == Event::HostDies).then(|| established(lab, 1));
    let at = seen.elapsed();
    let want = e.nexthops_after();
    // The route is watched while the event happens (a graceful stop withdraws long before
    // the daemon exits).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (netns, want, t0) = (lab.host(0).netns.clone(), want.clone(), Instant::now());
        let stop = stop.clone();
        std::thread::spawn(move || {
            while t0.elapsed() < Duration::from_secs(20) && !stop.load(Ordering::Relaxed) {
                if bird::nexthops_in(&netns) == want {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        })
    };
    let acted = (|| {
        match e {
            Event::UpstreamFails => {
                if let Some(mut b) = nodes[1].backend.take() {
                    b.stop(Signal::SIGTERM, Duration::from_secs(5))?;
                }
            }
            Event::UpstreamBack => nodes[1].backend = Some(backend(lab, 2)?),
            Event::GracefulStop => {
                let n = &mut nodes[2];
                match setup {
                    Setup::Hapd => {
                        if let Some(mut p) = n.proxy.take() {
                            p.signal(Signal::SIGTERM)?;
                            let st = p.wait(Duration::from_secs(15))?;
                            if !st.success() {
                                bail!("hapd on node 3 stopped with {st}: {}", p.lines().join("\n"));
                            }
                        }
                    }
                    Setup::Common => {
                        if let Some(mut s) = n.script.take() {
                            s.signal(Signal::SIGTERM)?;
                            s.wait(Duration::from_secs(5))?;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        if let Some(mut p) = n.proxy.take() {
                            p.signal(Signal::SIGQUIT)?;
                            p.wait(Duration::from_secs(15))?;
                        }
                    }
                }
            }
            Event::Rejoin => start_proxy(lab, hapd, setup, 3, &mut nodes[2])?,
            Event::HostDies => lab.set_port(1, false)?,
            Event::HostBack => lab.set_port(1, true)?,
        }
        Ok::<_, anyhow::Error>(())
    })();
    if acted.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let route = watch.join().ok().flatten();
    acted?;
    if route.is_none() {
        bail!(
            "{}: the router's nexthops are {:?}, not {want:?}, 20 s after",
            e.name(),
            bird::nexthops(lab, 0)
        );
    }
    // What follows the route change: flows moved, connections reset or carried, clients
    // reconnecting. Longer than the pool's longest new connection (connect timeout and
    // request timeout), so that a failure the event caused is counted here, not with the
    // next one.
    std::thread::sleep(
        hapd_lab::pool::CONNECT_TIMEOUT + REQUEST_TIMEOUT + Duration::from_millis(500),
    );
    let causes1 = seen.causes.lock().map(|c| c.clone()).unwrap_or_default();
    let causes = causes1
        .into_iter()
        .filter_map(|(k, n)| {
            let d = n - causes0.get(k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect();
    let new_gap = seen
        .new_connections_since(at)
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(start, _, _)| start - at)
        .max()
        .unwrap_or_default();
    Ok(Cost {
        failed: seen.failed.load(Ordering::Relaxed) - failed0,
        causes,
        route,
        new_gap,
        held,
    })
}

/// Established connections to the proxy's port in host `i`: the kept-alive (and new)
/// connections that node holds.
fn established(lab: &Lab, i: usize) -> u64 {
    let filter = format!("( sport = :{PORT} )");
    lab.command(i, &["ss", "-Htn", "state", "established", &filter])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u64
        })
        .unwrap_or(0)
}

/// Waits until the router's nexthops are `want`; how long that took.
fn wait_nexthops(lab: &Lab, want: &[String], bound: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if bird::nexthops(lab, 0) == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > bound {
            bail!(
                "the router's nexthops are {:?}, not {want:?}, after {bound:?}",
                bird::nexthops(lab, 0)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The other nodes' backends (of `nodes`), as `host:port`.
fn backups_of(i: usize, nodes: usize) -> Vec<String> {
    (1..=nodes)
        .filter(|k| *k != i)
        .map(|k| format!("{}:{BACKEND_PORT}", host_addr(k)))
        .collect()
}

/// Node `i`'s backend: its name on `/`, 200 on `/health`, on the node's address.
fn backend(lab: &Lab, i: usize) -> anyhow::Result<Proc> {
    let me = host_addr(i);
    nginx_with(
        lab,
        i,
        "backend",
        &format!(
            "  server {{ listen {me}:{BACKEND_PORT}; location /health {{ return 200 \"ok\\n\"; }} \
             location / {{ return 200 \"node-{i}\\n\"; }} }}\n"
        ),
    )
}

/// Starts node `i`'s proxy (and, in the common pattern, its health script).
fn start_proxy(
    lab: &mut Lab,
    hapd: &Path,
    setup: Setup,
    i: usize,
    node: &mut Node,
) -> anyhow::Result<()> {
    let me = host_addr(i);
    match setup {
        Setup::Hapd => {
            let config = hapd_config(lab, i, &node.bird, NODES, "generic")?;
            node.proxy = Some(lab.start_hapd(i, hapd, &config)?);
        }
        Setup::Common => {
            // A server that failed is tried again after 1 s (nginx's default is 10 s, which
            // would keep a node's own backend out long after it is back), and a dead host's
            // backend is given up on after 1 s (the default waits 60 s for a connection).
            let backups: String = backups_of(i, NODES)
                .iter()
                .map(|b| format!(" server {b} backup max_fails=1 fail_timeout=1s;"))
                .collect();
            node.proxy = Some(nginx_with(
                lab,
                i,
                "proxy",
                &format!(
                    "  upstream app {{ server {me}:{BACKEND_PORT} max_fails=1 fail_timeout=1s;\
                     {backups} keepalive 64; }}\n  \
                     server {{ listen {PREFIX}:{PORT}; location / {{ proxy_pass http://app; \
                     proxy_connect_timeout 1s; proxy_http_version 1.1; \
                     proxy_set_header Connection \"\"; }} }}\n"
                ),
            )?);
            let script = lab.dir().join("health-check.sh");
            std::fs::write(&script, HEALTH_SCRIPT)?;
            let url = format!("http://{me}:{BACKEND_PORT}/health");
            let sock = node.bird.socket.to_str().context("lab path")?.to_owned();
            let sh = script.to_str().context("lab path")?.to_owned();
            node.script = Some(Proc::new(
                "health-check",
                lab.spawn(i, &["sh", &sh, &sock, PROTOCOL, &url])?,
            ));
        }
    }
    Ok(())
}

/// The common pattern's health checker: every 100 ms, GET the backend's /health; when the
/// answer changes, `birdc enable|disable` the protocol. Stopped (TERM), it disables it.
const HEALTH_SCRIPT: &str = r#"#!/bin/sh
sock=$1; proto=$2; url=$3; state=
trap 'birdc -s "$sock" disable "$proto" >/dev/null; exit 0' TERM INT
while :; do
  if curl -fs -o /dev/null -m 0.2 "$url"; then want=enable; else want=disable; fi
  if [ "$want" != "$state" ]; then
    birdc -s "$sock" "$want" "$proto" >/dev/null && state=$want
  fi
  sleep 0.1 & wait $!
done
"#;

/// Node `i`'s hapd config (of a group of `nodes`): its backend, the other nodes' as backups
/// (connect timeout 1 s, as nginx's in the common pattern), second chance in `xdp` mode.
fn hapd_config(
    lab: &mut Lab,
    i: usize,
    bird: &Bird,
    nodes: usize,
    xdp: &str,
) -> anyhow::Result<String> {
    let peers: Vec<String> = (1..=nodes).map(|k| host_addr(k).to_string()).collect();
    bird::hapd_node_config(
        lab,
        i,
        &bird::Node {
            servers: &[format!("{}:{BACKEND_PORT}", host_addr(i))],
            backups: &backups_of(i, nodes),
            upstream_extra: "connect_timeout = \"1s\"",
            peers: &peers,
            bird_socket: &bird.socket,
            xdp,
        },
    )
}

/// What second chance costs the flows a node serves itself, end to end: one node announcing
/// (its group has a second node that answers pings but has no route from the router), wrk
/// through the router with kept-alive connections, the group's `xdp` "generic" (second chance
/// on) against "off", alternating, in the same run. Nothing is pinned: the XDP program runs
/// in the receive path of whichever CPU delivers the packet (on the lab's veth pairs, the
/// sender's), as it does on a real host with the NIC's queue on a CPU the proxy also uses.
fn local_cost(hapd: &Path, quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let rounds: usize = if quick { 2 } else { 5 };
    let modes = ["generic", "native", "off"];
    let mut got: [Vec<f64>; 3] = Default::default();
    let mut raw = Vec::new();
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [0, 1, 2]
        } else {
            [2, 1, 0]
        };
        for m in order {
            println!(
                "[anycast] a local flow's cost: xdp = {:?}, round {}/{rounds}",
                modes[m],
                round + 1
            );
            let rps = one_node_rps(hapd, modes[m])
                .with_context(|| format!("requests/s with xdp = {:?}", modes[m]))?;
            got[m].push(rps);
            raw.push(
                serde_json::json!({ "xdp": modes[m], "round": round, "requests_per_second": rps }),
            );
        }
    }
    let (on, on_lo, on_hi) = median_spread(&got[0]);
    let (nat, nat_lo, nat_hi) = median_spread(&got[1]);
    let (off, off_lo, off_hi) = median_spread(&got[2]);
    let table = Table {
        title: "What second chance costs a node's own flows, end to end".into(),
        columns: vec![
            "group's xdp".into(),
            "requests/s (median)".into(),
            "spread".into(),
            "ratio to off".into(),
        ],
        rows: vec![
            vec![
                "\"generic\" (second chance on)".into(),
                format!("{on:.0}"),
                format!("{on_lo:.0}..{on_hi:.0}"),
                format!("{:.3}", on / off),
            ],
            vec![
                "\"native\" (the same lookups, no generic-mode skb handling)".into(),
                format!("{nat:.0}"),
                format!("{nat_lo:.0}..{nat_hi:.0}"),
                format!("{:.3}", nat / off),
            ],
            vec![
                "\"off\" (no XDP program)".into(),
                format!("{off:.0}"),
                format!("{off_lo:.0}..{off_hi:.0}"),
                "1.000".into(),
            ],
        ],
        notes: vec![
            format!("One node announcing the prefix (a second node in its group answers its pings, so second chance is on, but the router has no route to it); wrk -t1 -c32 -d4s with kept-alive connections from the client behind the router to hapd's proxy on {PREFIX}:{PORT}, in front of the node's nginx backend; {rounds} round(s) per mode, alternating. Nothing pinned: the router, the node's hapd and backend and wrk share the machine's CPUs, and the XDP program runs in the receive path of the CPU that delivers the packet (on the lab's veth pairs, the sender's). Every segment of these flows goes through the guard's prefix lookup and socket lookup (137 ns against 29 ns per segment under BPF_PROG_TEST_RUN, `cargo xtask bench xdp`); what that is worth in requests is this table's ratio, within the spread shown."),
            "Generic XDP (what the lab needs for sending segments on: on veth pairs a native XDP_TX frame does not reach the other host) runs the program on socket buffers and adds the kernel's own generic-mode work per packet; native mode runs the same lookups on the driver's buffer. In native mode the lab's nodes cannot answer each other's pings (\"on: 0 of 1\"), but every segment to the prefix still pays the prefix and socket lookups (the walk is only for segments without a socket).".into(),
        ],
        plot: None,
    };
    Ok((table, serde_json::json!(raw)))
}

/// Requests/s that one node's proxy serves through the router, its group's XDP mode `xdp`.
fn one_node_rps(hapd: &Path, xdp: &str) -> anyhow::Result<f64> {
    let mut lab = Lab::new(4)?;
    // Hosts: 0 router, 1 and 2 the group, 3 the client (behind the router).
    bird::router_and_client(&lab, 2)?;
    let mut router = Bird::start(&lab, 0, &bird::router_config(host_addr(0), &[host_addr(1)]))?;
    let mut procs: Vec<Proc> = Vec::new();
    let mut birds: Vec<Bird> = Vec::new();
    let result = (|| {
        for i in 1..=2 {
            procs.push(backend(&lab, i)?);
            let router_of = (i == 1).then(|| host_addr(0));
            let b = Bird::start(
                &lab,
                i,
                &bird::node_config(host_addr(i), router_of, PROTOCOL),
            )?;
            let config = hapd_config(&mut lab, i, &b, 2, xdp)?;
            birds.push(b);
            procs.push(lab.start_hapd(i, hapd, &config)?);
        }
        wait_nexthops(&lab, &[host_addr(1).to_string()], Duration::from_secs(20))?;
        if xdp != "off" {
            // The guard runs on the group's interface (in native mode on the lab's veth pairs
            // the peers cannot hear each other: none takes segments).
            let want = if xdp == "generic" {
                "on: 1 of 1"
            } else {
                "on: 0 of 1"
            };
            let t0 = Instant::now();
            loop {
                let st = lab.hapd_status(1, hapd)?;
                let sc = st["anycast"][0]["second_chance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if sc.starts_with(want) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(5) {
                    bail!("xdp = {xdp:?}: second chance {sc:?}, not {want:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let url = format!("http://{PREFIX}:{PORT}/who");
        let mut wrk = Proc::new(
            "wrk",
            lab.spawn(
                CLIENT_OF_TWO,
                &["wrk", "-t1", "-c32", "-d4s", "-H", "Host: app", &url],
            )?,
        );
        let st = wrk.wait(Duration::from_secs(15))?;
        let text = wrk.lines().join("\n");
        if !st.success() {
            bail!("wrk failed:\n{text}");
        }
        let w = hapd_lab::wrk::parse(&text);
        if w.failed + w.refused > 0 || w.requests == 0 {
            bail!("wrk saw failures:\n{text}");
        }
        Ok(w.requests as f64 / 4.0)
    })();
    for mut p in procs.into_iter().rev() {
        let _ = p.stop(Signal::SIGTERM, Duration::from_secs(10));
    }
    for mut b in birds {
        let _ = b.proc.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
    let _ = router.proc.stop(Signal::SIGTERM, Duration::from_secs(5));
    result
}

/// The client host of the two-node lab.
const CLIENT_OF_TWO: usize = 3;
