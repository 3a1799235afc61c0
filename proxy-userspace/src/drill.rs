//! `hapd drill`: the failover test the guide asks operators to automate, made safe to run in
//! production.
//!
//! 1. Preflight: this node is master for the instance; the peer (asked at its admin endpoint)
//!    is a healthy backup of the same instance that hears this node's adverts; the probe
//!    answers for a second. Any failure refuses the drill before anything moves.
//! 2. Step down: the master resigns (priority 0) and advertises priority 1 from then on
//!    (see `fsm::Instance::set_stepped_down`); the probe measures how long the VIP is unanswered.
//! 3. Hand back: the configured priority again; with preemption the master takes over at the
//!    peer's next advert, and that move is measured too.
//!
//! The probe sends a fresh HTTP request every `probe_interval` on a new connection, each in its
//! own task so a request stuck in a dead path does not slow the others. The outage is the
//! longest time without an answer: between two answers in a row (by when they came back), or
//! from the last answer to the end if the answers stopped. A probe that waits for ARP to find
//! the new master and is answered late counts its wait, not just failed probes.
//! With probes every 10 ms, a step without any interruption shows about 10 ms.
use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::{
    admin::client,
    status::{InstanceStatus, Status},
};

/// What to drill and how to watch it.
pub struct Plan {
    /// This node's admin endpoint.
    pub admin: SocketAddr,
    pub instance: Option<String>,
    pub probe: Probe,
    pub peer_admin: Option<SocketAddr>,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How long each step may take to settle.
    pub timeout: Duration,
    pub max_outage: Option<Duration>,
    /// Drill even with parity drift between the nodes.
    pub force: bool,
}

/// An HTTP request a client would make through the VIP.
#[derive(Clone, Debug)]
pub struct Probe {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Probe {
    /// `http://HOST[:PORT][/PATH]`.
    pub fn parse(s: &str) -> anyhow::Result<Probe> {
        let url = url::Url::parse(s).with_context(|| format!("--probe {s:?}: not a URL"))?;
        if url.scheme() != "http" {
            bail!("--probe {s:?}: only http:// URLs are probed (any HTTP answer counts, a redirect to https included)");
        }
        let host = url
            .host_str()
            .ok_or_else(|| anyhow!("--probe {s:?}: no host"))?
            .to_string();
        let port = url.port().unwrap_or(80);
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .with_context(|| format!("--probe {s:?}: resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("--probe {s:?}: {host} has no address"))?;
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        Ok(Probe {
            addr,
            host: match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            },
            path,
        })
    }

    /// One request on a new connection: whether any HTTP answer came within `timeout`.
    pub async fn once(&self, timeout: Duration) -> bool {
        let go = async {
            let stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(Method::GET)
                .uri(&self.path)
                .header(hyper::header::HOST, &self.host)
                .header(hyper::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .ok()?;
            send.send_request(req).await.ok()
        };
        matches!(tokio::time::timeout(timeout, go).await, Ok(Some(_)))
    }
}

/// Probes sent so far: when, and when answered (None: failed or timed out).
type Samples = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

struct Prober {
    samples: Samples,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(probe: Probe, interval: Duration, timeout: Duration) -> Prober {
        let samples: Samples = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (probe, s) = (probe.clone(), s.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let ok = probe.once(timeout).await;
                    if let Ok(mut v) = s.lock() {
                        v.push((sent, ok.then(Instant::now)));
                    }
                });
            }
        });
        Prober { samples, task }
    }

    /// Probes sent at or after `from`, in the order they were sent.
    fn since(&self, from: Instant) -> Vec<(Instant, Option<Instant>)> {
        let mut v: Vec<_> = self
            .samples
            .lock()
            .map(|v| v.iter().copied().filter(|(t, _)| *t >= from).collect())
            .unwrap_or_default();
        v.sort_by_key(|(t, _)| *t);
        v
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the probe saw during one step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outage {
    /// Longest time without an answer.
    pub longest: Duration,
    pub failed: usize,
    pub sent: usize,
}

/// The outage in `samples` (sorted by send time): the longest gap between consecutive answers
/// (from the first probe sent), or from the last answer to the last probe sent when answers
/// stopped.
pub fn outage(samples: &[(Instant, Option<Instant>)]) -> Outage {
    let mut o = Outage {
        sent: samples.len(),
        failed: samples.iter().filter(|(_, done)| done.is_none()).count(),
        ..Outage::default()
    };
    let Some(&(start, _)) = samples.first() else {
        return o;
    };
    let mut answers: Vec<Instant> = samples.iter().filter_map(|(_, d)| *d).collect();
    answers.sort();
    let mut prev = start;
    for a in &answers {
        o.longest = o.longest.max(a.saturating_duration_since(prev));
        prev = prev.max(*a);
    }
    if let Some(&(last_sent, None)) = samples.last() {
        o.longest = o.longest.max(last_sent.saturating_duration_since(prev));
    }
    o
}

fn find<'a>(st: &'a Status, name: &str) -> Option<&'a InstanceStatus> {
    st.instances.iter().find(|i| i.name == name)
}

