//! `[cluster]`: the nodes of one service tell each other what they serve (issue 26).
//!
//! Each node exchanges its [`Summary`] (the parity digests of its running configuration, and
//! its certificates) with every peer over the [`channel`] (mutual TLS with the cluster CA):
//! every `exchange_interval`, at once after a reload, and at once when its certificates were
//! reloaded. An exchange is one request carrying this node's summary and answered with the
//! peer's, so both sides learn of a change within one exchange. Status compares the peer's
//! last summary with this node's digests as they are now.
//!
//! With `sync_certificates`, after each exchange a node pushes every certificate of its own
//! that the peer has in the same place, for the same names, with another fingerprint and an
//! earlier notAfter
//! ([`sync`]); the newer side always pushes, so a node that was down during a renewal is
//! brought up to date by the next exchange, and two nodes never push to each other.
pub mod channel;
pub mod sync;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    config::Config,
    parity::Parity,
    proxy::tls::TlsStore,
    status::{CertSyncStatus, ClusterPeerStatus, ClusterStatus, DriftStatus},
};

use self::{
    channel::{Credentials, Incoming, Refused},
    sync::{Outcome, Push, Verdict},
};

/// What a node tells its peers about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub node: String,
    pub parity: Parity,
    /// Its `[[tls.certificate]]` entries: what certificate sync compares.
    pub certificates: Vec<CertSummary>,
    /// Whether it takes pushed certificates.
    pub sync_certificates: bool,
    /// When it was made: the sending process's start (Unix nanoseconds) and a count, so that
    /// a slow answer never replaces a newer summary (a restarted node counts from a later
    /// start).
    #[serde(default)]
    pub seq: (u64, u64),
}

/// One `[[tls.certificate]]`, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// The `cert` path in its config (for messages: paths may differ between nodes).
    pub cert: PathBuf,
    /// The DNS names of the leaf, lowercase and sorted.
    pub names: Vec<String>,
    /// The SHA-256 of each certificate in the file, leaf first.
    pub certificate: Vec<String>,
    pub not_after: i64,
}

impl Summary {
    /// This node's summary from its running configuration (reading its certificate files).
    pub fn of(cfg: &Config) -> anyhow::Result<Summary> {
        let (parity, facts) = Parity::with_certificates(cfg)?;
        let entries = cfg.tls.as_ref().map_or(&[][..], |t| &t.certificate[..]);
        let certificates = entries
            .iter()
            .zip(facts)
            .map(|(c, f)| CertSummary {
                cert: c.cert.clone(),
                names: f.names,
                certificate: f.certificate,
                not_after: f.not_after,
            })
            .collect();
        Ok(Summary {
            node: cfg.node.name.clone(),
            parity,
            certificates,
            sync_certificates: cfg
                .cluster
                .as_ref()
                .is_some_and(|c| c.get_ref().sync_certificates),
            seq: (0, 0),
        })
    }
}

