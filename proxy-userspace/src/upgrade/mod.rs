//! `hapd upgrade`: a running hapd hands everything to a new process of a new binary with no
//! failed request and no VRRP transition, or keeps serving if the new one cannot take over.
//!
//! ```text
//!   hapd upgrade ──control socket──▶ running hapd (predecessor)
//!                                     │ spawns BINARY run --config FILE, HAPD_UPGRADE_FD=n
//!                                     ▼
//!   Offer + listening sockets (SCM_RIGHTS) ─────────▶ successor: config, proxy (not accepting),
//!                                                     guard loaded on the pinned maps, its
//!                                                     program on the pinned links (deciding
//!   ◀──────────────────────────────────── Prepared    with the predecessor's tables), VRRP
//!   VRRP loop stops at once (no advert, no            sockets
//!   priority 0), stops reading the event
//!   ring, hands its engines' state ────── State ────▶  tables written, event ring read,
//!   ◀─────────────────────────────────── Committed    engines resumed, adverts go on; then
//!                                                     accepts, admin endpoint, control socket
//!   drains its connections at request
//!   boundaries, exits without unpinning
//! ```
//!
//! Before `Committed` nothing the predecessor serves has moved (its tables decide, whichever
//! program runs them): on any failure (the successor exits, says `Failed`, or is late) it is
//! killed, the predecessor's program goes back on the links, its tables are rewritten, and
//! its VRRP loop carries on; the command fails with the successor's reason.
//! Between `State` and `Committed` the predecessor sends no advert and the successor writes
//! the guard's tables and resumes the engines: that step is bounded by
//! [`handoff_bound`] (two advert intervals), below a backup's Master_Down_Interval, so even a
//! successor that fails there is replaced by its predecessor's next advert in time.
mod socket;
mod wire;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

pub use self::socket::{request, ControlSocket, Request};
use self::wire::Channel;
use crate::{
    config::Config,
    control::{Control, EngineHandoff},
    dataplane::GuardMode,
};

/// The environment variable that tells `hapd run` it succeeds a running hapd, and on which
/// descriptor the channel to it is.
pub const ENV_FD: &str = "HAPD_UPGRADE_FD";

/// How long the predecessor's VRRP loop stays silent, at most, for the successor to resume its
/// engines before it carries on itself: two of the shortest advert interval (a peer's
/// Master_Down_Interval is three and a skew), at least 10 ms.
pub fn handoff_bound(cfg: &Config) -> Duration {
    let shortest = cfg
        .vrrp
        .iter()
        .map(|v| v.get_ref().advert_interval.0)
        .min()
        .unwrap_or(Duration::from_secs(1));
    (2 * shortest).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// What goes over the channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Predecessor → successor, first: what it hands over; the sockets follow in
    /// [`Message::Fds`], in the order of `sockets`.
    Offer(Offer),
    /// Descriptors (`count` of them) come with this message.
    Fds { count: usize },
    /// Successor: ready to take over.
    Prepared,
    /// Predecessor: its VRRP loop stopped; the engines as they stand.
    State {
        engines: Vec<EngineHandoff>,
        scripts: Vec<(String, bool)>,
    },
    /// Successor: it runs the engines and accepts; the predecessor drains and exits.
    Committed { pid: u32 },
    /// Successor: it cannot take over, and why.
    Failed { error: String },
}

/// What a running hapd offers its successor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Offer {
    pub pid: u32,
    pub sockets: Vec<Offered>,
    /// How the guard runs on each interface.
    pub guards: BTreeMap<String, GuardMode>,
    /// The VRRP instances it runs.
    pub instances: Vec<Identity>,
    /// The `[[anycast]]` groups it drives (see [`anycast_groups`]).
    #[serde(default)]
    pub anycast: Vec<String>,
}

/// One listening socket handed over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offered {
    pub role: Role,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Listener,
    /// `[cluster] listen`.
    Cluster,
}

/// What makes a VRRP instance the same one in both processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    pub virtual_ips: Vec<String>,
}

/// The identities of `cfg`'s VRRP instances.
pub fn identities(cfg: &Config) -> Vec<Identity> {
    cfg.vrrp
        .iter()
        .map(|v| {
            let v = v.get_ref();
            Identity {
                name: v.name.clone(),
                interface: v.interface.clone(),
                vrid: v.vrid.get(),
                version: v.version.number(),
                virtual_ips: v.virtual_ips.iter().map(|n| n.to_string()).collect(),
            }
        })
        .collect()
}

