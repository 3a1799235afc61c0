//! The XDP guard: loading the embedded object, pinning and checking its maps, filling them from
//! the config, attaching to interfaces, and reading its event ring.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, MapInfo, MapType, PerCpuArray, PerCpuHashMap, PerCpuValues,
        ProgramArray, RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, RawTracePoint, TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfLoader,
};
use proxy_common::maps::{
    AdvertRecord, AnycastPeers, AuthConfig, AuthCounters, FlowEntry, GuardCounters, GuardEvent,
    InstanceKey, Owners, ReplayKey, ServedPort, TimerCfg, TimerState, VridEntry, EVENTS_BYTES,
    EXIT_PROGRAM_NAME, FLOW_PROGRAM_NAME, GUARD6_PROGRAM_NAME, JUMP_FLOW, JUMP_GUARD6,
    LAYOUT_VERSION, MAP_ADVERTS, MAP_ANYCAST_PEERS, MAP_ANYCAST_PREFIXES, MAP_AUTH, MAP_AUTH_STATS,
    MAP_CLOCK, MAP_EVENTS, MAP_FLOWS, MAP_FLOW_COUNT, MAP_JUMP, MAP_OWNERS, MAP_REPLAY, MAP_STATS,
    MAP_TIMERS, MAP_TIMER_CFG, MAP_VIPS, MAP_VRIDS, MAX_ANYCAST_GROUPS, MAX_ANYCAST_PREFIXES,
    MAX_INSTANCES, MAX_REPLAY, MAX_VIPS, PROGRAM_NAME, VRIDS,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::InstanceSpec;

/// The guard object built by `build.rs` from `proxy-ebpf`.
pub static GUARD_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hapd-guard"));

/// The `xdp` benchmark's traffic generator (`hapd_bench_tx`), a separate object; only with
/// the `bench` feature.
#[cfg(feature = "bench")]
pub static BENCH_TX_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hapd-bench-tx"));

/// Name of the one-entry array holding [`LAYOUT_VERSION`], pinned beside the other maps.
pub const MAP_LAYOUT: &str = "hapd_layout";

/// Every map the guard pins: name, type, key size, value size, max entries. `vrrp_auth` is
/// not among them: it holds key material, and a new process writes it afresh.
const EXPECTED: [(&str, MapType, u32, u32, u32); 16] = [
    (MAP_LAYOUT, MapType::Array, 4, 4, 1),
    (MAP_VRIDS, MapType::Array, 4, 592, VRIDS),
    (MAP_ADVERTS, MapType::Hash, 8, 48, MAX_INSTANCES),
    (MAP_TIMER_CFG, MapType::Hash, 8, 8, MAX_INSTANCES),
    (MAP_TIMERS, MapType::Hash, 8, 48, MAX_INSTANCES),
    (MAP_STATS, MapType::PerCpuArray, 4, 176, 1),
    (MAP_REPLAY, MapType::LruHash, 24, 8, MAX_REPLAY),
    (MAP_AUTH_STATS, MapType::PerCpuHash, 8, 64, MAX_INSTANCES),
    (MAP_CLOCK, MapType::Array, 4, 8, 1),
    (MAP_EVENTS, MapType::RingBuf, 0, 0, EVENTS_BYTES),
    (MAP_VIPS, MapType::Hash, 20, 1, MAX_VIPS),
    (MAP_FLOWS, MapType::Hash, 4, 8, MAX_VIPS),
    (MAP_FLOW_COUNT, MapType::Array, 4, 4, 1),
    (
        MAP_ANYCAST_PREFIXES,
        MapType::LpmTrie,
        8,
        4,
        MAX_ANYCAST_PREFIXES,
    ),
    (MAP_ANYCAST_PEERS, MapType::Array, 4, 52, MAX_ANYCAST_GROUPS),
    (MAP_OWNERS, MapType::Array, 4, 32, 1),
];

/// How the guard ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Attached {
    Native,
    Generic,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attached::Native => "native XDP",
            Attached::Generic => "generic XDP",
        })
    }
}

/// How the guard is attached to one interface.
enum Link {
    /// Owned by the program (no pin directory, or the pin failed): detached with the process.
    Id(aya::programs::xdp::XdpLinkId),
    /// Pinned at `<pin_dir>/link_<iface>`: stays attached if the process dies; removed on a
    /// clean stop, replaced by the next start.
    Pinned(PinnedLink),
}

/// The event ring's reader: its stop, and the task that gives the ring back when stopped.
type EventsTask = (oneshot::Sender<()>, JoinHandle<Option<RingBuf<MapData>>>);

