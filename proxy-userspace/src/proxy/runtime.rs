//! The proxy's threads: one single-threaded runtime per CPU (the workers, pinned to their
//! CPUs where the affinity allows), and a control thread for health checks, health reports
//! and the certificate watcher. [`start`] builds everything that can fail (certificates,
//! logs, listeners) before any thread starts.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use super::{
    accept::{self, WorkerListener},
    balance,
    core::{Accepted, Conns, Core, ServeCtx, Signals},
    metrics::Metrics,
    routing::build_routing,
    steer::Steer,
    tls::TlsStore,
    view::ProxyView,
    worker::Worker,
    Limits,
};
use crate::{config::Config, health::ProxyHealth};

/// A running proxy.
pub struct ProxyHandle {
    stop: watch::Sender<Option<Duration>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The proxy's health for `track_proxy`.
    pub health: watch::Receiver<bool>,
    /// Where each listener is bound (in config order), useful when a port was 0.
    pub bound: Vec<(String, std::net::SocketAddr)>,
    /// Status, metrics and reload.
    pub view: Arc<ProxyView>,
    /// A duplicate of every listening socket, for a successor process (a hitless upgrade).
    sockets: Vec<(SocketAddr, OwnedFd)>,
    /// Whether the workers accept: a successor's wait until it commits, a predecessor's stop
    /// once it has.
    accepting: Arc<watch::Sender<bool>>,
}

/// How [`start_with`] opens its listeners.
pub struct Listen {
    /// Listening sockets of the process this one succeeds: used for the addresses they are
    /// bound to, before any new socket is bound.
    pub inherited: Vec<std::net::TcpListener>,
    /// Accept from the start (a successor waits for [`ProxyHandle::accept`]).
    pub accepting: bool,
}

/// How long connections told to close at the end of a drain have to do so (see
/// [`ProxyHandle::retire`]).
const CUT_GRACE: Duration = Duration::from_millis(2500);

impl ProxyHandle {
    /// A duplicate of every listening socket with its address.
    pub fn sockets(&self) -> anyhow::Result<Vec<(SocketAddr, OwnedFd)>> {
        self.sockets
            .iter()
            .map(|(a, fd)| Ok((*a, fd.try_clone().context("duplicating a listener")?)))
            .collect()
    }

    /// What starts accepting (`true`, a successor that committed) or stops it.
    pub fn accept_gate(&self) -> Arc<watch::Sender<bool>> {
        self.accepting.clone()
    }

    /// A successor accepts on our sockets now: stop accepting, end every connection at a
    /// request boundary as a planned move does (HTTP/1.1 `Connection: close` on its next
    /// response, an idle one left to its next request, HTTP/2 GOAWAY), tell what is still open
    /// at `drain` to close (a WebSocket gets its 1001 close), give them [`CUT_GRACE`], then
    /// stop. Returns how many connections were open and how long they took.
    pub fn retire(self, drain: Duration) -> (usize, Duration) {
        self.accepting.send_replace(false);
        let started = Instant::now();
        let open = self.view.connections();
        let mut cut: Option<Instant> = None;
        loop {
            // Again each round: a connection accepted just before the stop counts too.
            let addrs = self.view.core.conns.addrs();
            self.view.hand_over(&addrs, true);
            if self.view.connections() == 0 {
                break;
            }
            match cut {
                None if started.elapsed() >= drain => {
                    warn!(
                        "{} connection(s) still open after {drain:?}; telling them to close",
                        self.view.connections()
                    );
                    self.view.cut(&addrs);
                    cut = Some(Instant::now());
                }
                Some(at) if at.elapsed() >= CUT_GRACE => break,
                Some(_) => self.view.cut(&addrs),
                None => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        self.stop(Duration::ZERO);
        (open, took)
    }

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

/// Loads certificates, opens logs, binds the listeners and starts serving.
pub fn start(cfg: &Config) -> anyhow::Result<ProxyHandle> {
    start_with(
        cfg,
        Listen {
            inherited: Vec::new(),
            accepting: true,
        },
    )
}

/// As [`start`], with the listening sockets of a predecessor (see [`Listen`]).
pub fn start_with(cfg: &Config, listen: Listen) -> anyhow::Result<ProxyHandle> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    // The workers and the control thread each keep their own upstream connections.
    let threads = workers + 1;
    let control = Worker(workers);
    let limits = cfg
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
    let routing = build_routing(cfg, None, &changes, threads)?;

    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.keepalive))
        .keep_alive_timeout(limits.header_read);
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
    // Only where asked for (see `server.steer_connections`).
    let steer = if cfg.server.as_ref().is_some_and(|s| s.steer_connections) {
        Steer::new(worker_cpus.clone())
    } else {
        None
    };
    let (balance, mut inboxes) = balance::Balance::new(workers);
    let core = Arc::new(Core {
        serve: ServeCtx {
            h2,
            tls,
            limits,
            server_header,
            handshake_timeout: limits.header_read,
            metrics: Arc::new(Metrics::new(threads)),
        },
        signals: Signals::new(),
        conns: Conns::new(balance, steer),
    });

