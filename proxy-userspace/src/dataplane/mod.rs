//! The VRRP guard as the daemon sees it: XDP where it attaches, the raw-socket path where it
//! does not, one interface for both: advert records, counters and events.
pub mod bpffs;
pub mod raw;
pub mod xdp;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::Context as _;
use proxy_common::guard::addr_of;
use proxy_common::maps::{
    Addr, AdvertRecord, AuthConfig, AuthCounters, FlowEntry, GuardCounters, GuardEvent,
    InstanceKey, InstanceSlot, ServedPort, TimerCfg, TimerState, VridEntry, AUTH_MODE_ENFORCE,
    AUTH_MODE_PERMISSIVE, AUTH_MODE_RECEIVE_ONLY, AUTH_TIME, CFG_AUTH_HMAC, CFG_PEER_FILTER,
    CFG_V3_PSEUDO_HEADER, MAX_IFACES_PER_VRID, MAX_PEERS_PER_INSTANCE,
};
use proxy_common::vrrp::{Family, AUTH_NONE, AUTH_PASS};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{
    auth::{AuthMode, ResolvedAuth},
    V3Checksum, Vrrp, VrrpVersion, XdpMode,
};
use xdp::{Attached, XdpGuard};

/// One configured VRRP instance as the guard needs it.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub name: String,
    pub interface: String,
    pub ifindex: u32,
    pub vrid: u8,
    pub version: u8,
    /// The instance's address family (of its virtual addresses and peers).
    pub family: Family,
    pub peers: Vec<Addr>,
    /// v3 over IPv4: the checksum covers the pseudo-header (IPv6 always has it).
    pub pseudo_header: bool,
    pub auth_pass: Option<[u8; 8]>,
    /// `auth_hmac`, when configured.
    pub auth: Option<AuthSpec>,
    pub xdp: XdpMode,
    /// The (virtual address, port) pairs the proxy listens on (see [`served_ports`]).
    pub served: Vec<ServedPort>,
}

/// `auth_hmac` of one instance, resolved once for both its users: the guard, which verifies
/// with every key, and the sender, which signs with the active one.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSpec {
    /// What the guard holds: mode, window and the midstates of every key.
    pub guard: AuthConfig,
    /// The key ID adverts are signed with; `None` in receive-only mode (nothing is signed).
    pub sign_with: Option<u8>,
}

impl AuthSpec {
    pub fn new(r: &ResolvedAuth) -> Self {
        let mut guard = AuthConfig {
            mode: match r.mode {
                AuthMode::ReceiveOnly => AUTH_MODE_RECEIVE_ONLY,
                AuthMode::Permissive => AUTH_MODE_PERMISSIVE,
                AuthMode::Enforce => AUTH_MODE_ENFORCE,
            },
            flags: if r.time_mode { AUTH_TIME } else { 0 },
            key_count: r.keys.len() as u8,
            window_s: r.window_s,
            ..AuthConfig::default()
        };
        // The config check caps the keys at MAX_AUTH_KEYS.
        for (slot, (id, bytes)) in guard.keys.iter_mut().zip(&r.keys) {
            *slot = proxy_common::auth::midstates(*id, bytes);
        }
        AuthSpec {
            guard,
            sign_with: r.mode.signs().then_some(r.active_key),
        }
    }

    /// The mode's name as written in the config.
    pub fn mode_name(&self) -> &'static str {
        match self.guard.mode {
            AUTH_MODE_RECEIVE_ONLY => "receive-only",
            AUTH_MODE_PERMISSIVE => "permissive",
            _ => "enforce",
        }
    }

    /// The IDs of the keys it verifies with.
    pub fn key_ids(&self) -> Vec<u8> {
        self.guard.keys[..self.guard.key_count as usize]
            .iter()
            .map(|k| k.id)
            .collect()
    }
}

