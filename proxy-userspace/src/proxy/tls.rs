//! TLS for the listeners: certificates chosen by SNI, protocol versions and cipher suites from
//! `[tls]`, ALPN h2 and http/1.1, and reloading.
//!
//! Reloading (SIGHUP, or a changed certificate or key file) builds a whole new configuration
//! and swaps it in atomically; handshakes in progress finish with the one they started with.
//! A configuration that does not build (unreadable file, key not matching its certificate)
//! is logged and the running one stays.
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{anyhow, bail, Context};
use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig,
};
use tracing::{error, info};

use super::tls_stream::Configs;
use crate::config::proxy::{Certificate, Tls};

/// The certificates, by the DNS names they carry.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    /// The first certificate: for clients without SNI or with an unknown name.
    default: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// What was loaded, for `hapd status` and `/metrics`.
    pub certs: Vec<CertInfo>,
}

/// One loaded certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub file: PathBuf,
    pub names: Vec<String>,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.names)
            .finish()
    }
}

impl SniResolver {
    pub fn lookup(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some(dot) = name.find('.') {
            let suffix = &name[dot..];
            if let Some((_, k)) = self.wildcard.iter().find(|(s, _)| s == suffix) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(hello.server_name()))
    }
}

pub(crate) fn load_certified(
    c: &Certificate,
    provider: &CryptoProvider,
) -> anyhow::Result<(CertifiedKey, CertInfo)> {
    let read_certs = |p: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(p)
            .map_err(|e| anyhow!("{}: {e}", p.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{}: {e}", p.display()))?;
        if certs.is_empty() {
            bail!("{}: no PEM certificate in it", p.display());
        }
        Ok(certs)
    };
    let mut chain = read_certs(&c.cert)?;
    if let Some(extra) = &c.chain {
        chain.extend(read_certs(extra)?);
    }
    let key =
        PrivateKeyDer::from_pem_file(&c.key).map_err(|e| anyhow!("{}: {e}", c.key.display()))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("{}: {e}", c.key.display()))?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| anyhow!("{}: not a usable certificate: {e}", c.cert.display()))?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let not_after = not_after(&chain[0], &c.cert)?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        anyhow!(
            "{} does not belong to {}: {e}",
            c.key.display(),
            c.cert.display()
        )
    })?;
    Ok((
        ck,
        CertInfo {
            file: c.cert.clone(),
            names,
            not_after,
        },
    ))
}

/// The certificate's notAfter in seconds since the Unix epoch.
fn not_after(der: &CertificateDer<'_>, path: &Path) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow!("{}: not a readable certificate: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The rustls provider limited to the configured cipher suites.
fn provider(tls: &Tls) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        // Keep the configured order: it is the server's preference.
        p.cipher_suites = tls
            .cipher_suites
            .iter()
            .filter_map(|name| {
                rustls::crypto::ring::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| format!("{:?}", s.suite()) == *name)
                    .copied()
            })
            .collect();
    }
    p
}

/// Builds a server configuration from the `[tls]` section, reading every file.
pub fn build(tls: &Tls) -> anyhow::Result<(Configs, Arc<SniResolver>)> {
    let provider = provider(tls);
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    let mut all_names = Vec::new();
    let mut certs = Vec::new();
    for (i, c) in tls.certificate.iter().enumerate() {
        let (ck, info) =
            load_certified(c, &provider).with_context(|| format!("tls.certificate[{i}]"))?;
        let ck = Arc::new(ck);
        let names = info.names.clone();
        certs.push(info);
        for n in &names {
            if let Some(suffix) = n.strip_prefix('*') {
                wildcard.push((suffix.to_string(), ck.clone()));
            } else {
                exact.entry(n.clone()).or_insert_with(|| ck.clone());
            }
        }
        all_names.extend(names);
        default.get_or_insert(ck);
    }
    let default = default.ok_or_else(|| anyhow!("tls: no [[tls.certificate]]"))?;
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
        names: all_names,
        certs,
    });
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
        .protocols
        .iter()
        .filter_map(|p| match p.as_str() {
            "1.2" => Some(&rustls::version::TLS12),
            "1.3" => Some(&rustls::version::TLS13),
            _ => None,
        })
        .collect();
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .context("tls: protocols and cipher_suites do not fit together")?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().context("tls: session tickets")?;
    Ok((Configs::new(cfg), resolver))
}

/// The running TLS configuration and what it was built from.
pub struct TlsStore {
    current: ArcSwap<Configs>,
    state: std::sync::Mutex<Loaded>,
    /// Told whenever the configuration is replaced (its files may be others now).
    replaced: tokio::sync::Notify,
    /// Counts the replacements, for any number of watchers (the cluster's certificate sync).
    generation: tokio::sync::watch::Sender<u64>,
    /// Held from reading the files to swapping in what was built from them (a reload, a
    /// config reload, a pushed certificate written and loaded), so that one of them never
    /// swaps in a configuration older than another's.
    gate: std::sync::Mutex<()>,
}

/// Held while files are read and the result swapped in (see [`TlsStore::gate`]).
pub type Gate<'a> = std::sync::MutexGuard<'a, ()>;

