//! `[[anycast]]`: this node announces a group's prefixes through its BIRD (enabling the
//! group's `protocol static`) while it should serve them, and withdraws them (disabling it)
//! when it should not: the proxy unhealthy (`track_proxy`), healthy for less than `rise`, a
//! withdrawal less than `hold_down` ago (against flapping), or hapd stopping. BIRD exports the
//! protocol's routes to the router by BGP (with BFD); the router spreads flows over the nodes
//! that announce (ECMP). See `docs/anycast.md`.
//!
//! One task per group decides ([`decide`], a pure function tested on its own) and applies the
//! decision over BIRD's control socket ([`bird`]). BIRD unreachable, the protocol unknown or
//! refused: the state says so (status, metrics, log), the group counts as not announced, and
//! the task retries every [`RETRY`]. The wanted state is also sent again every [`RESYNC`]:
//! a BIRD restart or `configure` puts the protocol back to `disabled` from its config.
pub mod bird;
pub mod peers;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use self::bird::{Bird, BirdError};
use crate::{config::anycast::Anycast, status::AnycastStatus};
pub use peers::Tables;

/// How often an unreachable or refusing BIRD is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// How often the wanted state is sent again while nothing changes.
pub const RESYNC: Duration = Duration::from_secs(10);

/// What a group should do now, and when that may change by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub announce: bool,
    /// Why, for status and logs.
    pub why: String,
    /// When to decide again without any input (rise or hold-down ending).
    pub wake: Option<Instant>,
}

/// The inputs of [`decide`].
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    pub now: Instant,
    pub stopping: bool,
    /// An operator drained the group (`hapd anycast drain`).
    pub drained: bool,
    /// Whether the proxy's health counts, and since when it has been healthy (None: it is not).
    pub track_proxy: bool,
    pub healthy_since: Option<Instant>,
    /// Announced now (as BIRD last confirmed).
    pub announced: bool,
    /// The last withdrawal after an announcement.
    pub withdrawn_at: Option<Instant>,
    pub rise: Duration,
    pub hold_down: Duration,
}

/// Whether to announce: never while stopping or with the proxy unhealthy (withdrawn at
/// once); from withdrawn, only after the proxy has been healthy for `rise` and the last
/// withdrawal is `hold_down` old.
pub fn decide(i: Inputs) -> Decision {
    let no = |why: &str, wake: Option<Instant>| Decision {
        announce: false,
        why: why.to_owned(),
        wake,
    };
    if i.stopping {
        return no("withdrawn: hapd is stopping", None);
    }
    if i.drained {
        return no("withdrawn: drained by an operator", None);
    }
    let healthy_since = match (i.track_proxy, i.healthy_since) {
        (true, None) => return no("withdrawn: the proxy is unhealthy", None),
        (true, Some(t)) => Some(t),
        (false, _) => None,
    };
    if !i.announced {
        if let Some(until) = i
            .withdrawn_at
            .map(|t| t + i.hold_down)
            .filter(|u| *u > i.now)
        {
            return no("withdrawn: hold-down after a withdrawal", Some(until));
        }
        if let Some(until) = healthy_since.map(|t| t + i.rise).filter(|u| *u > i.now) {
            return no(
                "withdrawn: the proxy has been healthy for less than rise",
                Some(until),
            );
        }
    }
    Decision {
        announce: true,
        why: "announced".into(),
        wake: None,
    }
}

/// Per group: its name, its prefixes, and whether an operator drained it.
type Drains = Arc<Vec<(String, Vec<ipnet::Ipv4Net>, watch::Sender<bool>)>>;

/// What one group's task is started with: its config, its status, where it says it has
/// withdrawn for the stop, and whether it is drained.
type GroupTask = (
    Anycast,
    Arc<Mutex<AnycastStatus>>,
    watch::Sender<bool>,
    watch::Receiver<bool>,
);

