//! The VRRP state machine of one instance, without I/O (quinn-proto / holo-vrrp style).
//!
//! Time goes in as `now` (a monotonic [`Duration`] since any fixed epoch; the daemon uses
//! `CLOCK_MONOTONIC`, the clock of the guard's `last_seen_ns`), events go in through the
//! `handle_*` methods, and what to do comes out of [`Instance::poll_action`]; when to call
//! [`Instance::handle_timeout`] next comes out of [`Instance::poll_timeout`]. Every state change
//! goes through one private chokepoint, `Instance::change_state`.
//!
//! One deliberate difference from RFC 5798 section 6.4.2, shared with keepalived: a backup with
//! preemption on that hears a master of lower priority takes over at once instead of waiting
//! for Master_Down_Interval, so a master that lowers its priority hands over within one advert.
use std::{collections::BTreeMap, collections::VecDeque, fmt, net::IpAddr, time::Duration};

use super::packet::Centisecs;

/// The priority of the address owner (RFC 5798 section 5.2.4).
pub const OWNER: u8 = 255;

/// What the engine needs to know about its instance.
#[derive(Clone, Debug)]
pub struct Config {
    pub vrid: u8,
    /// 2 or 3.
    pub version: u8,
    /// Configured priority, 1..=255.
    pub priority: u8,
    pub advert_interval: Centisecs,
    pub preempt: bool,
    /// After start-up, lower-priority masters are not preempted for this long.
    pub preempt_delay: Duration,
    /// Our primary address on the interface: the tie-breaker (RFC 5798 section 6.4.3).
    pub primary: IpAddr,
    /// While master, re-announce the addresses (gratuitous ARP) this often; None: never.
    pub garp_refresh: Option<Duration>,
    /// Run a fence command (and wait for its success) before taking over from a master that
    /// fell silent.
    pub fence: bool,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// Interface down, or a tracked check in fault: no VIPs, no adverts.
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        })
    }
}

/// Why a state changed: logged, and given to notify scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Startup,
    /// No advert from the master for Master_Down_Interval.
    MasterDown,
    /// The master sent priority 0 and Skew_Time passed.
    MasterResigned,
    /// A master of higher priority (or equal priority and higher address) was heard.
    HigherPriorityMaster,
    /// We preempted a master of lower priority.
    Preempt,
    /// Our effective priority fell below a known peer's: we resigned (priority 0).
    Resigned,
    Shutdown,
    LinkDown,
    TrackFault,
    /// The link is up and every track is healthy again.
    Recovered,
    /// An operator's drill asked this router to step down.
    SteppedDown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Startup => "start-up",
            Reason::MasterDown => "master down",
            Reason::MasterResigned => "master resigned (priority 0)",
            Reason::HigherPriorityMaster => "higher-priority master",
            Reason::Preempt => "preempting a lower-priority master",
            Reason::Resigned => "our priority fell below a peer's",
            Reason::Shutdown => "shutdown",
            Reason::LinkDown => "link down",
            Reason::TrackFault => "tracked check in fault",
            Reason::Recovered => "recovered",
            Reason::SteppedDown => "stepped down for a drill",
        })
    }
}

/// What the I/O layer must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority and the configured interval.
    SendAdvert { priority: u8 },
    /// Add the virtual addresses and send a gratuitous ARP burst. `from`: the previous master,
    /// alive (it resigned, or we preempted it): a planned move, whose open flows it keeps
    /// serving; segments of flows this node has no socket for go there.
    TakeVips { from: Option<IpAddr> },
    /// We resigned as master: keep the addresses, and keep answering for them, until a
    /// successor is heard ([`Action::HandOver`]) or we become master again.
    HoldVips,
    /// We stay master and `from`, which also claimed it (a split brain healing), yields: the
    /// flows it holds stay there while it drains them, as after [`Action::TakeVips`] with a
    /// `from`.
    Adopt { from: IpAddr },
    /// `to` is master now, after a planned move: stop announcing the addresses (no ARP
    /// answers), send it new connections and segments of flows we have no socket for, end our
    /// own flows at request boundaries, then remove the addresses.
    HandOver { to: IpAddr },
    /// Send a gratuitous ARP burst again (another node claimed master: heal a split brain).
    Reannounce,
    /// Remove the virtual addresses now (a fault, a lost link: nothing to hand over).
    ReleaseVips,
    /// The state changed (for logs, notify, status).
    Transition {
        from: State,
        to: State,
        reason: Reason,
    },
    /// An advert was ignored, and why (logs, metrics).
    Ignored { from: IpAddr, why: &'static str },
    /// Fence the silent master now; report with [`Instance::handle_fence_result`].
    Fence,
    /// Send one advert with this priority to `to` only: we were master and yield to `to`, which
    /// may never have heard us (split brain); hearing a lower-priority master makes it
    /// re-announce the addresses, so clients that followed us come back to it.
    TellWinner { to: IpAddr, priority: u8 },
}