impl InstanceSpec {
    /// Builds the spec of `v`, resolving its interface in the current network namespace and
    /// reading its `auth_hmac` keys.
    pub fn from_config(v: &Vrrp) -> anyhow::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(v.interface.as_str())
            .with_context(|| format!("vrrp {:?}: interface {:?} not found", v.name, v.interface))?;
        Self::new(v, ifindex)
    }

    /// Builds the spec of `v` for interface index `ifindex`; fails when an `auth_hmac` key
    /// cannot be read.
    pub fn new(v: &Vrrp, ifindex: u32) -> anyhow::Result<Self> {
        let auth = match &v.auth_hmac {
            Some(a) => {
                let (r, _) = a.resolve(v.advert_interval.0).map_err(|p| {
                    anyhow::anyhow!("vrrp {:?}: auth_hmac.{}: {}", v.name, p.key, p.message)
                })?;
                Some(AuthSpec::new(&r))
            }
            None => None,
        };
        let auth_pass = v.auth_pass.as_ref().map(|p| {
            let mut b = [0u8; 8];
            // The config check caps the length at 8 bytes: copy, zero padded.
            let n = p.len().min(8);
            b[..n].copy_from_slice(&p.as_bytes()[..n]);
            b
        });
        Ok(InstanceSpec {
            name: v.name.clone(),
            interface: v.interface.clone(),
            ifindex,
            vrid: v.vrid.get(),
            version: v.version.number(),
            family: v.family(),
            peers: v.peers.iter().map(|p| addr_of(*p)).collect(),
            pseudo_header: v.version == VrrpVersion::V3
                && v.v3_checksum == V3Checksum::PseudoHeader,
            auth_pass,
            auth,
            xdp: v.xdp,
            served: Vec::new(),
        })
    }

    pub fn key(&self) -> InstanceKey {
        InstanceKey::new(self.ifindex, self.vrid, self.family)
    }

    /// This instance's slot in `vrrp_vrids[vrid]`.
    pub fn slot(&self) -> anyhow::Result<InstanceSlot> {
        if self.peers.len() > MAX_PEERS_PER_INSTANCE {
            anyhow::bail!(
                "vrrp {:?}: {} peers, the guard holds at most {MAX_PEERS_PER_INSTANCE}",
                self.name,
                self.peers.len()
            );
        }
        let mut peers = [[0u8; 16]; MAX_PEERS_PER_INSTANCE];
        peers[..self.peers.len()].copy_from_slice(&self.peers);
        let mut flags = 0;
        if !self.peers.is_empty() {
            flags |= CFG_PEER_FILTER;
        }
        if self.pseudo_header {
            flags |= CFG_V3_PSEUDO_HEADER;
        }
        if self.auth.is_some() {
            flags |= CFG_AUTH_HMAC;
        }
        Ok(InstanceSlot {
            ifindex: self.ifindex,
            version: self.version,
            flags,
            auth_type: if self.auth_pass.is_some() {
                AUTH_PASS
            } else {
                AUTH_NONE
            },
            peer_count: self.peers.len() as u8,
            family: self.family as u8,
            _pad: [0; 3],
            auth_pass: self.auth_pass.unwrap_or_default(),
            peers,
        })
    }
}

