//! `hapd run`: the daemon's main loop. One task drives every VRRP instance: guard events and
//! timers go into the engines, their actions come out as adverts, address changes and ARP.
use std::{collections::HashMap, net::Ipv4Addr, process::Stdio, time::Duration};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use proxy_common::maps::{
    GuardEvent, InstanceKey, EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_NEW_SOURCE,
    EV_PRIORITY_CHANGE, EV_PRIORITY_ZERO,
};
use rtnetlink::Handle;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, info, warn};

use crate::{
    admin::status::{AuthStatus, GuardStatus, InstanceStatus},
    config::{Config, Garp, V3Checksum, Vrrp, VrrpVersion},
    dataplane::{monotonic_ns, AuthSpec, Dataplane, InstanceSpec},
    link, vip,
    vrrp::{
        auth::Signer,
        fsm::{self, Action, Heard, Instance, State},
        io::AdvertSocket,
        notify::{Notifier, NOTIFY_TIMEOUT},
        track::{self, ScriptState},
        Advert, Auth, Centisecs, ChecksumMode,
    },
};

/// On a graceful stop, how long the VIPs stay after the successor's first advert (at least;
/// three gratuitous-ARP intervals if that is longer), so its announcement reaches the clients
/// before the addresses go.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(50);

/// On a graceful stop, how long the VIPs stay at most while the proxy's clients move to the
/// successor (see [`crate::proxy::ProxyView::begin_handover`]).
pub const HANDOVER_DRAIN: Duration = Duration::from_secs(1);

