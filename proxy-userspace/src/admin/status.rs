//! How the node's state becomes [`Status`] (the JSON of `/status`, the types are in
//! [`crate::status`]) from what the VRRP loop reports ([`crate::control`]), and how
//! `hapd status` prints it.
use std::fmt::Write as _;

use proxy_common::maps::{Reason, AUTH_TIME};

use crate::{
    control::{AuthFacts, GuardFacts, InstanceFacts},
    dataplane::ip_of,
    status::{AuthStatus, GuardStatus, InstanceStatus, Status},
    vrrp::fsm::State,
};

/// One instance as `/status` shows it.
pub fn instance(f: &InstanceFacts) -> InstanceStatus {
    let age_ms = f
        .record
        .filter(|r| r.last_seen_ns > 0)
        .map(|r| f.now_ns.saturating_sub(r.last_seen_ns) / 1_000_000);
    let down_ms = f.master_down.as_millis() as u64;
    let master = match f.state {
        State::Master => Some(format!("{} (this node)", f.primary)),
        _ => f
            .record
            .filter(|r| r.adverts > 0 && age_ms.is_some_and(|a| a <= down_ms))
            .map(|r| format!("{} (priority {})", ip_of(&r.master, f.family), r.priority)),
    };
    let mut reasons = f.reasons.clone();
    if !f.link_up {
        reasons.push(format!("{} is down", f.interface));
    }
    if f.stepped_down {
        reasons.push("stepped down by a drill (priority 1 until handed back)".into());
    }
    InstanceStatus {
        name: f.name.clone(),
        interface: f.interface.clone(),
        vrid: f.vrid,
        version: f.version,
        family: f.family.name().into(),
        state: f.state.to_string(),
        master,
        priority: f.priority,
        effective_priority: f.effective_priority,
        reasons,
        last_advert_age_ms: age_ms,
        handovers: f.handovers,
        last_handover: f.last_handover.clone(),
        last_drain_ms: f.last_drain.map(|d| d.as_millis() as u64),
        moving: f.moving.clone(),
        transitions: f.transitions,
        last_transition: f.last_transition.as_ref().map(|(_, t)| t.clone()),
        last_transition_age_ms: f
            .last_transition
            .as_ref()
            .map(|(t, _)| t.elapsed().as_millis() as u64),
        adverts_sent: f.adverts_sent,
        adverts_received: f.record.map_or(0, |r| r.adverts),
        virtual_ips: f.virtual_ips.clone(),
        guard: f.guard.clone(),
        stepped_down: f.stepped_down,
        preempt: f.preempt,
        advert_interval_ms: f.advert_interval.as_millis() as u64,
        master_down_ms: down_ms,
        kernel_timer: f.kernel_timer.clone(),
        auth: f.auth.as_ref().map(auth),
    }
}

/// `auth_hmac` as `/status` shows it (never a key).
fn auth(a: &AuthFacts) -> AuthStatus {
    let c = &a.counters;
    AuthStatus {
        mode: a.spec.mode_name().into(),
        active_key: a.signing_key,
        keys: a.spec.key_ids(),
        anti_replay: if a.spec.guard.flags & AUTH_TIME != 0 {
            "time".into()
        } else {
            "monotonic".into()
        },
        window_s: a.spec.guard.window_s,
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
    }
}

