//! Certificate sync (`[cluster] sync_certificates = true`): a node whose certificate is newer
//! than a peer's pushes certificate, chain and key; the peer checks them, writes them over its
//! own files atomically and reloads, or changes nothing and says why.
//!
//! A push names the certificate by its place in `[[tls.certificate]]` (nodes in parity list
//! the same certificates in the same order) and by the DNS names it carries, which must be
//! those of the certificate the receiver serves there: the files may live at other paths on
//! each node, and a renewal that changes the names is refused (copy that one by hand). The
//! receiving side decides in memory first (names, fingerprints, expiry, and that the pushed
//! certificate chains to this host's roots or to the chain it serves now), then with the
//! loader the proxy itself uses ([`crate::proxy::tls::build`]): the changed files are written
//! next to the targets under temporary names and the whole `[tls]` section is built from
//! them, so a push is refused for exactly what would make a reload fail. Only files whose
//! contents change are written, and never one another certificate or `[cluster]` reads.
use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{proxy::Certificate, Config},
    parity::CertFacts,
    proxy::tls::TlsStore,
};

/// What a node pushes: one `[[tls.certificate]]`'s files, as PEM text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Push {
    /// The index in `[[tls.certificate]]`.
    pub index: usize,
    /// The pushing node's `cert` path (for messages).
    pub cert: PathBuf,
    pub certificate: String,
    pub chain: Option<String>,
    pub key: String,
}

/// What came of a push, as the receiver answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Written and served from now on.
    Applied,
    /// The receiver has these files already.
    Unchanged,
    /// Not taken: files and service as they were.
    Refused,
    /// Taken but could not be put in place; the message says whether the old files could be
    /// put back.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub message: String,
}

impl Outcome {
    fn refused(message: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Refused,
            message: message.into(),
        }
    }
}

impl Push {
    /// Reads `c`'s files; `c` is `[[tls.certificate]]` number `index`.
    pub fn read(index: usize, c: &Certificate) -> anyhow::Result<Push> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
        };
        Ok(Push {
            index,
            cert: c.cert.clone(),
            certificate: read(&c.cert)?,
            chain: c.chain.as_deref().map(read).transpose()?,
            key: read(&c.key)?,
        })
    }
}