/// An advert as the engine sees it (already checked by the guard or the parser).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    pub src: IpAddr,
    pub priority: u8,
    pub interval: Centisecs,
}

/// What another router last advertised as master, for `Instance::set_priority_delta`.
#[derive(Clone, Copy, Debug)]
struct Peer {
    /// Its priority (never 0: a priority-0 advert removes the entry).
    priority: u8,
    /// When its last advert was heard.
    heard: Duration,
    /// The advert interval it advertised.
    interval: Centisecs,
}

impl Peer {
    /// Whether the peer still counts at `now`: it was heard less than 4 x its own advert
    /// interval ago. That bounds its Master_Down_Interval (3 x Master_Adver_Interval +
    /// Skew_Time, RFC 5798 section 6.1) whatever the priorities, since Skew_Time is below one
    /// interval in v3 and below one second, the least v2 interval, in v2 (RFC 3768 section 6.1).
    /// A peer silent for longer is dead or a backup, and we cannot tell which: resigning to a
    /// dead one would leave the addresses unserved for a Master_Down_Interval, so it no longer
    /// counts (a live backup with preemption still takes over at our next advert).
    fn alive_at(&self, now: Duration) -> bool {
        now < self.heard + 4 * self.interval.as_duration()
    }
}

/// What a running instance hands to its successor in a hitless upgrade: everything that
/// decides its next steps, so the successor neither elects nor resigns. Times are
/// `CLOCK_MONOTONIC`, which both processes share.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub state: State,
    pub delta: i32,
    pub link_up: bool,
    pub track_fault: bool,
    /// Master_Adver_Interval in centiseconds.
    pub master_adver_interval: u16,
    pub adver_timer: Option<Duration>,
    pub master_down_timer: Option<Duration>,
    pub refresh_timer: Option<Duration>,
    /// The master-down timer runs because the master resigned (priority 0).
    pub master_resigned: bool,
    pub stepped_down: bool,
    pub started: Duration,
    /// The routers heard as master: address, priority, when, interval (centiseconds).
    pub peers: Vec<(IpAddr, u8, Duration, u16)>,
}

/// One VRRP instance.
#[derive(Debug)]
pub struct Instance {
    cfg: Config,
    state: State,
    /// Added to the configured priority by tracking (`set_priority_delta`).
    delta: i32,
    link_up: bool,
    track_fault: bool,
    /// Master_Adver_Interval: the master's interval as learned (v3), else ours.
    master_adver_interval: Centisecs,
    adver_timer: Option<Duration>,
    master_down_timer: Option<Duration>,
    refresh_timer: Option<Duration>,
    /// A fence command runs; the takeover waits for it.
    fencing: bool,
    /// Why the master-down timer runs: the master fell silent, or resigned (priority 0).
    down_reason: Reason,
    /// A drill asked us to step down: we advertise priority 1 until handed back.
    stepped_down: bool,
    started: Duration,
    /// The routers heard as master, one entry per source address: a priority-0 advert removes
    /// its sender's entry, and entries no longer alive (`Peer::alive_at`) are dropped whenever
    /// the table is read or written.
    peers: BTreeMap<IpAddr, Peer>,
    /// We resigned as master and keep the addresses until a successor is heard.
    holding: bool,
    /// The other router of a planned move, for the next state change: the master that
    /// resigned (priority 0) while we are backup, the master we preempt, or the master we yield
    /// to.
    counterpart: Option<IpAddr>,
    actions: VecDeque<Action>,
}

