//! What the node reports about itself: the shape of `/status` (JSON) and of `hapd status`,
//! per VRRP instance, the guard, the upstreams and the certificates. The VRRP loop, the proxy,
//! the admin endpoint and the CLI all use these types, and none of them owns them: how they
//! are printed is `admin::status`, what fills them is each part's own business. The same data
//! feeds `/metrics`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub version: String,
    /// The commit hapd was built from (`unknown` outside a git checkout).
    #[serde(default)]
    pub commit: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Empty on a proxy-only node.
    pub instances: Vec<InstanceStatus>,
    /// The guard's packet counters, summed over the XDP and raw-socket paths.
    pub guard: Option<GuardStatus>,
    pub proxy: Option<ProxyStatus>,
    /// `[[anycast]]` groups.
    #[serde(default)]
    pub anycast: Vec<AnycastStatus>,
    /// The digests of what the nodes must agree on, per section ([`crate::parity`]); absent
    /// when they could not be computed (`parity_error` says why) or from an older hapd.
    #[serde(default)]
    pub parity: Option<crate::parity::Parity>,
    #[serde(default)]
    pub parity_error: Option<String>,
    /// `[cluster]`: the peers' digests as last exchanged, and certificate sync.
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
}

/// `[cluster]`: this node's view of the other nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    /// Why the channel does not run (it could not start after an upgrade): nothing is
    /// exchanged until a restart.
    #[serde(default)]
    pub error: Option<String>,
    pub listen: String,
    /// Every peer has been heard and none differs in any section.
    pub in_parity: bool,
    pub sync_certificates: bool,
    /// Connections refused since start: no certificate, one not from the cluster CA, or one
    /// naming no configured peer.
    pub refused_connections: u64,
    pub peers: Vec<ClusterPeerStatus>,
}

/// One peer of `[cluster]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterPeerStatus {
    pub name: String,
    pub address: String,
    /// The last exchange this node started with it succeeded.
    pub reachable: bool,
    /// Seconds since its digests last arrived (in either direction); absent: never.
    pub heard_secs: Option<u64>,
    /// Why the last exchange failed.
    pub error: Option<String>,
    /// `in parity`, `drift: <sections>` or `unknown` (never heard).
    pub parity: String,
    /// The sections that differ, with both sides.
    pub drift: Vec<DriftStatus>,
    pub cert_sync: CertSyncStatus,
}

/// A section whose digests differ: both values (what the section covers, with secrets
/// counted in the digest only).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DriftStatus {
    pub section: String,
    pub ours: Option<String>,
    pub theirs: Option<String>,
    pub ours_shown: Option<String>,
    pub theirs_shown: Option<String>,
}

/// Certificate pushes to and from one peer since start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CertSyncStatus {
    /// Pushes to the peer that it applied.
    pub pushed: u64,
    /// Pushes to the peer that it refused or could not apply, or that did not reach it.
    pub push_failures: u64,
    /// Pushes from the peer applied here.
    pub received: u64,
    /// Pushes from the peer refused here (files and service left as they were).
    pub refused: u64,
    /// The last push either way: what, and its outcome.
    pub last: Option<String>,
    /// Whether that push failed.
    pub last_failed: bool,
}