/// Takes `push` from `from` into the same certificate of `cfg`: checks it, writes it over the
/// files `cfg` names, reloads `store`. Blocking (file I/O and a TLS build).
pub fn apply(
    push: &Push,
    cfg: &Config,
    sync_on: bool,
    store: Option<&TlsStore>,
    from: &str,
) -> Outcome {
    if !sync_on {
        return Outcome::refused("sync_certificates is off on this node");
    }
    let Some(tls) = &cfg.tls else {
        return Outcome::refused("this node has no [tls]");
    };
    let Some(store) = store else {
        return Outcome::refused("this node serves no TLS listener");
    };
    // Held from reading this node's files to loading the new ones: no certificate reload or
    // config reload runs in between, and what is compared is what is replaced.
    let gate = store.gate();
    if store.section().as_ref() != Some(tls) {
        return Outcome::refused(
            "this node's [tls] changed while the push arrived (a reload): it is compared again at the next exchange",
        );
    }
    let index = push.index;
    let Some(entry) = tls.certificate.get(index) else {
        return Outcome::refused(format!(
            "tls.certificate[{index}]: this node has {} certificate(s)",
            tls.certificate.len()
        ));
    };
    match (&entry.chain, &push.chain) {
        (Some(c), None) => {
            return Outcome::refused(format!(
                "the push has no chain, and chain = {:?} here",
                c.display().to_string()
            ))
        }
        (None, Some(_)) => {
            return Outcome::refused("the push has a chain, and this node's certificate has none")
        }
        _ => {}
    }
    // What is served here, read from the files it was loaded from.
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let current = (|| {
        let cert = read(&entry.cert)?;
        let chain = entry.chain.as_deref().map(read).transpose()?;
        let key = read(&entry.key)?;
        let facts = CertFacts::parse(
            &cert,
            chain.as_deref(),
            &entry.cert.display().to_string(),
            entry
                .chain
                .as_deref()
                .map(|p| p.display().to_string())
                .as_deref(),
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok::<_, String>((cert, chain, key, facts))
    })();
    let (cur_cert, cur_chain, cur_key, cur) = match current {
        Ok(c) => c,
        Err(e) => {
            return Outcome::refused(format!(
                "tls.certificate[{index}] here cannot be read ({e}): a push replaces only files it can compare with; fix them by hand"
            ))
        }
    };
    // The push, in memory: nothing is written before it is known to be wanted.
    let new = match CertFacts::parse(
        push.certificate.as_bytes(),
        push.chain.as_deref().map(str::as_bytes),
        "the pushed certificate",
        Some("the pushed chain"),
    ) {
        Ok(f) => f,
        Err(e) => return Outcome::refused(format!("{e:#}")),
    };
    if cur.names != new.names {
        return Outcome::refused(format!(
            "tls.certificate[{index}] ({}) here is for {:?}, the pushed one for {:?}",
            entry.cert.display(),
            cur.names,
            new.names
        ));
    }
    if cur.certificate == new.certificate && cur.chain == new.chain {
        return Outcome {
            verdict: Verdict::Unchanged,
            message: format!("{} is served here already", entry.cert.display()),
        };
    }
    if new.not_after < cur.not_after {
        return Outcome::refused(format!(
            "older than the certificate in this node's files: notAfter {} < {}",
            date(new.not_after),
            date(cur.not_after)
        ));
    }
    if let Err(e) = issued(push, &cur_cert, cur_chain.as_deref(), &new.names) {
        return Outcome::refused(e);
    }
    // The files that change, each written only where no other certificate reads it.
    let changes: Vec<(PathBuf, &[u8], bool)> = [
        (
            entry.cert.clone(),
            push.certificate.as_bytes(),
            cur_cert.as_slice(),
            false,
        ),
        (
            entry.key.clone(),
            push.key.as_bytes(),
            cur_key.as_slice(),
            true,
        ),
    ]
    .into_iter()
    .chain(
        entry
            .chain
            .clone()
            .zip(push.chain.as_deref())
            .zip(cur_chain.as_deref())
            .map(|((p, new), old)| (p, new.as_bytes(), old, false)),
    )
    .filter(|(_, new, old, _)| new != old)
    .map(|(p, new, _, secret)| (p, new, secret))
    .collect();
    let mut others: Vec<(String, PathBuf)> = Vec::new();
    for (j, c) in tls
        .certificate
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != index)
    {
        for p in [Some(&c.cert), Some(&c.key), c.chain.as_ref()]
            .into_iter()
            .flatten()
        {
            others.push((format!("tls.certificate[{j}]"), p.clone()));
        }
    }
    if let Some(c) = &cfg.cluster {
        let c = c.get_ref();
        others.push(("cluster.ca".into(), c.ca.clone()));
        others.push(("cluster.cert".into(), c.cert.clone()));
        others.push(("cluster.key".into(), c.key.clone()));
    }
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for (p, _, _) in &changes {
        if let Some((who, _)) = others.iter().find(|(_, o)| real(o) == real(p)) {
            return Outcome::refused(format!(
                "{} is also read by {who}: a push does not change a shared file",
                p.display()
            ));
        }
    }
    let mut staged = Staged::default();
    for (path, bytes, secret) in &changes {
        if let Err(e) = staged.stage(path, bytes, *secret) {
            return Outcome::refused(format!("writing next to {}: {e}", path.display()));
        }
    }
    let temp = |p: &Path| staged.temp_of(p).unwrap_or_else(|| p.to_path_buf());
    let trial = Certificate {
        cert: temp(&entry.cert),
        key: temp(&entry.key),
        chain: entry.chain.as_deref().map(temp),
    };
    // The whole [tls] section with this certificate's files replaced: what a reload would
    // build. Messages name the configured files, not the temporary ones.
    let mut trial_tls = tls.clone();
    trial_tls.certificate[index] = trial;
    if let Err(e) = crate::proxy::tls::build(&trial_tls) {
        return Outcome::refused(staged.rename_in_message(format!("{e:#}")));
    }
    if let Err(e) = staged.commit() {
        return Outcome {
            verdict: Verdict::Failed,
            message: e,
        };
    }
    if !store.reload_gated(&gate, &format!("certificate sync from {from}")) {
        let back = staged.restore();
        store.reload_gated(&gate, "certificate sync undone");
        return Outcome {
            verdict: Verdict::Failed,
            message: format!(
                "the new files did not load; {}",
                back.err()
                    .unwrap_or_else(|| "the old ones were put back".to_string())
            ),
        };
    }
    Outcome {
        verdict: Verdict::Applied,
        message: format!(
            "{} replaced (notAfter {}) and served",
            entry.cert.display(),
            date(new.not_after)
        ),
    }
}