impl Instance {
    pub fn new(cfg: Config) -> Instance {
        Instance {
            master_adver_interval: cfg.advert_interval,
            cfg,
            state: State::Initialize,
            delta: 0,
            link_up: true,
            track_fault: false,
            adver_timer: None,
            master_down_timer: None,
            refresh_timer: None,
            fencing: false,
            down_reason: Reason::MasterDown,
            stepped_down: false,
            started: Duration::ZERO,
            peers: BTreeMap::new(),
            holding: false,
            counterpart: None,
            actions: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The instance as it stands, for a successor process; `Err` says why it cannot be handed
    /// over now (a move, a fence or the start-up is in progress: retry when it is done).
    pub fn snapshot(&self) -> Result<Snapshot, &'static str> {
        if self.state == State::Initialize {
            return Err("it is starting or stopping");
        }
        if self.holding {
            return Err("it resigned and holds its addresses for a successor");
        }
        if self.fencing {
            return Err("a fence command runs");
        }
        Ok(Snapshot {
            state: self.state,
            delta: self.delta,
            link_up: self.link_up,
            track_fault: self.track_fault,
            master_adver_interval: self.master_adver_interval.0,
            adver_timer: self.adver_timer,
            master_down_timer: self.master_down_timer,
            refresh_timer: self.refresh_timer,
            master_resigned: self.down_reason == Reason::MasterResigned,
            stepped_down: self.stepped_down,
            started: self.started,
            peers: self
                .peers
                .iter()
                .map(|(a, p)| (*a, p.priority, p.heard, p.interval.0))
                .collect(),
        })
    }

    /// An instance that continues from `snap` (taken by [`Instance::snapshot`] in the process
    /// it succeeds) with `cfg`: no start-up, no state change and no action; its timers fire as
    /// they would have there (an advert overdue by the handover goes out at the first
    /// [`Instance::handle_timeout`]).
    pub fn resume(cfg: Config, snap: &Snapshot) -> Instance {
        let mut i = Instance::new(cfg);
        i.state = snap.state;
        i.delta = snap.delta;
        i.link_up = snap.link_up;
        i.track_fault = snap.track_fault;
        i.master_adver_interval = Centisecs(snap.master_adver_interval);
        i.adver_timer = snap.adver_timer;
        i.master_down_timer = snap.master_down_timer;
        i.refresh_timer = snap.refresh_timer;
        i.down_reason = if snap.master_resigned {
            Reason::MasterResigned
        } else {
            Reason::MasterDown
        };
        i.stepped_down = snap.stepped_down;
        i.started = snap.started;
        i.peers = snap
            .peers
            .iter()
            .map(|&(a, priority, heard, interval)| {
                (
                    a,
                    Peer {
                        priority,
                        heard,
                        interval: Centisecs(interval),
                    },
                )
            })
            .collect();
        i
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The priority we advertise: the configured one plus tracking, within 1..=254; the owner
    /// (255) is never adjusted (RFC 5798 section 5.2.4).
    pub fn effective_priority(&self) -> u8 {
        if self.stepped_down {
            return 1;
        }
        if self.cfg.priority == OWNER {
            return OWNER;
        }
        (self.cfg.priority as i32 + self.delta).clamp(1, 254) as u8
    }

    /// Master_Down_Interval = 3 x Master_Adver_Interval + Skew_Time (RFC 5798 section 6.1).
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval.as_duration() + self.skew_time()
    }

    /// Skew_Time: v3 ((256 - priority) x Master_Adver_Interval) / 256 (RFC 5798 section 6.1);
    /// v2 (256 - priority) / 256 seconds (RFC 3768 section 6.1).
    pub fn skew_time(&self) -> Duration {
        let p = 256 - self.effective_priority() as u32;
        if self.cfg.version == 2 {
            Duration::from_secs(1) * p / 256
        } else {
            self.master_adver_interval.as_duration() * p / 256
        }
    }

    /// When [`Instance::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        [self.adver_timer, self.master_down_timer, self.refresh_timer]
            .into_iter()
            .flatten()
            .min()
    }

    /// The advert period while master: the I/O layer can keep a periodic timer for it.
    pub fn advert_period(&self) -> Option<Duration> {
        self.adver_timer
            .filter(|_| self.state == State::Master)
            .map(|_| self.cfg.advert_interval.as_duration())
    }

