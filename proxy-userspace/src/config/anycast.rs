//! `[[anycast]]`: a service prefix announced from several nodes through BIRD (see
//! `docs/anycast.md`). The key names are public interface.
use std::{net::Ipv4Addr, ops::Range, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use super::{types, Dur};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anycast {
    pub name: String,
    /// Held on this node while it serves them.
    #[serde(deserialize_with = "types::prefixes")]
    pub prefixes: Vec<Ipv4Net>,
    /// The segment shared with the router and the other nodes.
    pub interface: String,
    /// Every node of the group, this one too.
    #[serde(deserialize_with = "types::peers_v4")]
    pub peers: Vec<Ipv4Addr>,
    /// This node's BIRD 2 control socket.
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// A `protocol static` in BIRD's config, disabled at start: enabled while this node should
    /// announce.
    pub bird_protocol: String,
    /// Announce only while the local proxy is healthy.
    #[serde(default = "yes")]
    pub track_proxy: bool,
    /// How long the proxy must have been healthy before the prefixes are announced.
    #[serde(default = "default_rise")]
    pub rise: Dur,
    /// After a withdrawal, how long before they are announced again (against flapping).
    #[serde(default = "default_hold_down")]
    pub hold_down: Dur,
    /// Where the guard runs on `interface` for second chance: `auto` (native XDP, else
    /// generic), `native`, `generic` (needed on veth: see docs/anycast.md) or `off` (no
    /// second chance). A `[[vrrp]]` instance on the same interface decides instead.
    #[serde(default)]
    pub xdp: super::XdpMode,
}

fn yes() -> bool {
    true
}

fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}

fn default_rise() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_hold_down() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Checks the groups; errors as `Config::validate` reports them. `first_verdict`: how long
/// the proxy's health checks take to mark a dead server down (the longest interval x fall);
/// `None` when no upstream has a health check.
pub(super) fn validate(
    groups: &[Spanned<Anycast>],
    has_proxy: bool,
    first_verdict: Option<Duration>,
    warnings: &mut Vec<super::Warning>,
) -> Result<(), (Option<Range<usize>>, String, String)> {
    use proxy_common::maps::{MAX_ANYCAST_GROUPS, MAX_ANYCAST_PREFIXES};
    if groups.len() > MAX_ANYCAST_GROUPS as usize {
        return Err((
            groups.get(MAX_ANYCAST_GROUPS as usize).map(|g| g.span()),
            "anycast".into(),
            format!(
                "{} groups: a node has at most {MAX_ANYCAST_GROUPS}",
                groups.len()
            ),
        ));
    }
    let prefixes: usize = groups.iter().map(|g| g.get_ref().prefixes.len()).sum();
    if prefixes > MAX_ANYCAST_PREFIXES as usize {
        return Err((
            None,
            "anycast".into(),
            format!("{prefixes} prefixes: a node has at most {MAX_ANYCAST_PREFIXES}"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut protocols = std::collections::HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        let err = |k: &str, m: String| (Some(g.span()), format!("anycast[{i}].{k}"), m);
        let g = g.get_ref();
        if g.name.trim().is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        if !names.insert(g.name.as_str()) {
            return Err(err("name", format!("{:?} is defined twice", g.name)));
        }
        if g.prefixes.is_empty() {
            return Err(err("prefixes", "needs at least one prefix".into()));
        }
        if g.interface.is_empty() {
            return Err(err("interface", "must not be empty".into()));
        }
        if g.peers.is_empty() {
            return Err(err(
                "peers",
                "needs every node of the group, this one too".into(),
            ));
        }
        if g.peers.len() > proxy_common::maps::MAX_ANYCAST_PEERS {
            return Err(err(
                "peers",
                format!(
                    "{} nodes: a group has at most {} (second chance walks them in XDP)",
                    g.peers.len(),
                    proxy_common::maps::MAX_ANYCAST_PEERS
                ),
            ));
        }
        for (j, p) in g.peers.iter().enumerate() {
            if g.peers[..j].contains(p) {
                return Err(err(&format!("peers[{j}]"), format!("{p} is listed twice")));
            }
        }
        if !g.bird_socket.is_absolute() {
            return Err(err("bird_socket", "must be an absolute path".into()));
        }
        let proto_ok = !g.bird_protocol.is_empty()
            && g.bird_protocol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !proto_ok {
            return Err(err(
                "bird_protocol",
                format!(
                    "{:?} is not a BIRD protocol name (letters, digits, _)",
                    g.bird_protocol
                ),
            ));
        }
        if !protocols.insert((g.bird_socket.clone(), g.bird_protocol.clone())) {
            return Err(err(
                "bird_protocol",
                format!(
                    "{:?} on {} is driven by another group too",
                    g.bird_protocol,
                    g.bird_socket.display()
                ),
            ));
        }
        if g.track_proxy && !has_proxy {
            return Err(err(
                "track_proxy",
                "there is no [[listener]]: no proxy to track (set track_proxy = false to announce \
                 regardless)"
                    .into(),
            ));
        }
        if g.track_proxy {
            // The proxy counts servers up until a check says otherwise.
            match first_verdict {
                None => warnings.push(super::Warning {
                    key: format!("anycast[{i}].track_proxy"),
                    message: "no upstream has a health_check: the proxy's health follows only \
                              failed requests, so a dead upstream is announced until one fails"
                        .into(),
                }),
                Some(v) if v > g.rise.0 => warnings.push(super::Warning {
                    key: format!("anycast[{i}].rise"),
                    message: format!(
                        "{} is shorter than the health checks take to find a dead server \
                         ({v:?}): a node whose upstream is down at start announces, then \
                         withdraws",
                        g.rise
                    ),
                }),
                Some(_) => {}
            }
        }
    }
    Ok(())
}