/// The `[[anycast]]` groups of `cfg` as an upgrade must find them unchanged: the successor
/// takes over their BIRD protocols, and one it would not drive would stay announced.
pub fn anycast_groups(cfg: &Config) -> Vec<String> {
    cfg.anycast
        .iter()
        .map(|g| {
            let g = g.get_ref();
            format!(
                "{} ({} via protocol {} at {})",
                g.name,
                g.prefixes
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                g.bird_protocol,
                g.bird_socket.display()
            )
        })
        .collect()
}

/// The running process's side: what it hands over and whom it tells.
pub struct Host {
    /// The config file it runs (the successor's unless the request names another).
    pub config_path: PathBuf,
    pub instances: Vec<Identity>,
    pub anycast: Vec<String>,
    /// The listening sockets (duplicates).
    pub sockets: Vec<(Offered, OwnedFd)>,
    /// The VRRP loop, if the node runs VRRP.
    pub vrrp: Option<mpsc::Sender<Control>>,
    /// See [`handoff_bound`].
    pub handoff_bound: Duration,
    /// Turns true when a successor committed: this process then drains and exits.
    pub committed: watch::Sender<bool>,
}

impl Host {
    /// Runs one upgrade as `req` asks. `Ok`: the successor serves (the message says so);
    /// `Err`: this process still serves everything, and why the successor does not.
    /// `stop` turning true (the process stops) abandons it.
    pub async fn upgrade(
        &self,
        req: &Request,
        mut stop: watch::Receiver<bool>,
    ) -> Result<String, String> {
        if *self.committed.borrow() {
            return Err("this hapd already handed over to a successor".into());
        }
        // Under systemd the unit must follow the new process, or it stops the service (and
        // the new process with it) when this one exits.
        if std::env::var_os("INVOCATION_ID").is_some()
            && std::env::var_os("NOTIFY_SOCKET").is_none()
        {
            return Err(
                "hapd runs under systemd without a notify socket: the unit needs \
                        NotifyAccess=main (see dist/hapd.service) for the service to follow \
                        the new process; restart it instead"
                    .into(),
            );
        }
        let binary = match &req.binary {
            Some(b) => b.clone(),
            None => own_binary().map_err(|e| format!("{e:#}"))?,
        };
        let config = req
            .config
            .clone()
            .unwrap_or_else(|| self.config_path.clone());
        let guards = self.guards().await?;
        let (ours, theirs) = Channel::pair().map_err(|e| format!("{e:#}"))?;
        let mut child = spawn(&binary, &config, &theirs).map_err(|e| format!("{e:#}"))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        info!(
            "upgrade: started {} (pid {pid}) with {}",
            binary.display(),
            config.display()
        );
        let chan = match Channel::new(ours) {
            Ok(c) => c,
            Err(e) => return Err(self.abandon(&mut child, format!("{e:#}")).await),
        };
        let outcome = tokio::select! {
            // The exchange first: a successor that says why it fails and exits is heard.
            biased;
            r = self.drive(&chan, guards, req.timeout) => r,
            status = child.wait() => Err(match status {
                Ok(s) => format!("{} exited ({s}) before it took over; its log says why", binary.display()),
                Err(e) => format!("waiting for {}: {e}", binary.display()),
            }),
            _ = stop.wait_for(|s| *s) => Err("this hapd is stopping".into()),
        };
        match outcome {
            Ok(new_pid) => {
                self.committed.send_replace(true);
                // Under systemd the service follows the successor (needs NotifyAccess=main or
                // all in the unit; nothing happens without NOTIFY_SOCKET).
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::MainPid(new_pid)]) {
                    warn!("upgrade: telling systemd the new main pid: {e}");
                }
                // The successor outlives us: not killed on drop, reaped by init.
                drop(child);
                let msg = format!(
                    "upgraded: hapd pid {new_pid} ({}) serves now; pid {} drains its \
                     connections and exits",
                    binary.display(),
                    std::process::id()
                );
                info!("upgrade: {msg}");
                Ok(msg)
            }
            Err(why) => Err(self.abandon(&mut child, why).await),
        }
    }

    /// How the guard runs on each interface (and whether the VRRP loop could hand over now).
    async fn guards(&self) -> Result<BTreeMap<String, GuardMode>, String> {
        let Some(vrrp) = &self.vrrp else {
            return Ok(BTreeMap::new());
        };
        let (tx, rx) = oneshot::channel();
        vrrp.send(Control::Prepare { reply: tx })
            .await
            .map_err(|_| "the VRRP loop has stopped".to_string())?;
        rx.await
            .map_err(|_| "the VRRP loop has stopped".to_string())?
    }

    /// The exchange up to `Committed`; the successor's pid.
    async fn drive(
        &self,
        chan: &Channel,
        guards: BTreeMap<String, GuardMode>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let offer = Offer {
            pid: std::process::id(),
            sockets: self.sockets.iter().map(|(o, _)| *o).collect(),
            guards,
            instances: self.instances.clone(),
            anycast: self.anycast.clone(),
        };
        let fds: Vec<_> = self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        let sent = async {
            chan.send(&Message::Offer(offer)).await?;
            chan.send_fds(&fds).await
        };
        sent.await.map_err(|e| format!("{e:#}"))?;
        match tokio::time::timeout(timeout, chan.recv()).await {
            Err(_) => return Err(format!("not ready within {timeout:?}")),
            Ok(Err(e)) => return Err(format!("{e:#}")),
            Ok(Ok((Message::Prepared, _))) => {}
            Ok(Ok((Message::Failed { error }, _))) => return Err(error),
            Ok(Ok((m, _))) => return Err(format!("unexpected {m:?} from the new process")),
        }
        // The VRRP loop stops here (nothing is sent until the verdict) and hands its engines.
        let (engines, scripts, verdict) = match &self.vrrp {
            None => (Vec::new(), Vec::new(), None),
            Some(vrrp) => {
                let (tx, rx) = oneshot::channel();
                vrrp.send(Control::Handoff { reply: tx })
                    .await
                    .map_err(|_| "the VRRP loop has stopped".to_string())?;
                let h = rx
                    .await
                    .map_err(|_| "the VRRP loop has stopped".to_string())??;
                (h.engines, h.scripts, Some(h.verdict))
            }
        };
        let bound = if verdict.is_some() {
            self.handoff_bound
        } else {
            timeout
        };
        let committed = async {
            chan.send(&Message::State { engines, scripts })
                .await
                .map_err(|e| format!("{e:#}"))?;
            match tokio::time::timeout(bound, chan.recv()).await {
                Err(_) => Err(format!("did not take over within {bound:?}")),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Ok(Ok((Message::Committed { pid }, _))) => Ok(pid),
                Ok(Ok((Message::Failed { error }, _))) => Err(error),
                Ok(Ok((m, _))) => Err(format!("unexpected {m:?} from the new process")),
            }
        }
        .await;
        match (verdict, committed) {
            // The loop must hear it: it ends only then (else it would carry on beside the
            // successor).
            (Some(v), Ok(pid)) => v
                .send(true)
                .map(|()| pid)
                .map_err(|_| "the VRRP loop did not take the verdict".to_string()),
            (Some(v), Err(e)) => {
                let _ = v.send(false);
                Err(e)
            }
            (None, r) => r,
        }
    }

    /// The successor failed: it goes, our guard program goes back on the links, and the
    /// reason comes back for the command.
    async fn abandon(&self, child: &mut tokio::process::Child, why: String) -> String {
        let _ = child.start_kill();
        let _ = child.wait().await;
        if let Some(vrrp) = &self.vrrp {
            let (tx, rx) = oneshot::channel();
            if vrrp.send(Control::Reclaim { reply: tx }).await.is_ok() {
                let _ = rx.await;
            }
        }
        warn!("upgrade failed, this process serves on: {why}");
        format!("the new process did not take over (this hapd serves on): {why}")
    }
}

