//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
use std::fmt::Write as _;

use crate::proxy::metrics::{Snapshot, BUCKETS};
use crate::status::Status;

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

const STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// Renders the node's status and the proxy's counters.
pub fn render(st: &Status, m: Option<&Snapshot>) -> String {
    let mut o = Out(String::new());
    o.family("hapd_build_info", "gauge", "Version of the running hapd.");
    o.sample(
        "hapd_build_info",
        &[
            ("version", &st.version),
            ("commit", &st.commit),
            ("node", &st.node),
        ],
        1,
    );
    o.family(
        "hapd_uptime_seconds",
        "gauge",
        "Seconds since hapd started.",
    );
    o.sample("hapd_uptime_seconds", &[], st.uptime_secs);
    process(&mut o);

    if !st.instances.is_empty() {
        o.family(
            "hapd_vrrp_state",
            "gauge",
            "1 for the state the VRRP instance is in, 0 for the others.",
        );
        for i in &st.instances {
            for s in STATES {
                o.sample(
                    "hapd_vrrp_state",
                    &[("instance", &i.name), ("state", s)],
                    u8::from(i.state == s),
                );
            }
        }
        o.family(
            "hapd_vrrp_priority",
            "gauge",
            "Configured priority of the VRRP instance.",
        );
        for i in &st.instances {
            o.sample("hapd_vrrp_priority", &[("instance", &i.name)], i.priority);
        }
        o.family(
            "hapd_vrrp_effective_priority",
            "gauge",
            "Priority advertised now (configured plus tracking, or 1 while stepped down).",
        );
        for i in &st.instances {
            o.sample(
                "hapd_vrrp_effective_priority",
                &[("instance", &i.name)],
                i.effective_priority,
            );
        }
        o.family(
            "hapd_vrrp_transitions_total",
            "counter",
            "State changes of the VRRP instance since start.",
        );
        for i in &st.instances {
            o.sample(
                "hapd_vrrp_transitions_total",
                &[("instance", &i.name)],
                i.transitions,
            );
        }
        o.family(
            "hapd_vrrp_handovers_total",
            "counter",
            "Planned moves that handed the instance's addresses to another node.",
        );
        for i in &st.instances {
            o.sample(
                "hapd_vrrp_handovers_total",
                &[("instance", &i.name)],
                i.handovers,
            );
        }
        o.family(
            "hapd_vrrp_last_drain_seconds",
            "gauge",
            "How long the last handover's connections took to drain.",
        );
        for i in &st.instances {
            if let Some(ms) = i.last_drain_ms {
                o.sample(
                    "hapd_vrrp_last_drain_seconds",
                    &[("instance", &i.name)],
                    ms as f64 / 1000.0,
                );
            }
        }
        o.family(
            "hapd_vrrp_adverts_sent_total",
            "counter",
            "VRRP advertisements sent.",
        );
        for i in &st.instances {
            o.sample(
                "hapd_vrrp_adverts_sent_total",
                &[("instance", &i.name)],
                i.adverts_sent,
            );
        }
        o.family(
            "hapd_vrrp_adverts_received_total",
            "counter",
            "Valid VRRP advertisements received from other routers (counted by the guard).",
        );
        for i in &st.instances {
            o.sample(
                "hapd_vrrp_adverts_received_total",
                &[("instance", &i.name)],
                i.adverts_received,
            );
        }
        o.family(
            "hapd_vrrp_last_advert_age_seconds",
            "gauge",
            "Seconds since the last valid advert from another router (absent: never).",
        );
        for i in &st.instances {
            if let Some(ms) = i.last_advert_age_ms {
                o.sample(
                    "hapd_vrrp_last_advert_age_seconds",
                    &[("instance", &i.name)],
                    ms as f64 / 1000.0,
                );
            }
        }
    }
    if st.instances.iter().any(|i| i.auth.is_some()) {
        o.family(
            "hapd_vrrp_auth_adverts_total",
            "counter",
            "Adverts of an auth_hmac instance by outcome: accepted signed or unsigned, or the \
             reason it was rejected.",
        );
        for i in &st.instances {
            let Some(a) = &i.auth else { continue };
            o.sample(
                "hapd_vrrp_auth_adverts_total",
                &[("instance", &i.name), ("outcome", "accepted_signed")],
                a.accepted_signed,
            );
            o.sample(
                "hapd_vrrp_auth_adverts_total",
                &[("instance", &i.name), ("outcome", "accepted_unsigned")],
                a.accepted_unsigned,
            );
            for (k, v) in &a.rejected {
                o.sample(
                    "hapd_vrrp_auth_adverts_total",
                    &[("instance", &i.name), ("outcome", k)],
                    v,
                );
            }
        }
        o.family(
            "hapd_vrrp_auth_active_key",
            "gauge",
            "The auth_hmac key ID adverts are signed with (0: none, receive-only mode).",
        );
        for i in &st.instances {
            let Some(a) = &i.auth else { continue };
            o.sample(
                "hapd_vrrp_auth_active_key",
                &[("instance", &i.name), ("mode", &a.mode)],
                a.active_key.unwrap_or(0),
            );
        }
    }
    if let Some(g) = &st.guard {
        o.family(
            "hapd_guard_packets_total",
            "counter",
            "Protocol-112 packets the guard handled, by decision (accepted or the drop reason).",
        );
        const OWN: [&str; 3] = ["events_lost", "flow_forwarded", "arp_suppressed"];
        for (k, v) in g
            .counters
            .iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
        {
            o.sample("hapd_guard_packets_total", &[("reason", k)], v);
        }
        o.family(
            "hapd_guard_flow_forwarded_total",
            "counter",
            "TCP segments the guard sent on to the node that holds their flow (a planned move, or anycast second chance).",
        );
        o.sample(
            "hapd_guard_flow_forwarded_total",
            &[],
            g.counters.get("flow_forwarded").copied().unwrap_or(0),
        );
        o.family(
            "hapd_guard_arp_suppressed_total",
            "counter",
            "ARP requests for an address this node released in a planned move, not answered.",
        );
        o.sample(
            "hapd_guard_arp_suppressed_total",
            &[],
            g.counters.get("arp_suppressed").copied().unwrap_or(0),
        );
        o.family(
            "hapd_guard_events_lost_total",
            "counter",
            "Guard events that did not fit in the ring buffer.",
        );
        o.sample(
            "hapd_guard_events_lost_total",
            &[],
            g.counters.get("events_lost").copied().unwrap_or(0),
        );
    }
    if !st.anycast.is_empty() {
        o.family(
            "hapd_anycast_announced",
            "gauge",
            "1 while this node's BIRD has the group's protocol enabled (BIRD then announces its prefixes to its BGP peers).",
        );
        for g in &st.anycast {
            o.sample(
                "hapd_anycast_announced",
                &[("group", &g.name)],
                u8::from(g.announced),
            );
        }
        o.family(
            "hapd_anycast_bird_up",
            "gauge",
            "1 while the group's BIRD answers and accepts hapd's commands.",
        );
        for g in &st.anycast {
            o.sample(
                "hapd_anycast_bird_up",
                &[("group", &g.name)],
                u8::from(g.error.is_none() && g.bird.is_some()),
            );
        }
        o.family(
            "hapd_anycast_withdrawals_total",
            "counter",
            "Withdrawals of the group's prefixes after an announcement.",
        );
        for g in &st.anycast {
            o.sample(
                "hapd_anycast_withdrawals_total",
                &[("group", &g.name)],
                g.withdrawals,
            );
        }
    }
    if let Some(c) = &st.cluster {
        cluster(&mut o, c);
    }
    if let Some(p) = &st.proxy {
        o.family(
            "hapd_proxy_healthy",
            "gauge",
            "1 when every route has an upstream server up.",
        );
        o.sample("hapd_proxy_healthy", &[], u8::from(p.healthy));
        o.family(
            "hapd_proxy_connections",
            "gauge",
            "Client connections open now.",
        );
        o.sample("hapd_proxy_connections", &[], p.connections);
        o.family(
            "hapd_proxy_worker_connections",
            "gauge",
            "Client connections each proxy worker thread serves (new ones go to the least loaded).",
        );
        for (i, n) in p.worker_connections.iter().enumerate() {
            o.sample(
                "hapd_proxy_worker_connections",
                &[("worker", &i.to_string())],
                n,
            );
        }
        o.family(
            "hapd_proxy_worker_connections_total",
            "counter",
            "Client connections placed on each proxy worker thread.",
        );
        for (i, n) in p.worker_connections_total.iter().enumerate() {
            o.sample(
                "hapd_proxy_worker_connections_total",
                &[("worker", &i.to_string())],
                n,
            );
        }
        o.family(
            "hapd_proxy_steered_connections_total",
            "counter",
            "New connections handed to a worker whose CPU had time to spare (pinned workers).",
        );
        o.sample(
            "hapd_proxy_steered_connections_total",
            &[],
            p.steered_connections,
        );
        o.family(
            "hapd_proxy_log_lines_dropped_total",
            "counter",
            "Access and error log lines dropped because the disk did not keep up (the queue of a log file was full).",
        );
        o.sample(
            "hapd_proxy_log_lines_dropped_total",
            &[],
            p.log_lines_dropped,
        );
        o.family(
            "hapd_upstream_server_up",
            "gauge",
            "1 when the upstream server is up (health checks and passive ejection).",
        );
        for s in &p.servers {
            o.sample(
                "hapd_upstream_server_up",
                &[("upstream", &s.upstream), ("server", &s.server)],
                u8::from(s.up),
            );
        }
        o.family(
            "hapd_upstream_server_outstanding",
            "gauge",
            "Requests in progress on the upstream server.",
        );
        for s in &p.servers {
            o.sample(
                "hapd_upstream_server_outstanding",
                &[("upstream", &s.upstream), ("server", &s.server)],
                s.outstanding,
            );
        }
        o.family(
            "hapd_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of each served certificate, in seconds since the Unix epoch.",
        );
        for c in &p.certificates {
            let names = c.names.join(",");
            o.sample(
                "hapd_tls_certificate_expiry_timestamp_seconds",
                &[("file", &c.file), ("names", &names)],
                c.not_after,
            );
        }
    }
    if let Some(m) = m {
        o.family(
            "hapd_http_requests_total",
            "counter",
            "Requests answered, by vhost (its first server name), status code and upstream.",
        );
        for ((vhost, code, upstream), n) in &m.requests {
            let code = code.to_string();
            o.sample(
                "hapd_http_requests_total",
                &[("vhost", vhost), ("code", &code), ("upstream", upstream)],
                n,
            );
        }
        o.family(
            "hapd_http_request_duration_seconds",
            "histogram",
            "Time from the request head to the end of the response, by vhost.",
        );
        for (vhost, h) in &m.latency {
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let le = le.to_string();
                o.sample(
                    "hapd_http_request_duration_seconds_bucket",
                    &[("vhost", vhost), ("le", &le)],
                    cumulative,
                );
            }
            o.sample(
                "hapd_http_request_duration_seconds_bucket",
                &[("vhost", vhost), ("le", "+Inf")],
                h.count(),
            );
            o.sample(
                "hapd_http_request_duration_seconds_sum",
                &[("vhost", vhost)],
                h.sum,
            );
            o.sample(
                "hapd_http_request_duration_seconds_count",
                &[("vhost", vhost)],
                h.count(),
            );
        }
    }
    o.0
}