/// The (VIP, port) pairs of `v` that the proxy of `config` listens on: listeners bound to one
/// of `v`'s virtual addresses or to the wildcard address.
pub fn served_ports(config: &crate::config::Config, v: &Vrrp) -> Vec<ServedPort> {
    let mut out = Vec::new();
    for l in &config.listener {
        for b in &l.get_ref().bind {
            for vip in &v.virtual_ips {
                let vip = vip.addr();
                // A wildcard of the VIP's family serves it ([::] listeners are IPv6 only:
                // the proxy sets IPV6_V6ONLY).
                let wildcard = b.ip().is_unspecified() && b.is_ipv6() == vip.is_ipv6();
                if wildcard || b.ip() == vip {
                    let family = if vip.is_ipv6() {
                        Family::V6
                    } else {
                        Family::V4
                    };
                    out.push(ServedPort::new(
                        addr_of(vip),
                        b.port().to_be_bytes(),
                        family,
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The `vrrp_vrids` entries that `specs` make, by VRID.
/// The address an [`Addr`] of `family` holds.
pub fn ip_of(a: &Addr, family: Family) -> std::net::IpAddr {
    match family {
        Family::V4 => std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
        Family::V6 => std::net::Ipv6Addr::from(*a).into(),
    }
}

pub fn vrid_entries(specs: &[&InstanceSpec]) -> anyhow::Result<BTreeMap<u8, VridEntry>> {
    let mut out: BTreeMap<u8, VridEntry> = BTreeMap::new();
    for s in specs {
        let entry = out.entry(s.vrid).or_default();
        let free = entry
            .slots
            .iter_mut()
            .find(|slot| slot.ifindex == 0)
            .with_context(|| {
                format!(
                    "vrid {} is on more than {MAX_IFACES_PER_VRID} interfaces",
                    s.vrid
                )
            })?;
        *free = s.slot()?;
    }
    Ok(out)
}

/// How the guard runs on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuardMode {
    Xdp(Attached),
    /// Userspace, on a raw socket.
    Raw,
}

impl std::fmt::Display for GuardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuardMode::Xdp(a) => a.fmt(f),
            GuardMode::Raw => f.write_str("raw socket (no XDP)"),
        }
    }
}

/// The running guard on all interfaces.
pub struct Dataplane {
    xdp: Option<XdpGuard>,
    raw: Arc<raw::RawState>,
    raw_tasks: Vec<tokio::task::JoinHandle<()>>,
    modes: BTreeMap<String, GuardMode>,
    /// Which interface index runs which mode, to find an instance's record.
    by_ifindex: BTreeMap<u32, GuardMode>,
    events: mpsc::Receiver<GuardEvent>,
    /// Where the XDP event reader forwards (kept to start it again after a pause).
    events_tx: mpsc::Sender<GuardEvent>,
    /// A successor's XDP instances, whose tables it writes when it takes the links over (the
    /// predecessor's program reads the same pinned tables until then).
    deferred: Vec<InstanceSpec>,
    /// Whether stopping detaches the guard and removes the pins: not while a predecessor
    /// still owns them (a successor before it commits), nor after handing them to a successor.
    owns: bool,
}

impl Dataplane {
    /// Loads and attaches the guard for `specs` (see [`InstanceSpec::from_config`]); `pin_dir`
    /// None keeps the maps unpinned. Must run inside a tokio runtime. On error nothing stays
    /// attached or pinned.
    ///
    /// `anycast`: the interfaces (name, index, mode) of `[[anycast]]` groups, where the
    /// guard runs in XDP too for second chance (a VRRP instance's mode decides on its
    /// interface); without XDP there is none.
    pub fn start(
        specs: &[InstanceSpec],
        anycast: &[(String, u32, XdpMode)],
        pin_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::start_as(specs, anycast, pin_dir, None)
    }

    /// As [`Dataplane::start`] for the successor of a running hapd (a hitless upgrade): the
    /// pins must fit this build (refused otherwise, before anything changes), each interface
    /// keeps the mode `running` reports for it, its program replaces the predecessor's on each
    /// pinned link in one step (deciding with the predecessor's tables), and the tables, the
    /// event ring and the pins stay the predecessor's until [`Dataplane::take_over_tables`],
    /// [`Dataplane::start_events`] and [`Dataplane::own`].
    pub fn start_successor(
        specs: &[InstanceSpec],
        anycast: &[(String, u32, XdpMode)],
        pin_dir: Option<&Path>,
        running: &BTreeMap<String, GuardMode>,
    ) -> anyhow::Result<Self> {
        Self::start_as(specs, anycast, pin_dir, Some(running))
    }

    fn start_as(
        specs: &[InstanceSpec],
        anycast: &[(String, u32, XdpMode)],
        pin_dir: Option<&Path>,
        running: Option<&BTreeMap<String, GuardMode>>,
    ) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::channel(1024);
        let mut per_iface: BTreeMap<&str, (u32, XdpMode)> = BTreeMap::new();
        for (iface, ifindex, mode) in anycast {
            per_iface.insert(iface, (*ifindex, *mode));
        }
        // A VRRP instance's xdp setting decides for its interface.
        for s in specs {
            per_iface.insert(&s.interface, (s.ifindex, s.xdp));
        }
        let wants_xdp = match running {
            Some(r) => r.values().any(|m| matches!(m, GuardMode::Xdp(_))),
            None => per_iface.values().any(|(_, m)| *m != XdpMode::Off),
        };
        let mut xdp = None;
        if wants_xdp {
            match XdpGuard::load(pin_dir, running.is_some()) {
                Err(e) if running.is_some() => return Err(e),
                Ok(g) => xdp = Some(g),
                Err(e) => {
                    let strict: Vec<&str> = per_iface
                        .iter()
                        .filter(|(_, (_, m))| matches!(m, XdpMode::Native | XdpMode::Generic))
                        .map(|(i, _)| *i)
                        .collect();
                    if !strict.is_empty() {
                        return Err(e.context(format!(
                            "xdp is required on {} (xdp = native/generic)",
                            strict.join(", ")
                        )));
                    }
                    warn!("XDP guard unavailable, using the raw-socket guard everywhere: {e:#}");
                }
            }
        }
        let mut dp = Dataplane {
            xdp,
            raw: Arc::new(raw::RawState::default()),
            raw_tasks: Vec::new(),
            modes: BTreeMap::new(),
            by_ifindex: BTreeMap::new(),
            events,
            events_tx: tx.clone(),
            deferred: Vec::new(),
            owns: running.is_none(),
        };
        match dp.attach_all(specs, &per_iface, tx, running) {
            Ok(()) => Ok(dp),
            Err(e) => {
                dp.shutdown();
                Err(e)
            }
        }
    }

    fn attach_all(
        &mut self,
        specs: &[InstanceSpec],
        per_iface: &BTreeMap<&str, (u32, XdpMode)>,
        tx: mpsc::Sender<GuardEvent>,
        running: Option<&BTreeMap<String, GuardMode>>,
    ) -> anyhow::Result<()> {
        for (&iface, &(ifindex, mode)) in per_iface {
            if let Some(running) = running {
                let got = self.take_over(iface, mode, running.get(iface).copied())?;
                info!("{iface}: VRRP guard runs as {got} (taken over)");
                self.modes.insert(iface.to_owned(), got);
                self.by_ifindex.insert(ifindex, got);
                continue;
            }
            let tried: &[Attached] = match mode {
                XdpMode::Auto => &[Attached::Native, Attached::Generic],
                XdpMode::Native => &[Attached::Native],
                XdpMode::Generic => &[Attached::Generic],
                XdpMode::Off => &[],
            };
            let got = match (&mut self.xdp, tried.is_empty()) {
                (Some(g), false) => {
                    match g.attach(iface, tried) {
                        Ok(a) => GuardMode::Xdp(a),
                        Err(e) if mode == XdpMode::Auto => {
                            warn!("{iface}: no XDP mode attaches ({e:#}); falling back to the raw socket");
                            GuardMode::Raw
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => GuardMode::Raw,
            };
            info!("{iface}: VRRP guard runs as {got}");
            self.modes.insert(iface.to_owned(), got);
            self.by_ifindex.insert(ifindex, got);
        }
        let xdp_specs: Vec<&InstanceSpec> = specs
            .iter()
            .filter(|s| matches!(self.by_ifindex.get(&s.ifindex), Some(GuardMode::Xdp(_))))
            .collect();
        let raw_specs: Vec<&InstanceSpec> = specs
            .iter()
            .filter(|s| matches!(self.by_ifindex.get(&s.ifindex), Some(GuardMode::Raw)))
            .collect();
        if running.is_some() {
            self.deferred = xdp_specs.iter().map(|s| (*s).clone()).collect();
            // The program goes on the links now (a kernel step of ~10 ms that must not fall in
            // the handover's silence), with its own keys but the predecessor's tables: it
            // decides as the predecessor's program does until the tables are written.
            if let Some(g) = &mut self.xdp {
                g.configure_private(&xdp_specs)?;
                let ifaces: Vec<String> = self
                    .modes
                    .iter()
                    .filter(|(_, m)| matches!(m, GuardMode::Xdp(_)))
                    .map(|(i, _)| i.clone())
                    .collect();
                for iface in ifaces {
                    g.take_over(&iface)?;
                }
            }
        }
        // Interfaces in XDP: VRRP instances' and anycast groups' (second chance).
        let any_xdp = self.modes.values().any(|m| matches!(m, GuardMode::Xdp(_)));
        if let Some(g) = &mut self.xdp {
            if running.is_none() {
                g.configure(&xdp_specs)?;
            }
            if !xdp_specs.is_empty() {
                if running.is_none() {
                    g.spawn_events(tx.clone())?;
                }
                g.spawn_clock()?;
            }
            if any_xdp {
                g.spawn_logs()?;
            }
        }
        self.raw.configure(&raw_specs)?;
        for (iface, mode) in &self.modes {
            // The raw receiver judges VRRP adverts: none on an interface only anycast uses.
            if *mode != GuardMode::Raw || !specs.iter().any(|s| s.interface == *iface) {
                continue;
            }
            let ifindex = per_iface[iface.as_str()].0;
            let fds =
                raw::open_sockets(ifindex).with_context(|| format!("raw guard on {iface}"))?;
            for fd in fds {
                let task =
                    raw::spawn_receiver(iface.clone(), ifindex, fd, self.raw.clone(), tx.clone())?;
                self.raw_tasks.push(task);
            }
        }
        if self.xdp.is_some() && !any_xdp {
            // Nothing runs in XDP after all: do not keep maps pinned for nothing.
            if let Some(g) = self.xdp.take() {
                g.shutdown()?;
            }
        }
        Ok(())
    }

    /// Writes the pinned tables as this process's config has them (a successor, once the
    /// predecessor's VRRP loop has stopped: until then they are the predecessor's).
    pub fn take_over_tables(&mut self) -> anyhow::Result<()> {
        let Some(g) = self.xdp.as_mut() else {
            return Ok(());
        };
        let specs: Vec<&InstanceSpec> = self.deferred.iter().collect();
        g.configure(&specs)
    }

    /// Why the guard cannot be handed to a successor, if it cannot (a link that is not
    /// pinned).
    pub fn handoff_blocker(&self) -> Option<String> {
        let unpinned = self.xdp.as_ref()?.unpinned_links();
        (!unpinned.is_empty()).then(|| {
            format!(
                "the guard's link on {} is not pinned, so a new process cannot take it over \
                 (restart instead)",
                unpinned.join(", ")
            )
        })
    }

    /// Runs the guard on `iface` as the predecessor did (`was`), if the config allows it.
    fn take_over(
        &mut self,
        iface: &str,
        want: XdpMode,
        was: Option<GuardMode>,
    ) -> anyhow::Result<GuardMode> {
        let allowed = match (want, was) {
            (_, None) => anyhow::bail!(
                "{iface}: the running hapd has no guard on it: an upgrade cannot add an \
                 interface (restart instead)"
            ),
            (XdpMode::Auto, _) | (XdpMode::Off, Some(GuardMode::Raw)) => true,
            (XdpMode::Native, Some(GuardMode::Xdp(Attached::Native)))
            | (XdpMode::Generic, Some(GuardMode::Xdp(Attached::Generic))) => true,
            _ => false,
        };
        let Some(was) = was.filter(|_| allowed) else {
            anyhow::bail!(
                "{iface}: xdp = \"{want}\" but the running hapd guards it as {}: an upgrade \
                 cannot change the guard's mode (restart instead)",
                was.map_or("nothing".into(), |m| m.to_string())
            );
        };
        if matches!(was, GuardMode::Xdp(_)) && self.xdp.is_none() {
            anyhow::bail!("{iface}: the XDP guard did not load");
        }
        Ok(was)
    }

    /// Starts reading the guard's events (a successor, once its predecessor stopped reading).
    pub fn start_events(&mut self) -> anyhow::Result<()> {
        let tx = self.events_tx.clone();
        match &mut self.xdp {
            Some(g)
                if self
                    .by_ifindex
                    .values()
                    .any(|m| matches!(m, GuardMode::Xdp(_))) =>
            {
                g.spawn_events(tx)
            }
            _ => Ok(()),
        }
    }

    /// Stops reading the guard's events, for a successor to read them.
    pub async fn pause_events(&mut self) {
        if let Some(g) = &mut self.xdp {
            g.pause_events().await;
        }
    }

    /// Takes the guard back after a successor failed: our program on the links again, and
    /// our reader on the event ring.
    pub fn reclaim(&mut self) -> anyhow::Result<()> {
        let links = match &mut self.xdp {
            Some(g) => {
                // Serving again: back among the guard's owners (the successor's slot goes
                // with it when it exits).
                if let Err(e) = g.join_owners() {
                    warn!("the guard's owners: {e:#}");
                }
                g.reclaim()
            }
            None => Ok(()),
        };
        let events = self.start_events();
        links.and(events)
    }

    /// From now on stopping detaches the guard and removes the pins (a successor that
    /// committed).
    pub fn own(&mut self) {
        self.owns = true;
    }

    /// Ends this process's part without detaching or unpinning: a successor runs the guard.
    /// This process no longer counts among those serving the guard's ports.
    pub fn leave(mut self) {
        self.owns = false;
        if let Some(g) = &mut self.xdp {
            if let Err(e) = g.leave_owners() {
                warn!("the guard's owners: {e:#}");
            }
        }
    }

    /// Makes the guard hold exactly `specs` again, on the interfaces it already runs on (a
    /// reload that changed `auth_hmac`). The interfaces and instances must be the ones it was
    /// started with; only their settings may differ.
    pub fn reconfigure(&mut self, specs: &[InstanceSpec]) -> anyhow::Result<()> {
        let on = |want: fn(&GuardMode) -> bool| -> Vec<&InstanceSpec> {
            specs
                .iter()
                .filter(|s| self.by_ifindex.get(&s.ifindex).is_some_and(want))
                .collect()
        };
        let xdp_specs = on(|m| matches!(m, GuardMode::Xdp(_)));
        let raw_specs = on(|m| matches!(m, GuardMode::Raw));
        if let Some(g) = &mut self.xdp {
            g.configure(&xdp_specs)?;
        }
        self.raw.configure(&raw_specs)
    }

    /// The `auth_hmac` outcomes of instance `key`, if it has `auth_hmac`.
    pub fn auth_counters(&self, key: &InstanceKey) -> Option<AuthCounters> {
        match self.by_ifindex.get(&key.ifindex)? {
            GuardMode::Xdp(_) => self.xdp.as_ref()?.auth_counters(key),
            GuardMode::Raw => self.raw.auth_counters(key),
        }
    }

    /// The mode the guard runs in on each interface.
    pub fn modes(&self) -> &BTreeMap<String, GuardMode> {
        &self.modes
    }

    /// The last valid advert recorded for `key` (what the master-down timer reads).
    pub fn advert(&self, key: &InstanceKey) -> Option<AdvertRecord> {
        match self.by_ifindex.get(&key.ifindex)? {
            GuardMode::Xdp(_) => self.xdp.as_ref()?.advert(key),
            GuardMode::Raw => self.raw.advert(key),
        }
    }

    /// Whether `key`'s master-down timer can run in the kernel: its interface's guard runs in
    /// XDP (the raw-socket path has no kernel timer; the engine's own timer serves it).
    pub fn kernel_timer_capable(&self, key: &InstanceKey) -> bool {
        matches!(self.by_ifindex.get(&key.ifindex), Some(GuardMode::Xdp(_))) && self.xdp.is_some()
    }

    /// Turns `key`'s kernel master-down timer on or off (see [`proxy_common::master_down`]);
    /// off also stops a timer already running. False when the guard could not be told (the
    /// engine's own timer then keeps deciding).
    pub fn set_kernel_timer(&mut self, key: &InstanceKey, cfg: TimerCfg) -> bool {
        if !self.kernel_timer_capable(key) {
            return false;
        }
        let Some(g) = self.xdp.as_mut() else {
            return false;
        };
        if let Err(e) = g.set_timer_cfg(key, cfg) {
            warn!("vrid {}: the kernel master-down timer: {e:#}", key.vrid);
            return false;
        }
        if cfg.on == 0 {
            g.stop_timer(key);
        }
        true
    }

    /// `key`'s kernel master-down timer as the guard last set it.
    pub fn kernel_timer(&self, key: &InstanceKey) -> Option<TimerState> {
        if !self.kernel_timer_capable(key) {
            return None;
        }
        self.xdp.as_ref()?.timer(key)
    }

    /// Counters of both paths added up.
    pub fn counters(&self) -> anyhow::Result<GuardCounters> {
        let mut c = self.raw.counters();
        if let Some(g) = &self.xdp {
            c.accumulate(&g.counters()?);
        }
        Ok(c)
    }

    /// An event already waiting, without blocking.
    pub fn try_event(&mut self) -> Option<GuardEvent> {
        self.events.try_recv().ok()
    }

    /// The next advert userspace has to act on.
    pub async fn next_event(&mut self) -> Option<GuardEvent> {
        self.events.recv().await
    }

    /// Puts `addrs` in a planned move as `entry`, or takes them out (`None`), where the guard
    /// runs in XDP ([`proxy_common::flow`]). Whether it does: without XDP a move cannot carry
    /// flows, and the caller releases the addresses as before.
    pub fn set_flows(&mut self, addrs: &[std::net::Ipv4Addr], entry: Option<FlowEntry>) -> bool {
        let Some(g) = self.xdp.as_mut() else {
            return false;
        };
        match g.set_flows(addrs, entry) {
            Ok(()) => true,
            Err(e) => {
                warn!("{e:#}");
                false
            }
        }
    }

    /// Second chance for the anycast groups ([`crate::anycast::Tables`]), where the guard
    /// runs in XDP; whether it does.
    pub fn set_anycast(&mut self, tables: &crate::anycast::Tables) -> bool {
        let Some(g) = self.xdp.as_mut() else {
            return false;
        };
        match g.set_anycast(tables) {
            Ok(()) => true,
            Err(e) => {
                warn!("anycast second chance: {e:#}");
                false
            }
        }
    }

    /// The XDP guard, when loaded (tests and benchmarks run it directly).
    pub fn xdp(&self) -> Option<&XdpGuard> {
        self.xdp.as_ref()
    }

    /// Detaches everything and removes the pins (only stops reading when they are not ours:
    /// see [`Dataplane::leave`]).
    pub fn shutdown(&mut self) {
        for t in self.raw_tasks.drain(..) {
            t.abort();
        }
        if !self.owns {
            self.xdp.take();
            return;
        }
        if let Some(g) = self.xdp.take() {
            let dir = g.pin_dir().map(Path::to_owned);
            match g.shutdown() {
                Ok(()) => {
                    if let Some(dir) = dir {
                        info!("guard detached, pins removed from {}", dir.display());
                    }
                }
                Err(e) => warn!("guard shutdown: {e:#}"),
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `CLOCK_REALTIME` in whole seconds since the Unix epoch, truncated to 32 bits as the
/// `auth_hmac` trailer carries it.
pub fn realtime_secs() -> u32 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .expect("CLOCK_REALTIME is always available on Linux");
    ts.tv_sec() as u32
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_ports_are_the_listeners_on_a_vip_or_the_wildcard() {
        let text = r#"
[node]
name = "n"
[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = 100
virtual_ips = ["198.18.0.100/24", "198.18.0.101/24"]
peers = ["198.18.0.2"]
[[vrrp]]
name = "VI_6"
interface = "eth0"
vrid = 51
priority = 100
virtual_ips = ["2001:2::100/64", "2001:2::101/64"]
peers = ["fe80::2"]
[[listener]]
name = "all"
bind = ["0.0.0.0:443", "[::]:8443"]
tls = false
[[listener]]
name = "vip"
bind = ["198.18.0.100:80", "198.18.0.7:8080", "[2001:2::100]:80"]
[[upstream]]
name = "u"
servers = ["127.0.0.1:9"]
[[vhost]]
server_names = ["a"]
listeners = ["all", "vip"]
  [[vhost.route]]
  prefix = "/"
  upstream = "u"
"#;
        let (cfg, _) = crate::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let got: Vec<([u8; 4], u16)> = served_ports(&cfg, cfg.vrrp[0].get_ref())
            .iter()
            .map(|s| {
                assert_eq!(s.family, Family::V4 as u8);
                assert_eq!(s.addr[4..], [0; 12]);
                (
                    [s.addr[0], s.addr[1], s.addr[2], s.addr[3]],
                    u16::from_be_bytes(s.port),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ([198, 18, 0, 100], 80),
                ([198, 18, 0, 100], 443),
                ([198, 18, 0, 101], 443)
            ]
        );
        // The IPv6 instance: the IPv6 wildcard and its own binds, never the IPv4 ones (a
        // [::] listener is IPv6 only).
        let v6: Vec<(std::net::IpAddr, u16, u8)> = served_ports(&cfg, cfg.vrrp[1].get_ref())
            .iter()
            .map(|s| {
                (
                    ip_of(&s.addr, Family::V6),
                    u16::from_be_bytes(s.port),
                    s.family,
                )
            })
            .collect();
        let a = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            v6,
            vec![
                (a("2001:2::100"), 80, 6),
                (a("2001:2::100"), 8443, 6),
                (a("2001:2::101"), 8443, 6)
            ]
        );
    }
}
