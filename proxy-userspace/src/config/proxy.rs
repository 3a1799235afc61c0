//! The proxy's sections of the config: `[server]`, `[tls]`, `[[listener]]`, `[[upstream]]` and
//! `[[vhost]]` (with `[[vhost.route]]`), parsed into types and checked, so `hapd check` names a
//! wrong key before the proxy ever runs.
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    ops::Range,
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::Dur;

/// The most servers an upstream may list, its backups included.
pub const MAX_SERVERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Idle time a client connection is kept open between requests (Apache KeepAliveTimeout).
    #[serde(default = "default_keepalive")]
    pub keepalive_timeout: Dur,
    /// Time a client has to send the request head; slower clients are cut off.
    #[serde(default = "default_header_read")]
    pub header_read_timeout: Dur,
    /// Largest request head accepted (bytes).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request header fields accepted.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Whether to send a Server header (never with a version).
    #[serde(default)]
    pub server_header: bool,
    /// On stop, how long requests in flight may take to finish.
    #[serde(default = "default_drain")]
    pub drain_timeout: Dur,
    /// Pin each proxy worker thread to its own CPU of the set hapd may run on (nginx
    /// `worker_cpu_affinity auto`, HAProxy `cpu-map`). The workers are one per CPU already; pinned,
    /// they keep their caches and are not moved about by the scheduler.
    #[serde(default = "super::yes")]
    pub pin_workers: bool,
    /// Pinned workers hand new connections to a worker whose CPU has time to spare while
    /// another process keeps their own CPU busy (`proxy/steer.rs`). Off by default: its gain
    /// was measured only where the load tool shared the proxy's CPUs, not on a real host.
    #[serde(default)]
    pub steer_connections: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            keepalive_timeout: default_keepalive(),
            header_read_timeout: default_header_read(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            server_header: false,
            drain_timeout: default_drain(),
            pin_workers: true,
            steer_connections: false,
        }
    }
}

fn default_drain() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_keepalive() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_header_read() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_max_header_bytes() -> usize {
    65_536
}
fn default_max_headers() -> usize {
    100
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// "1.2" and/or "1.3".
    #[serde(default = "default_protocols")]
    pub protocols: Vec<String>,
    /// rustls / IANA names, e.g. "TLS13_AES_256_GCM_SHA384"; empty: rustls's safe defaults.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    #[serde(default)]
    pub certificate: Vec<Certificate>,
}

fn default_protocols() -> Vec<String> {
    vec!["1.2".into(), "1.3".into()]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// Addresses to listen on: wildcard, or a VIP (bound with IP_FREEBIND, so it works on a
    /// backup that does not hold the VIP).
    pub bind: Vec<SocketAddr>,
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The server with the fewest requests in flight (Apache bybusyness).
    #[default]
    LeastOutstanding,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// "host:port" each.
    pub servers: Vec<String>,
    /// "host:port" each: used only while none of `servers` is up (nginx's `backup`, Apache's
    /// hot standby `status=+H`). They do not count for the proxy's health (`track_proxy`):
    /// a node whose own servers are all down withdraws (or lowers its priority) while its
    /// backups still answer the requests on the connections it holds.
    #[serde(default)]
    pub backup_servers: Vec<String>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_one")]
    pub fall: u32,
    #[serde(default = "default_one")]
    pub rise: u32,
}

fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_hc_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vhost {
    pub server_names: Vec<String>,
    pub listeners: Vec<String>,
    #[serde(default)]
    pub preserve_host: bool,
    /// ProxyTimeout: the longest an upstream may take to answer.
    #[serde(default = "default_proxy_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub access_log: Option<PathBuf>,
    #[serde(default)]
    pub error_log: Option<PathBuf>,
    /// 301 to https with the same host, path and query; such a vhost has no routes.
    #[serde(default)]
    pub redirect_https: bool,
    #[serde(default)]
    pub route: Vec<Route>,
}

fn default_proxy_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Longest prefix wins.
    pub prefix: String,
    pub upstream: String,
    /// Client networks allowed; empty: everyone. Others get 403.
    #[serde(default, deserialize_with = "cidrs")]
    pub allow: Vec<IpNet>,
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "allow: {s:?} is not an address or network (CIDR)"
                    ))
                })
        })
        .collect()
}

