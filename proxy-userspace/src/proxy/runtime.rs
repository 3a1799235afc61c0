//! The proxy's threads: one single-threaded runtime per CPU (the workers, pinned to their
//! CPUs where the affinity allows), and a control thread for health checks, health reports
//! and the certificate watcher. [`start`] builds everything that can fail (certificates,
//! logs, listeners) before any thread starts.
use std::{collections::HashMap, sync::Arc, time::Duration};

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
    Limits, CERT_POLL,
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

/// Loads certificates, opens logs, binds the listeners and starts serving.
pub fn start(cfg: &Config) -> anyhow::Result<ProxyHandle> {
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
    let steer = Steer::new(worker_cpus.clone());
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
    for l in &cfg.listener {
        let l = l.get_ref();
        let Some(sites) = routing.sites.get(&l.name) else {
            warn!(listener = %l.name, "no vhost uses this listener; it is not opened");
            continue;
        };
        let sites = Arc::new(ArcSwap::new(sites.clone()));
        listeners.insert(l.name.clone(), sites.clone());
        for addr in &l.bind {
            let first = accept::bind(*addr)
                .with_context(|| format!("listener {}: binding {addr}", l.name))?;
            // Port 0: the others take the port the first one got.
            let local = first.local_addr()?;
            info!(listener = %l.name, %local, tls = l.tls, workers, "listening");
            bound.push((l.name.clone(), local));
            per_worker[0].push((first, l.tls, sites.clone()));
            for w in per_worker.iter_mut().skip(1) {
                let sock = accept::bind(local)
                    .with_context(|| format!("listener {}: binding {local}", l.name))?;
                w.push((sock, l.tls, sites.clone()));
            }
        }
    }
    let (health_tx, health_rx) = ProxyHealth::new();
    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    if !cpus.is_empty() {
        info!(?cpus, workers, "pinning each proxy worker to one CPU");
    }
    let mut handles = Vec::new();
    for (w, listeners) in per_worker.into_iter().enumerate() {
        let cpu = worker_cpus.get(w).copied();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a proxy runtime")?;
        let (core, stop_rx) = (core.clone(), stop_rx.clone());
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
                    rt.block_on(worker(Worker(w), listeners, inbox, core, stop_rx));
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
        threads: handles,
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

/// One worker thread, `me`: accepts on its sockets until stopped, then drains.
async fn worker(
    me: Worker,
    listeners: Vec<WorkerListener>,
    mut inbox: mpsc::UnboundedReceiver<balance::Handed<Accepted>>,
    core: Arc<Core>,
    mut stop: watch::Receiver<Option<Duration>>,
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
            Ok(l) => accepts.push(tokio::spawn(accept::accept_loop(
                l,
                tls,
                sites,
                me,
                core.clone(),
                drain_rx.clone(),
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