/// How long a fence command may run; past it the fence counts as failed.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// What the admin endpoint asks of the VRRP loop.
pub enum Control {
    /// Every instance's state and the guard's counters.
    Status(oneshot::Sender<(Vec<InstanceStatus>, Option<GuardStatus>)>),
    /// A drill: step `instance` down (`on`) or hand it back. The answer says what changed.
    StepDown {
        instance: String,
        on: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A reload: every instance's `auth_hmac` (by instance name) as the new config has it. The
    /// answer says which instances changed and gives the settings they had (to put back if the
    /// rest of the reload fails), or why nothing changed.
    SetAuth {
        auth: AuthSettings,
        reply: oneshot::Sender<Result<(String, AuthSettings), String>>,
    },
}

/// Every instance's `auth_hmac`, by instance name.
pub type AuthSettings = Vec<(String, Option<AuthSpec>)>;

/// Shared by every router's actions.
struct Ctx {
    nl: Handle,
    fence_tx: mpsc::Sender<(usize, bool)>,
}

/// The monotonic clock as the engines see it (the clock of the guard's timestamps).
fn now() -> Duration {
    Duration::from_nanos(monotonic_ns())
}

/// One running VRRP instance and what it needs to act.
struct Router {
    index: usize,
    name: String,
    key: InstanceKey,
    iface: String,
    engine: Instance,
    sock: AdvertSocket,
    /// The advert we send; its priority is set per send.
    advert: Advert,
    vips: Vec<Ipv4Net>,
    garp: Garp,
    /// `last_seen_ns` of the last advert given to the engine, to replay newer ones from the
    /// guard's record.
    delivered_ns: u64,
    /// Track scripts and their weights.
    scripts: Vec<(String, i32)>,
    /// `track_proxy` weight.
    track_proxy: Option<i32>,
    notifier: Option<(Notifier, tokio::task::JoinHandle<()>)>,
    fence: Vec<String>,
    /// During a graceful stop: keep the VIPs until the successor is heard (see [`run_with`]).
    hold_vips: bool,
    /// The (VIP, port) pairs the proxy serves (for the handover).
    served: Vec<proxy_common::maps::ServedPort>,
    /// `auth_hmac`, as the guard and the signer run it.
    auth: Option<AuthSpec>,
    /// For status and metrics.
    stats: RouterStats,
    /// The failing checks and what they cost, for status.
    reasons: Vec<String>,
    link_up: bool,
}

#[derive(Default)]
struct RouterStats {
    transitions: u64,
    last_transition: Option<(std::time::Instant, String)>,
    adverts_sent: u64,
}

impl Router {
    async fn new(
        index: usize,
        v: &Vrrp,
        spec: &InstanceSpec,
        config: &Config,
        nl: &Handle,
    ) -> anyhow::Result<Router> {
        // Start-up: addresses of ours left by a crash or kill -9 go before the election.
        let stale = vip::remove(nl, spec.ifindex, &v.virtual_ips).await?;
        if stale > 0 {
            warn!(
                "{}: removed {stale} virtual address(es) left on {} by an earlier run",
                v.name, v.interface
            );
        }
        let primary = vip::primary(nl, spec.ifindex, &v.interface, &v.virtual_ips).await?;
        let mode = match (v.version, v.v3_checksum) {
            (VrrpVersion::V3, V3Checksum::PseudoHeader) => ChecksumMode::PseudoHeader,
            _ => ChecksumMode::MessageOnly,
        };
        let peers: Vec<Ipv4Addr> = if v.unicast {
            v.peers.clone()
        } else {
            Vec::new()
        };
        let mut sock = AdvertSocket::open(&v.interface, primary, &peers, mode)?;
        sock.set_signer(spec.auth.as_ref().and_then(Signer::new));
        let interval = Centisecs::from_duration(v.advert_interval.0).with_context(|| {
            format!(
                "{}: advert_interval {} in centiseconds",
                v.name, v.advert_interval
            )
        })?;
        let engine = Instance::new(fsm::Config {
            vrid: v.vrid.get(),
            version: v.version.number(),
            priority: v.priority.get(),
            advert_interval: interval,
            preempt: v.preempt,
            preempt_delay: v.preempt_delay.0,
            garp_refresh: (!v.garp.refresh.0.is_zero()).then_some(v.garp.refresh.0),
            fence: !v.fence.is_empty(),
            primary,
        });
        let scripts = v
            .track_scripts
            .iter()
            .filter_map(|n| config.track_script.iter().find(|t| t.get_ref().name == *n))
            .map(|t| (t.get_ref().name.clone(), t.get_ref().weight))
            .collect();
        let advert = Advert {
            version: v.version.number(),
            vrid: v.vrid.get(),
            priority: v.priority.get(),
            interval,
            addrs: v.virtual_ips.iter().map(|n| n.addr()).collect(),
            auth: spec.auth_pass.map_or(Auth::None, Auth::Pass),
        };
        info!(
            "{}: {} vrid {} priority {} from {primary}",
            v.name, v.interface, v.vrid, v.priority
        );
        Ok(Router {
            index,
            scripts,
            track_proxy: v.track_proxy.map(|t| t.weight),
            notifier: Notifier::start(
                &config.node.name,
                &v.name,
                &v.notify,
                v.notify_webhook
                    .as_deref()
                    .and_then(|u| url::Url::parse(u).ok()),
                NOTIFY_TIMEOUT,
            ),
            fence: v.fence.clone(),
            hold_vips: false,
            served: spec.served.clone(),
            auth: spec.auth.clone(),
            stats: RouterStats::default(),
            reasons: Vec::new(),
            link_up: true,
            name: v.name.clone(),
            key: spec.key(),
            iface: v.interface.clone(),
            engine,
            sock,
            advert,
            vips: v.virtual_ips.clone(),
            garp: v.garp,
            delivered_ns: 0,
        })
    }

