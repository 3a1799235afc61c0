//! The configuration file: one TOML file per node (see `docs/configuration.md`).
//!
//! Parsing is strict (`deny_unknown_fields`), bounded values are checked as they are read, and
//! the cross-field rules live in [`Config::validate`]. Every error names the file, the line and
//! the key; nothing is applied before the whole file is valid.
pub mod anycast;
pub mod auth;
pub mod cluster;
pub mod proxy;
pub mod scripts;
mod types;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use proxy_common::{
    maps::{MAX_IFACES_PER_VRID, MAX_PEERS_PER_INSTANCE},
    vrrp::Family,
};
use serde::Deserialize;
use toml::Spanned;

pub use types::{Dur, Priority, V3Checksum, Vrid, VrrpVersion, XdpMode};

/// A configuration error: where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `vrrp[0].auth_pass`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Something valid but worth an operator's attention; printed by `hapd check` and logged by
/// `hapd run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub vrrp: Vec<Spanned<Vrrp>>,
    #[serde(default)]
    pub track_script: Vec<Spanned<TrackScript>>,
    /// The proxy's sections (see [`proxy`]).
    #[serde(default)]
    pub server: Option<proxy::Server>,
    #[serde(default)]
    pub tls: Option<proxy::Tls>,
    #[serde(default)]
    pub listener: Vec<Spanned<proxy::Listener>>,
    #[serde(default)]
    pub upstream: Vec<Spanned<proxy::Upstream>>,
    #[serde(default)]
    pub vhost: Vec<Spanned<proxy::Vhost>>,
    /// Service prefixes announced through BIRD (see [`anycast`]).
    #[serde(default)]
    pub anycast: Vec<Spanned<anycast::Anycast>>,
    /// The channel to the other nodes: parity and certificate sync (see [`cluster`]).
    #[serde(default)]
    pub cluster: Option<Spanned<cluster::Cluster>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Router id: shown in logs, notify and status.
    pub name: String,
    /// Directory on a bpffs where the guard's maps are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Admin endpoint address (status, metrics, health).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Unix socket for `hapd upgrade` (root or the daemon's user only).
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// How the daemon's log lines look: `"text"` (under journald: a syslog priority and no
    /// timestamp) or `"json"` (one object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Who runs track, notify and fence commands: `"user"` or `"user:group"` (see
    /// [`scripts`]); default `hapd-script` where it exists, else hapd's own user.
    #[serde(default)]
    pub script_user: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/hapd/control.sock")
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/hapd")
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8410))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vrrp {
    pub name: String,
    pub interface: String,
    pub vrid: Vrid,
    pub priority: Priority,
    #[serde(default)]
    pub version: VrrpVersion,
    #[serde(default = "default_advert_interval")]
    pub advert_interval: Dur,
    #[serde(default = "yes")]
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay: Dur,
    #[serde(deserialize_with = "types::vips")]
    pub virtual_ips: Vec<IpNet>,
    #[serde(default, deserialize_with = "types::peers")]
    pub peers: Vec<IpAddr>,
    #[serde(default)]
    pub unicast: bool,
    #[serde(default)]
    pub auth_pass: Option<String>,
    /// keepalived 2.4's HMAC-SHA256 advert authentication (see [`auth`]).
    #[serde(default)]
    pub auth_hmac: Option<auth::AuthHmac>,
    #[serde(default)]
    pub v3_checksum: V3Checksum,
    #[serde(default)]
    pub xdp: XdpMode,
    #[serde(default)]
    pub track_proxy: Option<TrackProxy>,
    #[serde(default)]
    pub track_scripts: Vec<String>,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub notify_webhook: Option<String>,
    #[serde(default)]
    pub garp: Garp,
    #[serde(default)]
    pub fence: Vec<String>,
}

impl Vrrp {
    /// The instance's address family: its virtual addresses' (the config check makes them all
    /// one family, and the peers too).
    pub fn family(&self) -> Family {
        match self.virtual_ips.first() {
            Some(IpNet::V6(_)) => Family::V6,
            _ => Family::V4,
        }
    }
}