/// Why the peer cannot take over, or nothing.
pub fn peer_problems(peer: &Status, name: &str) -> Vec<String> {
    let Some(p) = find(peer, name) else {
        return vec![format!("the peer {} runs no instance {name}", peer.node)];
    };
    let mut out = peer.problems();
    if p.state != "BACKUP" {
        out.push(format!(
            "instance {name} is {} on the peer, not BACKUP",
            p.state
        ));
    }
    if p.stepped_down {
        out.push(format!("instance {name} is stepped down on the peer"));
    }
    if !p.reasons.is_empty() {
        out.push(format!(
            "instance {name} on the peer: {}",
            p.reasons.join("; ")
        ));
    }
    match p.last_advert_age_ms {
        Some(age) if age <= p.master_down_ms => {}
        Some(age) => out.push(format!(
            "the peer last heard an advert {age} ms ago (more than its master-down interval of {} ms)",
            p.master_down_ms
        )),
        None => out.push("the peer has never heard an advert from this node".into()),
    }
    out
}

/// How the nodes' configurations differ, or nothing: what this node's `[cluster]` knows of
/// each peer, and, for the peer asked at `--peer-admin`, its digests against this node's
/// (which needs no `[cluster]`).
pub fn parity_problems(local: &Status, peer: Option<&Status>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(c) = &local.cluster {
        if let Some(e) = &c.error {
            out.push(format!("the cluster channel does not run here ({e})"));
        }
        for p in &c.peers {
            if p.parity != "in parity" {
                let why = match &p.error {
                    Some(e) if p.parity.starts_with("unknown") => format!("{} ({e})", p.parity),
                    _ => p.parity.clone(),
                };
                out.push(format!("{}: {why}", p.name));
            }
        }
    }
    if let Some(peer) = peer {
        let problem = match (&local.parity, &peer.parity) {
            (Some(ours), Some(theirs)) => {
                let drift = ours.drift(theirs);
                (!drift.is_empty()).then(|| {
                    format!(
                        "{}: drift: {}",
                        peer.node,
                        drift
                            .iter()
                            .map(|d| d.section.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            }
            (None, _) => Some(format!(
                "{}: this node's digests are unavailable: {}",
                local.node,
                local.parity_error.as_deref().unwrap_or("not computed")
            )),
            (_, None) => Some(format!(
                "{}: its digests are unavailable: {}",
                peer.node,
                peer.parity_error.as_deref().unwrap_or("an older hapd")
            )),
        };
        // The same drift seen by [cluster] and in the peer's /status is said once.
        if let Some(p) = problem.filter(|p| !out.contains(p)) {
            out.push(p);
        }
    }
    out
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let until = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => eprintln!("  ({what}: {e:#})"),
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until probes sent after `from` have answered for `steady` in a row; false on timeout.
async fn until_served(p: &Prober, from: Instant, steady: Duration, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        let s = p.since(from);
        // The run of answered probes at the end, from its first probe.
        let run_start = s
            .iter()
            .rev()
            .take_while(|(_, done)| done.is_some())
            .last()
            .map(|(t, _)| *t);
        if let (Some(start), Some((end, _))) = (run_start, s.last()) {
            if *end - start >= steady {
                return true;
            }
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (code, body) = client::request(addr, Method::POST, path).await?;
    if code != 200 {
        bail!("{path}: {code}: {}", body.trim());
    }
    Ok(body.trim().to_string())
}

/// Runs the drill; prints what it does and sees. `Ok(true)` when the service came back after
/// each step (within `max_outage` if set) and the pair ended as it started.
pub async fn run(plan: Plan) -> anyhow::Result<bool> {
    // 1. Preflight.
    let local = client::status(plan.admin).await?;
    let name = match &plan.instance {
        Some(n) => n.clone(),
        None => match local.instances.as_slice() {
            [one] => one.name.clone(),
            [] => bail!("node {} runs no VRRP instance", local.node),
            _ => bail!(
                "node {} runs several instances; name one with --instance ({})",
                local.node,
                local
                    .instances
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let me = find(&local, &name)
        .ok_or_else(|| anyhow!("node {} runs no instance {name}", local.node))?;
    if me.state != "MASTER" {
        bail!(
            "refused: instance {name} is {} on {}; run the drill on the master ({})",
            me.state,
            local.node,
            me.master.as_deref().unwrap_or("unknown")
        );
    }
    if me.stepped_down {
        bail!("refused: instance {name} is already stepped down");
    }
    let preempt = me.preempt;
    println!(
        "drill {name}: {} is MASTER (priority {}), VIPs {}",
        local.node,
        me.effective_priority,
        me.virtual_ips.join(", ")
    );
    let mut peer_status = None;
    let peer_node = match plan.peer_admin {
        Some(pa) => {
            let peer = client::status(pa)
                .await
                .with_context(|| format!("refused: cannot ask the peer at {pa}"))?;
            let problems = peer_problems(&peer, &name);
            if !problems.is_empty() {
                bail!(
                    "refused: the peer {} is not ready to take over: {}",
                    peer.node,
                    problems.join("; ")
                );
            }
            let p = find(&peer, &name).map_or(0, |p| p.effective_priority);
            println!(
                "  peer {} is a healthy BACKUP (priority {p}) that hears this node",
                peer.node
            );
            let node = peer.node.clone();
            peer_status = Some(peer);
            Some(node)
        }
        None => {
            println!("  peer not checked (--no-peer-check)");
            None
        }
    };
    let drift = parity_problems(&local, peer_status.as_ref());
    match (drift.is_empty(), plan.force) {
        (true, _) if local.cluster.is_none() && peer_status.is_none() => {
            println!("  parity not checked (no [cluster] and no peer asked)")
        }
        (true, _) => println!("  the nodes are in parity"),
        (false, true) => println!(
            "  parity: {} (--force: drilling anyway)",
            drift.join("; ")
        ),
        (false, false) => bail!(
            "refused: the nodes' configurations differ ({}): a failover would change the service; make them match (hapd status shows both sides) or run with --force",
            drift.join("; ")
        ),
    }
    let prober = Prober::start(plan.probe.clone(), plan.probe_interval, plan.probe_timeout);
    let baseline_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = outage(&prober.since(baseline_from));
    if base.failed > 0 || base.sent == 0 {
        bail!(
            "refused: the probe fails before the drill ({} of {} failed): fix the probe or the service first",
            base.failed,
            base.sent
        );
    }
    println!(
        "  probe http://{}{} answers ({} of {} in 1 s)",
        plan.probe.host, plan.probe.path, base.sent, base.sent
    );

    // 2. Step down.
    let t0 = Instant::now();
    println!(
        "  step down: {}",
        post(plan.admin, &format!("/step-down?instance={name}")).await?
    );
    let moved = wait_for(
        "waiting for the peer to take over",
        plan.timeout,
        async || {
            let st = client::status(plan.admin).await?;
            Ok(find(&st, &name).is_some_and(|i| {
                i.state == "BACKUP"
                    && i.master
                        .as_deref()
                        .is_some_and(|m| !m.contains("this node"))
            }))
        },
    )
    .await?;
    let served = until_served(&prober, t0, Duration::from_secs(1), plan.timeout).await;
    let down = outage(&prober.since(t0 - plan.probe_interval));
    let new_master = client::status(plan.admin)
        .await
        .ok()
        .and_then(|st| find(&st, &name).and_then(|i| i.master.clone()));
    let mut ok = moved && served;
    println!(
        "  step-down outage: {} ms ({} of {} probes failed); master now {}",
        down.longest.as_millis(),
        down.failed,
        down.sent,
        new_master.as_deref().unwrap_or("unknown")
    );
    if !moved {
        println!(
            "  FAIL: {} did not become master within {:?}",
            peer_node.as_deref().unwrap_or("the peer"),
            plan.timeout
        );
    }
    if !served {
        println!(
            "  FAIL: the probe was not answered steadily within {:?}",
            plan.timeout
        );
    }

    // 3. Hand back (always, even after a failure: leave the pair as it was).
    let t1 = Instant::now();
    println!(
        "  hand back: {}",
        post(plan.admin, &format!("/hand-back?instance={name}")).await?
    );
    let back = if preempt {
        let b = wait_for("waiting to become master again", plan.timeout, async || {
            let st = client::status(plan.admin).await?;
            Ok(find(&st, &name).is_some_and(|i| i.state == "MASTER"))
        })
        .await?;
        if !b {
            println!(
                "  FAIL: {} did not take the VIP back within {:?}",
                local.node, plan.timeout
            );
        }
        b
    } else {
        println!("  preempt is off: {} stays BACKUP", local.node);
        true
    };
    let served_back = until_served(&prober, t1, Duration::from_secs(1), plan.timeout).await;
    let up = outage(&prober.since(t1 - plan.probe_interval));
    println!(
        "  hand-back outage: {} ms ({} of {} probes failed)",
        up.longest.as_millis(),
        up.failed,
        up.sent
    );
    ok &= back && served_back;
    if let Some(max) = plan.max_outage {
        for (step, o) in [("step-down", &down), ("hand-back", &up)] {
            if o.longest > max {
                println!(
                    "  FAIL: {step} outage {} ms is over --max-outage {} ms",
                    o.longest.as_millis(),
                    max.as_millis()
                );
                ok = false;
            }
        }
    }
    println!("drill {name}: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_the_longest_time_without_an_answer() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // (sent, answered after) in ms; None: failed.
        let at = |sent: u64, after: Option<u64>| (ms(sent), after.map(|a| ms(sent + a)));
        let s = [
            at(0, Some(1)),
            at(10, Some(1)),
            at(20, None),
            at(30, None),
            at(40, Some(45)), // waited for ARP: answered at 85
            at(50, Some(40)), // answered at 90
            at(60, None),
            at(70, Some(1)), // 71
        ];
        assert_eq!(
            outage(&s),
            Outage {
                longest: Duration::from_millis(60), // answers at 11 then 71
                failed: 3,
                sent: 8
            }
        );
        assert_eq!(outage(&s[..2]).longest, Duration::from_millis(10));
        // Answers stopped: from the last answer to the last probe sent.
        assert_eq!(outage(&s[..4]).longest, Duration::from_millis(19));
        assert_eq!(outage(&[]).longest, Duration::ZERO);
    }

    #[test]
    fn probe_urls() {
        let p = Probe::parse("http://198.18.0.100:8080/health?x=1").unwrap();
        assert_eq!(p.addr.to_string(), "198.18.0.100:8080");
        assert_eq!(p.host, "198.18.0.100:8080");
        assert_eq!(p.path, "/health?x=1");
        let p = Probe::parse("http://198.18.0.100").unwrap();
        assert_eq!((p.addr.port(), p.path.as_str()), (80, "/"));
        let e = Probe::parse("https://198.18.0.100/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http://"), "{e}");
        assert!(Probe::parse("not a url").is_err());
    }

    #[test]
    fn a_peer_that_does_not_hear_us_or_is_unhealthy_is_refused() {
        let inst = InstanceStatus {
            name: "VI_1".into(),
            state: "BACKUP".into(),
            last_advert_age_ms: Some(12),
            master_down_ms: 36,
            ..InstanceStatus::default()
        };
        let mut peer = Status {
            node: "b".into(),
            instances: vec![inst],
            ..Status::default()
        };
        assert!(peer_problems(&peer, "VI_1").is_empty());
        assert!(!peer_problems(&peer, "VI_2").is_empty());
        peer.instances[0].last_advert_age_ms = Some(500);
        let p = peer_problems(&peer, "VI_1");
        assert!(p[0].contains("500 ms ago"), "{p:?}");
        peer.instances[0].last_advert_age_ms = Some(5);
        peer.instances[0].state = "FAULT".into();
        let p = peer_problems(&peer, "VI_1");
        assert!(p.iter().any(|x| x.contains("not BACKUP")), "{p:?}");
        peer.instances[0].state = "BACKUP".into();
        peer.instances[0].reasons = vec!["track_proxy failing (-50)".into()];
        assert!(!peer_problems(&peer, "VI_1").is_empty());
    }
}