/// Whether the pushed certificate is valid now and chains, through the pushed chain, to a
/// public root of this host or to a certificate of the chain served here now (a private CA's
/// intermediate): a node cannot hand its peers a certificate no client would take, such as a
/// self-signed one that then wins every comparison by its notAfter.
fn issued(
    push: &Push,
    cur_cert: &[u8],
    cur_chain: Option<&[u8]>,
    names: &[String],
) -> Result<(), String> {
    use rustls::{
        client::danger::ServerCertVerifier as _,
        pki_types::{pem::PemObject as _, CertificateDer, ServerName, UnixTime},
    };
    let ders = |pem: &[u8]| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots.add_parsable_certificates(ders(cur_cert).into_iter().skip(1));
    if let Some(c) = cur_chain {
        roots.add_parsable_certificates(ders(c));
    }
    if roots.is_empty() {
        return Err("no trust anchor to check the pushed certificate with (no system roots, no chain served here)".into());
    }
    let mut pushed = ders(push.certificate.as_bytes());
    if pushed.is_empty() {
        return Err("the pushed certificate: no PEM certificate in it".into());
    }
    let leaf = pushed.remove(0);
    pushed.extend(
        push.chain
            .as_deref()
            .map(|c| ders(c.as_bytes()))
            .unwrap_or_default(),
    );
    let Some(name) = names.first() else {
        return Err("the pushed certificate names no DNS name".into());
    };
    let name = match name.strip_prefix("*.") {
        Some(rest) => format!("hapd-sync-check.{rest}"),
        None => name.clone(),
    };
    let server = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("{e}"))?;
    verifier
        .verify_server_cert(&leaf, &pushed, &server, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| {
            format!("the pushed certificate does not verify (against this host's roots and the chain served here): {e}")
        })
}

/// `secs` since the epoch as an RFC 3339 date.
fn date(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Pushed files written under temporary names beside their targets. Dropped before
/// [`Staged::commit`], the temporary files go; after, the targets hold the new files and
/// [`Staged::restore`] can put the old ones back.
#[derive(Default)]
struct Staged {
    /// (target as configured, the file actually replaced (a link's target), temporary file,
    /// what the replaced file held).
    files: Vec<(PathBuf, PathBuf, PathBuf, Option<Vec<u8>>)>,
    committed: bool,
}

impl Staged {
    /// Writes `bytes` to a temporary file beside `path` (beside the file a symlink at `path`
    /// leads to: certbot's `live/` links stay links), with the replaced file's mode and owner,
    /// or 0644 (0600 for a key) for a new one.
    fn stage(&mut self, path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = real.parent().unwrap_or(Path::new("/"));
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{name}.hapd-sync.{}.{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let old = std::fs::metadata(&real).ok();
        let mode = old
            .as_ref()
            .map_or(if secret { 0o600 } else { 0o644 }, |m| {
                m.permissions().mode() & 0o7777
            });
        let previous = std::fs::read(&real).ok();
        let _ = std::fs::remove_file(&tmp);
        self.files
            .push((path.to_path_buf(), real.clone(), tmp.clone(), previous));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &old {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    }

    fn temp_of(&self, path: &Path) -> Option<PathBuf> {
        self.files
            .iter()
            .find(|(p, ..)| p == path)
            .map(|(_, _, t, _)| t.clone())
    }

    fn rename_in_message(&self, mut m: String) -> String {
        for (p, _, t, _) in &self.files {
            m = m.replace(&t.display().to_string(), &p.display().to_string());
        }
        m
    }

    /// Renames every temporary file over its target; if one fails, the ones not renamed are
    /// removed and the ones already renamed get their old contents back.
    fn commit(&mut self) -> Result<(), String> {
        for i in 0..self.files.len() {
            let (p, real, tmp, _) = &self.files[i];
            if let Err(e) = std::fs::rename(tmp, real) {
                let msg = format!("replacing {}: {e}", p.display());
                for (_, _, t, _) in &self.files[i..] {
                    let _ = std::fs::remove_file(t);
                }
                self.files.truncate(i);
                self.committed = true;
                return Err(match self.restore() {
                    Ok(()) => format!("{msg}; the old files were put back"),
                    Err(back) => format!("{msg}; and {back}"),
                });
            }
            if let Some(dir) = real.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
        }
        self.committed = true;
        Ok(())
    }

    /// Puts the old contents back (atomically, file by file).
    fn restore(&self) -> Result<(), String> {
        let mut err = Ok(());
        for (p, real, tmp, previous) in &self.files {
            let Some(previous) = previous else {
                let _ = std::fs::remove_file(real);
                continue;
            };
            let put = (|| {
                let meta = std::fs::metadata(real)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(tmp)?;
                f.write_all(previous)?;
                std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
                f.set_permissions(meta.permissions())?;
                f.sync_all()?;
                std::fs::rename(tmp, real)
            })();
            if let Err(e) = put {
                err = Err(format!("restoring {}: {e}", p.display()));
            }
        }
        err
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (_, _, tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}
