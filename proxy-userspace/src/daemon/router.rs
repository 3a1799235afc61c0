//! One running VRRP instance: its engine, its advert socket and signer, its addresses, and
//! what it does with the engine's actions.
use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use proxy_common::maps::InstanceKey;
use rtnetlink::Handle;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, Garp, V3Checksum, Vrrp, VrrpVersion},
    control::{AuthFacts, InstanceFacts},
    dataplane::{monotonic_ns, AuthSpec, Dataplane, InstanceSpec},
    vip,
    vrrp::{
        auth::Signer,
        fsm::{self, Action, Heard, Instance},
        io::AdvertSocket,
        notify::{Notifier, NOTIFY_TIMEOUT},
        track, Advert, Auth, Centisecs, ChecksumMode,
    },
};

/// Shared by every router's actions.
pub(super) struct Ctx {
    pub(super) nl: Handle,
    pub(super) fence_tx: mpsc::Sender<(usize, bool)>,
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
    pub(super) vips: Vec<Ipv4Net>,
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
    /// During a graceful stop: keep the VIPs until the successor is heard (see
    /// [`super::run_with`]).
    pub(super) hold_vips: bool,
    /// The (VIP, port) pairs the proxy serves (for the handover).
    pub(super) served: Vec<proxy_common::maps::ServedPort>,
    /// `auth_hmac`, as the guard and the signer run it.
    pub(super) auth: Option<AuthSpec>,
    /// For status and metrics.
    pub(super) stats: RouterStats,
    /// The failing checks and what they cost, for status.
    pub(super) reasons: Vec<String>,
    pub(super) link_up: bool,
}

#[derive(Default)]
pub(super) struct RouterStats {
    transitions: u64,
    last_transition: Option<(std::time::Instant, String)>,
    adverts_sent: u64,
}

impl Router {
    pub(super) async fn new(
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
    pub(super) async fn act(&mut self, ctx: &Ctx) {
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
            state: self.engine.state(),
            primary: self.engine.config().primary,
            record: dp.advert(&self.key),
            now_ns: monotonic_ns(),
            priority: v.priority.get(),
            effective_priority: self.engine.effective_priority(),
            reasons: self.reasons.clone(),
            link_up: self.link_up,
            stepped_down: self.engine.stepped_down(),
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
            auth: self.auth.as_ref().map(|a| AuthFacts {
                spec: a.clone(),
                signing_key: self.sock.signing_key(),
                counters: dp.auth_counters(&self.key).unwrap_or_default(),
            }),
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
    pub(super) fn refresh_from_guard(&mut self, dp: &Dataplane) {
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