/// The loaded guard and its maps.
pub struct XdpGuard {
    ebpf: Ebpf,
    vrids: Array<MapData, VridEntry>,
    adverts: HashMap<MapData, InstanceKey, AdvertRecord>,
    /// Per instance: whether the guard runs its master-down timer, and with what.
    timer_cfg: HashMap<MapData, InstanceKey, TimerCfg>,
    /// Per instance: the guard's master-down timer (read only here; removed to stop it).
    timers: HashMap<MapData, InstanceKey, TimerState>,
    stats: PerCpuArray<MapData, GuardCounters>,
    events: Option<RingBuf<MapData>>,
    /// The task reading the event ring, and how to stop it and get the ring back.
    events_task: Option<EventsTask>,
    served: HashMap<MapData, ServedPort, u8>,
    flows: HashMap<MapData, u32, FlowEntry>,
    flow_count: Array<MapData, u32>,
    anycast_prefixes: LpmTrie<MapData, [u8; 4], u32>,
    anycast_peers: Array<MapData, AnycastPeers>,
    /// Holds the flow program and the IPv6 guard for the guard's tail calls while the daemon runs.
    _jump: ProgramArray<MapData>,
    auth: HashMap<MapData, InstanceKey, AuthConfig>,
    replay: HashMap<MapData, ReplayKey, u64>,
    auth_stats: PerCpuHashMap<MapData, InstanceKey, AuthCounters>,
    /// `vrrp_clock`, until [`XdpGuard::spawn_clock`] hands it to the task that keeps it true.
    clock: Option<Array<MapData, i64>>,
    /// `hapd_owners` ([`Owners`]).
    owners: Array<MapData, Owners>,
    /// Whether `hapd_exit` is attached (it clears this process's slot as it dies).
    exit_watch: bool,
    pin_dir: Option<PathBuf>,
    links: Vec<(String, Link)>,
    /// The kernel side's aya-log records, until [`XdpGuard::spawn_logs`] hands them to the
    /// task that prints them.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl XdpGuard {
    /// Loads the guard through the verifier. With `pin_dir`, every map is pinned there (reusing
    /// existing pins only if their layout matches this build; otherwise they are replaced, or,
    /// with `successor` (a hitless upgrade, whose predecessor still uses them), refused before
    /// anything changes).
    pub fn load(pin_dir: Option<&Path>, successor: bool) -> anyhow::Result<Self> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                super::bpffs::ensure(dir)?;
                if let Some(why) = pins_mismatch(dir)? {
                    if successor {
                        anyhow::bail!(
                            "the pinned maps in {} do not fit this hapd ({why}): an upgrade \
                             across guard layouts needs a restart",
                            dir.display()
                        );
                    }
                    warn!("replacing the pinned maps in {}: {why}", dir.display());
                    unpin_all(dir);
                }
                EXPECTED.iter().map(|(n, ..)| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(GUARD_OBJECT)
            .context("loading the XDP guard object")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("kernel-side guard logs unavailable: {e}");
                None
            }
        };
        let prog: &mut Xdp = program(&mut ebpf)?;
        prog.load()
            .map_err(verifier_error)
            .context("the kernel refused the XDP guard")?;
        let flow: &mut Xdp = ebpf
            .program_mut(FLOW_PROGRAM_NAME)
            .with_context(|| format!("program {FLOW_PROGRAM_NAME} missing from the guard object"))?
            .try_into()
            .context("the flow program is not XDP")?;
        flow.load()
            .map_err(verifier_error)
            .context("the kernel refused the guard's flow program")?;
        let flow_fd = flow
            .fd()
            .context("the flow program's descriptor")?
            .try_clone()?;
        let guard6: &mut Xdp = ebpf
            .program_mut(GUARD6_PROGRAM_NAME)
            .with_context(|| {
                format!("program {GUARD6_PROGRAM_NAME} missing from the guard object")
            })?
            .try_into()
            .context("the IPv6 guard program is not XDP")?;
        guard6
            .load()
            .map_err(verifier_error)
            .context("the kernel refused the guard's IPv6 program")?;
        let guard6_fd = guard6
            .fd()
            .context("the IPv6 guard program's descriptor")?
            .try_clone()?;
        let mut jump: ProgramArray<MapData> = take(&mut ebpf, MAP_JUMP)?;
        jump.set(JUMP_FLOW, &flow_fd, 0)
            .context("putting the flow program in the guard's jump table")?;
        jump.set(JUMP_GUARD6, &guard6_fd, 0)
            .context("putting the IPv6 guard in the guard's jump table")?;

        // This process serves the guard's ports from now on (beside its predecessor, for a
        // successor), and the exit program clears its slot when it dies.
        let mut owners: Array<MapData, Owners> = take(&mut ebpf, MAP_OWNERS)?;
        if !successor {
            let me = (std::process::id(), pid_namespace()?);
            owners
                .set(0, Owners::only(me.0, me.1), 0)
                .context("writing hapd_owners")?;
        }
        let exit_watch = match attach_exit_watch(&mut ebpf) {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "the guard cannot watch for this process's death ({e:#}): if it is killed, \
                     connection requests reach its closing listeners for a moment"
                );
                false
            }
        };

        let mut layout: Array<MapData, u32> = take(&mut ebpf, MAP_LAYOUT)?;
        layout
            .set(0, LAYOUT_VERSION, 0)
            .context("writing the layout version")?;
        let events: RingBuf<MapData> = take(&mut ebpf, MAP_EVENTS)?;
        let mut guard = XdpGuard {
            vrids: take(&mut ebpf, MAP_VRIDS)?,
            adverts: take(&mut ebpf, MAP_ADVERTS)?,
            timer_cfg: take(&mut ebpf, MAP_TIMER_CFG)?,
            timers: take(&mut ebpf, MAP_TIMERS)?,
            stats: take(&mut ebpf, MAP_STATS)?,
            // A ring reader caches the consumer position it starts from: a successor opens
            // the ring when it starts reading, after its predecessor has stopped.
            events: (!successor).then_some(events),
            events_task: None,
            served: take(&mut ebpf, MAP_VIPS)?,
            _jump: jump,
            flows: take(&mut ebpf, MAP_FLOWS)?,
            flow_count: take(&mut ebpf, MAP_FLOW_COUNT)?,
            anycast_prefixes: take(&mut ebpf, MAP_ANYCAST_PREFIXES)?,
            anycast_peers: take(&mut ebpf, MAP_ANYCAST_PEERS)?,
            auth: take(&mut ebpf, MAP_AUTH)?,
            replay: take(&mut ebpf, MAP_REPLAY)?,
            auth_stats: take(&mut ebpf, MAP_AUTH_STATS)?,
            clock: Some(take(&mut ebpf, MAP_CLOCK)?),
            owners,
            exit_watch,
            ebpf,
            pin_dir: pin_dir.map(Path::to_owned),
            links: Vec::new(),
            logger,
        };
        if let Some(clock) = &mut guard.clock {
            write_clock(clock)?;
        }
        if successor {
            guard.join_owners()?;
        }
        // Moves of an earlier run that shared the pins (killed mid-move): its sockets are gone.
        // A predecessor handing over to us is alive and refuses while it moves addresses.
        // Likewise the anycast tables of an earlier run: this process writes its own.
        if !successor {
            let stale: Vec<Ipv4Addr> = guard.flows().into_iter().map(|(a, _)| a).collect();
            guard.set_flows(&stale, None)?;
            guard.set_anycast(&[])?;
        }
        Ok(guard)
    }

    /// Makes the maps hold exactly `specs`: writes the VRID entries that changed (each in one
    /// update, so the guard never sees half an entry), clears the VRIDs no longer configured,
    /// creates an empty advert record for new instances and removes the records of instances
    /// that are gone (left behind by an earlier run that shared the pins).
    pub fn configure(&mut self, specs: &[&InstanceSpec]) -> anyhow::Result<()> {
        let want: std::collections::BTreeSet<ServedPort> = specs
            .iter()
            .flat_map(|s| s.served.iter().copied())
            .collect();
        if want.len() > MAX_VIPS as usize {
            anyhow::bail!(
                "{} virtual addresses; the guard holds at most {MAX_VIPS}",
                want.len()
            );
        }
        for v in &want {
            self.served
                .insert(v, 1, 0)
                .with_context(|| format!("adding {v:?} to {MAP_VIPS}"))?;
        }
        let gone: Vec<ServedPort> = self
            .served
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in gone {
            let _ = self.served.remove(&k);
        }
        // auth_hmac keys go in before a slot says to use them, and out after it no longer does:
        // the guard never looks for keys that are not there.
        let auth: std::collections::HashMap<InstanceKey, AuthConfig> = specs
            .iter()
            .filter_map(|s| s.auth.as_ref().map(|a| (s.key(), a.guard)))
            .collect();
        for (key, cfg) in &auth {
            self.auth
                .insert(key, cfg, 0)
                .with_context(|| format!("writing {MAP_AUTH} for vrid {}", key.vrid))?;
            match self.auth_stats.get(key, 0) {
                Ok(_) => {}
                Err(aya::maps::MapError::KeyNotFound) => {
                    let zero = PerCpuValues::try_from(vec![
                        AuthCounters::default();
                        aya::util::nr_cpus()
                            .map_err(|(_, e)| e)
                            .context("counting CPUs")?
                    ])
                    .context("per-CPU counters")?;
                    self.auth_stats.insert(key, zero, 0).with_context(|| {
                        format!("creating {MAP_AUTH_STATS} for vrid {}", key.vrid)
                    })?;
                }
                Err(e) => return Err(e).context("reading vrrp_auth_stats"),
            }
        }
        let entries = super::vrid_entries(specs)?;
        for vrid in 0..VRIDS {
            let want = entries.get(&(vrid as u8)).copied().unwrap_or_default();
            let have = self
                .vrids
                .get(&vrid, 0)
                .with_context(|| format!("reading {MAP_VRIDS}[{vrid}]"))?;
            if have != want {
                self.vrids
                    .set(vrid, want, 0)
                    .with_context(|| format!("writing {MAP_VRIDS}[{vrid}]"))?;
            }
        }
        let keys: Vec<InstanceKey> = specs.iter().map(|s| s.key()).collect();
        for (s, key) in specs.iter().zip(&keys) {
            match self.adverts.get(key, 0) {
                // A record left by an earlier run of the same instance stays: it is still true.
                Ok(_) => {}
                Err(aya::maps::MapError::KeyNotFound) => self
                    .adverts
                    .insert(key, AdvertRecord::default(), 0)
                    .with_context(|| format!("creating the advert record of {}", s.name))?,
                Err(e) => return Err(e).context("reading vrrp_adverts"),
            }
        }
        let stale: Vec<InstanceKey> = self
            .adverts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for k in stale {
            let _ = self.adverts.remove(&k);
        }
        // The kernel timers of instances that are gone (deleting an entry stops its timer).
        let stale: Vec<InstanceKey> = self
            .timer_cfg
            .keys()
            .chain(self.timers.keys())
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for k in stale {
            let _ = self.timer_cfg.remove(&k);
            let _ = self.timers.remove(&k);
        }
        let gone: Vec<InstanceKey> = self
            .auth
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !auth.contains_key(k))
            .collect();
        for k in gone {
            let _ = self.auth.remove(&k);
        }
        let gone: Vec<InstanceKey> = self
            .auth_stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !auth.contains_key(k))
            .collect();
        for k in gone {
            let _ = self.auth_stats.remove(&k);
        }
        let gone: Vec<ReplayKey> = self
            .replay
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !auth.contains_key(&k.instance()))
            .collect();
        for k in gone {
            let _ = self.replay.remove(&k);
        }
        Ok(())
    }

    /// Writes what only this process's program reads (the `auth_hmac` keys, not pinned) for
    /// `specs`: a successor does it before its program goes on the links, while the pinned
    /// tables are still its predecessor's ([`XdpGuard::configure`] writes them later).
    pub fn configure_private(&mut self, specs: &[&InstanceSpec]) -> anyhow::Result<()> {
        for s in specs {
            if let Some(a) = &s.auth {
                self.auth
                    .insert(s.key(), a.guard, 0)
                    .with_context(|| format!("writing {MAP_AUTH} for vrid {}", s.vrid))?;
            }
        }
        Ok(())
    }

    /// The `auth_hmac` outcomes of `key` summed over CPUs, if it has `auth_hmac`.
    pub fn auth_counters(&self, key: &InstanceKey) -> Option<AuthCounters> {
        let per_cpu = self.auth_stats.get(key, 0).ok()?;
        let mut sum = AuthCounters::default();
        for c in per_cpu.iter() {
            sum.accumulate(c);
        }
        Some(sum)
    }

    /// The replay mark of a sender (tests).
    pub fn replay_mark(&self, key: &ReplayKey) -> Option<u64> {
        self.replay.get(key, 0).ok()
    }

    /// Moves the kernel side's log (aya-log's ring) to a task that prints every record through
    /// the daemon's log (the `log` records reach `tracing`): the guard logs rare events only,
    /// each reason at most once a second per CPU.
    pub fn spawn_logs(&mut self) -> anyhow::Result<()> {
        let Some(logger) = self.logger.take() else {
            return Ok(());
        };
        // SAFETY: the logger owns its ring's fd, open and unchanged until the AsyncFd drops it.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("polling the guard's log ring")?;
        tokio::spawn(async move {
            loop {
                let mut guard = match fd.readable_mut().await {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("the guard's log ring: {e}");
                        return;
                    }
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// Prints the kernel side's log records waiting now (when no task reads them: tests).
    pub fn flush_logs(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Moves `vrrp_clock` to a task that rewrites it whenever the wall clock is set (a
    /// `CLOCK_REALTIME` timerfd with `TFD_TIMER_CANCEL_ON_SET`: no wake-up otherwise), so the
    /// guard's freshness window follows clock steps. Without it the offset written at load
    /// stays (tests).
    pub fn spawn_clock(&mut self) -> anyhow::Result<()> {
        let mut clock = self.clock.take().context("clock already taken")?;
        let watch = ClockSet::new().context("watching for clock steps")?;
        // Again now that the watch is armed: a step between the load and here is not missed.
        write_clock(&mut clock)?;
        tokio::spawn(async move {
            loop {
                if let Err(e) = watch.changed().await {
                    warn!("watching for clock steps: {e}; the guard keeps the last offset");
                    return;
                }
                match write_clock(&mut clock) {
                    Ok(()) => info!("the wall clock was set; the guard's auth_hmac clock follows"),
                    Err(e) => warn!("{e:#}"),
                }
            }
        });
        Ok(())
    }

    /// Attaches to `iface`. `native_first`: try driver mode, then generic; otherwise the one
    /// mode asked for.
    pub fn attach(&mut self, iface: &str, modes: &[Attached]) -> anyhow::Result<Attached> {
        // A link pinned by an earlier run that was killed: its program still guards the
        // interface (see `Link`); ours replaces it.
        let link_pin = self.link_pin(iface);
        if let Some(p) = link_pin.as_ref().filter(|p| p.exists()) {
            match PinnedLink::from_pin(p)
                .map_err(anyhow::Error::from)
                .and_then(|l| l.unpin().map_err(anyhow::Error::from))
            {
                Ok(old) => {
                    drop(old);
                    info!("{iface}: replaced the guard left attached by an earlier run");
                }
                Err(e) => warn!("{iface}: removing the pinned link {}: {e:#}", p.display()),
            }
        }
        let prog: &mut Xdp = program(&mut self.ebpf)?;
        let mut last = None;
        for &mode in modes {
            let flags = match mode {
                Attached::Native => AyaXdpMode::Driver,
                Attached::Generic => AyaXdpMode::Skb,
            };
            match prog.attach(iface, flags) {
                Ok(id) => {
                    let link = match link_pin.as_ref() {
                        // Pinned, the link outlives us: after a kill -9 the guard still drops
                        // forged adverts, and connection requests nobody listens for.
                        Some(path) => {
                            let pinned = prog
                                .take_link(id)
                                .map_err(anyhow::Error::from)
                                .and_then(|l| FdLink::try_from(l).map_err(anyhow::Error::from))
                                .and_then(|l| l.pin(path).map_err(anyhow::Error::from));
                            match pinned {
                                Ok(p) => Link::Pinned(p),
                                Err(e) => {
                                    // Attached through netlink (old kernel) or the pin failed:
                                    // the taken link was dropped with the error, which
                                    // detached it. Attach again, owned by the program: it
                                    // goes with the process.
                                    warn!("{iface}: the guard's link is not pinned: {e:#}");
                                    let id = prog.attach(iface, flags).with_context(|| {
                                        format!("{mode} attach to {iface} after the pin failed")
                                    })?;
                                    Link::Id(id)
                                }
                            }
                        }
                        None => Link::Id(id),
                    };
                    self.links.push((iface.to_owned(), link));
                    return Ok(mode);
                }
                Err(e) => {
                    if modes.len() > 1 {
                        info!("{iface}: {mode} attach failed: {e}");
                    }
                    last = Some(anyhow::Error::new(e).context(format!("{mode} attach to {iface}")));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no XDP mode to try on {iface}")))
    }

    /// Puts this guard's program on the link a predecessor pinned for `iface` (one atomic
    /// `bpf_link_update`: no packet goes unguarded), keeping the link and its mode.
    pub fn take_over(&mut self, iface: &str) -> anyhow::Result<()> {
        let path = self
            .link_pin(iface)
            .filter(|p| p.exists())
            .with_context(|| format!("{iface}: the running hapd's guard link is not pinned"))?;
        self.update_link(&path)
            .with_context(|| format!("{iface}: taking over the guard link {}", path.display()))?;
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("{iface}: reopening {}", path.display()))?;
        self.links.push((iface.to_owned(), Link::Pinned(pinned)));
        info!("{iface}: the guard's link now runs this process's program");
        Ok(())
    }

    /// Puts this guard's program back on every pinned link (a successor that took them over
    /// failed before it committed); every link is tried, the first failure returned.
    pub fn reclaim(&mut self) -> anyhow::Result<()> {
        let paths: Vec<(String, PathBuf)> = self
            .links
            .iter()
            .filter(|(_, l)| matches!(l, Link::Pinned(_)))
            .filter_map(|(i, _)| Some((i.clone(), self.link_pin(i)?)))
            .collect();
        let mut first = Ok(());
        for (iface, path) in paths {
            let r = self
                .update_link(&path)
                .with_context(|| format!("{iface}: putting the guard back on its link"));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Interfaces whose guard link is not pinned (it cannot be handed to a successor).
    pub fn unpinned_links(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|(_, l)| !matches!(l, Link::Pinned(_)))
            .map(|(i, _)| i.clone())
            .collect()
    }

    fn link_pin(&self, iface: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join(format!("link_{iface}")))
    }

    /// Replaces the program of the XDP link pinned at `path` with ours.
    fn update_link(&mut self, path: &Path) -> anyhow::Result<()> {
        let fd: FdLink = PinnedLink::from_pin(path)?.into();
        let link = aya::programs::xdp::XdpLink::try_from(fd)?;
        let prog: &mut Xdp = program(&mut self.ebpf)?;
        let id = prog.attach_to_link(link)?;
        // Our copy of the descriptor goes; the pin keeps the link.
        drop(prog.take_link(id)?);
        Ok(())
    }

    /// The advert record of `key` as the guard last wrote it.
    /// Tells the guard whether and how to run `key`'s master-down timer (see
    /// [`proxy_common::master_down`]). Turning it off leaves a timer already running to run
    /// out (its event is an input like any other); [`XdpGuard::stop_timer`] stops it.
    pub fn set_timer_cfg(&mut self, key: &InstanceKey, cfg: TimerCfg) -> anyhow::Result<()> {
        self.timer_cfg
            .insert(key, cfg, 0)
            .with_context(|| format!("writing {MAP_TIMER_CFG} for vrid {}", key.vrid))
    }

    /// The processes serving the guard's ports (`hapd_owners`), and whether this one's death
    /// is watched in the kernel.
    pub fn owners(&self) -> (Option<Owners>, bool) {
        (self.owners.get(&0, 0).ok(), self.exit_watch)
    }

    /// Replaces `hapd_owners` (the tests make another process the owner).
    pub fn set_owners(&mut self, o: Owners) -> anyhow::Result<()> {
        self.owners.set(0, o, 0).context("writing hapd_owners")
    }

    /// This process joins those serving the guard's ports (a successor beside its
    /// predecessor, or a predecessor again after its successor failed), the slots of
    /// processes that no longer exist cleared first, and again after the write (one that
    /// died between the read and the write would otherwise be written back and, never
    /// cleared, turn the watch off).
    pub fn join_owners(&mut self) -> anyhow::Result<()> {
        let ns = pid_namespace()?;
        let now = self.owners.get(&0, 0).context("reading hapd_owners")?;
        let joined = living(now, ns).with(std::process::id(), ns);
        self.set_owners(joined)?;
        let after = self.owners.get(&0, 0).context("reading hapd_owners")?;
        let pruned = living(after, ns);
        if pruned != after {
            self.set_owners(pruned)?;
        }
        Ok(())
    }

    /// This process no longer serves the guard's ports (it handed over to a successor and
    /// drains what it holds): its slot is cleared, so that the successor's death alone
    /// counts.
    pub fn leave_owners(&mut self) -> anyhow::Result<()> {
        let me = std::process::id();
        let mut o = self.owners.get(&0, 0).context("reading hapd_owners")?;
        if let Some(i) = o.slot_of(me) {
            o.tgid[i] = 0;
            self.set_owners(o)?;
        }
        Ok(())
    }

    /// Stops `key`'s master-down timer, if the guard has one (deleting it cancels it).
    pub fn stop_timer(&mut self, key: &InstanceKey) {
        let _ = self.timers.remove(key);
    }

    /// `key`'s master-down timer as the guard last set it, if it has one.
    pub fn timer(&self, key: &InstanceKey) -> Option<TimerState> {
        self.timers.get(key, 0).ok()
    }

    pub fn advert(&self, key: &InstanceKey) -> Option<AdvertRecord> {
        self.adverts.get(key, 0).ok()
    }

    /// Counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<GuardCounters> {
        sum_cpus(&self.stats)
    }

    /// Runs the guard once on `frame` as if it arrived on `ifindex` (BPF_PROG_TEST_RUN).
    /// Returns the XDP action.
    pub fn test_run(&self, frame: &[u8], ifindex: u32) -> anyhow::Result<u32> {
        Ok(self.run(frame, ifindex, 1, None)?.0)
    }

    /// As [`XdpGuard::test_run`], with the frame as the program left it (a forwarded segment's
    /// rewritten Ethernet header).
    pub fn test_run_frame(&self, frame: &[u8], ifindex: u32) -> anyhow::Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len()];
        let (action, _) = self.run(frame, ifindex, 1, Some(&mut out))?;
        Ok((action, out))
    }

    /// Runs the guard `repeat` times on `frame`; returns the action and the kernel's mean time
    /// per run (the `xdp` benchmark).
    #[cfg(feature = "bench")]
    pub fn bench(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> anyhow::Result<(u32, Duration)> {
        self.run(frame, ifindex, repeat, None)
    }

    fn run(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
        out: Option<&mut [u8]>,
    ) -> anyhow::Result<(u32, Duration)> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .context("guard program missing")?
            .try_into()
            .context("guard program is not XDP")?;
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the kernel wants data = 0 and data_end = the frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.data_out = out;
        opts.repeat = repeat;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    /// Takes the events waiting in the ring without blocking (when no task reads it).
    pub fn poll_events(&mut self) -> Vec<GuardEvent> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.events {
            while let Some(item) = ring.next() {
                if let Some(ev) = decode_event(&item) {
                    out.push(ev);
                }
            }
        }
        out
    }

    /// Moves the event ring to a task that forwards every event to `tx`, until
    /// [`XdpGuard::pause_events`].
    pub fn spawn_events(&mut self, tx: mpsc::Sender<GuardEvent>) -> anyhow::Result<()> {
        if self.events_task.is_some() {
            return Ok(());
        }
        let ring = match self.events.take() {
            Some(r) => r,
            // Opened now: from the consumer position as it is (another process may have read).
            None => {
                let path = self
                    .pin_dir
                    .as_ref()
                    .map(|d| d.join(MAP_EVENTS))
                    .context("the event ring is not pinned: cannot reopen it")?;
                let data = MapData::from_pin(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                RingBuf::try_from(aya::maps::Map::RingBuf(data))
                    .with_context(|| format!("{} as a ring buffer", path.display()))?
            }
        };
        // SAFETY: the RingBuf owns its map fd, open and unchanged until the AsyncFd drops it.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("polling the event ring")?;
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let mut guard = tokio::select! {
                    _ = &mut stop => return Some(fd.into_inner()),
                    r = fd.readable_mut() => match r {
                        Ok(g) => g,
                        Err(e) => {
                            warn!("event ring: {e}");
                            return None;
                        }
                    },
                };
                let ring = guard.get_inner_mut();
                let mut batch = Vec::new();
                while let Some(item) = ring.next() {
                    batch.extend(decode_event(&item));
                }
                guard.clear_ready();
                for ev in batch {
                    // A full channel whose reader waits for this task to stop (a pause) must
                    // not hold it.
                    tokio::select! {
                        r = tx.send(ev) => if r.is_err() {
                            return None;
                        },
                        _ = &mut stop => return Some(fd.into_inner()),
                    }
                }
            }
        });
        self.events_task = Some((stop_tx, task));
        Ok(())
    }

    /// Stops reading the event ring and takes it back: the ring has one consumer position, and
    /// a successor process reads it from here on (the events of the pause wait there).
    pub async fn pause_events(&mut self) {
        let Some((stop, task)) = self.events_task.take() else {
            return;
        };
        let _ = stop.send(());
        // The ring itself is dropped: whoever reads next opens it afresh at the position the
        // kernel has (a successor, or this process again after a failed upgrade).
        match task.await {
            Ok(Some(_)) if self.pin_dir.is_none() => {
                warn!("the event ring is not pinned: events are read no more")
            }
            Ok(Some(_)) => {}
            Ok(None) => warn!("the event ring's reader had stopped"),
            Err(e) => warn!("the event ring's reader: {e}"),
        }
    }

    /// Puts `addrs` in a planned move as `entry` (see [`proxy_common::flow`]), or takes them
    /// out (`None`), all or nothing. The count the program checks first is written once, after
    /// the entries: raised after they are added, lowered after they are removed, so it never
    /// skips a live entry.
    pub fn set_flows(
        &mut self,
        addrs: &[Ipv4Addr],
        entry: Option<FlowEntry>,
    ) -> anyhow::Result<()> {
        for (i, addr) in addrs.iter().enumerate() {
            if let Err(e) = self.write_flow(*addr, entry) {
                // The addresses done so far leave the move again.
                for done in &addrs[..i] {
                    let _ = self.write_flow(*done, None);
                }
                self.write_flow_count()?;
                return Err(e);
            }
        }
        self.write_flow_count()
    }

    /// [`XdpGuard::set_flows`] for one address.
    pub fn set_flow(&mut self, addr: Ipv4Addr, entry: Option<FlowEntry>) -> anyhow::Result<()> {
        self.set_flows(&[addr], entry)
    }

    fn write_flow(&mut self, addr: Ipv4Addr, entry: Option<FlowEntry>) -> anyhow::Result<()> {
        let key = u32::from_ne_bytes(addr.octets());
        match entry {
            Some(e) => self
                .flows
                .insert(key, e, 0)
                .with_context(|| format!("adding {addr} to {MAP_FLOWS}")),
            None => match self.flows.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing {addr} from {MAP_FLOWS}")),
            },
        }
    }

    /// Second chance for anycast groups ([`proxy_common::second_chance`]): each group's
    /// prefixes and peers, the group's index its position in `groups`. Replaces what was
    /// there; on error the prefixes written so far stay and the caller may try again.
    pub fn set_anycast(
        &mut self,
        groups: &[(Vec<ipnet::Ipv4Net>, AnycastPeers)],
    ) -> anyhow::Result<()> {
        if groups.len() > MAX_ANYCAST_GROUPS as usize {
            anyhow::bail!(
                "{} anycast groups: the guard takes at most {MAX_ANYCAST_GROUPS}",
                groups.len()
            );
        }
        let mut wanted = std::collections::BTreeMap::new();
        // Entries past the groups are cleared: a guard kept from an earlier process must not
        // answer pings or walk segments for groups gone from the config.
        for i in 0..MAX_ANYCAST_GROUPS {
            let peers = groups
                .get(i as usize)
                .map_or_else(AnycastPeers::default, |g| g.1);
            self.anycast_peers
                .set(i, peers, 0)
                .with_context(|| format!("writing group {i} to {MAP_ANYCAST_PEERS}"))?;
        }
        for (i, (prefixes, _)) in groups.iter().enumerate() {
            for p in prefixes {
                wanted.insert((p.prefix_len() as u32, p.network().octets()), i as u32);
            }
        }
        if wanted.len() > MAX_ANYCAST_PREFIXES as usize {
            anyhow::bail!(
                "{} anycast prefixes: the guard takes at most {MAX_ANYCAST_PREFIXES}",
                wanted.len()
            );
        }
        for ((len, net), group) in &wanted {
            self.anycast_prefixes
                .insert(&Key::new(*len, *net), *group, 0)
                .with_context(|| {
                    format!(
                        "adding {}/{len} to {MAP_ANYCAST_PREFIXES}",
                        std::net::Ipv4Addr::from(*net)
                    )
                })?;
        }
        let stale: Vec<Key<[u8; 4]>> = self
            .anycast_prefixes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            match self.anycast_prefixes.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing from {MAP_ANYCAST_PREFIXES}"))
                }
            }
        }
        Ok(())
    }

    /// New peers for anycast group `index` (a node came or went, an address changed).
    pub fn set_anycast_peers(&mut self, index: u32, peers: AnycastPeers) -> anyhow::Result<()> {
        self.anycast_peers
            .set(index, peers, 0)
            .with_context(|| format!("writing group {index} to {MAP_ANYCAST_PEERS}"))
    }

    /// The addresses in a planned move: the flow program is jumped to for every TCP segment
    /// and ARP request only while there are any (for anycast prefixes the guard looks the
    /// segment's address up itself).
    fn write_flow_count(&mut self) -> anyhow::Result<()> {
        let n = self.flows.keys().filter(Result::is_ok).count() as u32;
        self.flow_count
            .set(0, n, 0)
            .with_context(|| format!("writing {MAP_FLOW_COUNT}"))
    }

    /// The addresses in a planned move and their entries.
    pub fn flows(&self) -> Vec<(Ipv4Addr, FlowEntry)> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .map(|(k, e)| (Ipv4Addr::from(k.to_ne_bytes()), e))
            .collect()
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Detaches from every interface and removes the pins.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let links = std::mem::take(&mut self.links);
        if let Ok(prog) = program(&mut self.ebpf) {
            for (iface, link) in links {
                let r = match link {
                    Link::Id(id) => prog.detach(id).map_err(anyhow::Error::from),
                    // Unpinned and dropped: the last reference goes, the program detaches.
                    Link::Pinned(p) => p.unpin().map(drop).map_err(anyhow::Error::from),
                };
                if let Err(e) = r {
                    warn!("{iface}: detaching the guard: {e:#}");
                }
            }
        }
        if let Some(dir) = &self.pin_dir {
            unpin_all(dir);
        }
        Ok(())
    }
}