fn default_advert_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackProxy {
    pub weight: i32,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Garp {
    #[serde(default = "default_garp_repeat")]
    pub repeat: u32,
    #[serde(default = "default_garp_interval")]
    pub interval: Dur,
    #[serde(default = "default_garp_refresh")]
    pub refresh: Dur,
}

impl Default for Garp {
    fn default() -> Self {
        Garp {
            repeat: default_garp_repeat(),
            interval: default_garp_interval(),
            refresh: default_garp_refresh(),
        }
    }
}

fn default_garp_repeat() -> u32 {
    5
}
fn default_garp_interval() -> Dur {
    Dur(Duration::from_millis(10))
}
fn default_garp_refresh() -> Dur {
    Dur(Duration::from_secs(60))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackScript {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default = "default_script_interval")]
    pub interval: Dur,
    #[serde(default = "default_script_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub weight: i32,
    #[serde(default = "one")]
    pub fall: u32,
    #[serde(default = "one")]
    pub rise: u32,
}

fn default_script_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_script_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn one() -> u32 {
    1
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAMSIZ_MAX: usize = 15;
/// v2 simple password length (RFC 2338 section 5.3.10).
const AUTH_PASS_MAX: usize = 8;

impl Config {
    /// Reads, parses and validates `path`. Returns the config and its warnings.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        // serde_path_to_error names the key a type error is about (`vhost[0].route[1].prefix`).
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_path(e.path());
            let e = e.into_inner();
            ConfigError {
                file: path.to_owned(),
                line: e.span().map(|s| line_of(text, s.start)),
                key: (!key.is_empty()).then_some(key),
                message: e.message().trim_end().to_string(),
            }
        })?;
        let warnings = config
            .validate()
            .map_err(|(span, key, message)| ConfigError {
                file: path.to_owned(),
                line: span.map(|s| line_of(text, s.start)),
                key: Some(key),
                message,
            })?;
        Ok((config, warnings))
    }

    /// Cross-field rules. An error is (span of the enclosing table, key path, message).
    #[allow(clippy::type_complexity)]
    fn validate(&self) -> Result<Vec<Warning>, (Option<Range<usize>>, String, String)> {
        let mut warnings = Vec::new();
        if self.node.name.trim().is_empty() {
            return Err((None, "node.name".into(), "must not be empty".into()));
        }
        if !self.node.pin_dir.is_absolute() {
            return Err((
                None,
                "node.pin_dir".into(),
                "must be an absolute path".into(),
            ));
        }

        let mut scripts = HashMap::new();
        for (i, s) in self.track_script.iter().enumerate() {
            let err = |k: &str, m: String| (Some(s.span()), format!("track_script[{i}].{k}"), m);
            let s = s.get_ref();
            if s.name.is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if scripts.insert(s.name.as_str(), i).is_some() {
                return Err(err("name", format!("{:?} is defined twice", s.name)));
            }
            if s.command.first().is_none_or(|c| c.is_empty()) {
                return Err(err("command", "needs a program (argv, no shell)".into()));
            }
            if s.interval.0.is_zero() {
                return Err(err("interval", "must be greater than 0".into()));
            }
            if s.timeout.0.is_zero() {
                return Err(err("timeout", "must be greater than 0".into()));
            }
            if !(-253..=253).contains(&s.weight) {
                return Err(err(
                    "weight",
                    format!("must be -253..=253, got {}", s.weight),
                ));
            }
            if s.fall == 0 {
                return Err(err("fall", "must be at least 1".into()));
            }
            if s.rise == 0 {
                return Err(err("rise", "must be at least 1".into()));
            }
        }

        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut ifaces_per_vrid: HashMap<Vrid, usize> = HashMap::new();
        let mut modes: HashMap<&str, XdpMode> = HashMap::new();
        for (i, v) in self.vrrp.iter().enumerate() {
            let span = v.span();
            let v = v.get_ref();
            let key = |k: &str| format!("vrrp[{i}].{k}");
            let err = |k: &str, m: String| (Some(span.clone()), key(k), m);
            if v.name.is_empty() {
                return Err(err("name", "must not be empty".into()));
            }
            if !names.insert(v.name.as_str()) {
                return Err(err(
                    "name",
                    format!("{:?} is used by two instances", v.name),
                ));
            }
            if v.interface.is_empty()
                || v.interface.len() > IFNAMSIZ_MAX
                || v.interface.contains('/')
            {
                return Err(err(
                    "interface",
                    format!("{:?} is not an interface name", v.interface),
                ));
            }
            // RFC 9568 section 5.2.3: IPv4 and IPv6 have a VRID space each.
            if !ids.insert((v.interface.as_str(), v.vrid, v.family())) {
                return Err(err(
                    "vrid",
                    format!(
                        "vrid {} is used twice on interface {} for {}",
                        v.vrid,
                        v.interface,
                        v.family().name()
                    ),
                ));
            }
            let n = ifaces_per_vrid.entry(v.vrid).or_default();
            *n += 1;
            if *n > MAX_IFACES_PER_VRID {
                return Err(err(
                    "vrid",
                    format!(
                        "vrid {} is on more than {MAX_IFACES_PER_VRID} interfaces; the guard holds \
                         {MAX_IFACES_PER_VRID} per VRID",
                        v.vrid
                    ),
                ));
            }
            if let Some(&other) = modes.get(v.interface.as_str()) {
                if other != v.xdp {
                    return Err(err(
                        "xdp",
                        format!(
                            "{} differs from {other} set by another instance on {}; one guard \
                             runs per interface",
                            v.xdp, v.interface
                        ),
                    ));
                }
            }
            modes.insert(v.interface.as_str(), v.xdp);

            let iv = v.advert_interval.0;
            match v.version {
                VrrpVersion::V3 => {
                    // RFC 5798 section 5.2.7: 12 bits of centiseconds.
                    if iv < Duration::from_millis(10)
                        || iv > Duration::from_millis(40_950)
                        || iv.as_nanos() % 10_000_000 != 0
                    {
                        return Err(err(
                            "advert_interval",
                            format!(
                                "{} is not a v3 interval: 10ms..40.95s in steps of 10ms",
                                v.advert_interval
                            ),
                        ));
                    }
                }
                VrrpVersion::V2 => {
                    // RFC 3768 section 5.3.7: 8 bits of whole seconds.
                    if iv < Duration::from_secs(1)
                        || iv > Duration::from_secs(255)
                        || iv.subsec_nanos() != 0
                    {
                        return Err(err(
                            "advert_interval",
                            format!(
                                "{} is not a v2 interval: whole seconds, 1s..255s",
                                v.advert_interval
                            ),
                        ));
                    }
                }
            }
            if v.auth_hmac.is_some() && v.auth_pass.is_some() {
                return Err(err(
                    "auth_hmac",
                    "auth_hmac and auth_pass exclude each other (keepalived drops the PASS \
                     password when both are set); remove auth_pass"
                        .into(),
                ));
            }
            match (&v.auth_pass, v.version) {
                (Some(_), VrrpVersion::V3) => {
                    return Err(err(
                        "auth_pass",
                        "VRRP v3 has no authentication (RFC 5798 section 9); use version = 2 or \
                         remove auth_pass"
                            .into(),
                    ))
                }
                (Some(p), VrrpVersion::V2) => {
                    if p.is_empty() || p.len() > AUTH_PASS_MAX {
                        return Err(err(
                            "auth_pass",
                            format!(
                                "must be 1..={AUTH_PASS_MAX} bytes, got {} (VRRP carries 8 bytes; \
                                 hapd never truncates a password)",
                                p.len()
                            ),
                        ));
                    }
                    warnings.push(Warning {
                        key: key("auth_pass"),
                        message: "PASS authentication sends the password in plaintext; the \
                                  peers list is what keeps forged adverts out"
                            .into(),
                    });
                }
                (None, _) => {}
            }
            if let Some(a) = &v.auth_hmac {
                let (_, problems) = a
                    .resolve(v.advert_interval.0)
                    .map_err(|p| err(&format!("auth_hmac.{}", p.key), p.message))?;
                warnings.extend(problems.into_iter().map(|p| Warning {
                    key: key(&format!("auth_hmac.{}", p.key)),
                    message: p.message,
                }));
            }
            if v.virtual_ips.is_empty() {
                return Err(err("virtual_ips", "needs at least one address".into()));
            }
            let family = v.family();
            // keepalived's rule: an instance is of one family, decided by its first address.
            for (j, a) in v.virtual_ips.iter().enumerate() {
                let f = match a {
                    IpNet::V4(_) => Family::V4,
                    IpNet::V6(_) => Family::V6,
                };
                if f != family {
                    return Err(err(
                        &format!("virtual_ips[{j}]"),
                        format!(
                            "{a} is {} but virtual_ips[0] is {}: an instance is of one family; \
                             put the {} addresses in an instance of their own",
                            f.name(),
                            family.name(),
                            f.name()
                        ),
                    ));
                }
                if a.addr().is_multicast() || a.addr().is_unspecified() {
                    return Err(err(
                        &format!("virtual_ips[{j}]"),
                        format!("{a} is not a host address"),
                    ));
                }
            }
            if v.virtual_ips.len() > family.max_addrs() as usize {
                return Err(err(
                    "virtual_ips",
                    format!(
                        "{} addresses; at most {} {} addresses fit in an advert",
                        v.virtual_ips.len(),
                        family.max_addrs(),
                        family.name()
                    ),
                ));
            }
            if family == Family::V6 && v.version == VrrpVersion::V2 {
                return Err(err(
                    "version",
                    "VRRP v2 is IPv4 only (RFC 3768); IPv6 addresses need version = 3".into(),
                ));
            }
            if v.peers.len() > MAX_PEERS_PER_INSTANCE {
                return Err(err(
                    "peers",
                    format!(
                        "{} peers; the guard holds at most {MAX_PEERS_PER_INSTANCE} per instance",
                        v.peers.len()
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for (j, p) in v.peers.iter().enumerate() {
                if !seen.insert(p) {
                    return Err(err(&format!("peers[{j}]"), format!("{p} is listed twice")));
                }
                if p.is_ipv6() != (family == Family::V6) {
                    return Err(err(
                        &format!("peers[{j}]"),
                        format!(
                            "{p} is not {} like the instance's virtual_ips (an instance is of \
                             one family)",
                            family.name()
                        ),
                    ));
                }
                if let IpAddr::V6(a) = p {
                    if !a.is_unicast_link_local() {
                        warnings.push(Warning {
                            key: key(&format!("peers[{j}]")),
                            message: format!(
                                "{a} is not a link-local address: IPv6 adverts come from the \
                                 sender's link-local address (hapd's always, keepalived's unless \
                                 unicast_src_ip is set), so the guard drops the peer's adverts \
                                 unless they come from {a}"
                            ),
                        });
                    }
                }
                let broadcast = matches!(p, IpAddr::V4(a) if a.is_broadcast());
                if p.is_multicast() || broadcast || p.is_unspecified() {
                    return Err(err(
                        &format!("peers[{j}]"),
                        format!("{p} is not a host address"),
                    ));
                }
            }
            if v.peers.is_empty() {
                if v.unicast {
                    return Err(err(
                        "peers",
                        "unicast = true needs at least one peer".into(),
                    ));
                }
                warnings.push(Warning {
                    key: key("peers"),
                    message: "no peers: the guard accepts adverts for this VRID from any source"
                        .into(),
                });
            }
            if let Some(tp) = v.track_proxy {
                if !(-254..=254).contains(&tp.weight) {
                    return Err(err(
                        "track_proxy.weight",
                        format!("must be -254..=254, got {}", tp.weight),
                    ));
                }
            }
            for (j, t) in v.track_scripts.iter().enumerate() {
                if !scripts.contains_key(t.as_str()) {
                    return Err(err(
                        &format!("track_scripts[{j}]"),
                        format!("no [[track_script]] named {t:?}"),
                    ));
                }
            }
            if v.notify.first().is_some_and(|c| c.is_empty()) {
                return Err(err("notify", "the program name is empty".into()));
            }
            if v.fence.first().is_some_and(|c| c.is_empty()) {
                return Err(err("fence", "the program name is empty".into()));
            }
            if let Some(u) = &v.notify_webhook {
                match url::Url::parse(u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => {}
                    _ => {
                        return Err(err(
                            "notify_webhook",
                            format!("{u:?} is not an http(s) URL"),
                        ))
                    }
                }
            }
            if v.garp.repeat == 0 || v.garp.repeat > 100 {
                return Err(err(
                    "garp.repeat",
                    format!("must be 1..=100, got {}", v.garp.repeat),
                ));
            }
            if v.garp.interval.0.is_zero() {
                return Err(err("garp.interval", "must be greater than 0".into()));
            }
        }
        proxy::validate(
            &self.server,
            &self.tls,
            &self.listener,
            &self.upstream,
            &self.vhost,
        )?;
        if self.listener.is_empty() {
            for (i, v) in self.vrrp.iter().enumerate() {
                if v.get_ref().track_proxy.is_some() {
                    warnings.push(Warning {
                        key: format!("vrrp[{i}].track_proxy"),
                        message: "there is no [[listener]]: with no proxy to track, it never changes the priority".into(),
                    });
                }
            }
        }
        if self.listener.is_empty() && (!self.upstream.is_empty() || !self.vhost.is_empty()) {
            warnings.push(Warning {
                key: "listener".into(),
                message: "upstreams or vhosts but no [[listener]]: nothing is served".into(),
            });
        }
        let first_verdict = self
            .upstream
            .iter()
            .filter_map(|u| u.get_ref().health_check.as_ref())
            .map(|h| h.interval.0 * h.fall)
            .max();
        let has_scripts = !self.track_script.is_empty()
            || self
                .vrrp
                .iter()
                .any(|v| !v.get_ref().notify.is_empty() || !v.get_ref().fence.is_empty());
        match scripts::run_as(self.node.script_user.as_deref()) {
            Err(e) => return Err((None, "node.script_user".into(), e)),
            Ok(None) if has_scripts => warnings.push(Warning {
                key: "node.script_user".into(),
                message: format!(
                    "not set, and user {} does not exist: scripts run as hapd's own user \
                     (root); create it or set script_user",
                    scripts::DEFAULT_USER
                ),
            }),
            Ok(_) => {}
        }
        // Script security: what hapd runs, nobody else may change.
        for (i, s) in self.track_script.iter().enumerate() {
            if let Some(why) = s
                .get_ref()
                .command
                .first()
                .and_then(|c| scripts::insecure(c))
            {
                return Err((Some(s.span()), format!("track_script[{i}].command"), why));
            }
        }
        for (i, v) in self.vrrp.iter().enumerate() {
            for (key, argv) in [
                ("notify", &v.get_ref().notify),
                ("fence", &v.get_ref().fence),
            ] {
                if let Some(why) = argv.first().and_then(|c| scripts::insecure(c)) {
                    return Err((Some(v.span()), format!("vrrp[{i}].{key}"), why));
                }
            }
        }
        anycast::validate(
            &self.anycast,
            !self.listener.is_empty(),
            first_verdict,
            &mut warnings,
        )?;
        if let Some(c) = &self.cluster {
            let has_tls = self.tls.as_ref().is_some_and(|t| !t.certificate.is_empty());
            cluster::validate(c, &self.node.name, has_tls, &mut warnings)?;
        }
        if self.vrrp.is_empty() && self.anycast.is_empty() {
            warnings.push(Warning {
                key: "vrrp".into(),
                message: "no [[vrrp]] instance: this node runs no failover".into(),
            });
        }
        Ok(warnings)
    }
}

/// 1-based line number of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;

/// `vhost[0].route[1].prefix` from a deserialization path, without the fields toml's
/// `Spanned` uses inside (`$__serde_spanned_private_*`).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}