/// The guard's counters by name, as in `bpftool map dump`.
pub fn guard(g: &GuardFacts) -> GuardStatus {
    let c = &g.counters;
    GuardStatus {
        pin_dir: g.pin_dir.as_ref().map(|d| d.display().to_string()),
        counters: Reason::ALL
            .iter()
            .map(|&r| (r.name().to_string(), c.get(r)))
            .chain([
                ("events_lost".to_string(), c.events_lost),
                ("flow_forwarded".to_string(), c.flow_forwarded),
                ("arp_suppressed".to_string(), c.arp_suppressed),
            ])
            .collect(),
    }
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
                    .filter(|s| !s.up && !s.backup)
                    .map(|s| format!("{}/{}", s.upstream, s.server))
                    .collect();
                out.push(format!(
                    "proxy unhealthy: a route has no server up, backups apart (down: {})",
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
            "node {} (hapd {} ({}), pid {}, up {} s)",
            self.node, self.version, self.commit, self.pid, self.uptime_secs
        );
        for i in &self.instances {
            let _ = writeln!(
                o,
                "\nvrrp {}: {} on {} vrid {} v{} {}",
                i.name, i.state, i.interface, i.vrid, i.version, i.family
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
            if let Some(m) = &i.moving {
                let _ = writeln!(o, "  moving           {m}");
            }
            if i.handovers > 0 {
                let _ = writeln!(
                    o,
                    "  handovers        {}{}",
                    i.handovers,
                    i.last_handover
                        .as_ref()
                        .map_or(String::new(), |h| format!(", last completed {h}"))
                );
            }
            let _ = writeln!(o, "  virtual ips      {}", i.virtual_ips.join(", "));
            let _ = writeln!(o, "  guard            {}", i.guard);
            if !i.kernel_timer.is_empty() {
                let _ = writeln!(o, "  kernel timer     {}", i.kernel_timer);
            }
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
        for g in &self.anycast {
            let _ = writeln!(
                o,
                "\nanycast {}: {} ({})",
                g.name,
                if g.announced {
                    "ANNOUNCED"
                } else {
                    "WITHDRAWN"
                },
                g.prefixes.join(", ")
            );
            let _ = writeln!(o, "  state            {} for {} s", g.state, g.since_secs);
            let _ = writeln!(
                o,
                "  bird             protocol {} on {}{}",
                g.bird_protocol,
                g.bird_socket,
                g.bird.as_ref().map_or(String::new(), |v| format!(" ({v})"))
            );
            if let Some(e) = &g.error {
                let _ = writeln!(o, "  error            {e}");
            }
            let _ = writeln!(
                o,
                "  changes          {} announcement(s), {} withdrawal(s)",
                g.announcements, g.withdrawals
            );
            if !g.second_chance.is_empty() {
                let _ = writeln!(o, "  second chance    {}", g.second_chance);
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
                    "  upstream {} server {}{}: {}, {} in progress",
                    s.upstream,
                    s.server,
                    if s.backup { " (backup)" } else { "" },
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
        if let Some(p) = &self.parity {
            let _ = writeln!(
                o,
                "\nparity digests (the same on every node of the service: hapd check prints them too)"
            );
            for name in crate::parity::SECTIONS {
                if let Some(s) = p.sections.get(name) {
                    let _ = writeln!(o, "  {name:<16} {}", s.digest);
                }
            }
        }
        if let Some(e) = &self.parity_error {
            let _ = writeln!(o, "\nparity digests unavailable: {e}");
        }
        if let Some(e) = self.cluster.as_ref().and_then(|c| c.error.as_ref()) {
            let _ = writeln!(o, "\ncluster: NOT RUNNING ({e}); restart hapd to open it");
        } else if let Some(c) = &self.cluster {
            let _ = writeln!(
                o,
                "\ncluster (listen {}, certificate sync {}): {}",
                c.listen,
                if c.sync_certificates { "on" } else { "off" },
                if c.in_parity {
                    "in parity"
                } else {
                    "NOT in parity"
                }
            );
            for p in &c.peers {
                let heard = p
                    .heard_secs
                    .map_or("never heard".to_string(), |s| format!("heard {s} s ago"));
                let _ = writeln!(
                    o,
                    "  peer {} at {}: {}, {heard}",
                    p.name, p.address, p.parity
                );
                if let Some(e) = &p.error {
                    let _ = writeln!(o, "    unreachable: {e}");
                }
                for d in &p.drift {
                    let _ = writeln!(
                        o,
                        "    {:<14} here {}  {} {}",
                        d.section,
                        d.ours.as_deref().unwrap_or("(absent)"),
                        p.name,
                        d.theirs.as_deref().unwrap_or("(absent)")
                    );
                    let _ = writeln!(o, "      here: {}", d.ours_shown.as_deref().unwrap_or(""));
                    let _ = writeln!(
                        o,
                        "      {}: {}",
                        p.name,
                        d.theirs_shown.as_deref().unwrap_or("")
                    );
                }
                if let Some(last) = &p.cert_sync.last {
                    let _ = writeln!(
                        o,
                        "    certificates: {} pushed, {} push(es) failed, {} received, {} refused; last: {last}",
                        p.cert_sync.pushed,
                        p.cert_sync.push_failures,
                        p.cert_sync.received,
                        p.cert_sync.refused
                    );
                }
            }
            if c.refused_connections > 0 {
                let _ = writeln!(o, "  {} connection(s) refused", c.refused_connections);
            }
        }
        o
    }
}
