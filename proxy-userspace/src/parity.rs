//! Parity between the nodes of one service (issue 26): a digest of everything two nodes must
//! agree on, per section, so that a node can tell which parts of its peer's configuration
//! differ from its own without either side shipping its whole configuration.
//!
//! What counts, per section (per-node keys left out):
//! - `vrrp`: each instance by name: VRID, version, family, interval, preemption, the virtual
//!   addresses, unicast, the checksum mode, `auth_pass` and `auth_hmac` (the keys by their
//!   SHA-256 only), `track_proxy` and the announcement settings. Not the interface, the
//!   priority, the peers, scripts, notify, fence or the XDP mode: those differ by design.
//! - `anycast`: each group's prefixes, its node list, rise, hold-down, `track_proxy`; not the
//!   interface or BIRD's socket and protocol.
//! - `server`, `listeners`, `vhosts` (names, listeners, host handling, timeout, redirect; not
//!   the log files), `routes`, `upstreams`, `tls` (protocols and suites), `headers` (response
//!   headers per vhost), `certificates` (the SHA-256 of each certificate and chain as read from
//!   the files, and its expiry; not the paths).
//!
//! Each section is serialised canonically (JSON with sorted keys, lists in their configured
//! order where order matters and sorted where it does not) and hashed with SHA-256; the digest
//! is the first 16 bytes in hex. Beside the digest each section keeps its canonical text with
//! secrets replaced by their fingerprints' absence (key IDs only), for showing both sides of a
//! difference.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;

/// The sections, in the order they are shown.
pub const SECTIONS: [&str; 10] = [
    "vrrp",
    "anycast",
    "server",
    "listeners",
    "vhosts",
    "routes",
    "upstreams",
    "tls",
    "headers",
    "certificates",
];

/// One section's digest and what it covers, shown where the two nodes differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The first 16 bytes of the SHA-256 of the canonical text, in hex.
    pub digest: String,
    /// The canonical text with secrets left out (they count in the digest only).
    pub shown: String,
}

/// Every section's digest, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parity {
    pub sections: BTreeMap<String, Section>,
}

/// A section whose digests differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub section: String,
    /// This node's and the peer's (absent on a node that does not know the section).
    pub ours: Option<Section>,
    pub theirs: Option<Section>,
}

impl Parity {
    /// The digests of `cfg`, reading the certificate files and `auth_hmac` key files it names.
    pub fn of(cfg: &Config) -> anyhow::Result<Parity> {
        Ok(Self::with_certificates(cfg)?.0)
    }