    /// The master-down deadline while backup (the I/O layer reads the guard's map before it).
    pub fn master_down_deadline(&self) -> Option<Duration> {
        self.master_down_timer
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The Startup event (RFC 5798 section 6.4.1).
    pub fn handle_startup(&mut self, now: Duration) {
        self.started = now;
        if self.state != State::Initialize {
            return;
        }
        self.enter_election(now, Reason::Startup);
    }

    fn enter_election(&mut self, now: Duration, reason: Reason) {
        if !self.link_up {
            self.change_state(now, State::Fault, Reason::LinkDown);
        } else if self.track_fault {
            self.change_state(now, State::Fault, Reason::TrackFault);
        } else if self.cfg.priority == OWNER {
            self.change_state(now, State::Master, reason);
        } else {
            self.change_state(now, State::Backup, reason);
        }
    }

    /// The Shutdown event: a master resigns with priority 0 (RFC 5798 section 6.4.3).
    pub fn handle_shutdown(&mut self, now: Duration) {
        if self.state != State::Initialize {
            self.change_state(now, State::Initialize, Reason::Shutdown);
        }
    }

    /// Timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        if let Some(due) = self
            .adver_timer
            .filter(|&t| t <= now && self.state == State::Master)
        {
            self.actions.push_back(Action::SendAdvert {
                priority: self.effective_priority(),
            });
            // RFC 5798 section 6.4.3: reset the Adver_Timer to Advertisement_Interval. Counted
            // from when it was due rather than from when the I/O layer got round to it, so the
            // adverts keep their cadence (and a periodic timer can carry them); a whole interval
            // missed starts afresh instead of sending a burst to catch up.
            let interval = self.cfg.advert_interval.as_duration();
            let next = due + interval;
            self.adver_timer = Some(if next > now { next } else { now + interval });
        }
        if self.refresh_timer.is_some_and(|t| t <= now) && self.state == State::Master {
            self.actions.push_back(Action::Reannounce);
            self.refresh_timer = self.cfg.garp_refresh.map(|r| now + r);
        }
        if self.master_down_timer.is_some_and(|t| t <= now) && self.state == State::Backup {
            if self.cfg.fence && self.down_reason == Reason::MasterDown {
                // The master fell silent: make sure it is gone before taking its addresses.
                self.master_down_timer = None;
                self.fencing = true;
                self.actions.push_back(Action::Fence);
            } else {
                self.change_state(now, State::Master, self.down_reason);
            }
        }
    }

    /// An advert for this instance heard at `at` (which may lie before `now` when it comes from
    /// the guard's record).
    pub fn handle_advert(&mut self, at: Duration, h: Heard) {
        if h.src == self.cfg.primary {
            return; // our own advert, looped back
        }
        self.forget_silent_peers(at);
        if h.priority == 0 {
            // RFC 5798 section 6.4.3: a master that sends priority 0 is leaving.
            self.peers.remove(&h.src);
        } else {
            self.peers.insert(
                h.src,
                Peer {
                    priority: h.priority,
                    heard: at,
                    interval: h.interval,
                },
            );
        }
        if self.holding && h.priority > 0 {
            // The successor of a master we resigned from: the move is planned, hand over.
            self.holding = false;
            self.actions.push_back(Action::HandOver { to: h.src });
        }
        if self.cfg.version == 2 && h.interval != self.cfg.advert_interval {
            // RFC 3768 section 7.1: the interval must match the configured one.
            self.actions.push_back(Action::Ignored {
                from: h.src,
                why: "v2 advert interval differs from ours",
            });
            return;
        }
        let ours = self.effective_priority();
        match self.state {
            State::Backup => {
                self.fencing = false;
                if h.priority == 0 {
                    // RFC 5798 section 6.4.2: the master resigned; take over after Skew_Time.
                    self.master_down_timer = Some(at + self.skew_time());
                    self.down_reason = Reason::MasterResigned;
                    self.counterpart = Some(h.src);
                    return;
                }
                self.counterpart = None;
                let may_preempt = self.cfg.preempt && at >= self.started + self.cfg.preempt_delay;
                if !may_preempt || h.priority >= ours {
                    if self.cfg.version == 3 {
                        // RFC 5798 section 6.4.2: a v3 backup adopts the master's interval.
                        self.master_adver_interval = h.interval;
                    }
                    self.master_down_timer = Some(at + self.master_down_interval());
                    self.down_reason = Reason::MasterDown;
                } else {
                    // A lower-priority master and we may preempt: take over now.
                    self.counterpart = Some(h.src);
                    self.change_state(at, State::Master, Reason::Preempt);
                }
            }
            State::Master => {
                if h.priority == 0 {
                    // RFC 5798 section 6.4.3: another master resigned; assert ourselves. It
                    // drains the flows it took towards us: ours send them back to it.
                    self.actions
                        .push_back(Action::SendAdvert { priority: ours });
                    self.actions.push_back(Action::Adopt { from: h.src });
                    self.adver_timer = Some(at + self.cfg.advert_interval.as_duration());
                } else if h.priority > ours || (h.priority == ours && h.src > self.cfg.primary) {
                    // RFC 5798 section 6.4.3: a better master exists.
                    self.actions.push_back(Action::TellWinner {
                        to: h.src,
                        priority: ours,
                    });
                    self.counterpart = Some(h.src);
                    self.change_state(at, State::Backup, Reason::HigherPriorityMaster);
                    if self.cfg.version == 3 {
                        self.master_adver_interval = h.interval;
                        self.master_down_timer = Some(at + self.master_down_interval());
                    }
                } else {
                    // A worse router claims master (split brain healing): answer at once so it
                    // steps down, and re-announce the VIPs so clients come back to us; the
                    // flows it took meanwhile stay there while it drains them.
                    self.actions
                        .push_back(Action::SendAdvert { priority: ours });
                    self.actions.push_back(Action::Adopt { from: h.src });
                    self.actions.push_back(Action::Reannounce);
                    self.adver_timer = Some(at + self.cfg.advert_interval.as_duration());
                }
            }
            State::Initialize | State::Fault => {}
        }
    }

