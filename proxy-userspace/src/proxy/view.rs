//! The running proxy as the admin endpoint and reloads see it ([`ProxyView`]): counters,
//! servers and certificates for `/status` and `/metrics`, `hapd reload`, the handover at a
//! graceful stop, and log reopening.
use std::net::IpAddr;
use std::{collections::HashMap, sync::Arc};

use anyhow::{anyhow, bail};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::info;

use super::{
    core::Core,
    log::LogFile,
    metrics,
    routing::{build_routing, Routing},
    site::Sites,
    tls,
    worker::Worker,
};
use crate::{config::Config, status::ServerStatus};

/// The running proxy as the admin endpoint and reloads see it.
pub struct ProxyView {
    pub(super) core: Arc<Core>,
    pub(super) routing: std::sync::Mutex<Routing>,
    /// The vhosts each open listener serves; a reload swaps them.
    pub(super) listeners: HashMap<String, Arc<ArcSwap<Sites>>>,
    /// The sections a reload cannot change.
    pub(super) fixed: (
        Vec<crate::config::proxy::Listener>,
        Option<crate::config::proxy::Server>,
    ),
    pub(super) changes: watch::Sender<u64>,
    /// The control thread's runtime: health checks of new pools run there.
    pub(super) control: tokio::runtime::Handle,
    /// The control thread (it runs the health checks).
    pub(super) control_worker: Worker,
    /// Threads that keep per-thread state (the workers and the control thread).
    pub(super) threads: usize,
    pub(super) health: watch::Receiver<bool>,
    /// Each worker thread's runtime (for the watchdog's liveness check).
    pub(super) workers: Vec<tokio::runtime::Handle>,
}

impl ProxyView {
    /// Whether every worker thread and the control thread run a task within `bound` (a
    /// wedged thread does not: the service manager's watchdog then restarts hapd).
    pub async fn threads_answer(&self, bound: std::time::Duration) -> bool {
        let tasks: Vec<_> = self
            .workers
            .iter()
            .chain(std::iter::once(&self.control))
            .map(|h| h.spawn(async {}))
            .collect();
        tokio::time::timeout(bound, futures::future::join_all(tasks))
            .await
            .is_ok_and(|r| r.iter().all(Result::is_ok))
    }

    /// Request counters and latency histograms.
    pub fn metrics(&self) -> metrics::Snapshot {
        self.core.serve.metrics.snapshot()
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.core.conns.open()
    }

    /// Client connections open now on each worker thread.
    pub fn worker_connections(&self) -> Vec<usize> {
        self.core.conns.balance.open()
    }

    /// Client connections placed on each worker thread since the start.
    pub fn worker_connections_total(&self) -> Vec<u64> {
        self.core.conns.balance.placed()
    }

    /// Log lines dropped because a log file's disk did not keep up, over the log files in use.
    pub fn log_lines_dropped(&self) -> u64 {
        self.routing
            .lock()
            .map_or(0, |r| r.logs.values().map(LogFile::dropped).sum())
    }

    /// New connections handed to a worker whose CPU had time to spare, since the start.
    pub fn steered_connections(&self) -> u64 {
        self.core.conns.steer.as_ref().map_or(0, |s| s.steered())
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
                    backup: s.backup,
                    up: s.is_up(),
                    outstanding: s.outstanding(),
                })
            })
            .collect()
    }

    /// The certificates being served.
    pub fn certificates(&self) -> Vec<tls::CertInfo> {
        self.core
            .serve
            .tls
            .as_ref()
            .map_or_else(Vec::new, |t| t.certificates())
    }

    /// The TLS configuration in use, when a listener serves TLS (the cluster's certificate
    /// sync reloads it after writing pushed files).
    pub fn tls(&self) -> Option<Arc<tls::TlsStore>> {
        self.core.serve.tls.clone()
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
        // Held until the new certificates are swapped in: a certificate reload or a pushed
        // certificate cannot land between the build and the swap and be undone by it.
        let gate = self.core.serve.tls.as_ref().map(|s| s.gate());
        let tls = match (&self.core.serve.tls, &cfg.tls) {
            (Some(_), Some(t)) => {
                let before = tls::stamps(t);
                Some((t, tls::build(t)?, before))
            }
            (Some(_), None) => bail!("[tls] removed while TLS listeners are open"),
            (None, _) => None,
        };
        let mut current = self
            .routing
            .lock()
            .map_err(|_| anyhow!("routing state poisoned"))?;
        let next = build_routing(cfg, Some(&current), &self.changes, self.threads)?;
        for name in self.listeners.keys() {
            if !next.sites.contains_key(name) {
                bail!("listener {name} would have no vhost: restart hapd to close it");
            }
        }
        // Nothing can fail from here on.
        if let (Some(store), Some((t, built, before)), Some(gate)) =
            (&self.core.serve.tls, tls, &gate)
        {
            store.replace(gate, t, built, before, why);
        }
        drop(gate);
        let old_pools = current.routed_pools();
        *current = next;
        for (name, slot) in &self.listeners {
            slot.store(current.sites[name].clone());
        }
        self.core.signals.reloaded();
        let new_pools = current.routed_pools();
        let _guard = self.control.enter();
        for p in &new_pools {
            if !old_pools.iter().any(|o| Arc::ptr_eq(o, p)) {
                p.spawn_checks(self.control_worker);
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

    /// This node hands `addrs` to another (a planned move; its guard sends their flows here
    /// until they end): ask every client on them to reconnect, which takes it to the new owner,
    /// without failing a request. HTTP/1 responses from now on carry `Connection: close` (the
    /// client sends its next request on a new connection; closing an idle connection instead
    /// would race with a request already on its way, so an idle one waits for its next
    /// request), HTTP/2 connections get GOAWAY (the client knows which streams were served).
    /// `on = false`: the node holds them again.
    pub fn hand_over(&self, addrs: &[IpAddr], on: bool) {
        self.core.signals.set_moving(addrs, on);
    }

    /// The handover window of `addrs` ended: connections still open to them close now.
    pub fn cut(&self, addrs: &[IpAddr]) {
        self.core.signals.cut(addrs);
    }

    /// The addresses handed over now (their connections end at request boundaries).
    pub fn handed_over_addrs(&self) -> Vec<IpAddr> {
        self.core.signals.moving_addrs()
    }

    /// The local addresses that have client connections open now.
    pub fn connected_addrs(&self) -> Vec<IpAddr> {
        self.core.conns.addrs()
    }

    /// Client connections open now to any of `addrs`.
    pub fn connections_on(&self, addrs: &[IpAddr]) -> usize {
        self.core.conns.open_on(addrs)
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
