//! One running VRRP instance: its engine, its advert socket and signer, its addresses, and
//! what it does with the engine's actions.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ipnet::IpNet;
use proxy_common::maps::{FlowEntry, InstanceKey, TimerCfg, FLOW_HOLDER, FLOW_RELEASED};
use rtnetlink::Handle;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, Garp, V3Checksum, Vrrp, VrrpVersion},
    control::{AuthFacts, EngineHandoff, InstanceFacts},
    dataplane::{ip_of, monotonic_ns, AuthSpec, Dataplane, InstanceSpec},
    vip,
    vrrp::{
        auth::Signer,
        fsm::{self, Action, Heard, Instance, State},
        io::AdvertSocket,
        notify::{Notifier, NOTIFY_TIMEOUT},
        track, Advert, Auth, Centisecs, ChecksumMode,
    },
};

/// Shared by every router's actions.
pub(super) struct Ctx {
    pub(super) nl: Handle,
    pub(super) fence_tx: mpsc::Sender<(usize, bool)>,
    /// The proxy, whose clients on a handed-over address move with [`Move::Draining`].
    pub(super) proxy: Option<std::sync::Arc<crate::proxy::ProxyView>>,
    /// How long flows may drain after a planned move (`server.drain_timeout`).
    pub(super) drain_timeout: Duration,
}

/// A handed-over address stays at least this long after the successor's first advert (three
/// gratuitous-ARP intervals if that is longer), so its announcement reaches the clients first;
/// when flows are not carried (no XDP, no proxy) it goes then.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(50);

/// How long connections cut at the end of a drain have to close before the addresses go: a
/// WebSocket's frame in progress (up to 1 s) and its client's answer to the close (up to 1 s),
/// with room to spare.
const CUT_GRACE: Duration = Duration::from_millis(2500);

/// How much longer than its drain the new owner sends the previous owner's flows there (the
/// previous owner's `drain_timeout` plus [`CUT_GRACE`], with room to spare).
const ADOPT_MARGIN: Duration = Duration::from_secs(3);

/// A planned move of an instance's addresses in progress (see [`proxy_common::flow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// We resigned: the addresses stay, answered for, until a successor is heard.
    Holding { since: Instant },
    /// `to` is master: our flows on the addresses end here (the guard sends us their segments
    /// from `to` and sends it everything else) until none is left or `until`. `flows`: the
    /// guard carries them (XDP); without it the addresses go at `until`, a short grace.
    Draining {
        to: IpAddr,
        since: Instant,
        until: Instant,
        flows: bool,
        /// Proxy connections open on the addresses when the drain began.
        open: usize,
        /// The drain's bound passed with connections open: they were told to close (a
        /// WebSocket gets its 1001 close between frames); the addresses go once they have, or
        /// at this instant.
        cut: Option<(Instant, usize)>,
    },
    /// We took the addresses from `from`, which still serves its flows: the guard sends it the
    /// segments we have no socket for, until `until`.
    Adopted { from: IpAddr, until: Instant },
}

/// The monotonic clock as the engines see it (the clock of the guard's timestamps).
pub(super) fn now() -> Duration {
    Duration::from_nanos(monotonic_ns())
}

/// One running VRRP instance and what it needs to act.
pub(super) struct Router {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) key: InstanceKey,
    pub(super) iface: String,
    pub(super) engine: Instance,
    pub(super) sock: AdvertSocket,
    /// The advert we send; its priority is set per send.
    pub(super) advert: Advert,
    pub(super) vips: Vec<IpNet>,
    pub(super) garp: Garp,
    /// `last_seen_ns` of the last advert given to the engine, to replay newer ones from the
    /// guard's record.
    pub(super) delivered_ns: u64,
    /// Track scripts and their weights.
    pub(super) scripts: Vec<(String, i32)>,
    /// `track_proxy` weight.
    pub(super) track_proxy: Option<i32>,
    pub(super) notifier: Option<(Notifier, tokio::task::JoinHandle<()>)>,
    pub(super) fence: Vec<String>,
    /// A planned move in progress.
    pub(super) moving: Option<Move>,
    /// The last router an `Adopt` was tried for (cleared when we take the addresses).
    adopt_tried: Option<IpAddr>,
    /// `auth_hmac`, as the guard and the signer run it.
    pub(super) auth: Option<AuthSpec>,
    /// For status and metrics.
    pub(super) stats: RouterStats,
    /// The failing checks and what they cost, for status.
    pub(super) reasons: Vec<String>,
    pub(super) link_up: bool,
    /// What the guard was last told about this instance's kernel master-down timer, and
    /// whether it took it (see [`Router::sync_kernel_timer`]).
    kernel_timer: Option<TimerCfg>,
    kernel_timer_on: bool,
}