    /// The fence command finished: take over if it succeeded; otherwise stay backup and try
    /// again after another Master_Down_Interval. Ignored when an advert from the master came
    /// in meanwhile (it is alive after all).
    pub fn handle_fence_result(&mut self, now: Duration, ok: bool) {
        if !self.fencing || self.state != State::Backup {
            return;
        }
        self.fencing = false;
        if ok {
            self.change_state(now, State::Master, Reason::MasterDown);
        } else {
            self.master_down_timer = Some(now + self.master_down_interval());
            self.down_reason = Reason::MasterDown;
        }
    }

    /// Tracking changed the priority adjustment (sum of the weights of failing checks). A
    /// master whose priority falls below that of a router heard as master recently (within 4 x
    /// that router's advert interval) resigns at once; otherwise it advertises its new priority
    /// at once, and a backup with preemption and a higher priority takes over. A router heard
    /// longer ago may be dead: resigning to it would leave the addresses unserved for a
    /// Master_Down_Interval.
    pub fn set_priority_delta(&mut self, now: Duration, delta: i32) {
        if delta == self.delta {
            return;
        }
        self.delta = delta;
        if self.state != State::Master {
            return;
        }
        let ours = self.effective_priority();
        self.forget_silent_peers(now);
        let best_peer = self.peers.values().map(|p| p.priority).max();
        if best_peer.is_some_and(|p| p > ours) {
            // Lower than a live router we know: hand over now (priority 0, RFC 5798 section
            // 6.4.3).
            self.change_state(now, State::Backup, Reason::Resigned);
        } else {
            // Tell the others at once; a backup with preemption and a higher priority takes over.
            self.actions
                .push_back(Action::SendAdvert { priority: ours });
            self.adver_timer = Some(now + self.cfg.advert_interval.as_duration());
        }
    }

    /// Drops the peers that are no longer alive at `now` (`Peer::alive_at`).
    fn forget_silent_peers(&mut self, now: Duration) {
        self.peers.retain(|_, p| p.alive_at(now));
    }

    /// The I/O layer gave up holding resigned addresses (no successor within its bound): a
    /// later master is no successor of ours to hand over to.
    pub fn end_hold(&mut self) {
        self.holding = false;
    }

