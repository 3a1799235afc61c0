//! What `/status` answers and `hapd status` prints: per VRRP instance, the guard, the upstreams
//! and the certificates. The same data feeds `/metrics`.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// Empty on a proxy-only node.
    pub instances: Vec<InstanceStatus>,
    /// The guard's packet counters, summed over the XDP and raw-socket paths.
    pub guard: Option<GuardStatus>,
    pub proxy: Option<ProxyStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
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
    /// Every route has a server up.
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
    pub servers: Vec<ServerStatus>,
    pub certificates: Vec<CertStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    pub upstream: String,
    pub server: String,
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

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{ms} ms ago"),
        Some(ms) => format!("{} s ago", ms / 1000),
    }
}

impl Status {
    /// Whether the node is fit to serve: no instance in FAULT and the proxy healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .instances
            .iter()
            .filter(|i| i.state == "FAULT" || i.state == "INIT")
            .map(|i| format!("instance {} is {}", i.name, i.state))
            .collect();
        if let Some(p) = &self.proxy {
            if !p.healthy {
                let down: Vec<_> = p
                    .servers
                    .iter()
                    .filter(|s| !s.up)
                    .map(|s| format!("{}/{}", s.upstream, s.server))
                    .collect();
                out.push(format!(
                    "proxy unhealthy: a route has no server up (down: {})",
                    down.join(", ")
                ));
            }
        }
        out
    }

    /// The text `hapd status` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "node {} (hapd {}, pid {}, up {} s)",
            self.node, self.version, self.pid, self.uptime_secs
        );
        for i in &self.instances {
            let _ = writeln!(
                o,
                "\nvrrp {}: {} on {} vrid {} v{}",
                i.name, i.state, i.interface, i.vrid, i.version
            );
            let _ = writeln!(
                o,
                "  master           {}",
                i.master.as_deref().unwrap_or("unknown")
            );
            let _ = writeln!(
                o,
                "  priority         {} (configured {}){}",
                i.effective_priority,
                i.priority,
                if i.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", i.reasons.join("; "))
                }
            );
            let _ = writeln!(o, "  last advert      {}", age(i.last_advert_age_ms));
            let _ = writeln!(
                o,
                "  transitions      {}{}",
                i.transitions,
                i.last_transition
                    .as_ref()
                    .map_or(String::new(), |t| format!(
                        ", last {t} {}",
                        age(i.last_transition_age_ms)
                    ))
            );
            let _ = writeln!(
                o,
                "  adverts          {} sent, {} received",
                i.adverts_sent, i.adverts_received
            );
            let _ = writeln!(o, "  virtual ips      {}", i.virtual_ips.join(", "));
            let _ = writeln!(o, "  guard            {}", i.guard);
            if let Some(a) = &i.auth {
                let rejected: Vec<String> = a
                    .rejected
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "  auth_hmac        {}, signing with key {}, verifying keys {}, anti-replay {}",
                    a.mode,
                    a.active_key.map_or("none".into(), |k| k.to_string()),
                    a.keys
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if a.anti_replay == "time" {
                        format!("time (window {} s)", a.window_s)
                    } else {
                        a.anti_replay.clone()
                    }
                );
                let _ = writeln!(
                    o,
                    "                   accepted {} signed, {} unsigned; rejected {}",
                    a.accepted_signed,
                    a.accepted_unsigned,
                    if rejected.is_empty() {
                        "none".to_string()
                    } else {
                        rejected.join(", ")
                    }
                );
            } else {
                let _ = writeln!(o, "  auth_hmac        off");
            }
        }
        if let Some(g) = &self.guard {
            let nonzero: Vec<String> = g
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                o,
                "\nguard counters   {}{}",
                if nonzero.is_empty() {
                    "all zero".to_string()
                } else {
                    nonzero.join(", ")
                },
                g.pin_dir
                    .as_ref()
                    .map_or(String::new(), |d| format!(" (maps pinned in {d})"))
            );
        }
        if let Some(p) = &self.proxy {
            let _ = writeln!(
                o,
                "\nproxy: {}, {} connection(s)",
                if p.healthy { "healthy" } else { "UNHEALTHY" },
                p.connections
            );
            for s in &p.servers {
                let _ = writeln!(
                    o,
                    "  upstream {} server {}: {}, {} in progress",
                    s.upstream,
                    s.server,
                    if s.up { "up" } else { "DOWN" },
                    s.outstanding
                );
            }
            for c in &p.certificates {
                let _ = writeln!(
                    o,
                    "  certificate {} ({}): expires in {} day(s){}",
                    c.file,
                    c.names.join(", "),
                    c.days_left,
                    if c.days_left < 30 { "  <-- renew" } else { "" }
                );
            }
        }
        o
    }
}
