//! What the admin endpoint and the upgrade (threads of their own) ask of the VRRP loop, and
//! the answers: the one channel between them, in a module of its own so that none imports
//! another.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use proxy_common::maps::{AdvertRecord, AuthCounters, GuardCounters};
use tokio::sync::oneshot;

use crate::{
    dataplane::{AuthSpec, GuardMode},
    vrrp::fsm::{Snapshot, State},
};

/// What the admin endpoint asks of the VRRP loop.
pub enum Control {
    /// Every instance's state and the guard's counters (`admin::status` renders them).
    Status(oneshot::Sender<(Vec<InstanceFacts>, Option<GuardFacts>)>),
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
    /// A hitless upgrade: stop at once (no advert, no event read, no action) and answer every
    /// engine's state, then wait for the verdict on the channel given with it: `true`, the
    /// successor runs them and the loop ends without resigning; `false` (or nothing within a
    /// bound), the loop carries on. `Err`: not now, and why.
    Handoff {
        reply: oneshot::Sender<Result<Handoff, String>>,
    },
    /// An upgrade begins: how the guard runs on each interface, or why the loop cannot hand
    /// over now (a move in progress, stopping).
    Prepare {
        reply: oneshot::Sender<Result<std::collections::BTreeMap<String, GuardMode>, String>>,
    },
    /// An upgrade failed after the successor loaded its guard: put this process's guard program
    /// back on the interfaces and read the guard's events again.
    Reclaim { reply: oneshot::Sender<()> },
}

/// What the VRRP loop hands to a successor, and where it waits for the verdict.
pub struct Handoff {
    pub engines: Vec<EngineHandoff>,
    /// The track scripts' last verdicts (a successor starts from them).
    pub scripts: Vec<(String, bool)>,
    pub verdict: oneshot::Sender<bool>,
}

/// One VRRP instance as a successor process resumes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineHandoff {
    pub name: String,
    pub engine: Snapshot,
    /// The `auth_hmac` sequence number of the last advert sent.
    pub last_seq: u64,
    /// The guard record's timestamp of the last advert the engine was given.
    pub delivered_ns: u64,
}

/// Every instance's `auth_hmac`, by instance name.
pub type AuthSettings = Vec<(String, Option<AuthSpec>)>;

/// One VRRP instance as the loop knows it now.
#[derive(Clone, Debug)]
pub struct InstanceFacts {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    /// The instance's address family.
    pub family: proxy_common::vrrp::Family,
    pub state: State,
    /// This node's primary address on the interface (IPv6: its link-local address).
    pub primary: IpAddr,
    /// The guard's record of the last valid advert.
    pub record: Option<AdvertRecord>,
    /// `CLOCK_MONOTONIC` now, in ns (the clock of the record).
    pub now_ns: u64,
    /// Configured and advertised priority.
    pub priority: u8,
    pub effective_priority: u8,
    /// The tracked checks failing, and what they cost.
    pub reasons: Vec<String>,
    pub link_up: bool,
    pub stepped_down: bool,
    /// Planned moves that handed the addresses to another node, the last one's account and
    /// its drain time, and the move in progress.
    pub handovers: u64,
    pub last_handover: Option<String>,
    pub last_drain: Option<std::time::Duration>,
    pub moving: Option<String>,
    pub transitions: u64,
    /// When and what the last transition was.
    pub last_transition: Option<(std::time::Instant, String)>,
    pub adverts_sent: u64,
    pub virtual_ips: Vec<String>,
    /// How the guard runs on the interface.
    pub guard: String,
    pub preempt: bool,
    pub advert_interval: Duration,
    /// Master_Down_Interval as the engine computes it now.
    pub master_down: Duration,
    /// Whether the guard runs the master-down timer in the kernel, in words.
    pub kernel_timer: String,
    pub auth: Option<AuthFacts>,
}

/// `auth_hmac` of one instance as the loop and the guard run it.
#[derive(Clone, Debug)]
pub struct AuthFacts {
    pub spec: AuthSpec,
    /// The key ID adverts are signed with, if they are.
    pub signing_key: Option<u8>,
    pub counters: AuthCounters,
}

/// The guard's counters summed over both paths, and where its maps are pinned.
#[derive(Clone, Debug)]
pub struct GuardFacts {
    pub pin_dir: Option<PathBuf>,
    pub counters: GuardCounters,
}
