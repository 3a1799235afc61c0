//! `hapd run`: the daemon's main loop. One task drives every VRRP instance: guard events and
//! timers go into the engines, their actions come out as adverts, address changes and ARP.
//! A graceful stop is one more phase of the same loop: every master resigns, keeps its
//! addresses until a successor is heard, then hands them over while its flows drain
//! ([`router::Move`]).
mod fence;
mod router;
mod timer;

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use proxy_common::maps::{
    GuardEvent, EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_MASTER_DOWN, EV_NEW_SOURCE,
    EV_PRIORITY_CHANGE, EV_PRIORITY_ZERO,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

pub use fence::FENCE_TIMEOUT;

use self::{
    router::{now, Ctx, Router},
    timer::DeadlineTimer,
};
use crate::{
    config::Config,
    control::{AuthSettings, Control, GuardFacts},
    dataplane::{ip_of, Dataplane, InstanceSpec},
    link,
    vrrp::{
        fsm::{Heard, State},
        notify::NOTIFY_TIMEOUT,
        track::{self, ScriptState},
        Centisecs,
    },
};

/// What an embedding program (the proxy, tests) can hand the daemon.
#[derive(Default)]
pub struct Options {
    /// The proxy's health for `track_proxy` (see [`crate::health::ProxyHealth`]).
    pub proxy_health: Option<watch::Receiver<bool>>,
    /// Stops the daemon like SIGTERM when it turns true.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// Requests from the admin endpoint.
    pub control: Option<mpsc::Receiver<Control>>,
    /// The proxy, to move its clients to the successor on a graceful stop.
    pub proxy: Option<std::sync::Arc<crate::proxy::ProxyView>>,
    /// This process succeeds a running hapd (`hapd upgrade`): its engines are resumed, not
    /// started.
    pub successor: Option<std::sync::Arc<crate::upgrade::Successor>>,
    /// How often to tell the service manager's watchdog that the loop runs (see
    /// [`crate::notify`]).
    pub watchdog: Option<Duration>,
    /// `[[anycast]]` second chance: the guard's tables as they change, and where to say
    /// whether the guard runs in XDP on the groups' interfaces.
    pub anycast: Option<(
        mpsc::Receiver<crate::anycast::Tables>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    )>,
    /// On a stop, the guard goes here instead of being detached: the caller drops it once
    /// the proxy's connections are gone (anycast's second chance brings them their segments
    /// until then, and the other nodes count this one while its guard answers).
    pub keep_guard: Option<tokio::sync::oneshot::Sender<Dataplane>>,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped: resigned, addresses handed over or released, guard detached.
    Stopped,
    /// A successor process runs the engines, the addresses and the guard now.
    HandedOver,
}

/// Where the loop is in the daemon's life.
enum Phase {
    /// Electing and serving.
    Running,
    /// Resigned with priority 0: masters hold their addresses until a successor is heard
    /// (bounded: [`router::Move::Holding`]), then hand them over and drain; the loop ends when
    /// no move is left.
    Stopping,
}

/// Runs until SIGTERM or SIGINT, then resigns mastership, removes the virtual addresses,
/// detaches the guard and removes the pins.
pub async fn run(config: Config) -> anyhow::Result<Ended> {
    run_with(config, Options::default()).await
}

/// As [`run`], with inputs from an embedding program.
pub async fn run_with(config: Config, mut opts: Options) -> anyhow::Result<Ended> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (conn, nl, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mut specs = config
        .vrrp
        .iter()
        .map(|v| {
            InstanceSpec::from_config(v.get_ref()).map(|s| InstanceSpec {
                served: crate::dataplane::served_ports(&config, v.get_ref()),
                ..s
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let successor = opts.successor.take();
    // The anycast groups' interfaces: the guard runs there for second chance.
    let mut anycast_ifaces: Vec<(String, u32, crate::config::XdpMode)> = Vec::new();
    for g in &config.anycast {
        let g = g.get_ref();
        let ifindex = nix::net::if_::if_nametoindex(g.interface.as_str())
            .with_context(|| format!("anycast {}: interface {}", g.name, g.interface))?;
        if !anycast_ifaces.iter().any(|(n, ..)| *n == g.interface) {
            anycast_ifaces.push((g.interface.clone(), ifindex, g.xdp));
        }
    }
    let pin_dir = Some(config.node.pin_dir.as_path());
    let mut dp = match &successor {
        Some(s) => Dataplane::start_successor(&specs, &anycast_ifaces, pin_dir, &s.offer.guards)?,
        None => Dataplane::start(&specs, &anycast_ifaces, pin_dir)?,
    };
    let mut anycast_tables = match opts.anycast.take() {
        Some((rx, xdp)) => {
            let all_xdp = anycast_ifaces.iter().all(|(n, ..)| {
                matches!(dp.modes().get(n), Some(crate::dataplane::GuardMode::Xdp(_)))
            });
            if !all_xdp {
                warn!("anycast: the guard does not run in XDP on every group's interface: no second chance there");
            }
            xdp.store(all_xdp, std::sync::atomic::Ordering::Relaxed);
            Some(rx)
        }
        None => None,
    };
    let (fence_tx, mut fence_rx) = mpsc::channel(16);
    let ctx = Ctx {
        nl: nl.clone(),
        fence_tx,
        proxy: opts.proxy.clone(),
        drain_timeout: config
            .server
            .as_ref()
            .map_or(Duration::from_secs(10), |s| s.drain_timeout.0),
    };
    let mut routers = Vec::new();
    for (i, (v, spec)) in config.vrrp.iter().zip(&specs).enumerate() {
        routers.push(Router::new(i, v.get_ref(), spec, &config, &nl, successor.is_some()).await?);
    }
    let (link_tx, mut link_rx) = mpsc::channel(64);
    link::watch(link_tx)?;
    let (script_tx, mut script_rx) = mpsc::channel::<ScriptState>(64);
    let _scripts: Vec<_> = config
        .track_script
        .iter()
        .map(|t| track::spawn(t.get_ref(), script_tx.clone()))
        .collect();
    let mut script_states: HashMap<String, bool> = HashMap::new();
    let mut health = opts.proxy_health;
    let mut proxy_healthy = health.as_ref().is_none_or(|h| *h.borrow());
    let mut shutdown = opts.shutdown;
    let mut control = opts.control;
    let mut phase = Phase::Running;

    // Everything that can fail is made before a successor commits (after that, failing would
    // leave the node without VRRP).
    let mut timer = DeadlineTimer::new().context("creating the engines' timer")?;
    // How often a planned move in progress is advanced (see `Router::poll_move`).
    let mut move_tick = tokio::time::interval(Duration::from_millis(5));
    move_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    match &successor {
        None => {
            info!(node = %config.node.name, instances = routers.len(), "hapd ready");
            for r in &mut routers {
                let t = now();
                let up = link::state(&nl, r.key.ifindex).await?;
                r.link_up = up;
                r.engine.set_link(t, up);
                r.apply_tracking(t, &script_states, proxy_healthy);
                r.engine.handle_startup(t);
                r.act(&ctx, &mut dp).await;
            }
        }
        Some(s) => {
            let mut links = Vec::new();
            for r in &routers {
                links.push(link::state(&nl, r.key.ifindex).await?);
            }
            // From here the predecessor is silent until we commit: resume at once.
            let (engines, scripts) = s.prepared().await?;
            let t0 = std::time::Instant::now();
            dp.take_over_tables()?;
            for r in &mut routers {
                let h = engines
                    .iter()
                    .find(|e| e.name == r.name)
                    .with_context(|| format!("the running hapd did not hand over {}", r.name))?;
                r.resume(h);
            }
            script_states.extend(scripts);
            dp.start_events()?;
            for (r, up) in routers.iter_mut().zip(links) {
                let t = now();
                // As the loop does at a deadline: a backup first reads the adverts the guard
                // recorded (they move its master-down timer); then what is due (a master's
                // advert, overdue by the handover) goes out.
                if r.engine.state() == State::Backup {
                    r.refresh_from_guard(&dp);
                }
                if r.engine.poll_timeout().is_some_and(|d| d <= t) {
                    r.engine.handle_timeout(t);
                }
                r.act(&ctx, &mut dp).await;
                if up != r.link_up {
                    r.link_up = up;
                    r.engine.set_link(t, up);
                    r.act(&ctx, &mut dp).await;
                }
            }
            if let Err(e) = s.committed().await {
                // The predecessor is gone (its end of the channel closed): the node is ours.
                warn!("upgrade: telling the previous process: {e:#}; serving on");
            }
            dp.own();
            info!(
                node = %config.node.name,
                instances = routers.len(),
                "hapd ready (upgraded; engines resumed {:?} after the state arrived)",
                t0.elapsed()
            );
        }
    }
    crate::notify::ready();
    let mut ended = Ended::Stopped;
    // An interval only when the service manager has a watchdog (nothing wakes the loop else).
    let mut watchdog = opts.watchdog.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut handled: Option<Duration> = None;
    loop {
        if matches!(phase, Phase::Stopping) && routers.iter().all(|r| r.moving.is_none()) {
            break;
        }
        let deadline = routers.iter().filter_map(|r| r.next_wake(&dp)).min();
        // One master whose adverts make the next deadline: a periodic timer carries them.
        let period = match routers.as_slice() {
            [r] if r.engine.poll_timeout() == deadline => r.engine.advert_period(),
            _ => None,
        };
        timer.arm(deadline, period);
        if deadline.is_some_and(|d| d <= now()) && deadline != handled {
            // Already due (an expiry may have been folded into the one just handled). Once per
            // deadline: one that handling leaves due waits for the timer like any other.
            handled = deadline;
            handle_timeouts(&mut routers, &mut dp, &ctx).await;
            continue;
        }
        let health_changed = async {
            match &mut health {
                Some(h) => h.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // Armed while running only: the value stays true once asked, and a second "request"
        // from it would cut the graceful stop short.
        let running = matches!(phase, Phase::Running);
        let stop_asked = async {
            match &mut shutdown {
                Some(s) if running => loop {
                    if *s.borrow_and_update() {
                        break;
                    }
                    if s.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                },
                _ => std::future::pending().await,
            }
        };
        // Why to stop: the embedding program asked, SIGTERM or SIGINT.
        let stop_requested = async {
            tokio::select! {
                _ = stop_asked => "asked to stop",
                _ = term.recv() => "SIGTERM: stopping",
                _ = int.recv() => "SIGINT: stopping",
            }
        };
        let moving = routers.iter().any(|r| r.move_pending());
        tokio::select! {
            // The timer first: at 10 ms adverts it is most of what wakes the loop, and a tick
            // then costs no poll of the other sources.
            biased;
            _ = timer.expired() => handle_timeouts(&mut routers, &mut dp, &ctx).await,
            ev = dp.next_event() => match ev {
                Some(ev) => deliver(&mut routers, &ev, &ctx, &mut dp).await,
                None => break,
            },
            Some(change) = link_rx.recv() => {
                for r in routers.iter_mut().filter(|r| r.key.ifindex == change.ifindex) {
                    r.link_up = change.up;
                    r.engine.set_link(now(), change.up);
                    r.act(&ctx, &mut dp).await;
                }
            }
            Some(st) = script_rx.recv() => {
                script_states.insert(st.name.clone(), st.healthy);
                for r in routers.iter_mut().filter(|r| r.scripts.iter().any(|(n, _)| *n == st.name)) {
                    r.apply_tracking(now(), &script_states, proxy_healthy);
                    r.act(&ctx, &mut dp).await;
                }
            }
            Some(tables) = async {
                match &mut anycast_tables {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if dp.set_anycast(&tables) {
                    let usable: Vec<String> = tables
                        .iter()
                        .map(|(_, t)| format!("{:#010b}", t.usable))
                        .collect();
                    tracing::debug!("anycast second chance: tables written, usable nodes {usable:?}");
                }
            }
            Some((i, ok)) = fence_rx.recv() => {
                if let Some(r) = routers.get_mut(i) {
                    r.engine.handle_fence_result(now(), ok);
                    r.act(&ctx, &mut dp).await;
                }
            }
            true = health_changed => {
                proxy_healthy = health.as_mut().is_none_or(|h| *h.borrow_and_update());
                info!("proxy {}", if proxy_healthy { "healthy" } else { "unhealthy" });
                for r in routers.iter_mut().filter(|r| r.track_proxy.is_some()) {
                    r.apply_tracking(now(), &script_states, proxy_healthy);
                    r.act(&ctx, &mut dp).await;
                }
            }
            Some(req) = async {
                match &mut control {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => match req {
                Control::Status(reply) => {
                    let instances = routers
                        .iter()
                        .zip(&config.vrrp)
                        .map(|(r, v)| r.facts(&dp, v.get_ref()))
                        .collect();
                    let guard = dp.counters().ok().map(|counters| GuardFacts {
                        pin_dir: dp.xdp().and_then(|x| x.pin_dir()).map(|d| d.to_owned()),
                        counters,
                    });
                    let _ = reply.send((instances, guard));
                }
                Control::StepDown { instance, on, reply } => {
                    let answer = match routers.iter_mut().find(|r| r.name == instance) {
                        None => Err(format!("no VRRP instance named {instance:?}")),
                        Some(r) => {
                            let before = r.engine.state();
                            r.engine.set_stepped_down(now(), on);
                            r.act(&ctx, &mut dp).await;
                            let verb = if on { "stepped down" } else { "handed back" };
                            info!("{}: {verb} by a drill ({before} => {})", r.name, r.engine.state());
                            Ok(format!("{}: {verb}; was {before}, now {}", r.name, r.engine.state()))
                        }
                    };
                    let _ = reply.send(answer);
                }
                Control::SetAuth { auth, reply } => {
                    let _ = reply.send(apply_auth(&mut routers, &mut specs, &mut dp, auth));
                }
                Control::Prepare { reply } => {
                    let answer = match (&phase, dp.handoff_blocker()) {
                        (Phase::Stopping, _) => Err("hapd is stopping".to_string()),
                        (Phase::Running, Some(why)) => Err(why),
                        (Phase::Running, None) => routers
                            .iter()
                            .map(Router::handoff)
                            .collect::<Result<Vec<_>, _>>()
                            .map(|_| dp.modes().clone()),
                    };
                    let _ = reply.send(answer);
                }
                Control::Handoff { reply } => {
                    if hand_off(&mut routers, &mut dp, &ctx, phase_running(&phase), &script_states, &specs, reply).await {
                        ended = Ended::HandedOver;
                        break;
                    }
                }
                Control::Reclaim { reply } => {
                    reclaim(&mut dp, &specs);
                    let _ = reply.send(());
                }
            },
            _ = async {
                match &mut watchdog {
                    Some(w) => w.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                // This loop runs; the proxy's threads are checked too, off the loop (a wedged
                // worker must not delay an advert).
                let proxy = ctx.proxy.clone();
                tokio::spawn(async move { crate::notify::watchdog(proxy.as_deref()).await });
            }
            why = stop_requested => {
                info!("{why}");
                crate::notify::stopping();
                phase = match phase {
                    Phase::Running => resign(&mut routers, &ctx, &mut dp).await,
                    // A second request while the addresses move stops at once.
                    Phase::Stopping => break,
                };
            }
            // A persistent interval: a sleep made anew on each pass would never expire while
            // other timers wake the loop more often than it lasts.
            _ = move_tick.tick(), if moving => {
                for r in routers.iter_mut().filter(|r| r.move_pending()) {
                    r.poll_move(&ctx, &mut dp).await;
                }
            }
        }
    }
    if ended == Ended::HandedOver {
        // The successor runs the engines, the addresses and the guard: nothing of them is
        // undone here. Queued notifications still run.
        for r in &mut routers {
            if let Some((n, task)) = r.notifier.take() {
                drop(n);
                let _ = tokio::time::timeout(NOTIFY_TIMEOUT, task).await;
            }
        }
        dp.leave();
        info!("VRRP handed over to the successor");
        return Ok(ended);
    }
    // Stopped in the middle of a move (a second signal): nothing is left to carry flows.
    for r in &mut routers {
        if r.moving.is_some() {
            r.abandon_move(&ctx, &mut dp).await;
        }
    }
    // Let every instance's queued notifications (STOP included) run before we exit.
    for r in &mut routers {
        if let Some((n, task)) = r.notifier.take() {
            drop(n);
            if tokio::time::timeout(NOTIFY_TIMEOUT, task).await.is_err() {
                warn!("{}: notify commands still running at exit", r.name);
            }
        }
    }
    let counters = dp.counters().ok();
    if let Some(c) = counters {
        info!("guard counters at stop: {c:?}");
    }
    match opts.keep_guard.take() {
        Some(keep) => {
            if let Err(mut dp) = keep.send(dp) {
                dp.shutdown();
            }
        }
        None => dp.shutdown(),
    }
    Ok(ended)
}

fn phase_running(p: &Phase) -> bool {
    matches!(p, Phase::Running)
}

/// An advert event from the guard, to its instance's engine.
async fn deliver(routers: &mut [Router], ev: &GuardEvent, ctx: &Ctx, dp: &mut Dataplane) {
    let key = ev.key();
    let Some(r) = routers.iter_mut().find(|r| r.key == key) else {
        return;
    };
    if ev.flags & EV_MASTER_DOWN != 0 {
        // Not an advert: the master-down timer ran out in the kernel. The engine decides, on
        // the guard's record of the last advert, as at its own deadline.
        info!(
            "{}: the master-down timer ran out in the kernel (last advert from {} with \
             priority {})",
            r.name,
            ip_of(&ev.src, key.family()),
            ev.priority
        );
        expire(r, dp, ctx, now()).await;
        return;
    }
    info!("{}", describe(&r.name, ev));
    r.delivered_ns = r.delivered_ns.max(ev.time_ns);
    r.engine.handle_advert(
        Duration::from_nanos(ev.time_ns),
        Heard {
            src: ip_of(&ev.src, key.family()),
            priority: ev.priority,
            interval: Centisecs(ev.interval_cs),
        },
    );
    r.act(ctx, dp).await;
}

/// A hitless upgrade's handover (see [`crate::upgrade`]): stops reading the guard's events,
/// gives the engines the events already read, answers their state and waits, silent, for the
/// verdict. The upgrade owns the one deadline (`Host::upgrade`, a few advert intervals) and
/// always answers; its end dropped counts as `false`. `true`: the successor runs them, the
/// loop ends. `false`: the guard is ours again and the loop carries on (its overdue timers
/// fire at once).
async fn hand_off(
    routers: &mut [Router],
    dp: &mut Dataplane,
    ctx: &Ctx,
    running: bool,
    scripts: &HashMap<String, bool>,
    specs: &[InstanceSpec],
    reply: tokio::sync::oneshot::Sender<Result<crate::control::Handoff, String>>,
) -> bool {
    if !running {
        let _ = reply.send(Err("hapd is stopping".into()));
        return false;
    }
    let silent = std::time::Instant::now();
    dp.pause_events().await;
    while let Some(ev) = dp.try_event() {
        deliver(routers, &ev, ctx, dp).await;
    }
    let engines = match routers
        .iter()
        .map(Router::handoff)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(e) => e,
        Err(why) => {
            reclaim(dp, specs);
            let _ = reply.send(Err(why));
            return false;
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handoff = crate::control::Handoff {
        engines,
        scripts: scripts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        verdict: tx,
    };
    let committed = reply.send(Ok(handoff)).is_ok() && matches!(rx.await, Ok(true));
    if committed {
        info!(
            "upgrade: VRRP handed over; this process's loop was silent for {:?} until the \
             successor resumed",
            silent.elapsed()
        );
    } else {
        warn!("upgrade: the successor did not take over; this process carries on");
        reclaim(dp, specs);
    }
    committed
}

/// After a failed upgrade: our program on the links, our reader on the event ring, and the
/// guard's tables as our config has them (the successor wrote its own).
fn reclaim(dp: &mut Dataplane, specs: &[InstanceSpec]) {
    if let Err(e) = dp.reclaim() {
        warn!("upgrade: taking the guard back: {e:#}");
    }
    if let Err(e) = dp.reconfigure(specs) {
        warn!("upgrade: restoring the guard's tables: {e:#}");
    }
}

/// Every engine resigns (a master with priority 0) and holds its VIPs until its successor's
/// first advert arrives (it takes over after its Skew_Time and announces the VIPs with
/// gratuitous ARP), bounded in case there is none; then the flows drain ([`router::Move`]).
async fn resign(routers: &mut [Router], ctx: &Ctx, dp: &mut Dataplane) -> Phase {
    for r in routers.iter_mut() {
        r.engine.handle_shutdown(now());
        r.act(ctx, dp).await;
    }
    Phase::Stopping
}

/// Every engine whose deadline has passed handles it (a backup reads the guard's record first:
/// an advert it holds moves the master-down deadline).
async fn handle_timeouts(routers: &mut [Router], dp: &mut Dataplane, ctx: &Ctx) {
    let t = now();
    for r in routers {
        if r.engine.poll_timeout().is_some_and(|d| d <= t) {
            expire(r, dp, ctx, t).await;
        }
    }
}

/// `r`'s engine handles the timers due at `t` (a backup reads the guard's record first: an
/// advert it holds moves the master-down deadline), and its actions are carried out.
async fn expire(r: &mut Router, dp: &mut Dataplane, ctx: &Ctx, t: Duration) {
    if r.engine.state() == State::Backup {
        r.refresh_from_guard(dp);
    }
    r.engine.handle_timeout(t);
    r.act(ctx, dp).await;
}

/// Applies a reload's `auth_hmac` settings: the guard first (it then verifies with the new keys),
/// then each changed instance's signer. All or nothing: on a failure the guard gets the old
/// settings back.
fn apply_auth(
    routers: &mut [Router],
    specs: &mut [InstanceSpec],
    dp: &mut Dataplane,
    auth: AuthSettings,
) -> Result<(String, AuthSettings), String> {
    let previous: AuthSettings = specs
        .iter()
        .map(|s| (s.name.clone(), s.auth.clone()))
        .collect();
    let mut new_specs = specs.to_vec();
    let mut changed = Vec::new();
    for (name, a) in auth {
        let Some(s) = new_specs.iter_mut().find(|s| s.name == name) else {
            return Err(format!(
                "no VRRP instance named {name:?} runs: restart hapd to add one"
            ));
        };
        if s.auth != a {
            s.auth = a;
            changed.push(name);
        }
    }
    if changed.is_empty() {
        return Ok((String::new(), previous));
    }
    if let Err(e) = dp.reconfigure(&new_specs) {
        if let Err(back) = dp.reconfigure(specs) {
            warn!("restoring the guard's auth_hmac settings: {back:#}");
        }
        return Err(format!("applying auth_hmac: {e:#}"));
    }
    for (r, s) in routers.iter_mut().zip(&new_specs) {
        if changed.contains(&r.name) {
            r.set_auth(s.auth.clone());
        }
    }
    specs.clone_from_slice(&new_specs);
    Ok((
        format!("; auth_hmac applied to {}", changed.join(", ")),
        previous,
    ))
}

/// One line for the log: which instance, who sent what, and why it matters.
pub fn describe(instance: &str, ev: &GuardEvent) -> String {
    let mut why = Vec::new();
    for (bit, text) in [
        (EV_AFTER_SILENCE, "first advert after silence"),
        (EV_NEW_SOURCE, "new master source"),
        (EV_PRIORITY_CHANGE, "priority changed"),
        (EV_PRIORITY_ZERO, "master stepping down (priority 0)"),
        (EV_INTERVAL_CHANGE, "interval changed"),
    ] {
        if ev.flags & bit != 0 {
            why.push(text);
        }
    }
    format!(
        "instance {instance} vrid {}: VRRPv{} advert from {} priority {} (was {}) interval {}ms: {}",
        ev.vrid,
        ev.version,
        ip_of(&ev.src, ev.key().family()),
        ev.priority,
        ev.prev_priority,
        u32::from(ev.interval_cs) * 10,
        why.join(", ")
    )
}