/// The cipher suites hapd (rustls with ring) can use, by name.
pub fn known_cipher_suites() -> Vec<String> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

/// A cross-field error: the span of the table it is in (when known), the key, the message.
pub type ProxyError = (Option<Range<usize>>, String, String);

/// Checks the proxy sections against each other.
pub fn validate(
    server: &Option<Server>,
    tls: &Option<Tls>,
    listeners: &[Spanned<Listener>],
    upstreams: &[Spanned<Upstream>],
    vhosts: &[Spanned<Vhost>],
) -> Result<(), ProxyError> {
    if let Some(s) = server {
        let e = |k: &str, m: String| (None, format!("server.{k}"), m);
        if !(1024..=1 << 20).contains(&s.max_header_bytes) {
            return Err(e(
                "max_header_bytes",
                format!("must be 1024..=1048576, got {}", s.max_header_bytes),
            ));
        }
        if !(1..=1000).contains(&s.max_headers) {
            return Err(e(
                "max_headers",
                format!("must be 1..=1000, got {}", s.max_headers),
            ));
        }
        for (k, d) in [
            ("keepalive_timeout", s.keepalive_timeout),
            ("header_read_timeout", s.header_read_timeout),
        ] {
            if d.0.is_zero() {
                return Err(e(k, "must be greater than 0".into()));
            }
        }
    }
    if let Some(t) = tls {
        for (i, p) in t.protocols.iter().enumerate() {
            if p != "1.2" && p != "1.3" {
                return Err((
                    None,
                    format!("tls.protocols[{i}]"),
                    format!("{p:?} is not supported: hapd speaks TLS \"1.2\" and \"1.3\" only"),
                ));
            }
        }
        if t.protocols.is_empty() {
            return Err((
                None,
                "tls.protocols".into(),
                "needs \"1.2\", \"1.3\" or both".into(),
            ));
        }
        let known = known_cipher_suites();
        for (i, c) in t.cipher_suites.iter().enumerate() {
            if !known.contains(c) {
                return Err((
                    None,
                    format!("tls.cipher_suites[{i}]"),
                    format!(
                        "{c:?} is not a cipher suite hapd knows; known: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        if !t.cipher_suites.is_empty() {
            for (proto, prefix) in [("1.3", "TLS13_"), ("1.2", "TLS_")] {
                if t.protocols.iter().any(|p| p == proto)
                    && !t.cipher_suites.iter().any(|c| c.starts_with(prefix))
                {
                    return Err((
                        None,
                        "tls.cipher_suites".into(),
                        format!("TLS {proto} is enabled but none of its cipher suites ({prefix}*) is listed"),
                    ));
                }
            }
        }
    }
    let mut names = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let err = |k: &str, m: String| (Some(l.span()), format!("listener[{i}].{k}"), m);
        let l = l.get_ref();
        if l.name.is_empty() || !names.insert(l.name.as_str()) {
            return Err(err("name", format!("{:?} is empty or used twice", l.name)));
        }
        if l.bind.is_empty() {
            return Err(err("bind", "needs at least one address".into()));
        }
        if l.tls && tls.as_ref().is_none_or(|t| t.certificate.is_empty()) {
            return Err(err(
                "tls",
                "a TLS listener needs [[tls.certificate]]".into(),
            ));
        }
    }
    let mut ups = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let err = |k: &str, m: String| (Some(u.span()), format!("upstream[{i}].{k}"), m);
        let u = u.get_ref();
        if u.name.is_empty() || !ups.insert(u.name.as_str()) {
            return Err(err("name", format!("{:?} is empty or used twice", u.name)));
        }
        if u.servers.is_empty() {
            return Err(err("servers", "needs at least one \"host:port\"".into()));
        }
        let total = u.servers.len() + u.backup_servers.len();
        if total > MAX_SERVERS {
            let key = if u.servers.len() > MAX_SERVERS {
                "servers"
            } else {
                "backup_servers"
            };
            return Err(err(
                key,
                format!("at most {MAX_SERVERS} servers with the backups, got {total}"),
            ));
        }
        let primaries: HashSet<&str> = u.servers.iter().map(String::as_str).collect();
        for (key, list) in [
            ("servers", &u.servers),
            ("backup_servers", &u.backup_servers),
        ] {
            for (j, s) in list.iter().enumerate() {
                let split = s.rsplit_once(':');
                let ok = split
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(err(
                        &format!("{key}[{j}]"),
                        format!("{s:?} is not \"host:port\""),
                    ));
                }
                // An IPv6 address goes in brackets (RFC 3986): it becomes the Host header and
                // the authority of Location rewriting as written.
                if let Some((h, _)) = split {
                    let bracketed = h
                        .strip_prefix('[')
                        .and_then(|h| h.strip_suffix(']'))
                        // A zone (`%eth0`) may follow a link-local address.
                        .map(|a| {
                            a.split('%')
                                .next()
                                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
                        });
                    match bracketed {
                        Some(true) => {}
                        Some(false) => {
                            return Err(err(
                                &format!("{key}[{j}]"),
                                format!("{s:?}: {h} is not an IPv6 address in brackets"),
                            ))
                        }
                        None if h.contains(':') || h.contains('[') || h.contains(']') => {
                            return Err(err(
                                &format!("{key}[{j}]"),
                                format!(
                                    "{s:?}: write an IPv6 address in brackets, e.g. \
                                     \"[2001:db8::10]:8080\""
                                ),
                            ))
                        }
                        None => {}
                    }
                }
                if key == "backup_servers" && primaries.contains(s.as_str()) {
                    return Err(err(
                        &format!("{key}[{j}]"),
                        format!("{s:?} is also in servers: a server is a backup or not"),
                    ));
                }
            }
        }
        if u.connect_timeout.0.is_zero() {
            return Err(err("connect_timeout", "must be greater than 0".into()));
        }
        if let Some(h) = &u.health_check {
            if !h.path.starts_with('/') {
                return Err(err(
                    "health_check.path",
                    format!("{:?} must start with /", h.path),
                ));
            }
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                return Err(err(
                    "health_check",
                    "interval and timeout must be greater than 0".into(),
                ));
            }
            if h.fall == 0 || h.rise == 0 {
                return Err(err(
                    "health_check",
                    "fall and rise must be at least 1".into(),
                ));
            }
        }
    }
    let mut sites = HashSet::new();
    for (i, v) in vhosts.iter().enumerate() {
        let err = |k: &str, m: String| (Some(v.span()), format!("vhost[{i}].{k}"), m);
        let v = v.get_ref();
        if v.server_names.is_empty() {
            return Err(err("server_names", "needs at least one name".into()));
        }
        if v.listeners.is_empty() {
            return Err(err("listeners", "needs at least one listener".into()));
        }
        for (j, l) in v.listeners.iter().enumerate() {
            if !names.contains(l.as_str()) {
                return Err(err(
                    &format!("listeners[{j}]"),
                    format!("no [[listener]] named {l:?}"),
                ));
            }
            for n in &v.server_names {
                if !sites.insert((l.clone(), n.to_ascii_lowercase())) {
                    return Err(err(
                        "server_names",
                        format!("{n:?} on listener {l:?} is served by two vhosts"),
                    ));
                }
            }
        }
        match (v.redirect_https, v.route.is_empty()) {
            (true, false) => {
                return Err(err("route", "a redirect_https vhost has no routes".into()))
            }
            (false, true) => {
                return Err(err(
                    "route",
                    "needs at least one [[vhost.route]] (or redirect_https)".into(),
                ))
            }
            _ => {}
        }
        if v.timeout.0.is_zero() {
            return Err(err("timeout", "must be greater than 0".into()));
        }
        for (name, value) in &v.response_headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(
                    "response_headers",
                    format!("{name:?} is not a header name"),
                ));
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return Err(err(
                    "response_headers",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
        }
        let mut prefixes = HashSet::new();
        for (j, r) in v.route.iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(err(
                    &format!("route[{j}].prefix"),
                    format!("{:?} must start with /", r.prefix),
                ));
            }
            if !prefixes.insert(r.prefix.as_str()) {
                return Err(err(
                    &format!("route[{j}].prefix"),
                    format!("{:?} is routed twice", r.prefix),
                ));
            }
            if !ups.contains(r.upstream.as_str()) {
                return Err(err(
                    &format!("route[{j}].upstream"),
                    format!("no [[upstream]] named {:?}", r.upstream),
                ));
            }
        }
    }
    Ok(())
}