    /// Carries out what the engine asked for, in order.
    async fn act(&mut self, ctx: &Ctx) {
        let nl = &ctx.nl;
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::SendAdvert { priority } => {
                    self.advert.priority = priority;
                    match self.sock.send(&self.advert) {
                        Ok(()) => self.stats.adverts_sent += 1,
                        Err(e) => warn!("{}: {e:#}", self.name),
                    }
                }
                Action::TakeVips => {
                    if let Err(e) = vip::add(nl, self.key.ifindex, &self.vips).await {
                        warn!("{}: adding virtual addresses: {e:#}", self.name);
                    }
                    self.announce();
                }
                Action::Reannounce => self.announce(),
                Action::ReleaseVips if self.hold_vips => {}
                Action::ReleaseVips => {
                    if let Err(e) = vip::remove(nl, self.key.ifindex, &self.vips).await {
                        warn!("{}: removing virtual addresses: {e:#}", self.name);
                    }
                }
                Action::Transition { from, to, reason } => {
                    info!("{}: {from} => {to} ({reason})", self.name);
                    self.stats.transitions += 1;
                    self.stats.last_transition = Some((
                        std::time::Instant::now(),
                        format!("{from} => {to} ({reason})"),
                    ));
                    if let Some((n, _)) = &self.notifier {
                        n.send(from, to);
                    }
                }
                Action::Fence => self.run_fence(ctx.fence_tx.clone()),
                Action::TellWinner { to, priority } => {
                    self.advert.priority = priority;
                    match self.sock.send_to(&self.advert, to) {
                        Ok(()) => self.stats.adverts_sent += 1,
                        Err(e) => warn!("{}: {e:#}", self.name),
                    }
                }
                Action::Ignored { from, why } => {
                    debug!("{}: advert from {from} ignored: {why}", self.name)
                }
            }
        }
    }

    /// Runs the fence command in the background; its result comes back on `tx`.
    fn run_fence(&self, tx: mpsc::Sender<(usize, bool)>) {
        let (index, name, argv) = (self.index, self.name.clone(), self.fence.clone());
        info!("{name}: the master fell silent; fencing it before taking over: {argv:?}");
        tokio::spawn(async move {
            let ok = match argv.split_first() {
                Some((prog, args)) => {
                    let child = tokio::process::Command::new(prog)
                        .args(args)
                        .stdin(Stdio::null())
                        .kill_on_drop(true)
                        .spawn();
                    match child {
                        Ok(mut c) => match tokio::time::timeout(FENCE_TIMEOUT, c.wait()).await {
                            Ok(Ok(st)) => st.success(),
                            Ok(Err(e)) => {
                                warn!("{name}: fence: {e}");
                                false
                            }
                            Err(_) => {
                                let _ = c.kill().await;
                                false
                            }
                        },
                        Err(e) => {
                            warn!("{name}: cannot run fence {prog:?}: {e}");
                            false
                        }
                    }
                }
                None => false,
            };
            if !ok {
                warn!("{name}: fencing failed; staying backup and trying again");
            }
            let _ = tx.send((index, ok)).await;
        });
    }

    /// Applies the tracked checks: the priority delta and whether a weight-0 check failed.
    fn apply_tracking(
        &mut self,
        now: Duration,
        scripts: &HashMap<String, bool>,
        proxy_healthy: bool,
    ) {
        let mut delta = 0;
        let mut fault = false;
        self.reasons.clear();
        let checks = self
            .scripts
            .iter()
            .map(|(n, w)| {
                (
                    *w,
                    scripts.get(n).copied().unwrap_or(true),
                    format!("track_script {n}"),
                )
            })
            .chain(
                self.track_proxy
                    .map(|w| (w, proxy_healthy, "track_proxy".to_string())),
            );
        for (weight, healthy, what) in checks {
            let (d, f) = track::effect(weight, healthy);
            delta += d;
            fault |= f;
            if !healthy {
                self.reasons.push(if f {
                    format!("{what} failing (fault)")
                } else {
                    format!("{what} failing ({weight:+})")
                });
            }
        }
        self.engine.set_track_fault(now, fault);
        self.engine.set_priority_delta(now, delta);
    }

    /// Runs `auth_hmac` as `auth` from now on (the guard already does); the sequence number
    /// carries on.
    fn set_auth(&mut self, auth: Option<AuthSpec>) {
        self.auth = auth;
        let old = self.sock.take_signer();
        self.sock
            .set_signer(Signer::replace(old, self.auth.as_ref()));
        match &self.auth {
            Some(a) => info!(
                "{}: auth_hmac {}, keys {:?}, signing with {}",
                self.name,
                a.mode_name(),
                a.key_ids(),
                a.sign_with.map_or("none".into(), |k| format!("key {k}"))
            ),
            None => info!("{}: auth_hmac off", self.name),
        }
    }

    /// `auth_hmac` as `/status` shows it.
    fn auth_status(&self, dp: &Dataplane) -> Option<AuthStatus> {
        let a = self.auth.as_ref()?;
        let c = dp.auth_counters(&self.key).unwrap_or_default();
        Some(AuthStatus {
            mode: a.mode_name().into(),
            active_key: self.sock.signing_key(),
            keys: a.key_ids(),
            anti_replay: if a.guard.flags & proxy_common::maps::AUTH_TIME != 0 {
                "time".into()
            } else {
                "monotonic".into()
            },
            window_s: a.guard.window_s,
            accepted_signed: c.signed,
            accepted_unsigned: c.unsigned,
            rejected: [
                ("no_trailer", c.drop_no_trailer),
                ("trailer", c.drop_trailer),
                ("unknown_key", c.drop_unknown_key),
                ("stale", c.drop_stale),
                ("replay", c.drop_replay),
                ("hmac", c.drop_hmac),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        })
    }

    /// The instance as `/status` shows it.
    fn status(&self, dp: &Dataplane, v: &Vrrp) -> InstanceStatus {
        let rec = dp.advert(&self.key);
        let now_ns = monotonic_ns();
        let age_ms = rec
            .filter(|r| r.last_seen_ns > 0)
            .map(|r| now_ns.saturating_sub(r.last_seen_ns) / 1_000_000);
        let state = self.engine.state();
        let down_ms = self.engine.master_down_interval().as_millis() as u64;
        let master = match state {
            State::Master => Some(format!("{} (this node)", self.engine.config().primary)),
            _ => rec
                .filter(|r| r.adverts > 0 && age_ms.is_some_and(|a| a <= down_ms))
                .map(|r| format!("{} (priority {})", Ipv4Addr::from(r.master), r.priority)),
        };
        let mut reasons = self.reasons.clone();
        if !self.link_up {
            reasons.push(format!("{} is down", self.iface));
        }
        if self.engine.stepped_down() {
            reasons.push("stepped down by a drill (priority 1 until handed back)".into());
        }
        InstanceStatus {
            name: self.name.clone(),
            interface: self.iface.clone(),
            vrid: self.key.vrid,
            version: self.advert.version,
            state: state.to_string(),
            master,
            priority: v.priority.get(),
            effective_priority: self.engine.effective_priority(),
            reasons,
            last_advert_age_ms: age_ms,
            transitions: self.stats.transitions,
            last_transition: self.stats.last_transition.as_ref().map(|(_, t)| t.clone()),
            last_transition_age_ms: self
                .stats
                .last_transition
                .as_ref()
                .map(|(t, _)| t.elapsed().as_millis() as u64),
            adverts_sent: self.stats.adverts_sent,
            adverts_received: rec.map_or(0, |r| r.adverts),
            virtual_ips: self.vips.iter().map(|n| n.to_string()).collect(),
            guard: dp
                .modes()
                .get(&self.iface)
                .map_or_else(|| "none".into(), |m| m.to_string()),
            stepped_down: self.engine.stepped_down(),
            preempt: v.preempt,
            advert_interval_ms: v.advert_interval.0.as_millis() as u64,
            master_down_ms: down_ms,
            auth: self.auth_status(dp),
        }
    }

    /// A gratuitous ARP burst for every virtual address, in the background.
    fn announce(&self) {
        let (name, iface) = (self.name.clone(), self.iface.clone());
        let ips = self.vips.iter().map(|n| n.addr()).collect();
        let (repeat, interval) = (self.garp.repeat, self.garp.interval.0);
        tokio::spawn(async move {
            if let Err(e) = vip::garp_burst(iface, ips, repeat, interval).await {
                warn!("{name}: {e:#}");
            }
        });
    }

    /// Before the master-down deadline counts, fold in the newest advert the guard recorded
    /// without waking us (steady state): the deadline moves on if the master is alive.
    fn refresh_from_guard(&mut self, dp: &Dataplane) {
        let Some(rec) = dp.advert(&self.key) else {
            return;
        };
        if rec.last_seen_ns > self.delivered_ns && rec.adverts > 0 {
            self.delivered_ns = rec.last_seen_ns;
            self.engine.handle_advert(
                Duration::from_nanos(rec.last_seen_ns),
                Heard {
                    src: Ipv4Addr::from(rec.master),
                    priority: rec.priority,
                    interval: Centisecs(rec.interval_cs),
                },
            );
        }
    }
}

