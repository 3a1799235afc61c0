//! The admin endpoint (`node.admin`, loopback by default) and the daemon's own signals.
//!
//! - `GET /healthz`: 200 `ok` when no VRRP instance is in FAULT and the proxy has a server up
//!   for every route, else 503 with the reasons.
//! - `GET /status`: the node as JSON ([`status::Status`]); `hapd status` prints it.
//! - `GET /metrics`: Prometheus text format ([`prom`]).
//! - `POST /reload`: re-read the config file and apply it (see [`Admin::reload`]); also SIGHUP.
//! - `POST /step-down?instance=NAME`, `POST /hand-back?instance=NAME`: the drill's two steps.
//! - `POST /anycast/drain?group=NAME`, `POST /anycast/undrain?group=NAME`: withdraw an
//!   `[[anycast]]` group and end its connections at request boundaries, or announce it again.
//!
//! The POST endpoints answer only clients on this host (loopback, or the admin address talking
//! to itself): an admin address opened to the network for monitoring and for the peer's drill
//! checks does not let the network move the VIP.
//!
//! It runs on a thread of its own, so a slow scrape never delays an advert or a request.
pub mod client;
pub mod prom;
pub mod status;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    control::{AuthSettings, Control},
    proxy::ProxyView,
    status::{CertStatus, ProxyStatus, Status},
};

/// How long the VRRP loop has to answer a status request.
const VRRP_ANSWER: Duration = Duration::from_secs(2);

/// What the admin endpoint serves from.
pub struct Admin {
    pub config_path: PathBuf,
    /// The configuration running now (replaced by a successful reload); the cluster reads it
    /// too.
    pub running: Arc<Mutex<Config>>,
    pub started: Instant,
    pub vrrp: Option<mpsc::Sender<Control>>,
    pub proxy: Option<Arc<ProxyView>>,
    /// `[[anycast]]` groups.
    pub anycast: Option<crate::anycast::GroupsView>,
    /// `[cluster]`: served and exchanged on the admin thread.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Why `[cluster]` is configured and does not run.
    pub cluster_error: Option<String>,
    /// One reload at a time (SIGHUP and `POST /reload`); `running` is locked only to read it
    /// and to swap it, so status answers meanwhile.
    pub reloading: Mutex<()>,
}