/// How often a backup whose master-down timer runs in the kernel looks at it anyway: the
/// bound on a failover if the timer's event were lost (the guard counts `events_lost`; the
/// ring only fills when the daemon stops reading). Sleeping a whole Master_Down_Interval at a
/// time is what the kernel timer saves.
pub(super) const KERNEL_TIMER_CHECK: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct RouterStats {
    transitions: u64,
    last_transition: Option<(std::time::Instant, String)>,
    adverts_sent: u64,
    /// Planned moves that handed the addresses over, the last one's account, and how long
    /// its drain took.
    handovers: u64,
    last_handover: Option<String>,
    last_drain: Option<Duration>,
}

impl Router {
    pub(super) async fn new(
        index: usize,
        v: &Vrrp,
        spec: &InstanceSpec,
        config: &Config,
        nl: &Handle,
        successor: bool,
    ) -> anyhow::Result<Router> {
        // Start-up: addresses of ours left by a crash or kill -9 go before the election (not
        // in an upgrade: they are the running hapd's, and ours from the handover).
        let stale = if successor {
            0
        } else {
            vip::remove(nl, spec.ifindex, &v.virtual_ips).await?
        };
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
        let peers: Vec<IpAddr> = if v.unicast {
            v.peers.clone()
        } else {
            Vec::new()
        };
        let mut sock = AdvertSocket::open(&v.interface, spec.ifindex, primary, &peers, mode)?;
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
            "{}: {} {} vrid {} priority {} from {primary}",
            v.name,
            v.interface,
            v.family().name(),
            v.vrid,
            v.priority
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
            moving: None,
            adopt_tried: None,
            auth: spec.auth.clone(),
            stats: RouterStats::default(),
            reasons: Vec::new(),
            link_up: true,
            kernel_timer: None,
            kernel_timer_on: false,
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

    /// The instance as a successor process resumes it; `Err`: not now, and why.
    pub(super) fn handoff(&self) -> Result<EngineHandoff, String> {
        if let Some(m) = &self.moving {
            return Err(format!(
                "{}: a planned move is in progress ({m:?}); try again when it is done",
                self.name
            ));
        }
        let engine = self
            .engine
            .snapshot()
            .map_err(|why| format!("{}: {why}; try again when it is done", self.name))?;
        Ok(EngineHandoff {
            name: self.name.clone(),
            engine,
            last_seq: self.sock.last_seq(),
            delivered_ns: self.delivered_ns,
        })
    }

    /// Continues from `h`, handed over by the process this one succeeds.
    pub(super) fn resume(&mut self, h: &EngineHandoff) {
        self.engine = Instance::resume(self.engine.config().clone(), &h.engine);
        self.sock.continue_after(h.last_seq);
        self.delivered_ns = h.delivered_ns;
        self.link_up = h.engine.link_up;
        info!(
            "{}: resumed as {} from the process this one succeeds",
            self.name,
            self.engine.state()
        );
    }

    /// Carries out what the engine asked for, in order.
    pub(super) async fn act(&mut self, ctx: &Ctx, dp: &mut Dataplane) {
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
                Action::TakeVips { from } => {
                    self.end_move(ctx, dp);
                    self.adopt_tried = None;
                    // The proxy serves the addresses as its own again (a drain that ended
                    // left them marked as handed over and cut).
                    if let Some(p) = &ctx.proxy {
                        p.hand_over(&self.vip_addrs(), false);
                    }
                    // The previous owner's flows go back to it before any client hears of
                    // us: the guard's entries first, then the addresses and their announcement.
                    if let Some(from) = from {
                        self.adopt(ctx, dp, from);
                    }
                    if let Err(e) = vip::add(nl, self.key.ifindex, &self.vips).await {
                        warn!("{}: adding virtual addresses: {e:#}", self.name);
                    }
                    self.announce();
                }
                Action::Reannounce => self.announce(),
                Action::HoldVips => {
                    self.end_move(ctx, dp);
                    self.moving = Some(Move::Holding {
                        since: Instant::now(),
                    });
                }
                Action::Adopt { from } => {
                    // Once per move and per yielding router: a split brain re-announces at
                    // every advert of the loser, and a refusal need not be logged each time.
                    if self.moving.is_none() && self.adopt_tried != Some(from) {
                        self.adopt_tried = Some(from);
                        self.adopt(ctx, dp, from);
                    }
                }
                Action::HandOver { to } => {
                    self.end_move(ctx, dp);
                    self.hand_over(ctx, dp, to);
                }
                Action::ReleaseVips => {
                    self.end_move(ctx, dp);
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
                Action::Fence => super::fence::spawn(
                    self.index,
                    self.name.clone(),
                    self.fence.clone(),
                    ctx.fence_tx.clone(),
                ),
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
        self.sync_kernel_timer(dp);
    }

    /// The addresses as the proxy sees them.
    fn vip_addrs(&self) -> Vec<IpAddr> {
        self.vips.iter().map(|n| n.addr()).collect()
    }

    /// The addresses whose open flows the guard can carry across a planned move: IPv4 only
    /// (`vip_flows` is keyed by IPv4 address; IPv6 moves release the addresses after a grace).
    fn flow_addrs(&self) -> Vec<Ipv4Addr> {
        self.vips
            .iter()
            .filter_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The Ethernet address of `router`, from the last advert the guard accepted for this
    /// instance if `router` sent it.
    fn mac_of(&self, dp: &Dataplane, router: IpAddr) -> Option<[u8; 6]> {
        dp.advert(&self.key)
            .filter(|r| ip_of(&r.master, self.key.family()) == router && r.mac != [0; 6])
            .map(|r| r.mac)
    }

    /// We took the addresses from `from` in a planned move: its flows stay there.
    fn adopt(&mut self, ctx: &Ctx, dp: &mut Dataplane, from: IpAddr) {
        if self.flow_addrs().is_empty() {
            info!(
                "{}: took over from {from}; IPv6 flows are not carried across a move",
                self.name
            );
            return;
        }
        let Some(mac) = self.mac_of(dp, from) else {
            info!(
                "{}: took over from {from}; its Ethernet address is unknown, so its open flows are not carried",
                self.name
            );
            return;
        };
        let entry = FlowEntry {
            peer_mac: mac,
            role: FLOW_HOLDER,
            _pad: 0,
        };
        if !dp.set_flows(&self.flow_addrs(), Some(entry)) {
            info!(
                "{}: took over from {from}; its open flows are not carried (no XDP guard here)",
                self.name
            );
            return;
        }
        let window = ctx.drain_timeout + ADOPT_MARGIN;
        info!(
            "{}: took over from {from}, which keeps serving its open flows: their segments go there for up to {window:?}",
            self.name
        );
        self.moving = Some(Move::Adopted {
            from,
            until: Instant::now() + window,
        });
    }

    /// `to` is master after our planned move: our flows drain here, everything else goes to
    /// `to`; without XDP the addresses go after a short grace.
    fn hand_over(&mut self, ctx: &Ctx, dp: &mut Dataplane, to: IpAddr) {
        let now = Instant::now();
        // Flows are the proxy's: without it there is nothing to drain.
        let mac = self.mac_of(dp, to).filter(|_| ctx.proxy.is_some());
        let v4 = self.flow_addrs();
        let carried = !v4.is_empty()
            && mac.is_some_and(|mac| {
                dp.set_flows(
                    &v4,
                    Some(FlowEntry {
                        peer_mac: mac,
                        role: FLOW_RELEASED,
                        _pad: 0,
                    }),
                )
            });
        let addrs = self.vip_addrs();
        if let Some(p) = &ctx.proxy {
            p.hand_over(&addrs, true);
        }
        let open = ctx.proxy.as_ref().map_or(0, |p| p.connections_on(&addrs));
        let until = if carried {
            info!(
                "{}: {to} took over; {open} proxy connection(s) here end at their next response (up to {:?}), new ones go to {to}",
                self.name, ctx.drain_timeout
            );
            now + ctx.drain_timeout
        } else {
            let why = if ctx.proxy.is_none() {
                "no proxy here"
            } else if v4.is_empty() {
                "IPv6 flows are not carried"
            } else if dp.xdp().is_none() {
                "no XDP guard"
            } else if mac.is_none() {
                "its Ethernet address is unknown"
            } else {
                "the guard refused the move"
            };
            info!(
                "{}: {to} took over; releasing the addresses (open flows not carried: {why})",
                self.name
            );
            now + self.handover_grace()
        };
        self.stats.handovers += 1;
        self.moving = Some(Move::Draining {
            to,
            since: now,
            until,
            flows: carried,
            open,
            cut: None,
        });
    }

    /// Ends whatever move is in progress (we hold the addresses again, or lose them at once):
    /// the guard forgets them, the proxy serves them as before.
    fn end_move(&mut self, ctx: &Ctx, dp: &mut Dataplane) {
        match self.moving.take() {
            Some(Move::Draining { flows, .. }) => {
                if flows {
                    dp.set_flows(&self.flow_addrs(), None);
                }
                if let Some(p) = &ctx.proxy {
                    p.hand_over(&self.vip_addrs(), false);
                }
            }
            Some(Move::Adopted { .. }) => {
                dp.set_flows(&self.flow_addrs(), None);
            }
            Some(Move::Holding { .. }) | None => {}
        }
    }

    /// Advances a move: a hold ends without a successor at its bound, a drain when no
    /// connection is left on the addresses or at its bound (then the addresses go), an
    /// adoption at its bound. Called every few milliseconds while one is in progress.
    pub(super) async fn poll_move(&mut self, ctx: &Ctx, dp: &mut Dataplane) {
        let now = Instant::now();
        match self.moving.clone() {
            Some(Move::Draining {
                to,
                since,
                until,
                flows,
                open,
                cut,
            }) => {
                let addrs = self.vip_addrs();
                let left = match (&ctx.proxy, flows) {
                    (Some(p), true) => p.connections_on(&addrs),
                    _ => 0,
                };
                // The successor's gratuitous ARP reaches the clients first, whatever is left.
                if now < since + self.handover_grace() {
                    return;
                }
                match cut {
                    None if !flows && now < until => return,
                    None if left > 0 && now < until => return,
                    None if left > 0 => {
                        warn!(
                            "{}: {left} connection(s) still open after {:?}: closing them",
                            self.name, ctx.drain_timeout
                        );
                        if let Some(p) = &ctx.proxy {
                            p.cut(&addrs);
                        }
                        // The address stays until they have closed (a WebSocket's close
                        // needs it), briefly.
                        self.moving = Some(Move::Draining {
                            to,
                            since,
                            until,
                            flows,
                            open,
                            cut: Some((now + CUT_GRACE, left)),
                        });
                        return;
                    }
                    Some((by, _)) if left > 0 && now < by => return,
                    _ => {}
                }
                let left = cut.map_or(0, |(_, n)| n);
                if let Err(e) = vip::remove(&ctx.nl, self.key.ifindex, &self.vips).await {
                    warn!("{}: removing virtual addresses: {e:#}", self.name);
                }
                if flows {
                    dp.set_flows(&self.flow_addrs(), None);
                }
                let took = now - since;
                info!(
                    "{}: handed over to {to}; addresses released after {took:?}{}",
                    self.name,
                    if left > 0 { " (drain cut short)" } else { "" }
                );
                self.stats.last_handover = Some(format!(
                    "to {to}: {}; {open} connection(s) drained in {} ms{}",
                    if flows {
                        "flows carried"
                    } else {
                        "flows not carried"
                    },
                    took.as_millis(),
                    if left > 0 {
                        format!(", {left} closed at the bound")
                    } else {
                        String::new()
                    }
                ));
                self.stats.last_drain = Some(took);
                self.moving = None;
            }
            Some(Move::Holding { since }) if now - since >= self.hold_bound() => {
                self.release_held(ctx).await;
            }
            Some(Move::Adopted { from, until }) if now >= until => {
                dp.set_flows(&self.flow_addrs(), None);
                info!("{}: no longer sending flows to {from}", self.name);
                self.moving = None;
            }
            _ => {}
        }
    }

    /// The daemon stops in the middle of a move: held or draining addresses go now (what is
    /// still open on them is cut), the guard forgets the move.
    pub(super) async fn abandon_move(&mut self, ctx: &Ctx, dp: &mut Dataplane) {
        let release = matches!(
            self.moving,
            Some(Move::Holding { .. } | Move::Draining { .. })
        );
        self.end_move(ctx, dp);
        if release {
            // After `end_move`, which resets the proxy's marks for these addresses.
            if let Some(p) = &ctx.proxy {
                p.cut(&self.vip_addrs());
            }
            if let Err(e) = vip::remove(&ctx.nl, self.key.ifindex, &self.vips).await {
                warn!("{}: removing virtual addresses: {e:#}", self.name);
            }
        }
    }

    /// Gives up a hold that found no successor: the addresses go.
    async fn release_held(&mut self, ctx: &Ctx) {
        if let Some(Move::Holding { .. }) = self.moving {
            self.moving = None;
            self.engine.end_hold();
            info!("{}: no successor heard; releasing the VIPs", self.name);
            if let Err(e) = vip::remove(&ctx.nl, self.key.ifindex, &self.vips).await {
                warn!("{}: removing virtual addresses: {e:#}", self.name);
            }
        }
    }

    /// How long a handed-over address stays at least: the successor's gratuitous ARP burst
    /// reaches the clients first.
    fn handover_grace(&self) -> Duration {
        (3 * self.garp.interval.0).max(HANDOVER_GRACE)
    }

    /// How long resigned addresses are held for a successor: twice our Master_Down_Interval
    /// (after one, a stepped-down router that heard nobody is master again and holds them
    /// anyway), at most 2 s (a stopping daemon with no successor exits after that).
    fn hold_bound(&self) -> Duration {
        (2 * self.engine.master_down_interval()).min(Duration::from_secs(2))
    }

    /// Whether a move needs [`Router::poll_move`].
    pub(super) fn move_pending(&self) -> bool {
        self.moving.is_some()
    }

    /// Applies the tracked checks: the priority delta and whether a weight-0 check failed.
    pub(super) fn apply_tracking(
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
    pub(super) fn set_auth(&mut self, auth: Option<AuthSpec>) {
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

    /// The instance as the loop knows it, for `/status` (`admin::status` renders it).
    pub(super) fn facts(&self, dp: &Dataplane, v: &Vrrp) -> InstanceFacts {
        InstanceFacts {
            name: self.name.clone(),
            interface: self.iface.clone(),
            vrid: self.key.vrid,
            version: self.advert.version,
            family: self.key.family(),
            state: self.engine.state(),
            primary: self.engine.config().primary,
            record: dp.advert(&self.key),
            now_ns: monotonic_ns(),
            priority: v.priority.get(),
            effective_priority: self.engine.effective_priority(),
            reasons: self.reasons.clone(),
            link_up: self.link_up,
            stepped_down: self.engine.stepped_down(),
            handovers: self.stats.handovers,
            last_handover: self.stats.last_handover.clone(),
            last_drain: self.stats.last_drain,
            moving: self.moving.as_ref().map(|m| match m {
                Move::Holding { .. } => "resigned, holding the addresses for a successor".into(),
                Move::Draining { to, .. } => format!("handed over to {to}, draining"),
                Move::Adopted { from, .. } => {
                    format!("took over from {from}; its open flows go there")
                }
            }),
            transitions: self.stats.transitions,
            last_transition: self.stats.last_transition.clone(),
            adverts_sent: self.stats.adverts_sent,
            virtual_ips: self.vips.iter().map(|n| n.to_string()).collect(),
            guard: dp
                .modes()
                .get(&self.iface)
                .map_or_else(|| "none".into(), |m| m.to_string()),
            preempt: v.preempt,
            advert_interval: v.advert_interval.0,
            master_down: self.engine.master_down_interval(),
            kernel_timer: self.kernel_timer_status(dp),
            auth: self.auth.as_ref().map(|a| AuthFacts {
                spec: a.clone(),
                signing_key: self.sock.signing_key(),
                counters: dp.auth_counters(&self.key).unwrap_or_default(),
            }),
        }
    }

    /// An announcement burst for every virtual address (gratuitous ARP, unsolicited neighbour
    /// advertisements), in the background.
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

    /// Tells the guard whether to run this instance's master-down timer: while it is a
    /// backup and its interface's guard runs in XDP, with its priority and interval as they
    /// are now. Called after every input the engine handled (its state or priority may have
    /// changed); the guard is only written when that changes.
    pub(super) fn sync_kernel_timer(&mut self, dp: &mut Dataplane) {
        let on = self.engine.state() == State::Backup && dp.kernel_timer_capable(&self.key);
        let c = self.engine.config();
        let cfg = TimerCfg {
            on: u8::from(on),
            priority: self.engine.effective_priority(),
            version: c.version,
            own_interval_cs: c.advert_interval.0,
            ..TimerCfg::default()
        };
        if self.kernel_timer == Some(cfg) || (self.kernel_timer.is_none() && !on) {
            return;
        }
        self.kernel_timer_on = dp.set_kernel_timer(&self.key, cfg) && on;
        self.kernel_timer = Some(cfg);
    }

    /// When the daemon must next wake for this instance: the engine's deadline, except for a
    /// backup whose master-down timer the guard runs and has armed into the future; that one
    /// wakes the daemon with an event, and the daemon looks only every
    /// [`KERNEL_TIMER_CHECK`].
    pub(super) fn next_wake(&self, dp: &Dataplane) -> Option<Duration> {
        let t = self.engine.poll_timeout()?;
        if self.engine.state() != State::Backup || !self.kernel_timer_on {
            return Some(t);
        }
        let now_ns = monotonic_ns();
        match dp.kernel_timer(&self.key) {
            Some(k) if k.deadline_ns > now_ns => {
                Some(t.max(Duration::from_nanos(now_ns) + KERNEL_TIMER_CHECK))
            }
            _ => Some(t),
        }
    }

    /// Whether the kernel runs this instance's master-down timer now, for status.
    pub(super) fn kernel_timer_status(&self, dp: &Dataplane) -> String {
        if !dp.kernel_timer_capable(&self.key) {
            return "off: the guard does not run in XDP on this interface".into();
        }
        if !self.kernel_timer_on {
            return "off: only a backup's".into();
        }
        match dp.kernel_timer(&self.key) {
            Some(k) if k.deadline_ns > monotonic_ns() => format!(
                "in use: armed {} time(s), ran out {} time(s)",
                k.armed, k.fired
            ),
            Some(k) => format!(
                "on, not armed now (armed {} time(s), ran out {} time(s)): the daemon's own \
                 timer decides until a master's advert arms it",
                k.armed, k.fired
            ),
            None => "on, not armed yet: the daemon's own timer decides until a master's \
                     advert arms it"
                .into(),
        }
    }

    /// Before the master-down deadline counts, fold in the newest advert the guard recorded
    /// without waking us (steady state): the deadline moves on if the master is alive.
    pub(super) fn refresh_from_guard(&mut self, dp: &Dataplane) {
        let Some(rec) = dp.advert(&self.key) else {
            return;
        };
        if rec.last_seen_ns > self.delivered_ns && rec.adverts > 0 {
            self.delivered_ns = rec.last_seen_ns;
            self.engine.handle_advert(
                Duration::from_nanos(rec.last_seen_ns),
                Heard {
                    src: ip_of(&rec.master, self.key.family()),
                    priority: rec.priority,
                    interval: Centisecs(rec.interval_cs),
                },
            );
        }
    }
}
