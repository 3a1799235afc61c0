//! The control socket (`node.control_socket`): a Unix socket, mode 0600, that answers only
//! root or the daemon's own user (`SO_PEERCRED`). It carries what must not be open to the
//! admin endpoint's clients: `hapd upgrade` starts a binary as the daemon's user.
//!
//! One JSON line each way: a [`Request`], then `{"ok": bool, "message": "..."}`.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::watch,
};
use tracing::{info, warn};

use super::Host;

/// The longest request line, and how long a client has to send it.
const MAX_LINE: u64 = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `hapd upgrade`'s request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The new binary (default: the running one's path on disk).
    pub binary: Option<PathBuf>,
    /// The config the new process runs (default: the running one's).
    pub config: Option<PathBuf>,
    /// How long the new process has to become ready.
    pub timeout: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    message: String,
}

/// The served control socket; dropping it stops serving and removes the path if it is still
/// ours.
pub struct ControlSocket {
    path: PathBuf,
    ino: u64,
    /// A successor committed: the path is its socket now.
    handed_over: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Binds `path` and serves upgrade requests with `host` on a thread of its own. The socket
    /// is bound beside `path` and renamed over it, so that a successor replaces its
    /// predecessor's in one step; a socket that a live process answers on is refused unless
    /// `replace` (the successor's case).
    pub fn start(path: &Path, host: Host, replace: bool) -> anyhow::Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("node.control_socket: creating {}", dir.display()))?;
        }
        if !replace && std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "node.control_socket {}: another process answers on it (a hapd running with \
                 the same control_socket?)",
                path.display()
            );
        }
        let tmp = path.with_extension(format!("new.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let std = std::os::unix::net::UnixListener::bind(&tmp)
            .with_context(|| format!("node.control_socket: binding {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("node.control_socket: chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| {
            format!(
                "node.control_socket: renaming {} to {}",
                tmp.display(),
                path.display()
            )
        })?;
        let ino = std::fs::metadata(path)?.ino();
        std.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the control socket's runtime")?;
        let listener = {
            let _g = rt.enter();
            UnixListener::from_std(std)?
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let handed_over = host.committed.subscribe();
        let thread = std::thread::Builder::new()
            .name("hapd-control".into())
            .spawn(move || {
                rt.block_on(serve(listener, host, stop_rx));
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .context("starting the control socket's thread")?;
        info!(path = %path.display(), "control socket listening");
        Ok(ControlSocket {
            path: path.to_owned(),
            ino,
            handed_over,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A successor's socket replaced ours at the same path (or is about to): leave it.
        if !*self.handed_over.borrow()
            && std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves requests one at a time (an upgrade runs alone) until `stop`; a request being
/// answered is answered first (the reply to a committed upgrade is written before the process
/// that committed it exits).
async fn serve(listener: UnixListener, host: Host, mut stop: watch::Receiver<bool>) {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid());
        let reply = match uid {
            Ok(uid) if uid == 0 || uid == me => answer(stream, &host, stop.clone()).await,
            Ok(uid) => {
                warn!("control socket: refused a client of uid {uid}");
                let w = stream.into_split().1;
                respond(w, false, format!("uid {uid} may not control hapd")).await
            }
            Err(e) => {
                respond(
                    stream.into_split().1,
                    false,
                    format!("peer credentials: {e}"),
                )
                .await
            }
        };
        if let Err(e) = reply {
            warn!("control socket: {e:#}");
        }
    }
}

async fn answer(
    stream: UnixStream,
    host: &Host,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (read, write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(r) => r.context("reading a request")?,
        Err(_) => bail!("no request within {REQUEST_TIMEOUT:?}"),
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return respond(write, false, format!("bad request: {e}")).await,
    };
    info!(?req, "control socket: upgrade requested");
    let (ok, message) = match host.upgrade(&req, stop).await {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    respond(write, ok, message).await
}

async fn respond(mut w: OwnedWriteHalf, ok: bool, message: String) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(&Reply { ok, message })?;
    line.push(b'\n');
    w.write_all(&line).await.context("writing the reply")?;
    w.shutdown().await.ok();
    Ok(())
}

/// Sends `req` to the daemon at `path` and waits for its answer: `Ok(Ok(message))` when the
/// upgrade happened, `Ok(Err(message))` when the daemon refused or the new process failed.
pub async fn request(path: &Path, req: &Request) -> anyhow::Result<Result<String, String>> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to {} (node.control_socket): is hapd running, and are you root?",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .context("reading the answer")?;
    if answer.is_empty() {
        bail!("hapd closed the control socket without an answer (it stopped?)");
    }
    let r: Reply = serde_json::from_str(&answer).context("the daemon's answer")?;
    Ok(if r.ok { Ok(r.message) } else { Err(r.message) })
}