/// The cluster of a running node: its listener, its exchanges, what it knows of its peers.
pub struct Cluster {
    shared: Arc<Shared>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

struct Shared {
    settings: crate::config::cluster::Cluster,
    creds: Arc<Credentials>,
    /// The configuration running now (a reload replaces it).
    running: Arc<Mutex<Config>>,
    tls: Option<Arc<TlsStore>>,
    /// By the index of `settings.peers`.
    peers: Mutex<Vec<PeerState>>,
    /// Bumped to exchange with every peer at once.
    now: watch::Sender<u64>,
    /// By peer: exchange with it at once (it was unreachable and has just called).
    kick: Vec<tokio::sync::Notify>,
    refused: AtomicU64,
    /// When a refused connection was last logged (one line a second at most).
    refused_logged: Mutex<Option<Instant>>,
    /// One push applied at a time (held by the blocking task that applies it).
    applying: Arc<tokio::sync::Mutex<()>>,
    /// This process's start, and the summaries made since: [`Summary::seq`].
    epoch: u64,
    made: AtomicU64,
}

/// A push the peer refused or that failed, not sent again for [`RETRY_PUSH`] unless either
/// side's certificate changes: (index, our fingerprints, theirs) and when.
type FailedPush = (usize, Vec<String>, Vec<String>, Instant);

/// How long a failed push waits before the same files are sent again.
pub const RETRY_PUSH: Duration = Duration::from_secs(600);

#[derive(Default)]
struct PeerState {
    reachable: bool,
    heard: Option<Instant>,
    error: Option<String>,
    theirs: Option<Summary>,
    /// The drift last logged (sections), to log changes only.
    logged_drift: Option<Vec<String>>,
    sync: CertSyncStatus,
    failed_pushes: Vec<FailedPush>,
    /// When this node last started an exchange with it.
    started: Option<Instant>,
}

impl Cluster {
    /// Reads the credentials and binds `listen` (or takes `inherited`, the listening socket of
    /// the process this one succeeds). Nothing runs until [`Cluster::spawn`].
    pub fn new(
        running: Arc<Mutex<Config>>,
        tls: Option<Arc<TlsStore>>,
        inherited: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Option<Arc<Cluster>>> {
        let (settings, node) = {
            let cfg = running.lock().unwrap_or_else(|e| e.into_inner());
            match &cfg.cluster {
                None => return Ok(None),
                Some(c) => (c.get_ref().clone(), cfg.node.name.clone()),
            }
        };
        let creds = Arc::new(Credentials::load(&settings, &node)?);
        let listener = match inherited {
            Some(l) => l,
            None => bind(settings.listen)?,
        };
        listener.set_nonblocking(true)?;
        let peers = settings
            .peers
            .iter()
            .map(|_| PeerState::default())
            .collect();
        let kick = settings
            .peers
            .iter()
            .map(|_| tokio::sync::Notify::new())
            .collect();
        Ok(Some(Arc::new(Cluster {
            shared: Arc::new(Shared {
                settings,
                creds,
                running,
                tls,
                peers: Mutex::new(peers),
                now: watch::Sender::new(0),
                kick,
                refused: AtomicU64::new(0),
                refused_logged: Mutex::new(None),
                applying: Arc::new(tokio::sync::Mutex::new(())),
                epoch: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                made: AtomicU64::new(0),
            }),
            listener: std::sync::Mutex::new(Some(listener)),
        })))
    }

    /// A duplicate of the listening socket, for a successor process.
    pub fn socket(&self) -> anyhow::Result<Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>> {
        let l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        match l.as_ref() {
            None => Ok(None),
            Some(l) => Ok(Some((
                l.local_addr()?,
                std::os::fd::OwnedFd::from(l.try_clone()?),
            ))),
        }
    }

    /// Starts serving and exchanging on the current runtime.
    pub fn spawn(&self) -> anyhow::Result<()> {
        let Some(std) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::from_std(std).context("cluster.listen")?;
        info!(
            listen = %self.shared.settings.listen,
            peers = self.shared.settings.peers.len(),
            "cluster channel listening"
        );
        let s = self.shared.clone();
        let handle = move |req: Incoming| {
            let s = s.clone();
            async move { s.handle(req).await }
        };
        let s = self.shared.clone();
        tokio::spawn(channel::serve(
            listener,
            self.shared.creds.clone(),
            handle,
            move |r| s.refused(r),
        ));
        for i in 0..self.shared.settings.peers.len() {
            tokio::spawn(self.shared.clone().exchanges(i));
        }
        Ok(())
    }

    /// The configuration changed (a reload): exchange with every peer now.
    pub fn reloaded(&self) {
        self.shared.now.send_modify(|g| *g += 1);
    }

    /// What this node knows of its peers, compared with `ours` (its digests now).
    pub fn status(&self, ours: Option<&Parity>) -> ClusterStatus {
        let s = &self.shared;
        // Digests older than this are not trusted as the peer's now.
        let stale = s.settings.exchange_interval.0 * 2 + s.settings.timeout.0;
        let peers = s.peers.lock().unwrap_or_else(|e| e.into_inner());
        let peers: Vec<ClusterPeerStatus> = s
            .settings
            .peers
            .iter()
            .zip(peers.iter())
            .map(|(p, st)| {
                let fresh = st.heard.is_some_and(|h| h.elapsed() <= stale);
                let theirs = st.theirs.as_ref().filter(|_| fresh);
                let drift: Vec<DriftStatus> = match (theirs, ours) {
                    (Some(t), Some(o)) => o
                        .drift(&t.parity)
                        .into_iter()
                        .map(|d| DriftStatus {
                            section: d.section,
                            ours: d.ours.as_ref().map(|x| x.digest.clone()),
                            theirs: d.theirs.as_ref().map(|x| x.digest.clone()),
                            ours_shown: d.ours.map(|x| x.shown),
                            theirs_shown: d.theirs.map(|x| x.shown),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let parity = match (theirs, ours) {
                    (Some(_), Some(_)) if drift.is_empty() => "in parity".to_string(),
                    (Some(_), Some(_)) => format!(
                        "drift: {}",
                        drift
                            .iter()
                            .map(|d| d.section.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    (None, _) if st.heard.is_some() => format!(
                        "unknown (last heard {} s ago)",
                        st.heard.map_or(0, |h| h.elapsed().as_secs())
                    ),
                    _ => "unknown".to_string(),
                };
                ClusterPeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    reachable: st.reachable,
                    heard_secs: st.heard.map(|h| h.elapsed().as_secs()),
                    error: st.error.clone(),
                    parity,
                    drift,
                    cert_sync: st.sync.clone(),
                }
            })
            .collect();
        ClusterStatus {
            error: None,
            listen: s.settings.listen.to_string(),
            in_parity: peers.iter().all(|p| p.parity == "in parity"),
            sync_certificates: s.settings.sync_certificates,
            refused_connections: s.refused.load(Ordering::Relaxed),
            peers,
        }
    }
}

/// Binds the cluster listener (SO_REUSEADDR, so a restart does not wait out TIME_WAIT).
fn bind(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let go = || -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(64)?;
        Ok(s.into())
    };
    go().with_context(|| format!("cluster.listen: binding {addr}"))
}

/// Asks `peer` for its summary with the credentials of `cfg`'s `[cluster]`, without telling it
/// anything (`hapd check --peer`). `peer` is a peer's name or address as configured.
pub async fn ask(cfg: &Config, peer: &str) -> anyhow::Result<Summary> {
    let c = cfg
        .cluster
        .as_ref()
        .context("--peer needs a [cluster] table in the config (the channel's credentials)")?
        .get_ref();
    let p = c
        .peers
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(peer) || p.address.to_string() == peer)
        .with_context(|| {
            format!(
                "--peer {peer:?}: not in cluster.peers ({})",
                c.peers
                    .iter()
                    .map(|p| format!("{} at {}", p.name, p.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let creds = Credentials::load(c, &cfg.node.name)?;
    let (code, body) = creds
        .request(
            p,
            Method::GET,
            "/v1/parity",
            Vec::new(),
            channel::Wait::Exchange,
        )
        .await?;
    if code != StatusCode::OK {
        anyhow::bail!(
            "{} answered {code}: {}",
            p.name,
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("{}: not a hapd cluster summary", p.name))
}

impl Shared {
    fn local(&self) -> anyhow::Result<Summary> {
        let cfg = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut s = Summary::of(&cfg).context("computing this node's digests")?;
        s.seq = (self.epoch, self.made.fetch_add(1, Ordering::Relaxed));
        Ok(s)
    }

    /// Exchanges with peer `i` now and then, until the runtime stops.
    async fn exchanges(self: Arc<Self>, i: usize) {
        let mut now = self.now.subscribe();
        let mut certs = self.tls.as_ref().map(|t| t.changes());
        loop {
            self.exchange(i).await;
            tokio::select! {
                _ = tokio::time::sleep(self.settings.exchange_interval.0) => {}
                r = now.changed() => if r.is_err() { return },
                _ = changed(&mut certs) => {}
                _ = self.kick[i].notified() => {
                    // A kick comes from the peer's own call: at most one exchange per
                    // `timeout` that way, so two nodes never wake each other in a loop.
                    let since = self.peers.lock().unwrap_or_else(|e| e.into_inner())[i]
                        .started
                        .map_or(Duration::MAX, |s| s.elapsed());
                    if let Some(wait) = self.settings.timeout.0.checked_sub(since) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    async fn exchange(&self, i: usize) {
        let peer = &self.settings.peers[i];
        self.peers.lock().unwrap_or_else(|e| e.into_inner())[i].started = Some(Instant::now());
        let result = async {
            let ours = self.local()?;
            let body = serde_json::to_vec(&ours)?;
            let (code, answer) = self
                .creds
                .request(
                    peer,
                    Method::POST,
                    "/v1/exchange",
                    body,
                    channel::Wait::Exchange,
                )
                .await?;
            if code != StatusCode::OK {
                anyhow::bail!(
                    "answered {code}: {}",
                    String::from_utf8_lossy(&answer).trim()
                );
            }
            let theirs: Summary = serde_json::from_slice(&answer)
                .context("the answer is not a hapd cluster summary")?;
            Ok((ours, theirs))
        }
        .await;
        match result {
            Ok((ours, theirs)) => {
                if let Err(e) = self.heard(i, theirs.clone(), Some(&ours.parity)) {
                    self.failed(i, e);
                    return;
                }
                {
                    let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                    let st = &mut peers[i];
                    if !st.reachable {
                        info!(peer = %peer.name, "cluster: exchanging with {} at {}", peer.name, peer.address);
                    }
                    st.reachable = true;
                    st.error = None;
                }
                if self.settings.sync_certificates && theirs.sync_certificates {
                    self.push_newer(i, &ours, &theirs).await;
                }
            }
            Err(e) => self.failed(i, format!("{e:#}")),
        }
    }

    fn failed(&self, i: usize, why: String) {
        let peer = &self.settings.peers[i];
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut peers[i];
        if st.reachable || st.error.as_ref() != Some(&why) {
            // Quoted: the peer's answer is in it.
            warn!(peer = %peer.name, "cluster: exchange with {} failed: {why:?}", peer.name);
        }
        st.reachable = false;
        st.error = Some(why);
    }

    /// Records `theirs` from peer `i` (it must speak as the peer its certificate names) and
    /// logs a change of drift against `ours`.
    fn heard(&self, i: usize, theirs: Summary, ours: Option<&Parity>) -> Result<(), String> {
        let peer = &self.settings.peers[i];
        if !theirs.node.eq_ignore_ascii_case(&peer.name) {
            return Err(format!(
                "it calls itself {:?} but is configured (and certified) as {:?}",
                theirs.node, peer.name
            ));
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut peers[i];
        // Counts compare within one process of the peer; another start (whatever its clock
        // says) is newer.
        if st
            .theirs
            .as_ref()
            .is_some_and(|t| t.seq.0 == theirs.seq.0 && t.seq.1 > theirs.seq.1)
        {
            // A slow answer: what arrived meanwhile is newer.
            return Ok(());
        }
        if let Some(ours) = ours {
            let drift: Vec<String> = ours
                .drift(&theirs.parity)
                .into_iter()
                .map(|d| d.section)
                .collect();
            if st.logged_drift.as_ref() != Some(&drift) {
                if drift.is_empty() {
                    info!(peer = %peer.name, "cluster: in parity with {}", peer.name);
                } else {
                    warn!(peer = %peer.name, sections = %drift.join(","), "cluster: configuration differs from {}'s in: {}", peer.name, drift.join(", "));
                }
                st.logged_drift = Some(drift);
            }
        }
        st.theirs = Some(theirs);
        st.heard = Some(Instant::now());
        Ok(())
    }

    /// Pushes every certificate of `ours` that peer `i` has older (same place and names,
    /// other fingerprint, earlier notAfter).
    async fn push_newer(&self, i: usize, ours: &Summary, theirs: &Summary) {
        let peer = &self.settings.peers[i];
        let entries: Vec<crate::config::proxy::Certificate> = {
            let cfg = self.running.lock().unwrap_or_else(|e| e.into_inner());
            cfg.tls
                .as_ref()
                .map_or_else(Vec::new, |t| t.certificate.clone())
        };
        for index in newer(ours, theirs) {
            let (mine, t) = (&ours.certificates[index], &theirs.certificates[index]);
            let Some(entry) = entries.get(index) else {
                continue;
            };
            let tried = {
                let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                let failed = &mut peers[i].failed_pushes;
                failed.retain(|f| f.3.elapsed() < RETRY_PUSH);
                failed
                    .iter()
                    .any(|f| f.0 == index && f.1 == mine.certificate && f.2 == t.certificate)
            };
            if tried {
                continue;
            }
            let what = format!("tls.certificate[{index}] ({})", mine.names.join(", "));
            let outcome = async {
                let push = Push::read(index, entry)?;
                let (code, body) = self
                    .creds
                    .request(
                        peer,
                        Method::POST,
                        "/v1/certificate",
                        serde_json::to_vec(&push)?,
                        channel::Wait::Push,
                    )
                    .await?;
                let o: Outcome = serde_json::from_slice(&body).with_context(|| {
                    format!("answered {code}: {}", String::from_utf8_lossy(&body).trim())
                })?;
                Ok::<_, anyhow::Error>(o)
            }
            .await
            .unwrap_or_else(|e| Outcome {
                verdict: Verdict::Failed,
                message: format!("{e:#}"),
            });
            let ok = matches!(outcome.verdict, Verdict::Applied | Verdict::Unchanged);
            if ok {
                info!(peer = %peer.name, "cluster: pushed {what} to {}: {:?}: {:?}", peer.name, outcome.verdict, outcome.message);
            } else {
                warn!(peer = %peer.name, "cluster: pushing {what} to {}: {:?}: {:?}", peer.name, outcome.verdict, outcome.message);
            }
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if !ok {
                peers[i].failed_pushes.push((
                    index,
                    mine.certificate.clone(),
                    t.certificate.clone(),
                    Instant::now(),
                ));
            }
            let sync = &mut peers[i].sync;
            if ok {
                sync.pushed += 1;
            } else {
                sync.push_failures += 1;
            }
            sync.last = Some(format!(
                "pushed {what} to {}: {}: {}",
                peer.name,
                verdict_name(&outcome.verdict),
                outcome.message
            ));
            sync.last_failed = !ok;
        }
    }

    /// One request from a peer (its certificate checked).
    async fn handle(&self, req: Incoming) -> (StatusCode, Vec<u8>) {
        let Some(i) = self.settings.peers.iter().position(|p| p.name == req.peer) else {
            return (StatusCode::FORBIDDEN, b"unknown peer".to_vec());
        };
        let summary = |s: anyhow::Result<Summary>| match s.and_then(|s| Ok(serde_json::to_vec(&s)?))
        {
            Ok(b) => (StatusCode::OK, b),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e:#}").into_bytes(),
            ),
        };
        match (req.method, req.path.as_str()) {
            (Method::POST, "/v1/exchange") => {
                let theirs: Summary = match serde_json::from_slice(&req.body) {
                    Ok(s) => s,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            format!("not a hapd cluster summary: {e}").into_bytes(),
                        )
                    }
                };
                let ours = self.local();
                // This node has a newer certificate for the caller (it was down during a
                // renewal): push it now, not at the next interval.
                let newer_here = match &ours {
                    Ok(o) if self.settings.sync_certificates && theirs.sync_certificates => {
                        newer(o, &theirs)
                            .into_iter()
                            .map(|k| {
                                (
                                    k,
                                    o.certificates[k].certificate.clone(),
                                    theirs.certificates[k].certificate.clone(),
                                )
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                if let Err(e) = self.heard(i, theirs, ours.as_ref().ok().map(|o| &o.parity)) {
                    warn!(peer = %req.peer, "cluster: exchange from {} refused: {e}", req.peer);
                    return (StatusCode::BAD_REQUEST, e.into_bytes());
                }
                // A peer this node could not reach has come up, or this node has a newer
                // certificate for it that it has not failed to push (the peer was down during a
                // renewal): exchange with it now, not at the next interval (spaced by the
                // exchange loop).
                let kick = {
                    let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                    let st = &peers[i];
                    let push = newer_here.iter().any(|(k, mine, t)| {
                        !st.failed_pushes
                            .iter()
                            .any(|f| f.0 == *k && &f.1 == mine && &f.2 == t)
                    });
                    !st.reachable || push
                };
                if kick {
                    self.kick[i].notify_one();
                }
                summary(ours)
            }
            (Method::GET, "/v1/parity") => summary(self.local()),
            (Method::POST, "/v1/certificate") => {
                let push: Push = match serde_json::from_slice(&req.body) {
                    Ok(p) => p,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            format!("not a certificate push: {e}").into_bytes(),
                        )
                    }
                };
                let outcome = self.receive(i, push).await;
                let code = match outcome.verdict {
                    Verdict::Applied | Verdict::Unchanged => StatusCode::OK,
                    Verdict::Refused => StatusCode::CONFLICT,
                    Verdict::Failed => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (code, serde_json::to_vec(&outcome).unwrap_or_default())
            }
            _ => (StatusCode::NOT_FOUND, b"no such endpoint".to_vec()),
        }
    }

    async fn receive(&self, i: usize, push: Push) -> Outcome {
        let peer = self.settings.peers[i].name.clone();
        let one = self.applying.clone().lock_owned().await;
        let cfg = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (sync_on, tls) = (self.settings.sync_certificates, self.tls.clone());
        // The pusher's path as it sent it: quoted, so it cannot forge a log line.
        let what = format!(
            "tls.certificate[{}] ({:?} on {peer})",
            push.index, push.cert
        );
        let from = peer.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            // Held until the files are written and loaded, even if the pusher hangs up.
            let _one = one;
            sync::apply(&push, &cfg, sync_on, tls.as_deref(), &from)
        })
        .await
        .unwrap_or_else(|e| Outcome {
            verdict: Verdict::Failed,
            message: format!("the push could not be applied: {e}"),
        });
        let ok = matches!(outcome.verdict, Verdict::Applied | Verdict::Unchanged);
        if ok {
            info!(peer = %peer, "cluster: certificate {what} from {peer}: {:?}: {}", outcome.verdict, outcome.message);
        } else {
            warn!(peer = %peer, "cluster: certificate {what} from {peer}: {:?}: {}", outcome.verdict, outcome.message);
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let sync = &mut peers[i].sync;
        if ok {
            sync.received += 1;
        } else {
            sync.refused += 1;
        }
        sync.last = Some(format!(
            "{what} from {peer}: {}: {}",
            verdict_name(&outcome.verdict),
            outcome.message
        ));
        sync.last_failed = !ok;
        outcome
    }

    fn refused(&self, r: Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .refused_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            warn!(from = %r.from, "cluster: connection from {} refused: {} ({} refused since start)", r.from, r.why, self.refused.load(Ordering::Relaxed));
        }
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Applied => "applied",
        Verdict::Unchanged => "unchanged",
        Verdict::Refused => "refused",
        Verdict::Failed => "failed",
    }
}

/// The places in `[[tls.certificate]]` where `ours` holds a newer certificate than `theirs`
/// for the same names: what this node pushes.
fn newer(ours: &Summary, theirs: &Summary) -> Vec<usize> {
    ours.certificates
        .iter()
        .zip(&theirs.certificates)
        .enumerate()
        .filter(|(_, (mine, t))| {
            t.names == mine.names
                && t.certificate != mine.certificate
                && t.not_after < mine.not_after
        })
        .map(|(i, _)| i)
        .collect()
}

/// Resolves when `rx` sees a new value; never when there is none.
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