/// Writes `CLOCK_REALTIME - CLOCK_MONOTONIC` to `vrrp_clock`.
fn write_clock(clock: &mut Array<MapData, i64>) -> anyhow::Result<()> {
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .context("reading CLOCK_REALTIME")?;
    let mono = super::monotonic_ns() as i64;
    let real = real.tv_sec() * 1_000_000_000 + real.tv_nsec();
    clock
        .set(0, real - mono, 0)
        .with_context(|| format!("writing {MAP_CLOCK}"))
}

/// A `CLOCK_REALTIME` timerfd armed far ahead with `TFD_TIMER_CANCEL_ON_SET`: readable (with
/// `ECANCELED`) when the wall clock is set, and otherwise silent.
struct ClockSet {
    fd: crate::timerfd::AsyncTimerFd,
}

impl ClockSet {
    fn new() -> anyhow::Result<ClockSet> {
        let c = ClockSet {
            fd: crate::timerfd::AsyncTimerFd::new(nix::sys::timerfd::ClockId::CLOCK_REALTIME)?,
        };
        c.arm()?;
        Ok(c)
    }

    /// Arms the timer a year ahead (it only serves to be cancelled).
    fn arm(&self) -> anyhow::Result<()> {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)?;
        let at = nix::sys::time::TimeSpec::new(now.tv_sec() + 365 * 86_400, 0);
        self.fd.timer().set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
        )?;
        Ok(())
    }

    /// Waits until the wall clock is set (or the year passes), then re-arms.
    async fn changed(&self) -> anyhow::Result<()> {
        match self.fd.wait().await? {
            // ECANCELED: the clock was set. An expiry: a year went by. Both: re-arm.
            Ok(_) | Err(nix::errno::Errno::ECANCELED) => self.arm(),
            Err(e) => Err(e.into()),
        }
    }
}