/// The running groups.
pub struct Groups {
    /// Every group's prefixes, held on `lo` while hapd runs.
    prefixes: Vec<ipnet::Ipv4Net>,
    status: Vec<Arc<Mutex<AnycastStatus>>>,
    /// Per group: drained by an operator.
    drains: Drains,
    stop: watch::Sender<bool>,
    /// Each group's task says when it has withdrawn for the stop.
    withdrawn: Vec<watch::Receiver<bool>>,
}

impl Groups {
    /// The groups of `groups`, not started yet: [`Starter::start`] starts them (a successor
    /// in an upgrade only once it has committed: until then its predecessor drives BIRD).
    pub fn new(groups: &[Anycast]) -> (Groups, Starter) {
        let (stop, stop_rx) = watch::channel(false);
        let mut status = Vec::new();
        let mut withdrawn = Vec::new();
        let mut tasks = Vec::new();
        let mut drains = Vec::new();
        for g in groups {
            let (drain_tx, drain_rx) = watch::channel(false);
            drains.push((g.name.clone(), g.prefixes.clone(), drain_tx));
            let st = Arc::new(Mutex::new(AnycastStatus {
                name: g.name.clone(),
                prefixes: g.prefixes.iter().map(|p| p.to_string()).collect(),
                bird_socket: g.bird_socket.display().to_string(),
                bird_protocol: g.bird_protocol.clone(),
                state: "starting".into(),
                ..AnycastStatus::default()
            }));
            let (done_tx, done_rx) = watch::channel(false);
            tasks.push((g.clone(), st.clone(), done_tx, drain_rx));
            status.push(st);
            withdrawn.push(done_rx);
        }
        let prefixes: Vec<ipnet::Ipv4Net> =
            groups.iter().flat_map(|g| g.prefixes.clone()).collect();
        let starter = Starter {
            tasks,
            stop: stop.clone(),
            stop_rx,
            prefixes: prefixes.clone(),
            second_chance: None,
        };
        (
            Groups {
                prefixes,
                status,
                drains: Arc::new(drains),
                stop,
                withdrawn,
            },
            starter,
        )
    }

    /// A handle for status (the admin endpoint).
    pub fn view(&self) -> GroupsView {
        GroupsView(self.status.clone(), self.drains.clone())
    }

    /// Withdraws every group (hapd is stopping) and waits until BIRD confirmed it, at most
    /// `bound`. Whether all were: a group BIRD did not confirm may still be announced (the
    /// log says which, and its prefixes stay on `lo`).
    pub async fn withdraw_all(&mut self, bound: Duration) -> bool {
        self.stop.send_replace(true);
        let mut all = true;
        for (w, st) in self.withdrawn.iter_mut().zip(&self.status) {
            let done = matches!(
                tokio::time::timeout(bound, w.wait_for(|d| *d)).await,
                Ok(Ok(_))
            );
            if !done {
                all = false;
                let s = st.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tracing::error!(
                    "anycast {}: BIRD did not confirm the withdrawal within {bound:?} ({}); \
                     {} may still be announced (BIRD protocol {} at {})",
                    s.name,
                    s.error.as_deref().unwrap_or("no answer"),
                    s.prefixes.join(", "),
                    s.bird_protocol,
                    s.bird_socket
                );
            }
        }
        all
    }
}

impl Groups {
    /// Lets go of the prefixes on `lo` (hapd stopped, its connections gone).
    pub async fn release(&self) {
        if let Err(e) = hold(&self.prefixes, false).await {
            warn!("anycast: removing the prefixes from lo: {e:#}");
        }
    }
}