/// The engines' next deadline as a timerfd on CLOCK_MONOTONIC, the engines' own clock. Its
/// expiry makes the fd readable. A master's steady cadence is one periodic arming: each advert
/// then costs the wake-up, one read and the send, with no system call to re-arm the timer. A
/// tokio timer moved to an earlier deadline from inside the runtime would make the runtime wake
/// itself once more.
struct DeadlineTimer {
    fd: crate::timerfd::AsyncTimerFd,
    /// The next expiry the timer is armed for.
    armed: Option<Duration>,
    /// Its period, when periodic.
    period: Option<Duration>,
}

impl DeadlineTimer {
    fn new() -> std::io::Result<DeadlineTimer> {
        Ok(DeadlineTimer {
            fd: crate::timerfd::AsyncTimerFd::new(nix::sys::timerfd::ClockId::CLOCK_MONOTONIC)?,
            armed: None,
            period: None,
        })
    }

    /// Fires at `deadline` (monotonic time), or never; then every `period` after it, if given.
    /// Nothing to do when it is armed so already.
    fn arm(&mut self, deadline: Option<Duration>, period: Option<Duration>) {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if deadline == self.armed && (deadline.is_none() || period == self.period) {
            return;
        }
        let r = match deadline {
            // An all-zero value would disarm the timer; a deadline is never at boot time.
            Some(d) => {
                let at = nix::sys::time::TimeSpec::from_duration(d.max(Duration::from_nanos(1)));
                let exp = match period {
                    Some(p) => {
                        Expiration::IntervalDelayed(at, nix::sys::time::TimeSpec::from_duration(p))
                    }
                    None => Expiration::OneShot(at),
                };
                self.fd
                    .timer()
                    .set(exp, TimerSetTimeFlags::TFD_TIMER_ABSTIME)
            }
            None => self.fd.timer().unset(),
        };
        match r {
            Ok(()) => {
                self.armed = deadline;
                self.period = period.filter(|_| deadline.is_some());
            }
            // Cannot happen with a valid fd; leave it unarmed so the next loop tries again.
            Err(e) => {
                warn!("arming the engines' timer: {e}");
                self.armed = None;
                self.period = None;
            }
        }
    }