    // Each worker thread binds its own socket per address (SO_REUSEPORT) and the kernel spreads
    // connections over them: a connection, its upstream connections and their tasks stay on
    // one thread, with no wake-ups across threads.
    let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut listeners = HashMap::new();
    let mut sockets = Vec::new();
    // The predecessor's sockets by address. Each is in the address's SO_REUSEPORT group with
    // connections perhaps queued: all are used (a worker may get more than one), none closed.
    let mut inherited: HashMap<SocketAddr, Vec<std::net::TcpListener>> = HashMap::new();
    for l in listen.inherited {
        let a = l.local_addr().context("an inherited listener's address")?;
        l.set_nonblocking(true)?;
        inherited.entry(a).or_default().push(l);
    }
    for l in &cfg.listener {
        let l = l.get_ref();
        let Some(sites) = routing.sites.get(&l.name) else {
            warn!(listener = %l.name, "no vhost uses this listener; it is not opened");
            continue;
        };
        let sites = Arc::new(ArcSwap::new(sites.clone()));
        listeners.insert(l.name.clone(), sites.clone());
        for addr in &l.bind {
            let mut socks = inherited.remove(addr).unwrap_or_default();
            let taken = socks.len();
            if socks.is_empty() {
                socks.push(
                    accept::bind(*addr)
                        .with_context(|| format!("listener {}: binding {addr}", l.name))?,
                );
            }
            // Port 0: the others take the port the first one got.
            let local = socks[0].local_addr()?;
            // Inherited sockets are the address's whole SO_REUSEPORT group: one bound now
            // would take a share of new connections before this process accepts (a successor
            // waits for its commit), and lose them if it never does.
            while taken == 0 && socks.len() < workers {
                socks.push(
                    accept::bind(local)
                        .with_context(|| format!("listener {}: binding {local}", l.name))?,
                );
            }
            info!(listener = %l.name, %local, tls = l.tls, workers, inherited = taken, "listening");
            bound.push((l.name.clone(), local));
            for (i, sock) in socks.into_iter().enumerate() {
                sockets.push((local, OwnedFd::from(sock.try_clone()?)));
                per_worker[i % workers].push((sock, l.tls, sites.clone()));
            }
        }
    }
    for (addr, socks) in inherited {
        warn!(
            %addr,
            sockets = socks.len(),
            "the process this one succeeds listened here and the config no longer does: closed"
        );
    }
    let (accepting, accepting_rx) = watch::channel(listen.accepting);
    let (health_tx, health_rx) = ProxyHealth::new();
    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    if !cpus.is_empty() {
        info!(?cpus, workers, "pinning each proxy worker to one CPU");
    }
    let mut handles = Vec::new();
    let mut worker_rts = Vec::new();
    for (w, listeners) in per_worker.into_iter().enumerate() {
        let cpu = worker_cpus.get(w).copied();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a proxy runtime")?;
        worker_rts.push(rt.handle().clone());
        let (core, stop_rx, accepting) = (core.clone(), stop_rx.clone(), accepting_rx.clone());
        let inbox = inboxes.remove(0);
        handles.push(
            std::thread::Builder::new()
                .name(format!("hapd-proxy-{w}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = pin_to(cpu) {
                            warn!(worker = w, cpu, error = %e, "could not pin the proxy worker; it runs unpinned, and new connections are not steered by CPU load");
                            if let Some(s) = &core.conns.steer {
                                s.turn_off();
                            }
                        }
                    }
                    rt.block_on(worker(
                        Worker(w),
                        listeners,
                        inbox,
                        core,
                        stop_rx,
                        accepting,
                    ));
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
        core: core.clone(),
        routing: std::sync::Mutex::new(routing),
        listeners,
        fixed: (
            cfg.listener.iter().map(|l| l.get_ref().clone()).collect(),
            cfg.server.clone(),
        ),
        changes,
        control: rt.handle().clone(),
        control_worker: control,
        threads,
        health: health_rx.clone(),
        workers: worker_rts,
    });
    let tls = core.serve.tls.clone();
    let mut stop_ctl = stop_rx;
    let ctl_view = view.clone();
    handles.push(
        std::thread::Builder::new()
            .name("hapd-proxy-ctl".into())
            .spawn(move || {
                rt.block_on(async move {
                    let pools = ctl_view.routing.lock().map(|r| r.routed_pools());
                    for pool in pools.iter().flatten() {
                        pool.spawn_checks(control);
                    }
                    tokio::spawn(report_health(ctl_view.clone(), health_tx));
                    if let Some(t) = tls {
                        tokio::spawn(super::cert_watch::run(t));
                    }
                    stopped(&mut stop_ctl).await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .context("starting the proxy control thread")?,
    );
    Ok(ProxyHandle {
        stop: stop_tx,
        threads: handles,
        health: health_rx,
        bound,
        view,
        sockets,
        accepting: Arc::new(accepting),
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

/// One worker thread, `me`: accepts on its sockets until stopped, then drains.
async fn worker(
    me: Worker,
    listeners: Vec<WorkerListener>,
    mut inbox: mpsc::UnboundedReceiver<balance::Handed<Accepted>>,
    core: Arc<Core>,
    mut stop: watch::Receiver<Option<Duration>>,
    accepting: watch::Receiver<bool>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    // Connections other workers hand over. This task outlives the accept loops: a connection
    // handed over just before the stop is served (and closed after its request) like the rest.
    let (handed_core, handed_drain) = (core.clone(), drain_rx.clone());
    tokio::spawn(async move {
        while let Some(h) = inbox.recv().await {
            accept::adopt(h, me, &handed_core, &handed_drain);
        }
    });
    let mut accepts = Vec::new();
    for (sock, tls, sites) in listeners {
        match TcpListener::from_std(sock) {
            Ok(l) => accepts.push(tokio::spawn(gated(
                accepting.clone(),
                accept::accept_loop(l, tls, sites, me, core.clone(), drain_rx.clone()),
            ))),
            Err(e) => warn!("registering a listener: {e}"),
        }
    }
    let drain = stopped(&mut stop).await;
    for a in &accepts {
        a.abort();
    }
    core.signals.drain();
    let _ = drain_tx.send(true);
    let left = core.conns.open();
    if left > 0 {
        info!("draining {left} connection(s) for up to {drain:?}");
    }
    if tokio::time::timeout(drain, core.conns.all_closed())
        .await
        .is_err()
    {
        warn!(
            "{} connection(s) still open after {drain:?}; closing them",
            core.conns.open()
        );
    }
}

/// Runs `accept` while `accepting` says so: from when it turns true until it turns false
/// (the socket stays open, in the successor too, with its queue).
async fn gated(
    mut accepting: watch::Receiver<bool>,
    accept: impl std::future::Future<Output = ()>,
) {
    if accepting.wait_for(|on| *on).await.is_err() {
        return;
    }
    tokio::select! {
        () = accept => {}
        _ = accepting.wait_for(|on| !*on) => {}
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