/// The guard's counters summed over CPUs, read from the pins in `pin_dir` (of a running hapd).
pub fn pinned_counters(pin_dir: &Path) -> anyhow::Result<GuardCounters> {
    let path = pin_dir.join(MAP_STATS);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let stats: PerCpuArray<MapData, GuardCounters> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))
            .with_context(|| format!("{} is not the guard's counters", path.display()))?;
    sum_cpus(&stats)
}

fn sum_cpus(stats: &PerCpuArray<MapData, GuardCounters>) -> anyhow::Result<GuardCounters> {
    let per_cpu = stats.get(&0, 0).context("reading guard_stats")?;
    let mut sum = GuardCounters::default();
    for c in per_cpu.iter() {
        sum.accumulate(c);
    }
    Ok(sum)
}

fn decode_event(item: &[u8]) -> Option<GuardEvent> {
    (item.len() >= std::mem::size_of::<GuardEvent>()).then(|| {
        // SAFETY: the length is checked; GuardEvent is plain data (any bytes are valid) and
        // read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<GuardEvent>()) }
    })
}

/// Loads `hapd_exit` and attaches it to `sched_process_exit` (a raw tracepoint: no tracefs
/// needed). Its link lives as long as this process: it has run for this process's own exit
/// before the descriptors go.
fn attach_exit_watch(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(EXIT_PROGRAM_NAME)
        .with_context(|| format!("program {EXIT_PROGRAM_NAME} missing from the guard object"))?
        .try_into()
        .context("the exit program is not a raw tracepoint")?;
    p.load()
        .map_err(verifier_error)
        .context("the kernel refused the exit program")?;
    p.attach("sched_process_exit")
        .context("attaching the exit program to sched_process_exit")?;
    Ok(())
}