/// Puts `prefixes` on `lo` (a prefix there makes every address in it local), or takes them
/// off.
async fn hold(prefixes: &[ipnet::Ipv4Net], on: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (conn, nl, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    let task = tokio::spawn(conn);
    let lo = nix::net::if_::if_nametoindex("lo").context("the loopback interface")?;
    let prefixes: Vec<ipnet::IpNet> = prefixes.iter().map(|p| (*p).into()).collect();
    let r = if on {
        crate::vip::add(&nl, lo, &prefixes).await
    } else {
        crate::vip::remove(&nl, lo, &prefixes).await.map(drop)
    };
    task.abort();
    r
}

/// What starts the groups' tasks.
pub struct Starter {
    tasks: Vec<GroupTask>,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    prefixes: Vec<ipnet::Ipv4Net>,
    /// Where the guard's tables for second chance go, and whether the guard runs in XDP.
    second_chance: Option<(mpsc::Sender<Tables>, Arc<std::sync::atomic::AtomicBool>)>,
}

impl Starter {
    /// Second chance: the groups' peers are read and their tables sent to `tx` (the daemon
    /// writes them to the guard, and sets `xdp` when the guard runs in XDP).
    pub fn with_second_chance(
        mut self,
        tx: mpsc::Sender<Tables>,
        xdp: Arc<std::sync::atomic::AtomicBool>,
    ) -> Starter {
        self.second_chance = Some((tx, xdp));
        self
    }

    /// Starts one task per group on the current runtime. `health`: the proxy's. `resumed`:
    /// this process succeeds a running hapd (an upgrade), whose healthy proxy already
    /// announced: a healthy proxy here counts as risen. SIGTERM and SIGINT withdraw every
    /// group at once (before the rest of the stop: the router moves the flows elsewhere).
    pub fn start(self, health: Option<watch::Receiver<bool>>, resumed: bool) {
        let stopper = self.stop;
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                warn!("anycast: cannot watch for SIGTERM; groups are withdrawn at the end of the stop");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("anycast: stopping: withdrawing every group first");
            stopper.send_replace(true);
        });
        let held = self.prefixes;
        if let Some((tx, xdp)) = self.second_chance {
            let groups = self.tasks.iter().map(|t| t.0.clone()).collect();
            let status = self.tasks.iter().map(|t| t.1.clone()).collect();
            tokio::spawn(peers::run(groups, status, tx, xdp));
        }
        tokio::spawn(async move {
            if let Err(e) = hold(&held, true).await {
                warn!("anycast: holding the prefixes on lo: {e:#}; packets to them are not accepted here");
            }
        });
        for (g, st, done, drained) in self.tasks {
            tokio::spawn(run_group(
                g,
                health.clone(),
                st,
                self.stop_rx.clone(),
                done,
                resumed,
                drained,
            ));
        }
    }
}

/// How long a stopping node keeps accepting after BIRD confirmed the withdrawal: the
/// router's route still points here until BGP (and its kernel) have caught up.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The groups' status, readable from another thread.
#[derive(Clone)]
pub struct GroupsView(Vec<Arc<Mutex<AnycastStatus>>>, Drains);