/// The running endpoint; dropping it stops the thread.
pub struct AdminHandle {
    pub addr: SocketAddr,
    /// A duplicate of the listening socket, for a successor process (a hitless upgrade).
    pub socket: std::os::fd::OwnedFd,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` (or serves on `inherited`, the listening socket of the process this one
/// succeeds) on a thread of its own; also handles SIGHUP (reload) and SIGUSR1 (reopen log
/// files).
pub fn start(
    addr: SocketAddr,
    admin: Admin,
    inherited: Option<std::net::TcpListener>,
) -> anyhow::Result<AdminHandle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the admin runtime")?;
    let (sock, socket) = {
        let _g = rt.enter();
        let std = match inherited {
            Some(l) => l,
            None => std::net::TcpListener::bind(addr)
                .with_context(|| format!("node.admin: binding {addr}"))?,
        };
        std.set_nonblocking(true)?;
        let dup = std::os::fd::OwnedFd::from(std.try_clone()?);
        (tokio::net::TcpListener::from_std(std)?, dup)
    };
    let local = sock.local_addr()?;
    // Installed here, before the caller says it is ready: a SIGHUP from then on reloads.
    let (hup, usr1) = {
        let _g = rt.enter();
        (
            signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?,
        )
    };
    info!(%local, "admin endpoint listening");
    let (stop_tx, stop_rx) = oneshot::channel();
    let admin = Arc::new(admin);
    let thread = std::thread::Builder::new()
        .name("hapd-admin".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(signals(admin.clone(), hup, usr1));
                if let Some(c) = &admin.cluster {
                    if let Err(e) = c.spawn() {
                        error!("cluster: {e:#}");
                    }
                }
                tokio::select! {
                    _ = serve(sock, admin) => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        })
        .context("starting the admin thread")?;
    Ok(AdminHandle {
        addr: local,
        socket,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn signals(
    admin: Arc<Admin>,
    mut hup: tokio::signal::unix::Signal,
    mut usr1: tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            Some(()) = hup.recv() => {
                let a = admin.clone();
                match tokio::task::spawn_blocking(move || a.reload("SIGHUP")).await {
                    Ok(Ok(msg)) => info!("{msg}"),
                    Ok(Err(e)) => error!("reload (SIGHUP) refused, nothing changed: {e}"),
                    Err(e) => error!("reload (SIGHUP): {e}"),
                }
            }
            Some(()) = usr1.recv() => {
                match &admin.proxy {
                    Some(p) => p.reopen_logs(),
                    None => info!("SIGUSR1: no log files to reopen"),
                }
            }
            else => return,
        }
    }
}

async fn serve(sock: tokio::net::TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match sock.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        // A client on this host: loopback, or one of our addresses talking to itself.
        let local = stream
            .local_addr()
            .is_ok_and(|l| peer.ip().is_loopback() || l.ip() == peer.ip());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, local, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, "admin connection: {e}");
            }
        });
    }
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

async fn handle(admin: &Arc<Admin>, local: bool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => {
            let st = admin.status().await;
            let problems = st.problems();
            if problems.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{}\n", problems.join("\n")),
                )
            }
        }
        (Method::GET | Method::HEAD, "/status") => {
            let st = admin.status().await;
            let mut r = text(
                StatusCode::OK,
                serde_json::to_vec_pretty(&st).unwrap_or_default(),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (Method::GET | Method::HEAD, "/metrics") => {
            let st = admin.status().await;
            let m = admin.proxy.as_ref().map(|p| p.metrics());
            let mut r = text(StatusCode::OK, prom::render(&st, m.as_ref()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (
            Method::POST,
            "/reload" | "/step-down" | "/hand-back" | "/anycast/drain" | "/anycast/undrain",
        ) if !local => text(
            StatusCode::FORBIDDEN,
            "control requests are accepted from this host only\n",
        ),
        (Method::POST, "/anycast/drain" | "/anycast/undrain") => {
            let Some(group) = query_param(&req, "group") else {
                return text(StatusCode::BAD_REQUEST, "missing ?group=NAME\n");
            };
            let Some(groups) = &admin.anycast else {
                return text(
                    StatusCode::CONFLICT,
                    "this node runs no [[anycast]] group\n",
                );
            };
            let on = path == "/anycast/drain";
            match drain(groups, admin.proxy.as_deref(), &group, on).await {
                Ok(msg) => {
                    info!("{msg}");
                    text(StatusCode::OK, format!("{msg}\n"))
                }
                Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
            }
        }
        (Method::POST, "/reload") => {
            let a = admin.clone();
            match tokio::task::spawn_blocking(move || a.reload("hapd reload")).await {
                Ok(Ok(msg)) => {
                    info!("{msg}");
                    text(StatusCode::OK, format!("{msg}\n"))
                }
                Ok(Err(e)) => {
                    error!("reload refused, nothing changed: {e}");
                    text(
                        StatusCode::CONFLICT,
                        format!("reload refused, nothing changed: {e}\n"),
                    )
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Method::POST, "/step-down" | "/hand-back") => {
            let Some(instance) = query_param(&req, "instance") else {
                return text(StatusCode::BAD_REQUEST, "missing ?instance=NAME\n");
            };
            let Some(vrrp) = &admin.vrrp else {
                return text(StatusCode::CONFLICT, "this node runs no VRRP instance\n");
            };
            let (tx, rx) = oneshot::channel();
            let on = path == "/step-down";
            if vrrp
                .send(Control::StepDown {
                    instance,
                    on,
                    reply: tx,
                })
                .await
                .is_err()
            {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the VRRP loop has stopped\n",
                );
            }
            match tokio::time::timeout(VRRP_ANSWER, rx).await {
                Ok(Ok(Ok(msg))) => text(StatusCode::OK, format!("{msg}\n")),
                Ok(Ok(Err(e))) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the VRRP loop did not answer\n",
                ),
            }
        }
        (
            _,
            "/healthz" | "/status" | "/metrics" | "/reload" | "/step-down" | "/hand-back"
            | "/anycast/drain" | "/anycast/undrain",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /status, /metrics or /healthz\n",
        ),
    }
}

/// Drains an `[[anycast]]` group (`on`): BIRD withdraws it first, then the proxy's connections
/// to its prefixes end at request boundaries (as in a planned move: `Connection: close` on
/// the next response, HTTP/2 GOAWAY); or undrains it (announced again after `rise` and
/// `hold_down`, its connections no longer told to close).
async fn drain(
    groups: &crate::anycast::GroupsView,
    proxy: Option<&ProxyView>,
    group: &str,
    on: bool,
) -> Result<String, String> {
    let prefixes = groups.set_drained(group, on)?;
    let ours = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v4) => prefixes.iter().any(|p| p.contains(v4)),
        std::net::IpAddr::V6(_) => false,
    };
    if !on {
        if let Some(p) = proxy {
            let addrs: Vec<_> = p.handed_over_addrs().into_iter().filter(ours).collect();
            p.hand_over(&addrs, false);
        }
        return Ok(format!(
            "anycast {group}: undrained; announced again once the proxy is healthy (after rise and hold_down)"
        ));
    }
    if !groups
        .withdrawn(group, crate::anycast::bird::ANSWER_TIMEOUT)
        .await
    {
        return Err(format!(
            "anycast {group}: drained, but BIRD has not confirmed the withdrawal yet (see hapd status)"
        ));
    }
    let Some(p) = proxy else {
        return Ok(format!("anycast {group}: withdrawn (drained)"));
    };
    // The router still sends here until BGP has told it.
    tokio::time::sleep(crate::anycast::SETTLE).await;
    let addrs: Vec<_> = p.connected_addrs().into_iter().filter(ours).collect();
    p.hand_over(&addrs, true);
    Ok(format!(
        "anycast {group}: withdrawn (drained); {} connection(s) on its prefixes end at their next response",
        p.connections_on(&addrs)
    ))
}

/// Asks the VRRP loop to run `auth` (blocking: a reload runs off the admin runtime).
fn set_auth(
    vrrp: &mpsc::Sender<Control>,
    auth: AuthSettings,
) -> Result<(String, AuthSettings), String> {
    let (tx, rx) = oneshot::channel();
    vrrp.blocking_send(Control::SetAuth { auth, reply: tx })
        .map_err(|_| "the VRRP loop is gone".to_string())?;
    rx.blocking_recv()
        .map_err(|_| "the VRRP loop did not answer".to_string())?
}

impl Admin {
    /// The node's status: the VRRP loop's part (asked over its channel) and the proxy's.
    pub async fn status(&self) -> Status {
        let node = self
            .running
            .lock()
            .map(|c| c.node.name.clone())
            .unwrap_or_default();
        // What the nodes must agree on, from the configuration running now.
        let running = self.running.lock().ok().map(|c| c.clone());
        let parity = running.as_ref().map(crate::parity::Parity::of);
        let mut st = Status {
            parity_error: match &parity {
                Some(Err(e)) => Some(format!("{e:#}")),
                _ => None,
            },
            parity: parity.and_then(Result::ok),
            node,
            version: build_info::VERSION.to_string(),
            commit: build_info::COMMIT.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            ..Status::default()
        };
        if let Some(vrrp) = &self.vrrp {
            let (tx, rx) = oneshot::channel();
            if vrrp.send(Control::Status(tx)).await.is_ok() {
                if let Ok(Ok((instances, guard))) = tokio::time::timeout(VRRP_ANSWER, rx).await {
                    st.instances = instances.iter().map(status::instance).collect();
                    st.guard = guard.as_ref().map(status::guard);
                }
            }
        }
        if let Some(a) = &self.anycast {
            st.anycast = a.status();
        }
        if let Some(c) = &self.cluster {
            st.cluster = Some(c.status(st.parity.as_ref()));
        } else if let Some(e) = &self.cluster_error {
            st.cluster = Some(crate::status::ClusterStatus {
                error: Some(e.clone()),
                ..Default::default()
            });
        }
        if let Some(p) = &self.proxy {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            st.proxy = Some(ProxyStatus {
                healthy: p.healthy(),
                connections: p.connections(),
                worker_connections: p.worker_connections(),
                worker_connections_total: p.worker_connections_total(),
                steered_connections: p.steered_connections(),
                log_lines_dropped: p.log_lines_dropped(),
                servers: p.servers(),
                certificates: p
                    .certificates()
                    .into_iter()
                    .map(|c| CertStatus {
                        file: c.file.display().to_string(),
                        names: c.names,
                        not_after: c.not_after,
                        days_left: (c.not_after - now).div_euclid(86_400),
                    })
                    .collect(),
            });
        }
        st
    }

    /// Re-reads the config file and applies it, or changes nothing and says why. The proxy's
    /// vhosts, routes, upstreams, log files and certificates are reloaded; `[node]`, the VRRP
    /// sections, `[[anycast]]`, `[server]` and the listeners need a restart (one node at a
    /// time).
    pub fn reload(&self, why: &str) -> Result<String, String> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let (cfg, warnings) = Config::load(&self.config_path).map_err(|e| format!("{e}"))?;
        for w in &warnings {
            warn!("config: {w}");
        }
        // A copy: the lock is not held while the proxy builds (a pushed certificate may hold
        // the TLS store meanwhile, and status must answer).
        let running = self
            .running
            .lock()
            .map_err(|_| "the running config is poisoned".to_string())?
            .clone();
        let mut fixed = Vec::new();
        if cfg.node != running.node {
            fixed.push("[node]".to_string());
        }
        // auth_hmac is the one part of [[vrrp]] a reload applies (key rotation must not move
        // the VIP); anything else in it needs a restart.
        let without_auth = |c: &Config| -> Vec<crate::config::Vrrp> {
            c.vrrp
                .iter()
                .map(|v| crate::config::Vrrp {
                    auth_hmac: None,
                    ..v.get_ref().clone()
                })
                .collect()
        };
        if without_auth(&cfg) != without_auth(&running) {
            fixed.push("[[vrrp]] (apart from auth_hmac)".to_string());
        }
        if cfg.track_script != running.track_script {
            fixed.push("[[track_script]]".to_string());
        }
        if cfg.anycast != running.anycast {
            fixed.push("[[anycast]]".to_string());
        }
        if cfg.cluster != running.cluster {
            fixed.push("[cluster]".to_string());
        }
        if !fixed.is_empty() {
            return Err(format!(
                "{} changed: restart hapd to apply (the backup first, then the master)",
                fixed.join(", ")
            ));
        }
        // Keys are read (key files included) before anything changes.
        let auth = cfg
            .vrrp
            .iter()
            .map(|v| {
                let v = v.get_ref();
                let spec = match &v.auth_hmac {
                    Some(a) => {
                        let (r, _) = a.resolve(v.advert_interval.0).map_err(|p| {
                            format!("vrrp {:?}: auth_hmac.{}: {}", v.name, p.key, p.message)
                        })?;
                        Some(crate::dataplane::AuthSpec::new(&r))
                    }
                    None => None,
                };
                Ok((v.name.clone(), spec))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if self.proxy.is_none() && !cfg.listener.is_empty() {
            return Err(
                "[[listener]] added to a node without a proxy: restart hapd to start it".into(),
            );
        }
        // auth_hmac first (the one step of the VRRP loop), then the proxy; if the proxy refuses
        // the new config, auth_hmac goes back to what it was: nothing changes.
        let mut applied = String::new();
        let mut previous = None;
        if let Some(vrrp) = &self.vrrp {
            let (changed, before) = set_auth(vrrp, auth)?;
            applied = changed;
            previous = Some(before);
        }
        if let Some(p) = &self.proxy {
            if let Err(e) = p.reload(&cfg, why) {
                if let (Some(vrrp), Some(before)) = (&self.vrrp, previous) {
                    if let Err(back) = set_auth(vrrp, before) {
                        error!("putting auth_hmac back after the refused reload: {back}");
                    }
                }
                return Err(format!("{e:#}"));
            }
        }
        *self
            .running
            .lock()
            .map_err(|_| "the running config is poisoned".to_string())? = cfg;
        // The peers learn of the change now, not at the next exchange.
        if let Some(c) = &self.cluster {
            c.reloaded();
        }
        Ok(format!(
            "configuration reloaded ({why}) from {}{applied}",
            self.config_path.display()
        ))
    }
}