/// `o` with the slots of processes that no longer exist cleared (only when `o` is of this
/// process's pid namespace `ns`: another's numbers cannot be checked from here).
fn living(mut o: Owners, ns: (u64, u64)) -> Owners {
    if (o.pidns_dev, o.pidns_ino) != ns {
        return o;
    }
    for t in o.tgid.iter_mut().filter(|t| **t != 0) {
        let gone = i32::try_from(*t).map_or(true, |pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        });
        if gone {
            *t = 0;
        }
    }
    o
}

/// This process's pid namespace: the device and inode of `/proc/self/ns/pid`.
fn pid_namespace() -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata("/proc/self/ns/pid").context("reading /proc/self/ns/pid")?;
    Ok((m.dev(), m.ino()))
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .with_context(|| format!("program {PROGRAM_NAME} missing from the guard object"))?
        .try_into()
        .context("guard program is not XDP")
}

fn take<M>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the guard"))?;
    M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Keeps the verifier's log, which is what explains a refusal.
fn verifier_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow::anyhow!("{io_error}\nverifier log:\n{verifier_log}")
        }
        e => e.into(),
    }
}

/// Whether the pins in `dir` have a layout other than this build's, and how: checks the
/// layout version map and every map's type and sizes.
fn pins_mismatch(dir: &Path) -> anyhow::Result<Option<String>> {
    let mut present = 0;
    let mut mismatch: Option<String> = None;
    for (name, ty, key, value, max) in EXPECTED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        present += 1;
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("{} is not a pinned BPF map", path.display()))?;
        let got = (
            info.map_type().ok(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        if got != (Some(ty), key, value, max) {
            mismatch.get_or_insert(format!(
                "{} is {:?} with key {} B, value {} B, {} entries; this hapd needs {ty:?}, {key} \
                 B, {value} B, {max}",
                path.display(),
                got.0,
                got.1,
                got.2,
                got.3
            ));
        }
    }
    if present > 0 && mismatch.is_none() {
        let layout = dir.join(MAP_LAYOUT);
        let version = MapData::from_pin(&layout)
            .ok()
            .and_then(|m| Array::<_, u32>::try_from(aya::maps::Map::Array(m)).ok())
            .and_then(|a| a.get(&0, 0).ok());
        if version != Some(LAYOUT_VERSION) {
            mismatch = Some(format!(
                "{} says layout {version:?}, this hapd uses layout {LAYOUT_VERSION}",
                layout.display()
            ));
        }
    }
    Ok(mismatch)
}

fn unpin_all(dir: &Path) {
    for (name, ..) in EXPECTED {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("unpinning {}: {e}", path.display()),
        }
    }
}