impl GroupsView {
    /// Drains group `name` (`on`: withdrawn until undrained) or undrains it; its prefixes.
    pub fn set_drained(&self, name: &str, on: bool) -> Result<Vec<ipnet::Ipv4Net>, String> {
        let (_, prefixes, tx) = self
            .1
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| format!("no [[anycast]] group named {name:?}"))?;
        tx.send_replace(on);
        Ok(prefixes.clone())
    }

    /// Waits (at most `bound`) until group `name` is withdrawn as BIRD confirmed; whether it
    /// is.
    pub async fn withdrawn(&self, name: &str, bound: Duration) -> bool {
        let end = Instant::now() + bound;
        loop {
            let done = self.0.iter().any(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.name == name && !s.announced && s.error.is_none() && s.state.contains("drained")
            });
            if done {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn status(&self) -> Vec<AnycastStatus> {
        self.0
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}

/// One group: decides, applies, waits for the next input.
async fn run_group(
    g: Anycast,
    mut health: Option<watch::Receiver<bool>>,
    st: Arc<Mutex<AnycastStatus>>,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    resumed: bool,
    mut drained: watch::Receiver<bool>,
) {
    let healthy_now = |h: &Option<watch::Receiver<bool>>| h.as_ref().is_none_or(|h| *h.borrow());
    let start = Instant::now();
    let risen = if resumed {
        start.checked_sub(g.rise.0).unwrap_or(start)
    } else {
        start
    };
    let mut healthy_since = healthy_now(&health).then_some(risen);
    let mut announced = false;
    // Whether BIRD's state is known to be `announced`.
    let mut synced = false;
    let mut withdrawn_at: Option<Instant> = None;
    let mut resync = Instant::now();
    let mut retry: Option<Instant> = None;
    let mut conn: Option<Bird> = None;
    let update = |f: &mut dyn FnMut(&mut AnycastStatus)| {
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    };
    let mut changed_at = Instant::now();
    loop {
        let now = Instant::now();
        let d = decide(Inputs {
            now,
            stopping: *stop.borrow(),
            drained: *drained.borrow(),
            track_proxy: g.track_proxy,
            healthy_since,
            announced,
            withdrawn_at,
            rise: g.rise.0,
            hold_down: g.hold_down.0,
        });
        let due = d.announce != announced || !synced || now >= resync;
        if due && retry.is_none_or(|r| now >= r) {
            match apply(&mut conn, &g, d.announce).await {
                Ok(version) => {
                    if d.announce != announced || !synced {
                        info!(
                            "anycast {}: {} {} ({})",
                            g.name,
                            if d.announce {
                                "announcing"
                            } else {
                                "withdrawing"
                            },
                            g.prefixes
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                            d.why
                        );
                        changed_at = now;
                    }
                    if announced && !d.announce {
                        withdrawn_at = Some(now);
                        update(&mut |s| s.withdrawals += 1);
                    }
                    if !announced && d.announce {
                        update(&mut |s| s.announcements += 1);
                    }
                    announced = d.announce;
                    synced = true;
                    retry = None;
                    resync = now + RESYNC;
                    update(&mut |s| {
                        s.announced = announced;
                        s.state = d.why.clone();
                        s.bird = Some(version.clone());
                        s.error = None;
                    });
                }
                Err(e) => {
                    if synced || retry.is_none() {
                        warn!(
                            "anycast {} (BIRD at {}): {e}; what BIRD announces is unknown, \
                             retrying every {RETRY:?}",
                            g.name,
                            g.bird_socket.display()
                        );
                        changed_at = now;
                    }
                    conn = None;
                    // hapd's own decision stands (an error is no withdrawal: no hold-down);
                    // BIRD is told again until it confirms.
                    synced = false;
                    retry = Some(now + RETRY);
                    resync = now + RESYNC;
                    update(&mut |s| {
                        s.announced = false;
                        s.state = format!(
                            "unknown: BIRD cannot be told (hapd wants it {})",
                            if d.announce { "announced" } else { "withdrawn" }
                        );
                        s.error = Some(format!("{}: {e}", g.bird_socket.display()));
                    });
                }
            }
        }
        update(&mut |s| s.since_secs = changed_at.elapsed().as_secs());
        if *stop.borrow() && synced && !announced {
            done.send_replace(true);
            return;
        }
        // Never in the past: a deadline already passed waits for the retry instead.
        let wake = [d.wake, retry, Some(resync)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + RESYNC)
            .max(now + Duration::from_millis(10));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.changed() => {}
            _ = drained.changed() => {}
            changed = async {
                match &mut health {
                    Some(h) => h.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                // The proxy's health gone (its thread ended): unhealthy, if it is tracked.
                let healthy = if changed {
                    healthy_now(&health)
                } else {
                    health = None;
                    !g.track_proxy
                };
                match (healthy, healthy_since) {
                    (true, None) => healthy_since = Some(Instant::now()),
                    (false, Some(_)) => healthy_since = None,
                    _ => {}
                }
            }
        }
    }
}

/// Tells BIRD the wanted state (connecting first if needed); BIRD's version on success.
async fn apply(conn: &mut Option<Bird>, g: &Anycast, announce: bool) -> Result<String, BirdError> {
    if conn.is_none() {
        let mut b = Bird::connect(&g.bird_socket).await?;
        b.static_protocol(&g.bird_protocol).await?;
        *conn = Some(b);
    }
    let b = conn.as_mut().ok_or(BirdError::Closed)?;
    b.set_enabled(&g.bird_protocol, announce).await?;
    Ok(b.version.clone())
}

/// What `hapd check` can see of a group's BIRD: `Err` when BIRD answers and refuses (no such
/// protocol, not a static one, a restricted socket); a warning when it cannot be reached now
/// (hapd retries at run time).
pub async fn check(g: &Anycast) -> Result<Option<String>, String> {
    let mut b = match Bird::connect(&g.bird_socket).await {
        Ok(b) => b,
        Err(e) => return Ok(Some(format!("{e}; hapd will retry at run time"))),
    };
    match b.static_protocol(&g.bird_protocol).await {
        Ok(p) if p.is_up() => Ok(Some(format!(
            "BIRD's protocol {:?} is enabled now (a running hapd announcing, or enabled by hand); \
             BIRD's config should say `disabled;` so that nothing is announced before the \
             proxy is healthy",
            g.bird_protocol
        ))),
        Ok(_) => Ok(None),
        // What BIRD's config lacks is an error; BIRD slow or restarting is not.
        Err(e @ (BirdError::UnknownProtocol(_) | BirdError::NotStatic { .. })) => {
            Err(e.to_string())
        }
        Err(e) => Ok(Some(format!(
            "{} ({}); hapd will retry at run time",
            e,
            g.bird_socket.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn inputs(base: Instant) -> Inputs {
        Inputs {
            now: base,
            stopping: false,
            drained: false,
            track_proxy: true,
            healthy_since: Some(base),
            announced: false,
            withdrawn_at: None,
            rise: Duration::from_millis(500),
            hold_down: Duration::from_secs(2),
        }
    }

    #[test]
    fn announces_after_rise_withdraws_at_once_and_holds_down() {
        let t = Instant::now();
        // Healthy since t: not before t + rise, then yes.
        let d = decide(inputs(t));
        assert!(!d.announce);
        assert_eq!(d.wake, Some(at(t, 500)));
        let d = decide(Inputs {
            now: at(t, 500),
            ..inputs(t)
        });
        assert!(d.announce, "{d:?}");
        // Announced and healthy: stays, whatever rise says.
        let d = decide(Inputs {
            now: at(t, 600),
            announced: true,
            ..inputs(t)
        });
        assert!(d.announce);
        // Unhealthy: withdrawn at once.
        let d = decide(Inputs {
            announced: true,
            healthy_since: None,
            ..inputs(t)
        });
        assert!(!d.announce);
        assert!(d.why.contains("unhealthy"));
        // Healthy again 600 ms after a withdrawal: the hold-down (2 s) rules.
        let w = at(t, 1000);
        let d = decide(Inputs {
            now: at(t, 2200),
            healthy_since: Some(at(t, 1600)),
            withdrawn_at: Some(w),
            ..inputs(t)
        });
        assert!(!d.announce);
        assert_eq!(d.wake, Some(at(t, 3000)));
        let d = decide(Inputs {
            now: at(t, 3000),
            healthy_since: Some(at(t, 1600)),
            withdrawn_at: Some(w),
            ..inputs(t)
        });
        assert!(d.announce, "{d:?}");
    }

    #[test]
    fn stopping_withdraws_and_track_proxy_off_ignores_health() {
        let t = Instant::now();
        let d = decide(Inputs {
            drained: true,
            announced: true,
            ..inputs(t)
        });
        assert!(!d.announce && d.why.contains("drained"), "{d:?}");
        let d = decide(Inputs {
            stopping: true,
            announced: true,
            ..inputs(t)
        });
        assert!(!d.announce);
        let d = decide(Inputs {
            track_proxy: false,
            healthy_since: None,
            ..inputs(t)
        });
        assert!(d.announce, "{d:?}");
    }
}