/// One `[[anycast]]` group: whether this node announces its prefixes through BIRD, and why.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AnycastStatus {
    pub name: String,
    pub prefixes: Vec<String>,
    pub bird_socket: String,
    pub bird_protocol: String,
    /// BIRD confirmed the protocol enabled (BIRD announces the prefixes to its BGP peers;
    /// whether those sessions are up is BIRD's `show protocols`).
    pub announced: bool,
    /// `announced`, `withdrawn: <why>`, or `unknown: BIRD cannot be told`.
    pub state: String,
    /// Seconds since the state last changed.
    pub since_secs: u64,
    pub announcements: u64,
    pub withdrawals: u64,
    /// BIRD's greeting (its version), once reached.
    pub bird: Option<String>,
    /// Why BIRD cannot be told, while it cannot.
    pub error: Option<String>,
    /// Second chance for flows an ECMP change sends here: `on: N of M other node(s) take
    /// segments (...)` or `off: why` (see `anycast::peers`).
    #[serde(default)]
    pub second_chance: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    /// "IPv4" or "IPv6" (absent from an older hapd's status: IPv4).
    #[serde(default = "ipv4")]
    pub family: String,
    /// MASTER, BACKUP, FAULT or INIT.
    pub state: String,
    /// The master as this node knows it: itself, or the source of the adverts it hears.
    pub master: Option<String>,
    pub priority: u8,
    pub effective_priority: u8,
    /// Why the effective priority or the state differ from the configured ones.
    pub reasons: Vec<String>,
    /// Time since the guard last saw a valid advert for this instance.
    pub last_advert_age_ms: Option<u64>,
    /// Planned moves that handed the addresses over; the last one ("to 198.18.0.2: flows
    /// carried; 30 connection(s) drained in 53 ms") and its drain time; the move in progress.
    pub handovers: u64,
    pub last_handover: Option<String>,
    pub last_drain_ms: Option<u64>,
    pub moving: Option<String>,
    pub transitions: u64,
    /// "BACKUP => MASTER (master down)".
    pub last_transition: Option<String>,
    pub last_transition_age_ms: Option<u64>,
    pub adverts_sent: u64,
    /// Valid adverts from other routers, as counted by the guard.
    pub adverts_received: u64,
    pub virtual_ips: Vec<String>,
    /// "native XDP", "generic XDP" or "raw socket (no XDP)".
    pub guard: String,
    /// A drill asked this instance to step down and it has not been handed back yet.
    pub stepped_down: bool,
    pub preempt: bool,
    pub advert_interval_ms: u64,
    /// Master_Down_Interval as this node computes it now.
    pub master_down_ms: u64,
    /// Whether the master-down timer runs in the kernel (`in use: ...`, `on, not armed ...`
    /// or `off: why`).
    #[serde(default)]
    pub kernel_timer: String,
    /// `auth_hmac`, when the instance has it.
    #[serde(default)]
    pub auth: Option<AuthStatus>,
}

/// `auth_hmac` of one instance as `/status` shows it (never a key).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AuthStatus {
    /// "enforce", "permissive" or "receive-only".
    pub mode: String,
    /// The key ID adverts are signed with (none in receive-only mode).
    pub active_key: Option<u8>,
    /// The key IDs adverts are verified with.
    pub keys: Vec<u8>,
    /// "time" (with `window_s`) or "monotonic".
    pub anti_replay: String,
    pub window_s: u32,
    /// Adverts accepted with a valid trailer, and without one (migration modes).
    pub accepted_signed: u64,
    pub accepted_unsigned: u64,
    /// Rejected adverts by reason (`no_trailer`, `trailer`, `unknown_key`, `stale`, `replay`,
    /// `hmac`).
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GuardStatus {
    pub pin_dir: Option<String>,
    /// Counter name (as in `bpftool map dump`) → packets.
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyStatus {
    /// Every route has a server up (backup servers apart).
    pub healthy: bool,
    pub connections: usize,
    /// The client connections each proxy worker thread serves.
    #[serde(default)]
    pub worker_connections: Vec<usize>,
    /// The client connections placed on each proxy worker thread since the start.
    #[serde(default)]
    pub worker_connections_total: Vec<u64>,
    /// New connections handed to a worker whose CPU had time to spare (pinned workers).
    #[serde(default)]
    pub steered_connections: u64,
    /// Access and error log lines dropped because a disk did not keep up.
    #[serde(default)]
    pub log_lines_dropped: u64,
    pub servers: Vec<ServerStatus>,
    pub certificates: Vec<CertStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    pub upstream: String,
    pub server: String,
    /// Listed in `backup_servers`: used only while no other server of its upstream is up.
    #[serde(default)]
    pub backup: bool,
    pub up: bool,
    pub outstanding: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CertStatus {
    pub file: String,
    pub names: Vec<String>,
    /// notAfter in seconds since the Unix epoch.
    pub not_after: i64,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

fn ipv4() -> String {
    "IPv4".into()
}
