//! The TLS reverse proxy (`[server]`, `[tls]`, `[[listener]]`, `[[upstream]]`, `[[vhost]]`).
//!
//! It runs on threads of its own, one single-threaded runtime per core plus a control thread
//! for health checks and the certificate watcher (signals are the admin thread's), beside the
//! VRRP engine's thread, so load on the proxy never delays an
//! advert. [`start`] reads every file and binds every
//! listener before it returns, so a bad certificate or a port in use is an error at start.
//! Listeners bound to a VIP use IP_FREEBIND: they work on a backup that does not hold the
//! address yet, and nothing is rebound at failover.
mod balance;
mod buf;
pub(crate) mod codec;
mod fasthash;
mod h2;
mod headers;
mod http1;
mod log;
pub mod metrics;
mod site;
mod steer;
mod timer;
pub mod tls;
mod tls_stream;
pub mod upstream;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use arc_swap::ArcSwap;
use hyper::{
    header::{HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
};
use tracing::{debug, info, warn};

use self::{
    buf::Buf,
    h2::H2Conn,
    log::LogFile,
    metrics::Metrics,
    site::{Route, Site, Sites},
    tls::TlsStore,
    upstream::Pool,
};
use crate::{config::Config, health::ProxyHealth, status::ServerStatus};

/// How often certificate files are looked at for changes.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// A running proxy.
pub struct ProxyHandle {
    stop: watch::Sender<Option<Duration>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The proxy's health for `track_proxy`.
    pub health: watch::Receiver<bool>,
    /// Where each listener is bound (in config order), useful when a port was 0.
    pub bound: Vec<(String, SocketAddr)>,
    /// Status, metrics and reload.
    pub view: Arc<ProxyView>,
}

impl ProxyHandle {
    /// Stops accepting, lets requests in flight finish for up to `drain`, then stops.
    pub fn stop(mut self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop.send(Some(Duration::ZERO));
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// The `[server]` limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keepalive: Duration,
    pub header_read: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

struct Shared {
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    tls: Option<Arc<TlsStore>>,
    limits: Limits,
    server_header: bool,
    handshake_timeout: Duration,
    connections: AtomicUsize,
    /// Client connections per worker, and the inboxes of connections handed between them.
    balance: balance::Balance<Accepted>,
    /// Steers new connections toward a CPU with time to spare (pinned workers only).
    steer: Option<steer::Steer>,
    idle: Notify,
    metrics: Arc<Metrics>,
    /// Set when this node hands its VIPs over (see [`ProxyView::begin_handover`]).
    handover: Arc<AtomicBool>,
    /// Bumped by every reload: connections take the new vhosts at their next request.
    generation: AtomicU64,
    /// The proxy is stopping: connections close after the request in progress.
    draining: AtomicBool,
    handover_tx: watch::Sender<bool>,
}

/// Whether the config has a proxy to run.
pub fn configured(cfg: &Config) -> bool {
    !cfg.listener.is_empty()
}

/// What a reload replaces: the vhosts of each listener, the upstream pools and the log files.
struct Routing {
    sites: HashMap<String, Arc<Sites>>,
    pools: HashMap<String, Arc<Pool>>,
    logs: HashMap<PathBuf, LogFile>,
}

impl Routing {
    /// The pools some route uses, each once: the ones whose health counts.
    fn routed_pools(&self) -> Vec<Arc<Pool>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for sites in self.sites.values() {
            for site in sites.all() {
                for r in &site.routes {
                    if seen.insert(Arc::as_ptr(&r.pool)) {
                        out.push(r.pool.clone());
                    }
                }
            }
        }
        out
    }
}

/// Builds the vhosts, pools and logs of `cfg`. Pools whose `[[upstream]]` is unchanged and log
/// files already open are taken over from `old`, so health state and kept-alive upstream
/// connections survive a reload.
fn build_routing(
    cfg: &Config,
    old: Option<&Routing>,
    changes: &watch::Sender<u64>,
) -> anyhow::Result<Routing> {
    let pools: HashMap<String, Arc<Pool>> = cfg
        .upstream
        .iter()
        .map(|u| {
            let u = u.get_ref();
            let pool = old
                .and_then(|o| o.pools.get(&u.name))
                .filter(|p| p.config() == u)
                .cloned()
                .unwrap_or_else(|| Arc::new(Pool::new(u, changes.clone())));
            (u.name.clone(), pool)
        })
        .collect();
    // Log files are shared by vhosts naming the same path.
    let mut logs: HashMap<PathBuf, LogFile> = HashMap::new();
    let mut open_log = |p: &Option<PathBuf>| -> anyhow::Result<Option<LogFile>> {
        let Some(p) = p else { return Ok(None) };
        if let Some(l) = logs
            .get(p)
            .or_else(|| old.and_then(|o| o.logs.get(p)))
            .cloned()
        {
            logs.insert(p.clone(), l.clone());
            return Ok(Some(l));
        }
        let l = LogFile::open(p)?;
        logs.insert(p.clone(), l.clone());
        Ok(Some(l))
    };
    let mut sites: HashMap<String, Sites> = HashMap::new();
    for (i, v) in cfg.vhost.iter().enumerate() {
        let v = v.get_ref();
        let mut routes: Vec<Route> = v
            .route
            .iter()
            .map(|r| Route {
                prefix: r.prefix.clone(),
                pool: pools[&r.upstream].clone(),
                allow: r.allow.clone(),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let headers = v
            .response_headers
            .iter()
            .map(|(k, val)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(val)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("vhost[{i}].response_headers"))?;
        let names: Vec<String> = v
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let site = Arc::new(Site {
            label: Arc::from(names.first().map_or("", String::as_str)),
            names,
            preserve_host: v.preserve_host,
            timeout: v.timeout.0,
            headers,
            access_log: open_log(&v.access_log)
                .with_context(|| format!("vhost[{i}].access_log"))?,
            error_log: open_log(&v.error_log).with_context(|| format!("vhost[{i}].error_log"))?,
            redirect_https: v.redirect_https,
            routes,
        });
        for l in &v.listeners {
            let s = sites.entry(l.clone()).or_insert_with(|| Sites {
                exact: HashMap::default(),
                wildcard: Vec::new(),
                default: site.clone(),
            });
            for n in &site.names {
                match n.strip_prefix('*') {
                    Some(suffix) => s.wildcard.push((suffix.to_string(), site.clone())),
                    None => {
                        s.exact.entry(n.clone()).or_insert_with(|| site.clone());
                    }
                }
            }
        }
    }
    Ok(Routing {
        sites: sites.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        pools,
        logs,
    })
}

/// The running proxy as the admin endpoint and reloads see it.
pub struct ProxyView {
    shared: Arc<Shared>,
    routing: std::sync::Mutex<Routing>,
    /// The vhosts each open listener serves; a reload swaps them.
    listeners: HashMap<String, Arc<ArcSwap<Sites>>>,
    /// The sections a reload cannot change.
    fixed: (
        Vec<crate::config::proxy::Listener>,
        Option<crate::config::proxy::Server>,
    ),
    changes: watch::Sender<u64>,
    /// The control thread's runtime: health checks of new pools run there.
    control: tokio::runtime::Handle,
    health: watch::Receiver<bool>,
}

impl ProxyView {
    /// Request counters and latency histograms.
    pub fn metrics(&self) -> metrics::Snapshot {
        self.shared.metrics.snapshot()
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Client connections open now on each worker thread.
    pub fn worker_connections(&self) -> Vec<usize> {
        self.shared.balance.open()
    }

    /// Client connections placed on each worker thread since the start.
    pub fn worker_connections_total(&self) -> Vec<u64> {
        self.shared.balance.placed()
    }

    /// Log lines dropped because a log file's disk did not keep up, over the log files in use.
    pub fn log_lines_dropped(&self) -> u64 {
        self.routing
            .lock()
            .map_or(0, |r| r.logs.values().map(LogFile::dropped).sum())
    }

    /// New connections handed to a worker whose CPU had time to spare, since the start.
    pub fn steered_connections(&self) -> u64 {
        self.shared.steer.as_ref().map_or(0, |s| s.steered())
    }

    /// Whether every route has a server up (what `track_proxy` follows).
    pub fn healthy(&self) -> bool {
        *self.health.borrow()
    }

    /// Every server of every upstream, the upstreams by name.
    pub fn servers(&self) -> Vec<ServerStatus> {
        let Ok(r) = self.routing.lock() else {
            return Vec::new();
        };
        let mut pools: Vec<_> = r.pools.values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
            .into_iter()
            .flat_map(|p| {
                p.servers.iter().map(|s| ServerStatus {
                    upstream: p.name.to_string(),
                    server: s.authority.clone(),
                    up: s.is_up(),
                    outstanding: s.outstanding(),
                })
            })
            .collect()
    }

    /// The certificates being served.
    pub fn certificates(&self) -> Vec<tls::CertInfo> {
        self.shared
            .tls
            .as_ref()
            .map_or_else(Vec::new, |t| t.certificates())
    }

    /// Applies the proxy part of `cfg`: vhosts, routes, upstreams, logs and certificates.
    /// Everything is built before anything is swapped in, so a reload that fails changes
    /// nothing. Listeners and `[server]` cannot change without a restart.
    pub fn reload(&self, cfg: &Config, why: &str) -> anyhow::Result<()> {
        let listeners: Vec<_> = cfg.listener.iter().map(|l| l.get_ref().clone()).collect();
        if listeners != self.fixed.0 {
            bail!("[[listener]] changed: restart hapd to open or close listeners");
        }
        if cfg.server != self.fixed.1 {
            bail!("[server] changed: restart hapd to apply it");
        }
        let tls = match (&self.shared.tls, &cfg.tls) {
            (Some(_), Some(t)) => Some((t, tls::build(t)?)),
            (Some(_), None) => bail!("[tls] removed while TLS listeners are open"),
            (None, _) => None,
        };
        let mut current = self
            .routing
            .lock()
            .map_err(|_| anyhow!("routing state poisoned"))?;
        let next = build_routing(cfg, Some(&current), &self.changes)?;
        for name in self.listeners.keys() {
            if !next.sites.contains_key(name) {
                bail!("listener {name} would have no vhost: restart hapd to close it");
            }
        }
        // Nothing can fail from here on.
        if let (Some(store), Some((t, built))) = (&self.shared.tls, tls) {
            store.replace(t, built, why);
        }
        let old_pools = current.routed_pools();
        *current = next;
        for (name, slot) in &self.listeners {
            slot.store(current.sites[name].clone());
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        let new_pools = current.routed_pools();
        let _guard = self.control.enter();
        for p in &new_pools {
            if !old_pools.iter().any(|o| Arc::ptr_eq(o, p)) {
                p.spawn_checks();
            }
        }
        for p in &old_pools {
            if !new_pools.iter().any(|n| Arc::ptr_eq(n, p)) {
                p.retire();
            }
        }
        self.changes.send_modify(|c| *c += 1);
        info!(
            "proxy configuration reloaded ({why}): {} vhost(s), {} upstream(s)",
            cfg.vhost.len(),
            cfg.upstream.len()
        );
        Ok(())
    }

    /// This node is handing its VIPs to another: ask every client to reconnect, which takes
    /// it to the new master, without failing a request. HTTP/1 responses from now on carry
    /// `Connection: close` (the client sends its next request on a new connection; closing an
    /// idle connection instead would race with a request already on its way), HTTP/2
    /// connections get GOAWAY (the client knows which streams were served). New connections
    /// are still accepted and served once: a client may not have heard the new master's ARP.
    pub fn begin_handover(&self) {
        self.shared.handover.store(true, Ordering::Release);
        let _ = self.shared.handover_tx.send(true);
    }

    /// Reopens every log file (SIGUSR1, after rotation).
    pub fn reopen_logs(&self) {
        if let Ok(r) = self.routing.lock() {
            info!("reopening {} log file(s)", r.logs.len());
            for l in r.logs.values() {
                l.reopen();
            }
        }
    }
}

/// One worker's socket of a listener: the socket, whether it speaks TLS, and its vhosts.
type WorkerListener = (std::net::TcpListener, bool, Arc<ArcSwap<Sites>>);

/// What comes with an accepted connection: the client's address, whether the listener speaks
/// TLS, and the listener's vhosts.
struct Accepted {
    peer: SocketAddr,
    tls: bool,
    sites: Arc<ArcSwap<Sites>>,
}

/// Loads certificates, opens logs, binds the listeners and starts serving.
pub fn start(cfg: &Config) -> anyhow::Result<ProxyHandle> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    // The workers and the control thread each keep their own upstream connections.
    upstream::set_workers(workers + 1);
    let server = cfg
        .server
        .as_ref()
        .map_or_else(|| Limits::from(&Default::default()), Limits::from);
    let server_header = cfg.server.as_ref().is_some_and(|s| s.server_header);
    let tls = match &cfg.tls {
        Some(t) if cfg.listener.iter().any(|l| l.get_ref().tls) => {
            Some(Arc::new(TlsStore::new(t)?))
        }
        _ => None,
    };
    let (changes, _) = watch::channel(0u64);
    let routing = build_routing(cfg, None, &changes)?;

    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(server.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(server.keepalive))
        .keep_alive_timeout(server.header_read);
    let cpus = if cfg.server.as_ref().is_none_or(|s| s.pin_workers) {
        allowed_cpus()
    } else {
        Vec::new()
    };
    // Worker N's CPU; none when the workers are not pinned.
    let worker_cpus: Vec<usize> = if cpus.is_empty() {
        Vec::new()
    } else {
        (0..workers).map(|w| cpus[w % cpus.len()]).collect()
    };
    let steer = steer::Steer::new(worker_cpus.clone());
    let (balance, mut inboxes) = balance::Balance::new(workers);
    let shared = Arc::new(Shared {
        h2,
        tls,
        limits: server,
        server_header,
        handshake_timeout: server.header_read,
        connections: AtomicUsize::new(0),
        balance,
        steer,
        idle: Notify::new(),
        metrics: Arc::new(Metrics::new(workers + 1)),
        handover: Arc::new(AtomicBool::new(false)),
        handover_tx: watch::channel(false).0,
        generation: AtomicU64::new(0),
        draining: AtomicBool::new(false),
    });

    // Each worker thread binds its own socket per address (SO_REUSEPORT) and the kernel spreads
    // connections over them: a connection, its upstream connections and their tasks stay on
    // one thread, with no wake-ups across threads.
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut listeners = HashMap::new();
    for l in &cfg.listener {
        let l = l.get_ref();
        let Some(sites) = routing.sites.get(&l.name) else {
            warn!(listener = %l.name, "no vhost uses this listener; it is not opened");
            continue;
        };
        let sites = Arc::new(ArcSwap::new(sites.clone()));
        listeners.insert(l.name.clone(), sites.clone());
        for addr in &l.bind {
            let first =
                bind(*addr).with_context(|| format!("listener {}: binding {addr}", l.name))?;
            // Port 0: the others take the port the first one got.
            let local = first.local_addr()?;
            info!(listener = %l.name, %local, tls = l.tls, workers, "listening");
            bound.push((l.name.clone(), local));
            per_worker[0].push((first, l.tls, sites.clone()));
            for w in per_worker.iter_mut().skip(1) {
                let sock =
                    bind(local).with_context(|| format!("listener {}: binding {local}", l.name))?;
                w.push((sock, l.tls, sites.clone()));
            }
        }
    }
    let (health_tx, health_rx) = ProxyHealth::new();
    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    if !cpus.is_empty() {
        info!(?cpus, workers, "pinning each proxy worker to one CPU");
    }
    let mut threads = Vec::new();
    for (w, listeners) in per_worker.into_iter().enumerate() {
        let cpu = worker_cpus.get(w).copied();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a proxy runtime")?;
        let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
        let inbox = inboxes.remove(0);
        threads.push(
            std::thread::Builder::new()
                .name(format!("hapd-proxy-{w}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            warn!(worker = w, cpu, error = %e, "could not pin the proxy worker; it runs unpinned, and new connections are not steered by CPU load");
                            if let Some(s) = &shared.steer {
                                s.turn_off();
                            }
                        }
                    }
                    upstream::set_worker(w);
                    rt.block_on(worker(listeners, inbox, shared, stop_rx));
                    rt.shutdown_timeout(Duration::from_millis(100));
                })
                .context("starting a proxy thread")?,
        );
    }
    // Health checks, health reports and the certificate watcher.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the proxy control runtime")?;
    let view = Arc::new(ProxyView {
        shared: shared.clone(),
        routing: std::sync::Mutex::new(routing),
        listeners,
        fixed: (
            cfg.listener.iter().map(|l| l.get_ref().clone()).collect(),
            cfg.server.clone(),
        ),
        changes,
        control: rt.handle().clone(),
        health: health_rx.clone(),
    });
    let tls = shared.tls.clone();
    let mut stop_ctl = stop_rx;
    let ctl_view = view.clone();
    threads.push(
        std::thread::Builder::new()
            .name("hapd-proxy-ctl".into())
            .spawn(move || {
                upstream::set_worker(workers);
                rt.block_on(async move {
                    let pools = ctl_view.routing.lock().map(|r| r.routed_pools());
                    for pool in pools.iter().flatten() {
                        pool.spawn_checks();
                    }
                    tokio::spawn(report_health(ctl_view.clone(), health_tx));
                    if let Some(t) = tls {
                        tokio::spawn(watch_certificates(t));
                    }
                    stopped(&mut stop_ctl).await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .context("starting the proxy control thread")?,
    );
    Ok(ProxyHandle {
        stop: stop_tx,
        threads,
        health: health_rx,
        bound,
        view,
    })
}

/// The CPUs this process may run on (its affinity mask), lowest first; empty if unknown.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot read the CPU affinity; proxy workers run unpinned");
            Vec::new()
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> nix::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Waits for the stop request; returns the drain time.
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(d) = *stop.borrow_and_update() {
            return d;
        }
        if stop.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

/// One worker thread: accepts on its sockets until stopped, then drains.
async fn worker(
    listeners: Vec<WorkerListener>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<balance::Handed<Accepted>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    // Connections other workers hand over. This task outlives the accept loops: a connection
    // handed over just before the stop is served (and closed after its request) like the rest.
    let (handed_shared, handed_drain) = (shared.clone(), drain_rx.clone());
    tokio::spawn(async move {
        let me = upstream::worker();
        while let Some(h) = inbox.recv().await {
            adopt(h, me, &handed_shared, &handed_drain);
        }
    });
    let mut accepts = Vec::new();
    for (sock, tls, sites) in listeners {
        match TcpListener::from_std(sock) {
            Ok(l) => accepts.push(tokio::spawn(accept_loop(
                l,
                tls,
                sites,
                shared.clone(),
                drain_rx.clone(),
            ))),
            Err(e) => warn!("registering a listener: {e}"),
        }
    }
    let drain = stopped(&mut stop).await;
    for a in &accepts {
        a.abort();
    }
    shared.draining.store(true, Ordering::Release);
    let _ = drain_tx.send(true);
    let left = shared.connections.load(Ordering::Acquire);
    if left > 0 {
        info!("draining {left} connection(s) for up to {drain:?}");
    }
    let all_closed = async {
        loop {
            let notified = shared.idle.notified();
            if shared.connections.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(drain, all_closed).await.is_err() {
        warn!(
            "{} connection(s) still open after {drain:?}; closing them",
            shared.connections.load(Ordering::Acquire)
        );
    }
}

impl From<&crate::config::proxy::Server> for Limits {
    fn from(s: &crate::config::proxy::Server) -> Self {
        Limits {
            keepalive: s.keepalive_timeout.0,
            header_read: s.header_read_timeout.0,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
        }
    }
}

/// A listening socket; IP_FREEBIND lets it bind a VIP this node does not hold (yet),
/// SO_REUSEPORT lets every worker have one.
fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv4() {
        sock.set_freebind_v4(true)?;
    } else {
        sock.set_freebind_v6(true)?;
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    sites: Arc<ArcSwap<Sites>>,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
) {
    let me = upstream::worker();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let with = Accepted {
            peer,
            tls,
            sites: sites.clone(),
        };
        let steered = shared
            .steer
            .as_ref()
            .and_then(|s| s.place(me, || shared.balance.total()));
        let to = match steered {
            Some(to) => shared.balance.place_on(to),
            None => shared.balance.place(me),
        };
        if to == me {
            spawn_connection(stream, with, me, &shared, &drain);
            continue;
        }
        let handed = match stream.into_std() {
            Ok(stream) => shared.balance.hand(to, balance::Handed { stream, with }),
            Err(e) => {
                // Taken out of this worker's poller and not given away: it is lost, as an
                // accept error would have lost it.
                warn!(%peer, "handing a connection over: {e}");
                shared.closed(to);
                continue;
            }
        };
        // The other worker is stopping: serve it here after all.
        if let Err(h) = handed {
            shared.balance.recount(to, me);
            adopt(h, me, &shared, &drain);
        }
    }
}

/// Serves a connection handed over from another worker (or back from one that is stopping) on
/// this worker, `me`, registering it with this thread's poller first.
fn adopt(
    h: balance::Handed<Accepted>,
    me: usize,
    shared: &Arc<Shared>,
    drain: &watch::Receiver<bool>,
) {
    match TcpStream::from_std(h.stream) {
        Ok(stream) => spawn_connection(stream, h.with, me, shared, drain),
        Err(e) => {
            warn!(peer = %h.with.peer, "taking over a connection: {e}");
            shared.closed(me);
        }
    }
}

/// Serves a connection placed on worker `me` (this thread) in a task of its own.
fn spawn_connection(
    stream: TcpStream,
    with: Accepted,
    me: usize,
    shared: &Arc<Shared>,
    drain: &watch::Receiver<bool>,
) {
    let shared = shared.clone();
    let drain = drain.clone();
    tokio::spawn(async move {
        serve(stream, with.peer, with.tls, with.sites, &shared, drain).await;
        shared.closed(me);
    });
}

impl Shared {
    /// A connection placed on `worker` ended (served, or lost before it was).
    fn closed(&self, worker: usize) {
        self.balance.release(worker);
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    sites: Arc<ArcSwap<Sites>>,
    shared: &Arc<Shared>,
    drain: watch::Receiver<bool>,
) {
    if tls {
        // Boxed: a rustls connection is large, and a plain connection's task should not carry
        // room for one.
        Box::pin(serve_tls(stream, peer, sites, shared, drain)).await;
    } else {
        serve_plain(stream, peer, sites, shared, drain).await;
    }
}

async fn serve_plain(
    stream: TcpStream,
    peer: SocketAddr,
    sites: Arc<ArcSwap<Sites>>,
    shared: &Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) {
    let conn = http1::Conn {
        peer,
        client: headers::canonical(peer.ip()).to_string(),
        tls: false,
        sni: None,
        sites: &sites,
        shared,
    };
    if let Some((io, early)) = http1::serve(stream, &conn, Buf::new(), &mut drain).await {
        // HTTP/2 with prior knowledge (h2c): hyper takes it from the preface on.
        let io = h2::Rewind::new(io, early);
        // Boxed, like every HTTP/2 connection: an HTTP/1 connection's task stays small.
        Box::pin(run_h2(io, peer, false, None, sites, shared, drain)).await;
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    sites: Arc<ArcSwap<Sites>>,
    shared: &Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) {
    let client = headers::canonical(peer.ip()).to_string();
    let Some(store) = &shared.tls else { return };
    let configs = store.config();
    let stream = match tokio::time::timeout(
        shared.handshake_timeout,
        tls_stream::accept(stream, &configs),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let sni = stream.get_ref().1.server_name().map(str::to_string);
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(run_h2(stream, peer, true, sni, sites, shared, drain)).await;
        return;
    }
    let conn = http1::Conn {
        peer,
        client,
        tls: true,
        sni: sni.as_deref(),
        sites: &sites,
        shared,
    };
    if let Some((io, early)) = http1::serve(stream, &conn, Buf::new(), &mut drain).await {
        let io = h2::Rewind::new(io, early);
        Box::pin(run_h2(io, peer, true, sni, sites, shared, drain)).await;
    }
}

/// An HTTP/2 connection, until it ends, the proxy drains, or this node hands its VIPs over
/// (GOAWAY: the client knows which streams were served and opens a new connection).
async fn run_h2<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    sni: Option<String>,
    sites: Arc<ArcSwap<Sites>>,
    shared: &Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(H2Conn {
        peer,
        tls,
        sni,
        sites,
        server_header: shared.server_header,
        metrics: shared.metrics.clone(),
    });
    let svc = service_fn(move |req| h2::handle(conn.clone(), req));
    let c = shared.h2.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(c);
    let draining = async {
        loop {
            if *drain.borrow_and_update() {
                return;
            }
            if drain.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let mut handover = shared.handover_tx.subscribe();
    let handing_over = async {
        loop {
            if *handover.borrow_and_update() {
                return;
            }
            if handover.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::select! {
        r = c.as_mut() => r,
        () = draining => {
            c.as_mut().graceful_shutdown();
            c.await
        }
        () = handing_over => {
            c.as_mut().graceful_shutdown();
            c.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, "connection ended: {e}");
    }
}

/// Reports healthy while every route has an upstream server up.
async fn report_health(view: Arc<ProxyView>, health: ProxyHealth) {
    let mut rx = view.changes.subscribe();
    loop {
        let healthy = view
            .routing
            .lock()
            .is_ok_and(|r| r.routed_pools().iter().all(|p| p.available()));
        health.set(healthy);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn watch_certificates(tls: Arc<TlsStore>) {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = tls.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if t.files_changed() {
                t.reload("certificate files changed");
            }
        })
        .await;
    }
}

/// A certificate that expires within this is worth a warning from `hapd check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Checks what `start` would read, without binding: used by `hapd check`. Returns warnings:
/// certificates that expire within [`EXPIRY_WARNING`] or have expired.
pub fn check_files(cfg: &Config) -> anyhow::Result<Vec<crate::config::Warning>> {
    let mut warnings = Vec::new();
    if let Some(t) = &cfg.tls {
        if !t.certificate.is_empty() {
            tls::build(t).map_err(|e| anyhow!("{e:#}"))?;
        }
        for (i, c) in t.certificate.iter().enumerate() {
            if let Some(w) = tls::expiry_warning(&c.cert, std::time::SystemTime::now())? {
                warnings.push(crate::config::Warning {
                    key: format!("tls.certificate[{i}].cert"),
                    message: w,
                });
            }
        }
    }
    Ok(warnings)
}