/// The binary this process runs, at its path on disk (a package upgrade replaced the file:
/// the new one is there).
fn own_binary() -> anyhow::Result<PathBuf> {
    let link = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    let s = link.to_string_lossy();
    let path = PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s));
    if !path.exists() {
        bail!(
            "{} no longer exists: name the new binary with --binary",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `binary run --config config` with the channel's other end on a descriptor of its
/// own, the same standard output and error (the log).
fn spawn(binary: &Path, config: &Path, theirs: &OwnedFd) -> anyhow::Result<tokio::process::Child> {
    let fd: RawFd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env(ENV_FD, fd.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: between fork and exec only close_range and fcntl run, both async-signal-safe.
    // Every descriptor is made close-on-exec (a library may have opened one without it, such
    // as pnet's packet socket), then the channel's end is cleared so the new binary has it.
    unsafe {
        cmd.pre_exec(move || {
            // Best effort before Linux 5.11 (ENOSYS): std and our sockets are close-on-exec.
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The new process's side, from [`Successor::connect`] to [`Successor::committed`].
pub struct Successor {
    chan: Channel,
    pub offer: Offer,
    sockets: Vec<(Offered, OwnedFd)>,
    committed: watch::Sender<bool>,
}

impl Successor {
    /// The channel's descriptor if this process succeeds a running hapd (taken out of the
    /// environment so that nothing it starts inherits the claim).
    pub fn fd_from_env() -> anyhow::Result<Option<OwnedFd>> {
        let Some(v) = std::env::var_os(ENV_FD) else {
            return Ok(None);
        };
        // SAFETY: single-threaded at this point (main, before any runtime or thread).
        unsafe { std::env::remove_var(ENV_FD) };
        let fd: RawFd = v
            .to_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{ENV_FD}={v:?} is not a descriptor"))?;
        // SAFETY: the predecessor gave us this descriptor for the channel; nothing else in
        // this process uses it. fcntl checks it is open before we own it.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            bail!("{ENV_FD}={fd}: {}", std::io::Error::last_os_error());
        }
        Ok(Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Reads the predecessor's offer and its sockets.
    pub async fn connect(fd: OwnedFd) -> anyhow::Result<Successor> {
        let chan = Channel::new(fd)?;
        let offer = match chan.recv().await? {
            (Message::Offer(o), _) => o,
            (m, _) => bail!("the running hapd sent {m:?} instead of its offer"),
        };
        let mut fds = Vec::new();
        while fds.len() < offer.sockets.len() {
            match chan.recv().await? {
                (Message::Fds { count }, got) if got.len() == count => fds.extend(got),
                (m, got) => bail!(
                    "expected listening sockets, got {m:?} with {} descriptor(s)",
                    got.len()
                ),
            }
        }
        let sockets = offer.sockets.iter().copied().zip(fds).collect();
        info!(
            pid = offer.pid,
            sockets = offer.sockets.len(),
            "upgrade: taking over from the running hapd"
        );
        Ok(Successor {
            chan,
            offer,
            sockets,
            committed: watch::channel(false).0,
        })
    }

    /// Checks that `cfg` runs the same VRRP instances and anycast groups as the predecessor.
    pub fn check(&self, cfg: &Config) -> anyhow::Result<()> {
        let groups = anycast_groups(cfg);
        if groups != self.offer.anycast {
            bail!(
                "the [[anycast]] groups differ from the running hapd's (it drives [{}], the \
                 config has [{}]): restart instead",
                self.offer.anycast.join("; "),
                groups.join("; ")
            );
        }
        let ours = identities(cfg);
        if ours != self.offer.instances {
            let show = |v: &[Identity]| {
                v.iter()
                    .map(|i| {
                        format!(
                            "{} ({} vrid {} v{} {})",
                            i.name,
                            i.interface,
                            i.vrid,
                            i.version,
                            i.virtual_ips.join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            bail!(
                "the VRRP instances differ from the running hapd's (it runs [{}], the config \
                 has [{}]): an upgrade cannot add, remove or re-address instances (restart \
                 instead)",
                show(&self.offer.instances),
                show(&ours)
            );
        }
        Ok(())
    }

    /// The predecessor's sockets of `role`.
    pub fn take(&mut self, role: Role) -> Vec<std::net::TcpListener> {
        let (take, keep) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(o, _)| o.role == role);
        self.sockets = keep;
        take.into_iter()
            .map(|(_, fd)| std::net::TcpListener::from(fd))
            .collect()
    }

    /// Turns true once committed.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.committed.subscribe()
    }

    /// Says we are ready and waits for the predecessor's engines (its VRRP loop has stopped
    /// when they arrive).
    pub async fn prepared(&self) -> anyhow::Result<(Vec<EngineHandoff>, Vec<(String, bool)>)> {
        self.chan.send(&Message::Prepared).await?;
        match self.chan.recv().await? {
            (Message::State { engines, scripts }, _) => Ok((engines, scripts)),
            (m, _) => bail!("the running hapd sent {m:?} instead of its state"),
        }
    }

    /// Says we serve now.
    pub async fn committed(&self) -> anyhow::Result<()> {
        self.chan
            .send(&Message::Committed {
                pid: std::process::id(),
            })
            .await?;
        self.committed.send_replace(true);
        info!(
            pid = self.offer.pid,
            "upgrade: this process serves now; the previous one drains"
        );
        Ok(())
    }

    /// Tells the predecessor why we cannot take over.
    pub async fn fail(&self, error: &str) {
        let _ = self
            .chan
            .send(&Message::Failed {
                error: error.to_owned(),
            })
            .await;
    }
}
