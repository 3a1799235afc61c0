//! What the proxy's connections share, in three narrow parts: how to serve ([`ServeCtx`]),
//! what the node is doing ([`Signals`]) and the connections themselves ([`Conns`]). A
//! connection's serve loop borrows the first two; accepting and placing connections uses the
//! third; the view (status, reload) reads all three.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Notify};

use super::{balance, metrics::Metrics, site::Sites, steer::Steer, tls::TlsStore, Limits};

/// Everything a connection's tasks share.
pub(super) struct Core {
    pub serve: ServeCtx,
    pub signals: Signals,
    pub conns: Conns,
}

/// How connections are served: fixed at start.
pub(super) struct ServeCtx {
    pub h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub tls: Option<Arc<TlsStore>>,
    pub limits: Limits,
    pub server_header: bool,
    pub handshake_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// What the node asks of open connections: take a reload's vhosts, close after the request
/// in progress (the proxy stops), or move to the new master (a handover).
pub(super) struct Signals {
    /// Bumped by every reload: connections take the new vhosts at their next request.
    generation: AtomicU64,
    /// The proxy is stopping: connections close after the request in progress.
    draining: AtomicBool,
    /// This node hands its VIPs over (see [`super::ProxyView::begin_handover`]).
    handover: AtomicBool,
    /// The same for HTTP/2 connections, which wait for it.
    handover_tx: watch::Sender<bool>,
}

impl Signals {
    pub fn new() -> Signals {
        Signals {
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            handover_tx: watch::channel(false).0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn reloaded(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether responses now end their connection (this node hands its VIPs over).
    pub fn handing_over(&self) -> bool {
        self.handover.load(Ordering::Acquire)
    }

    pub fn begin_handover(&self) {
        self.handover.store(true, Ordering::Release);
        let _ = self.handover_tx.send(true);
    }

    /// Resolves once a handover begins.
    pub async fn handed_over(&self) {
        let mut rx = self.handover_tx.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The open client connections: how many, on which worker, and where new ones go.
pub(super) struct Conns {
    open: AtomicUsize,
    /// Notified when the last connection closes (the drain waits for it).
    idle: Notify,
    /// Client connections per worker, and the inboxes of connections handed between them.
    pub balance: balance::Balance<Accepted>,
    /// Steers new connections toward a CPU with time to spare (pinned workers only).
    pub steer: Option<Steer>,
}

impl Conns {
    pub fn new(balance: balance::Balance<Accepted>, steer: Option<Steer>) -> Conns {
        Conns {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            balance,
            steer,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A connection was accepted.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection placed on `worker` ended (served, or lost before it was).
    pub fn closed(&self, worker: usize) {
        self.balance.release(worker);
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What comes with an accepted connection: the client's address, whether the listener speaks
/// TLS, and the listener's vhosts.
pub(super) struct Accepted {
    pub peer: SocketAddr,
    pub tls: bool,
    pub sites: Arc<ArcSwap<Sites>>,
}