    /// [`Parity::of`], and what each `[[tls.certificate]]`'s files hold, in order (read once
    /// for both).
    pub fn with_certificates(cfg: &Config) -> anyhow::Result<(Parity, Vec<CertFacts>)> {
        let facts = match &cfg.tls {
            Some(t) => t
                .certificate
                .iter()
                .map(CertFacts::read)
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let mut sections = BTreeMap::new();
        for (name, (full, shown)) in [
            ("vrrp", vrrp(cfg)?),
            ("anycast", same(anycast(cfg))),
            ("server", same(server(cfg))),
            ("listeners", same(listeners(cfg))),
            ("vhosts", same(vhosts(cfg))),
            ("routes", same(routes(cfg))),
            ("upstreams", same(upstreams(cfg))),
            ("tls", same(tls(cfg))),
            ("headers", same(headers(cfg))),
            ("certificates", same(certificates(cfg, &facts))),
        ] {
            sections.insert(
                name.to_string(),
                Section {
                    digest: digest(&full),
                    shown: shown.to_string(),
                },
            );
        }
        Ok((Parity { sections }, facts))
    }

    /// The sections that differ between `self` (this node) and `theirs`, in [`SECTIONS`]
    /// order; empty: in parity.
    pub fn drift(&self, theirs: &Parity) -> Vec<Drift> {
        SECTIONS
            .iter()
            .filter_map(|name| {
                let (a, b) = (self.sections.get(*name), theirs.sections.get(*name));
                (a.map(|s| &s.digest) != b.map(|s| &s.digest)).then(|| Drift {
                    section: name.to_string(),
                    ours: a.cloned(),
                    theirs: b.cloned(),
                })
            })
            .collect()
    }
}

fn same(v: Value) -> (Value, Value) {
    (v.clone(), v)
}

/// The first 16 bytes of the SHA-256 of `v`'s canonical text, in hex. serde_json writes
/// objects with sorted keys (its maps are ordered), so equal values give equal text.
fn digest(v: &Value) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, v.to_string().as_bytes());
    hex(&d.as_ref()[..16])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SHA-256 of `b`, in hex (a secret's fingerprint).
fn fingerprint(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The VRRP instances: the full value (with the secrets' fingerprints) and the one shown.
fn vrrp(cfg: &Config) -> anyhow::Result<(Value, Value)> {
    let mut full = serde_json::Map::new();
    let mut shown = serde_json::Map::new();
    for v in &cfg.vrrp {
        let v = v.get_ref();
        let mut entry = json!({
            "vrid": v.vrid.get(),
            "version": v.version.number(),
            "family": v.family().name(),
            "advert_interval": v.advert_interval.to_string(),
            "preempt": v.preempt,
            "preempt_delay": v.preempt_delay.to_string(),
            "virtual_ips": sorted(v.virtual_ips.iter().map(|n| n.to_string()).collect()),
            "unicast": v.unicast,
            "v3_checksum": format!("{:?}", v.v3_checksum),
            "track_proxy": v.track_proxy.map(|t| t.weight),
            "garp": {
                "repeat": v.garp.repeat,
                "interval": v.garp.interval.to_string(),
                "refresh": v.garp.refresh.to_string(),
            },
        });
        let mut secrets = serde_json::Map::new();
        if let Some(p) = &v.auth_pass {
            entry["auth_pass"] = json!("set");
            secrets.insert("auth_pass".into(), json!(fingerprint(p.as_bytes())));
        }
        if let Some(a) = &v.auth_hmac {
            let (r, _) = a.resolve(v.advert_interval.0).map_err(|p| {
                anyhow::anyhow!("vrrp {:?}: auth_hmac.{}: {}", v.name, p.key, p.message)
            })?;
            entry["auth_hmac"] = json!({
                "mode": format!("{:?}", r.mode),
                "time_mode": r.time_mode,
                "window_s": r.window_s,
                "active_key": r.active_key,
                "key_ids": r.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
            });
            secrets.insert(
                "auth_hmac_keys".into(),
                json!(r
                    .keys
                    .iter()
                    .map(|(id, k)| format!("{id}:{}", fingerprint(k)))
                    .collect::<Vec<_>>()),
            );
        }
        shown.insert(v.name.clone(), entry.clone());
        if let Value::Object(m) = &mut entry {
            m.extend(secrets);
        }
        full.insert(v.name.clone(), entry);
    }
    Ok((Value::Object(full), Value::Object(shown)))
}

/// `items` as one JSON object: each item's name and value.
fn object<T>(items: &[toml::Spanned<T>], entry: impl Fn(&T) -> (String, Value)) -> Value {
    Value::Object(items.iter().map(|i| entry(i.get_ref())).collect())
}

fn anycast(cfg: &Config) -> Value {
    object(&cfg.anycast, |a| {
        (
            a.name.clone(),
            json!({
                "prefixes": sorted(a.prefixes.iter().map(|p| p.to_string()).collect()),
                // In order: second chance walks the nodes in this order on every node.
                "peers": a.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "rise": a.rise.to_string(),
                "hold_down": a.hold_down.to_string(),
                "track_proxy": a.track_proxy,
            }),
        )
    })
}

fn server(cfg: &Config) -> Value {
    match &cfg.server {
        None => Value::Null,
        Some(s) => json!({
            "keepalive_timeout": s.keepalive_timeout.to_string(),
            "header_read_timeout": s.header_read_timeout.to_string(),
            "max_header_bytes": s.max_header_bytes,
            "max_headers": s.max_headers,
            "server_header": s.server_header,
            "drain_timeout": s.drain_timeout.to_string(),
            "pin_workers": s.pin_workers,
            "steer_connections": s.steer_connections,
        }),
    }
}

fn listeners(cfg: &Config) -> Value {
    object(&cfg.listener, |l| {
        (
            l.name.clone(),
            json!({
                "bind": sorted(l.bind.iter().map(|b| b.to_string()).collect()),
                "tls": l.tls,
            }),
        )
    })
}

/// A vhost's name in the digests: its server names and its listeners (the same names on a
/// plain listener that redirects and on a TLS one are two vhosts), each sorted.
fn vhost_key(v: &crate::config::proxy::Vhost) -> String {
    format!(
        "{} @ {}",
        sorted(v.server_names.clone()).join(" "),
        sorted(v.listeners.clone()).join(" ")
    )
}

fn vhosts(cfg: &Config) -> Value {
    object(&cfg.vhost, |v| {
        (
            vhost_key(v),
            json!({
                "listeners": sorted(v.listeners.clone()),
                "preserve_host": v.preserve_host,
                "timeout": v.timeout.to_string(),
                "redirect_https": v.redirect_https,
            }),
        )
    })
}

fn routes(cfg: &Config) -> Value {
    object(&cfg.vhost, |v| {
        let routes: Vec<Value> = v
            .route
            .iter()
            .map(|r| {
                json!({
                    "prefix": r.prefix,
                    "upstream": r.upstream,
                    "allow": r.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        (vhost_key(v), Value::Array(routes))
    })
}

fn upstreams(cfg: &Config) -> Value {
    object(&cfg.upstream, |u| {
        (
            u.name.clone(),
            json!({
                "servers": u.servers,
                "backup_servers": u.backup_servers,
                "balance": format!("{:?}", u.balance),
                "connect_timeout": u.connect_timeout.to_string(),
                "health_check": u.health_check.as_ref().map(|h| json!({
                    "path": h.path,
                    "interval": h.interval.to_string(),
                    "timeout": h.timeout.to_string(),
                    "fall": h.fall,
                    "rise": h.rise,
                })),
            }),
        )
    })
}

fn tls(cfg: &Config) -> Value {
    match &cfg.tls {
        None => Value::Null,
        Some(t) => json!({ "protocols": t.protocols, "cipher_suites": t.cipher_suites }),
    }
}

fn headers(cfg: &Config) -> Value {
    object(&cfg.vhost, |v| {
        (
            vhost_key(v),
            json!(v
                .response_headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect::<BTreeMap<_, _>>()),
        )
    })
}

/// What a configured certificate's files hold: the SHA-256 of each PEM block as DER (the
/// leaf and what follows it in the file, then the chain file's), and the leaf's notAfter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub certificate: Vec<String>,
    pub chain: Vec<String>,
    /// The DNS names the leaf carries, lowercase and sorted.
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl CertFacts {
    /// Reads `c`'s certificate and chain files.
    pub fn read(c: &crate::config::proxy::Certificate) -> anyhow::Result<CertFacts> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
        };
        let chain = c.chain.as_deref().map(read).transpose()?;
        Self::parse(
            &read(&c.cert)?,
            chain.as_deref(),
            &c.cert.display().to_string(),
            c.chain
                .as_deref()
                .map(|p| p.display().to_string())
                .as_deref(),
        )
    }

    /// The facts of a certificate file's and a chain file's contents (PEM); `cert_name` and
    /// `chain_name` name them in errors.
    pub fn parse(
        cert: &[u8],
        chain: Option<&[u8]>,
        cert_name: &str,
        chain_name: Option<&str>,
    ) -> anyhow::Result<CertFacts> {
        let ders = |pem: &[u8], name: &str| -> anyhow::Result<Vec<Vec<u8>>> {
            use rustls::pki_types::pem::PemObject as _;
            let mut v = Vec::new();
            for der in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                v.push(der.map_err(|e| anyhow::anyhow!("{name}: {e}"))?.to_vec());
            }
            anyhow::ensure!(!v.is_empty(), "{name}: no PEM certificate in it");
            Ok(v)
        };
        let leaf = ders(cert, cert_name)?;
        let chain = match chain {
            Some(c) => ders(c, chain_name.unwrap_or("the chain"))?,
            None => Vec::new(),
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf[0])
            .map_err(|e| anyhow::anyhow!("{cert_name}: not a readable certificate: {e}"))?;
        let der = rustls::pki_types::CertificateDer::from(leaf[0].as_slice());
        let names = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| anyhow::anyhow!("{cert_name}: not a usable certificate: {e}"))?
            .valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect();
        Ok(CertFacts {
            names: sorted(names),
            certificate: leaf.iter().map(|d| fingerprint(d)).collect(),
            chain: chain.iter().map(|d| fingerprint(d)).collect(),
            not_after: parsed.validity().not_after.timestamp(),
        })
    }
}

/// Each configured certificate in order, as [`CertFacts`] (not the paths).
fn certificates(cfg: &Config, facts: &[CertFacts]) -> Value {
    if cfg.tls.is_none() {
        return Value::Null;
    }
    Value::Array(
        facts
            .iter()
            .map(|f| {
                json!({
                    "certificate": f.certificate,
                    "chain": f.chain,
                    "not_after": f.not_after,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