/// The `[tls]` section in use, its files with their last seen stamps, and what they held.
struct Loaded {
    tls: Tls,
    files: Vec<PathBuf>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    certs: Vec<CertInfo>,
}

/// The certificate, key and chain files `tls` names.
fn files_of(tls: &Tls) -> Vec<PathBuf> {
    tls.certificate
        .iter()
        .flat_map(|c| [Some(c.cert.clone()), Some(c.key.clone()), c.chain.clone()])
        .flatten()
        .collect()
}

/// The files' stamps now, taken before they are read for a build: a file written during the
/// build then differs from what is recorded, and the next look loads it.
pub fn stamps(tls: &Tls) -> Vec<Option<(SystemTime, u64)>> {
    files_of(tls).iter().map(|f| stamp(f)).collect()
}

impl Loaded {
    fn new(tls: &Tls, certs: Vec<CertInfo>, stamps: Vec<Option<(SystemTime, u64)>>) -> Loaded {
        let files = files_of(tls);
        Loaded {
            tls: tls.clone(),
            files,
            stamps,
            certs,
        }
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TlsStore {
    pub fn new(tls: &Tls) -> anyhow::Result<TlsStore> {
        let (cfg, resolver) = build(tls)?;
        info!(names = ?resolver.names, "TLS certificates loaded");
        Ok(TlsStore {
            current: ArcSwap::from_pointee(cfg),
            state: std::sync::Mutex::new(Loaded::new(tls, resolver.certs.clone(), stamps(tls))),
            replaced: tokio::sync::Notify::new(),
            generation: tokio::sync::watch::Sender::new(0),
            gate: std::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> Arc<Configs> {
        self.current.load_full()
    }

    /// The certificates being served.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.state
            .lock()
            .map_or_else(|_| Vec::new(), |s| s.certs.clone())
    }

    /// The `[tls]` section the running configuration was built from.
    pub fn section(&self) -> Option<Tls> {
        self.state.lock().ok().map(|s| s.tls.clone())
    }

    /// The certificate, key and chain files in use.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state
            .lock()
            .map_or_else(|_| Vec::new(), |s| s.files.clone())
    }

    /// Returns when the configuration has been replaced since the last call returned (or
    /// when it is next replaced).
    pub async fn replaced(&self) {
        self.replaced.notified().await
    }

    /// Changes whenever the configuration is replaced (certificates reloaded from their files
    /// or a reload naming others).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a certificate, key or chain file changed since the last look.
    pub fn files_changed(&self) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now: Vec<_> = st.files.iter().map(|f| stamp(f)).collect();
        if st.stamps == now {
            return false;
        }
        st.stamps = now;
        true
    }

    /// Taken by whoever reads the files and swaps in what it built (see the field).
    pub fn gate(&self) -> Gate<'_> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds from the files; on success swaps it in, else keeps the running one.
    pub fn reload(&self, why: &str) -> bool {
        let gate = self.gate();
        self.reload_gated(&gate, why)
    }

    /// [`TlsStore::reload`] for a caller that holds the gate.
    pub fn reload_gated(&self, _gate: &Gate<'_>, why: &str) -> bool {
        let Ok(tls) = self.state.lock().map(|s| s.tls.clone()) else {
            return false;
        };
        let before = stamps(&tls);
        match build(&tls) {
            Ok(built) => {
                self.replace(_gate, &tls, built, before, why);
                true
            }
            Err(e) => {
                error!("TLS reload ({why}) failed, keeping the running certificates: {e:#}");
                false
            }
        }
    }

    /// Swaps in a configuration built from `tls` (a config reload may name other files), whose
    /// files had the stamps `before` when the build read them.
    pub fn replace(
        &self,
        _gate: &Gate<'_>,
        tls: &Tls,
        (cfg, resolver): (Configs, Arc<SniResolver>),
        before: Vec<Option<(SystemTime, u64)>>,
        why: &str,
    ) {
        self.current.store(Arc::new(cfg));
        if let Ok(mut st) = self.state.lock() {
            *st = Loaded::new(tls, resolver.certs.clone(), before);
        }
        self.replaced.notify_one();
        self.generation.send_modify(|g| *g += 1);
        info!(names = ?resolver.names, "TLS certificates reloaded ({why})");
    }
}

/// A warning when the first certificate in `path` has expired at `now` or expires within
/// [`super::EXPIRY_WARNING`]; `None` when it is valid for longer.
pub fn expiry_warning(path: &Path, now: SystemTime) -> anyhow::Result<Option<String>> {
    let der = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .next()
        .ok_or_else(|| anyhow!("{}: no PEM certificate in it", path.display()))?
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow!("{}: not a readable certificate: {e}", path.display()))?;
    let not_after = cert.validity().not_after;
    let end = not_after.timestamp();
    let now_s = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = end - now_s;
    Ok(if left <= 0 {
        Some(format!("{} expired on {not_after}", path.display()))
    } else if left < super::EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "{} expires on {not_after}, in {} day(s)",
            path.display(),
            left / 86_400
        ))
    } else {
        None
    })
}