    /// Whether a drill has stepped this router down.
    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// A drill: step down (a master resigns with priority 0 so a backup takes over after its
    /// Skew_Time, and we advertise priority 1 from then on, so we neither preempt nor win an
    /// election while anyone else is up), or hand back (the configured priority again; with
    /// preemption a backup then takes over from a lower-priority master at its next advert).
    /// If nobody takes over, the master-down timer makes us master again: a drill against a
    /// dead peer costs one Master_Down_Interval, not the service.
    pub fn set_stepped_down(&mut self, now: Duration, on: bool) {
        if on == self.stepped_down {
            return;
        }
        self.stepped_down = on;
        match (on, self.state) {
            (true, State::Master) => self.change_state(now, State::Backup, Reason::SteppedDown),
            (false, State::Master) => {
                // Tell the others our priority at once.
                self.actions.push_back(Action::SendAdvert {
                    priority: self.effective_priority(),
                });
                self.adver_timer = Some(now + self.cfg.advert_interval.as_duration());
            }
            _ => {}
        }
    }

    /// The interface went down or up.
    pub fn set_link(&mut self, now: Duration, up: bool) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        self.refresh_fault(now, Reason::LinkDown);
    }

    /// A tracked check with no weight (or the proxy) is in fault, or recovered.
    pub fn set_track_fault(&mut self, now: Duration, fault: bool) {
        if fault == self.track_fault {
            return;
        }
        self.track_fault = fault;
        self.refresh_fault(now, Reason::TrackFault);
    }

    fn refresh_fault(&mut self, now: Duration, why: Reason) {
        let faulty = !self.link_up || self.track_fault;
        match (self.state, faulty) {
            (State::Initialize, _) => {}
            (State::Fault, false) => self.enter_election(now, Reason::Recovered),
            (State::Fault, true) => {}
            (_, true) => self.change_state(now, State::Fault, why),
            (_, false) => {}
        }
    }

    /// The one place where the state changes: exit actions of the old state, entry actions of
    /// the new one, timers re-armed, and the transition reported.
    fn change_state(&mut self, now: Duration, to: State, reason: Reason) {
        let from = self.state;
        if from == to {
            return;
        }
        // Leaving master: resign with priority 0 when we give up (RFC 5798 section 6.4.3: on
        // shutdown; and on a fault or a lowered priority, so a backup takes over after Skew_Time)
        // while the link can carry it; yielding to a better master needs no advert. On a
        // planned move the addresses stay until the successor is known and our flows have
        // ended; when the link is lost they go at once.
        let counterpart = self.counterpart.take();
        if from == State::Master {
            let resign = matches!(
                reason,
                Reason::Shutdown | Reason::Resigned | Reason::TrackFault | Reason::SteppedDown
            );
            if resign && self.link_up {
                self.actions.push_back(Action::SendAdvert { priority: 0 });
            }
            // A tracked check in fault is planned too: the successor hears our priority 0
            // and sends our open flows back to us, so we drain them (or they fail here, as
            // they would have); only a lost link leaves nothing to carry them.
            let planned = resign && self.link_up;
            match (reason, counterpart) {
                (Reason::HigherPriorityMaster, Some(to)) => {
                    self.actions.push_back(Action::HandOver { to });
                }
                _ if planned => {
                    self.holding = true;
                    self.actions.push_back(Action::HoldVips);
                }
                _ => self.actions.push_back(Action::ReleaseVips),
            }
        } else if self.holding && matches!(to, State::Fault | State::Master) {
            // Held addresses: a fault ends the hold; as master we keep them (TakeVips below).
            self.holding = false;
            if to == State::Fault {
                self.actions.push_back(Action::ReleaseVips);
            }
        }
        self.adver_timer = None;
        self.master_down_timer = None;
        self.refresh_timer = None;
        self.fencing = false;
        self.state = to;
        self.actions
            .push_back(Action::Transition { from, to, reason });
        match to {
            State::Master => {
                // RFC 5798 section 6.4.1/6.4.2: advertise, claim the addresses, arm Adver_Timer.
                self.actions.push_back(Action::SendAdvert {
                    priority: self.effective_priority(),
                });
                let from = counterpart
                    .filter(|_| matches!(reason, Reason::Preempt | Reason::MasterResigned));
                self.actions.push_back(Action::TakeVips { from });
                self.adver_timer = Some(now + self.cfg.advert_interval.as_duration());
                self.refresh_timer = self.cfg.garp_refresh.map(|r| now + r);
            }
            State::Backup => {
                self.master_adver_interval = self.cfg.advert_interval;
                self.master_down_timer = Some(now + self.master_down_interval());
                self.down_reason = Reason::MasterDown;
            }
            State::Initialize | State::Fault => {}
        }
    }
}

#[cfg(test)]
mod tests;
