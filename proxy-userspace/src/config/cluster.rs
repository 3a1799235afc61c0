//! `[cluster]`: the channel between the nodes of one service, for parity digests and
//! certificate sync (see [`crate::cluster`] and docs/operations.md). The key names are public
//! interface.
use std::{net::SocketAddr, ops::Range, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::Dur;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Where this node answers its peers (mutual TLS).
    pub listen: SocketAddr,
    /// The other nodes: each by the name its cluster certificate carries and where it listens.
    pub peers: Vec<Peer>,
    /// The cluster CA: every node's certificate must chain to it.
    pub ca: PathBuf,
    /// This node's certificate (with any intermediates after it) and key; the certificate
    /// names this node (`node.name` as a DNS name).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the digests are exchanged with each peer (also at once on every reload).
    #[serde(default = "default_interval")]
    pub exchange_interval: Dur,
    /// How long one exchange or push may take (connect, handshake, answer).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Push renewed certificates of `[[tls.certificate]]` to the peers, and take theirs.
    #[serde(default)]
    pub sync_certificates: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's `node.name`, which its cluster certificate names.
    pub name: String,
    /// The peer's `[cluster] listen` address.
    pub address: SocketAddr,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}

/// Checks `[cluster]`; errors as `Config::validate` reports them.
pub(super) fn validate(
    c: &Spanned<Cluster>,
    node: &str,
    has_tls: bool,
    warnings: &mut Vec<super::Warning>,
) -> Result<(), (Option<Range<usize>>, String, String)> {
    let err = |k: &str, m: String| (Some(c.span()), format!("cluster.{k}"), m);
    let c = c.get_ref();
    if c.peers.is_empty() {
        return Err(err("peers", "needs at least one other node".into()));
    }
    for (j, p) in c.peers.iter().enumerate() {
        let k = format!("peers[{j}]");
        if !valid_name(&p.name) {
            return Err(err(
                &format!("{k}.name"),
                format!(
                    "{:?} is not a DNS name (letters, digits, '-' and '.'): the peer's certificate must carry it",
                    p.name
                ),
            ));
        }
        if p.name.eq_ignore_ascii_case(node) {
            return Err(err(
                &format!("{k}.name"),
                format!(
                    "{:?} is this node (node.name): list the other nodes only",
                    p.name
                ),
            ));
        }
        if c.peers[..j]
            .iter()
            .any(|q| q.name.eq_ignore_ascii_case(&p.name))
        {
            return Err(err(
                &format!("{k}.name"),
                format!("{:?} is listed twice", p.name),
            ));
        }
        if c.peers[..j].iter().any(|q| q.address == p.address) {
            return Err(err(
                &format!("{k}.address"),
                format!("{} is listed twice", p.address),
            ));
        }
        if p.address.ip().is_unspecified() || p.address.port() == 0 {
            return Err(err(
                &format!("{k}.address"),
                format!("{}: name the peer's address and port", p.address),
            ));
        }
        if p.address == c.listen {
            return Err(err(
                &format!("{k}.address"),
                format!("{} is this node's listen address", p.address),
            ));
        }
    }
    if !valid_name(node) {
        return Err(err(
            "cert",
            format!("node.name {node:?} is not a DNS name: the cluster certificate must carry it"),
        ));
    }
    if c.listen.port() == 0 {
        return Err(err("listen", "needs a port".into()));
    }
    for (k, p) in [("ca", &c.ca), ("cert", &c.cert), ("key", &c.key)] {
        if !p.is_absolute() {
            return Err(err(k, format!("{}: must be an absolute path", p.display())));
        }
    }
    if c.exchange_interval.0 < Duration::from_millis(100)
        || c.exchange_interval.0 > Duration::from_secs(3600)
    {
        return Err(err(
            "exchange_interval",
            format!("{}: must be 100ms..=1h", c.exchange_interval),
        ));
    }
    if c.timeout.0 < Duration::from_millis(100) || c.timeout.0 > Duration::from_secs(60) {
        return Err(err(
            "timeout",
            format!("{}: must be 100ms..=60s", c.timeout),
        ));
    }
    if c.sync_certificates && !has_tls {
        warnings.push(super::Warning {
            key: "cluster.sync_certificates".into(),
            message: "no [[tls.certificate]] on this node: nothing to push, and pushes from peers are refused".into(),
        });
    }
    Ok(())
}

/// A DNS name as a certificate carries it: labels of letters, digits and '-'.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