/// The usual `process_*` metrics of Prometheus clients, read from /proc/self: resident
/// memory, CPU time, descriptors open and allowed, start time. A value that cannot be read is
/// left out.
fn process(o: &mut Out) {
    // SAFETY: sysconf has no memory effects.
    let (page, tick) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        o.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        o.sample(
            "process_resident_memory_bytes",
            &[],
            pages * page.max(1) as u64,
        );
    }
    // /proc/self/stat: fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th of them, starttime the 20th (in clock ticks since boot).
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields: Vec<u64> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let tick = tick.max(1) as f64;
    if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
        o.family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        o.sample("process_cpu_seconds_total", &[], (u + s) as f64 / tick);
    }
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    if let (Some(start), Some(btime)) = (fields.get(19), btime) {
        o.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
        );
        o.sample(
            "process_start_time_seconds",
            &[],
            btime as f64 + *start as f64 / tick,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        o.family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        o.sample("process_open_fds", &[], fds.count());
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        o.family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        o.sample("process_max_fds", &[], soft);
    }
}

/// `[cluster]`: per peer, whether it answers, drift per section, certificate pushes.
fn cluster(o: &mut Out, c: &crate::status::ClusterStatus) {
    o.family(
        "hapd_cluster_in_parity",
        "gauge",
        "1 when every peer of [cluster] has been heard and none differs in any section.",
    );
    o.sample("hapd_cluster_in_parity", &[], u8::from(c.in_parity));
    o.family(
        "hapd_cluster_peer_up",
        "gauge",
        "1 while the last exchange with the peer succeeded.",
    );
    for p in &c.peers {
        o.sample(
            "hapd_cluster_peer_up",
            &[("peer", &p.name)],
            u8::from(p.reachable),
        );
    }
    o.family(
        "hapd_parity_drift",
        "gauge",
        "1 for a section whose digest differs from the peer's, 0 for one that matches (absent until the peer is heard).",
    );
    for p in &c.peers {
        if p.parity.starts_with("unknown") {
            continue;
        }
        for section in crate::parity::SECTIONS {
            let differs = p.drift.iter().any(|d| d.section == section);
            o.sample(
                "hapd_parity_drift",
                &[("peer", &p.name), ("section", section)],
                u8::from(differs),
            );
        }
    }
    o.family(
        "hapd_cluster_refused_connections_total",
        "counter",
        "Connections to the cluster channel refused: no certificate, another CA, or no configured peer.",
    );
    o.sample(
        "hapd_cluster_refused_connections_total",
        &[],
        c.refused_connections,
    );
    o.family(
        "hapd_cert_sync_total",
        "counter",
        "Certificate pushes, by direction (sent to the peer, received from it) and result (ok: applied or already there; failed: refused or not applied).",
    );
    for p in &c.peers {
        let s = &p.cert_sync;
        for (direction, result, n) in [
            ("sent", "ok", s.pushed),
            ("sent", "failed", s.push_failures),
            ("received", "ok", s.received),
            ("received", "failed", s.refused),
        ] {
            o.sample(
                "hapd_cert_sync_total",
                &[
                    ("peer", &p.name),
                    ("direction", direction),
                    ("result", result),
                ],
                n,
            );
        }
    }
}