    /// Waits for the timer's next expiry.
    async fn expired(&mut self) {
        match self.fd.wait().await {
            Ok(Ok(n)) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.armed = match (self.armed, self.period) {
                    (Some(at), Some(p)) => Some(at + p * n.max(1)),
                    _ => None,
                };
            }
            Ok(Err(e)) => {
                warn!("reading the engines' timer: {e}");
                self.armed = None;
            }
            // The runtime lost the fd: nothing will wake us through it again.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Every engine whose deadline has passed handles it (a backup reads the guard's record first:
/// an advert it holds moves the master-down deadline).
async fn handle_timeouts(routers: &mut [Router], dp: &Dataplane, ctx: &Ctx) {
    let t = now();
    for r in routers {
        if r.engine.poll_timeout().is_some_and(|d| d <= t) {
            if r.engine.state() == State::Backup {
                r.refresh_from_guard(dp);
            }
            r.engine.handle_timeout(t);
            r.act(ctx).await;
        }
    }
}

/// Runs until SIGTERM or SIGINT, then resigns mastership, removes the virtual addresses,
/// detaches the guard and removes the pins.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_with(config, Options::default()).await
}

/// As [`run`], with inputs from an embedding program.
pub async fn run_with(config: Config, opts: Options) -> anyhow::Result<()> {
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
    let mut dp = Dataplane::start(&specs, Some(&config.node.pin_dir))?;
    let (fence_tx, mut fence_rx) = mpsc::channel(16);
    let ctx = Ctx {
        nl: nl.clone(),
        fence_tx,
    };
    let mut routers = Vec::new();
    for (i, (v, spec)) in config.vrrp.iter().zip(&specs).enumerate() {
        routers.push(Router::new(i, v.get_ref(), spec, &config, &nl).await?);
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
    let opts_proxy = opts.proxy;
    // Set while a graceful stop moves the proxy's clients away (see `begin_handover`).
    let mut draining: Option<std::time::Instant> = None;

    info!(node = %config.node.name, instances = routers.len(), "hapd ready");
    for r in &mut routers {
        let t = now();
        let up = link::state(&nl, r.key.ifindex).await?;
        r.link_up = up;
        r.engine.set_link(t, up);
        r.apply_tracking(t, &script_states, proxy_healthy);
        r.engine.handle_startup(t);
        r.act(&ctx).await;
    }
    let mut timer = DeadlineTimer::new().context("creating the engines' timer")?;
    let mut handled: Option<Duration> = None;
    loop {
        let deadline = routers.iter().filter_map(|r| r.engine.poll_timeout()).min();
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
            handle_timeouts(&mut routers, &dp, &ctx).await;
            continue;
        }
        let health_changed = async {
            match &mut health {
                Some(h) => h.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let stop_asked = async {
            match &mut shutdown {
                Some(s) => loop {
                    if *s.borrow_and_update() {
                        break;
                    }
                    if s.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                },
                None => std::future::pending().await,
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
        tokio::select! {
            // The timer first: at 10 ms adverts it is most of what wakes the loop, and a tick
            // then costs no poll of the other sources.
            biased;
            _ = timer.expired() => handle_timeouts(&mut routers, &dp, &ctx).await,
            ev = dp.next_event() => match ev {
                Some(ev) => {
                    let key = InstanceKey::new(ev.ifindex, ev.vrid);
                    let Some(r) = routers.iter_mut().find(|r| r.key == key) else { continue };
                    info!("{}", describe(&r.name, &ev));
                    r.delivered_ns = r.delivered_ns.max(ev.time_ns);
                    r.engine.handle_advert(
                        Duration::from_nanos(ev.time_ns),
                        Heard {
                            src: Ipv4Addr::from(ev.src),
                            priority: ev.priority,
                            interval: Centisecs(ev.interval_cs),
                        },
                    );
                    r.act(&ctx).await;
                }
                None => break,
            },
            Some(change) = link_rx.recv() => {
                for r in routers.iter_mut().filter(|r| r.key.ifindex == change.ifindex) {
                    r.link_up = change.up;
                    r.engine.set_link(now(), change.up);
                    r.act(&ctx).await;
                }
            }
            Some(st) = script_rx.recv() => {
                script_states.insert(st.name.clone(), st.healthy);
                for r in routers.iter_mut().filter(|r| r.scripts.iter().any(|(n, _)| *n == st.name)) {
                    r.apply_tracking(now(), &script_states, proxy_healthy);
                    r.act(&ctx).await;
                }
            }
            Some((i, ok)) = fence_rx.recv() => {
                if let Some(r) = routers.get_mut(i) {
                    r.engine.handle_fence_result(now(), ok);
                    r.act(&ctx).await;
                }
            }
            true = health_changed => {
                proxy_healthy = health.as_mut().is_none_or(|h| *h.borrow_and_update());
                info!("proxy {}", if proxy_healthy { "healthy" } else { "unhealthy" });
                for r in routers.iter_mut().filter(|r| r.track_proxy.is_some()) {
                    r.apply_tracking(now(), &script_states, proxy_healthy);
                    r.act(&ctx).await;
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
                        .map(|(r, v)| r.status(&dp, v.get_ref()))
                        .collect();
                    let guard = dp.counters().ok().map(|c| GuardStatus {
                        pin_dir: dp
                            .xdp()
                            .and_then(|x| x.pin_dir())
                            .map(|d| d.display().to_string()),
                        counters: proxy_common::maps::Reason::ALL
                            .iter()
                            .map(|&r| (r.name().to_string(), c.get(r)))
                            .chain([("events_lost".to_string(), c.events_lost)])
                            .collect(),
                    });
                    let _ = reply.send((instances, guard));
                }
                Control::StepDown { instance, on, reply } => {
                    let answer = match routers.iter_mut().find(|r| r.name == instance) {
                        None => Err(format!("no VRRP instance named {instance:?}")),
                        Some(r) => {
                            let before = r.engine.state();
                            r.engine.set_stepped_down(now(), on);
                            r.act(&ctx).await;
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
            },
            why = stop_requested => {
                info!("{why}");
                // A second request while the clients move stops at once.
                if draining.is_some() || !begin_handover(&routers, &mut dp, opts_proxy.as_deref(), &mut draining) {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(5)), if draining.is_some() => {
                let left = opts_proxy.as_ref().map_or(0, |p| p.connections());
                if left == 0 {
                    info!("every proxy client has moved: resigning");
                    break;
                }
                if draining.is_some_and(|d| std::time::Instant::now() >= d) {
                    info!("{left} proxy connection(s) still open after {HANDOVER_DRAIN:?}: resigning");
                    break;
                }
            }
        }
    }
    // Graceful stop: a master resigns (priority 0) but keeps serving its VIPs until the
    // successor's first advert arrives (it takes over after its Skew_Time and announces the
    // VIPs with gratuitous ARP), so clients never find nobody at the address. Bounded by our
    // Master_Down_Interval (at most 2 s) in case there is no successor.
    let mut waiting = Vec::new();
    let mut bound = Duration::ZERO;
    for (i, r) in routers.iter_mut().enumerate() {
        if r.engine.state() == State::Master {
            r.hold_vips = true;
            waiting.push(i);
            bound = bound.max(r.engine.master_down_interval().min(Duration::from_secs(2)));
        }
        r.engine.handle_shutdown(now());
        r.act(&ctx).await;
    }
    let until = tokio::time::Instant::now() + bound;
    while !waiting.is_empty() {
        tokio::select! {
            // The timer first: at 10 ms adverts it is most of what wakes the loop, and a tick
            // then costs no poll of the other sources.
            biased;
            _ = timer.expired() => handle_timeouts(&mut routers, &dp, &ctx).await,
            ev = dp.next_event() => match ev {
                Some(ev) if ev.priority > 0 => {
                    let key = InstanceKey::new(ev.ifindex, ev.vrid);
                    if let Some(pos) = waiting.iter().position(|&i| routers[i].key == key) {
                        let r = &routers[waiting.remove(pos)];
                        // The successor advertises before it adds the VIPs and announces them:
                        // keep serving until its gratuitous ARP has moved the clients.
                        let grace = (3 * r.garp.interval.0).max(HANDOVER_GRACE);
                        tokio::time::sleep(grace).await;
                        info!("{}: {} took over; releasing the VIPs", r.name, Ipv4Addr::from(ev.src));
                        if let Err(e) = vip::remove(&nl, r.key.ifindex, &r.vips).await {
                            warn!("{}: removing virtual addresses: {e:#}", r.name);
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    for &i in &waiting {
        let r = &routers[i];
        info!("{}: no successor heard; releasing the VIPs", r.name);
        if let Err(e) = vip::remove(&nl, r.key.ifindex, &r.vips).await {
            warn!("{}: removing virtual addresses: {e:#}", r.name);
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
    dp.shutdown();
    if let Some(c) = counters {
        info!("guard counters at stop: {c:?}");
    }
    Ok(())
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

/// The first step of a graceful stop on a master with a proxy: before resigning, move the
/// proxy's clients off this node without failing a request. New TCP connections to the VIPs
/// are dropped by the guard (the client retransmits its SYN after about a second, by when the
/// successor holds the VIPs), and every HTTP/1 response carries `Connection: close` (HTTP/2:
/// GOAWAY), so each busy connection ends after its current request. The loop keeps advertising
/// meanwhile; it resigns when the proxy has no connection left or after [`HANDOVER_DRAIN`].
/// Returns false when there is nothing to hand over (stop at once).
fn begin_handover(
    routers: &[Router],
    dp: &mut Dataplane,
    proxy: Option<&crate::proxy::ProxyView>,
    draining: &mut Option<std::time::Instant>,
) -> bool {
    let Some(proxy) = proxy else { return false };
    let ports: Vec<proxy_common::maps::ServedPort> = routers
        .iter()
        .filter(|r| r.engine.state() == State::Master)
        .flat_map(|r| r.served.iter().copied())
        .collect();
    if ports.is_empty() || proxy.connections() == 0 {
        return false;
    }
    let syns = dp.drain_new_connections(&ports);
    proxy.begin_handover();
    info!(
        "handing over: {} proxy connection(s) close after their current request{}",
        proxy.connections(),
        if syns {
            "; new connections wait for the successor"
        } else {
            " (no XDP: new connections are still served here)"
        }
    );
    *draining = Some(std::time::Instant::now() + HANDOVER_DRAIN);
    true
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
        Ipv4Addr::from(ev.src),
        ev.priority,
        ev.prev_priority,
        u32::from(ev.interval_cs) * 10,
        why.join(", ")
    )
}
