//! `hapd run`: the daemon's main loop. One task drives every VRRP instance: guard events and
//! timers go into the engines, their actions come out as adverts, address changes and ARP.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use proxy_common::maps::{
    GuardEvent, InstanceKey, EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_NEW_SOURCE,
    EV_PRIORITY_CHANGE, EV_PRIORITY_ZERO,
};
use rtnetlink::Handle;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::{
    config::{Config, Garp, V3Checksum, Vrrp, VrrpVersion},
    dataplane::{monotonic_ns, Dataplane, InstanceSpec},
    vip,
    vrrp::{
        fsm::{self, Action, Heard, Instance, State},
        io::AdvertSocket,
        Advert, Auth, Centisecs, ChecksumMode,
    },
};

/// The monotonic clock as the engines see it (the clock of the guard's timestamps).
fn now() -> Duration {
    Duration::from_nanos(monotonic_ns())
}

/// One running VRRP instance and what it needs to act.
struct Router {
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
}

impl Router {
    async fn new(v: &Vrrp, spec: &InstanceSpec, nl: &Handle) -> anyhow::Result<Router> {
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
        let sock = AdvertSocket::open(&v.interface, primary, &peers, mode)?;
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
            primary,
        });
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
    async fn act(&mut self, nl: &Handle) {
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::SendAdvert { priority } => {
                    self.advert.priority = priority;
                    if let Err(e) = self.sock.send(&self.advert) {
                        warn!("{}: {e:#}", self.name);
                    }
                }
                Action::TakeVips => {
                    if let Err(e) = vip::add(nl, self.key.ifindex, &self.vips).await {
                        warn!("{}: adding virtual addresses: {e:#}", self.name);
                    }
                    self.announce();
                }
                Action::Reannounce => self.announce(),
                Action::ReleaseVips => {
                    if let Err(e) = vip::remove(nl, self.key.ifindex, &self.vips).await {
                        warn!("{}: removing virtual addresses: {e:#}", self.name);
                    }
                }
                Action::Transition { from, to, reason } => {
                    info!("{}: {from} => {to} ({reason})", self.name);
                }
                Action::Ignored { from, why } => {
                    debug!("{}: advert from {from} ignored: {why}", self.name)
                }
            }
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

/// Runs until SIGTERM or SIGINT, then resigns mastership, removes the virtual addresses,
/// detaches the guard and removes the pins.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (conn, nl, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let specs = config
        .vrrp
        .iter()
        .map(|v| InstanceSpec::from_config(v.get_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut dp = Dataplane::start(&specs, Some(&config.node.pin_dir))?;
    let mut routers = Vec::new();
    for (v, spec) in config.vrrp.iter().zip(&specs) {
        routers.push(Router::new(v.get_ref(), spec, &nl).await?);
    }
    info!(node = %config.node.name, instances = routers.len(), "hapd ready");
    for r in &mut routers {
        r.engine.handle_startup(now());
        r.act(&nl).await;
    }
    loop {
        let deadline = routers.iter().filter_map(|r| r.engine.poll_timeout()).min();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep(d.saturating_sub(now())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = dp.next_event() => match ev {
                Some(ev) => {
                    let key = InstanceKey::new(ev.ifindex, ev.vrid);
                    let Some(r) = routers.iter_mut().find(|r| r.key == key) else { continue };
                    info!("{}", describe(&r.name, &ev));
                    r.delivered_ns = r.delivered_ns.max(ev.time_ns);
                    r.engine.handle_advert(
                        Duration::from_nanos(ev.time_ns),
                        Heard { src: Ipv4Addr::from(ev.src), priority: ev.priority, interval: Centisecs(ev.interval_cs) },
                    );
                    r.act(&nl).await;
                }
                None => break,
            },
            _ = sleep => {
                let t = now();
                for r in &mut routers {
                    if r.engine.poll_timeout().is_some_and(|d| d <= t) {
                        if r.engine.state() == State::Backup {
                            r.refresh_from_guard(&dp);
                        }
                        r.engine.handle_timeout(t);
                        r.act(&nl).await;
                    }
                }
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    for r in &mut routers {
        r.engine.handle_shutdown(now());
        r.act(&nl).await;
    }
    let counters = dp.counters().ok();
    dp.shutdown();
    if let Some(c) = counters {
        info!("guard counters at stop: {c:?}");
    }
    Ok(())
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
