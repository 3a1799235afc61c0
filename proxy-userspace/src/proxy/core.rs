//! What the proxy's connections share, in three narrow parts: how to serve ([`ServeCtx`]),
//! what the node is doing ([`Signals`]) and the connections themselves ([`Conns`]). A
//! connection's serve loop borrows the first two; accepting and placing connections uses the
//! third; the view (status, reload) reads all three.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
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
/// in progress (the proxy stops), or leave an address this node hands over (a planned move).
pub(super) struct Signals {
    /// Bumped by every reload: connections take the new vhosts at their next request.
    generation: AtomicU64,
    /// The proxy is stopping: connections close after the request in progress.
    draining: AtomicBool,
    /// Whether any address is being handed over (the common answer without a lock).
    moving_any: AtomicBool,
    /// The local addresses being handed over (see [`super::ProxyView::hand_over`]).
    moving: watch::Sender<Arc<Vec<IpAddr>>>,
    /// The local addresses whose handover window ended: what is left on them closes now.
    cut: watch::Sender<Arc<Vec<IpAddr>>>,
}

impl Signals {
    pub fn new() -> Signals {
        Signals {
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            moving_any: AtomicBool::new(false),
            moving: watch::channel(Arc::new(Vec::new())).0,
            cut: watch::channel(Arc::new(Vec::new())).0,
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

    /// Whether responses on a connection to `local` now end it (the address is handed over).
    pub fn handing_over(&self, local: IpAddr) -> bool {
        self.moving_any.load(Ordering::Acquire) && self.moving.borrow().contains(&local)
    }

    /// Adds `addrs` to the addresses handed over (`on`), or takes them back (the node holds
    /// them again).
    pub fn set_moving(&self, addrs: &[IpAddr], on: bool) {
        self.moving.send_modify(|s| {
            *s = Arc::new(updated(s, addrs, on));
            self.moving_any.store(!s.is_empty(), Ordering::Release);
        });
        if !on {
            self.cut
                .send_modify(|s| *s = Arc::new(updated(s, addrs, false)));
        }
    }

    /// The addresses handed over now.
    pub fn moving_addrs(&self) -> Vec<IpAddr> {
        self.moving.borrow().to_vec()
    }

    /// Ends the handover of `addrs`: connections still open to them close now.
    pub fn cut(&self, addrs: &[IpAddr]) {
        self.cut
            .send_modify(|s| *s = Arc::new(updated(s, addrs, true)));
    }

    /// Resolves once `local` is handed over.
    pub async fn handed_over(&self, local: IpAddr) {
        wait_for(self.moving.subscribe(), local).await
    }

    /// Resolves once the handover window of `local` has ended.
    pub async fn cut_off(&self, local: IpAddr) {
        wait_for(self.cut.subscribe(), local).await
    }
}

/// `set` without `addrs`, and with them if `add`.
fn updated(set: &[IpAddr], addrs: &[IpAddr], add: bool) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = set.iter().copied().filter(|a| !addrs.contains(a)).collect();
    if add {
        v.extend_from_slice(addrs);
    }
    v
}

/// Resolves once `rx`'s set holds `local`.
async fn wait_for(mut rx: watch::Receiver<Arc<Vec<IpAddr>>>, local: IpAddr) {
    loop {
        if rx.borrow_and_update().contains(&local) {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The open client connections: how many, on which worker, and where new ones go.
pub(super) struct Conns {
    open: AtomicUsize,
    /// Open connections per local address (the drain of a planned move waits for its own).
    by_addr: Mutex<HashMap<IpAddr, usize>>,
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
            by_addr: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            balance,
            steer,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A connection to `local` was accepted.
    pub fn opened(&self, local: IpAddr) {
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut m) = self.by_addr.lock() {
            *m.entry(local).or_default() += 1;
        }
    }

    /// The addresses that have connections open now.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.by_addr
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Connections open now to any of `addrs`.
    pub fn open_on(&self, addrs: &[IpAddr]) -> usize {
        self.by_addr
            .lock()
            .map(|m| addrs.iter().filter_map(|a| m.get(a)).sum())
            .unwrap_or(0)
    }

    /// A connection to `local` placed on `worker` ended (served, or lost before it was).
    pub fn closed(&self, worker: usize, local: IpAddr) {
        if let Ok(mut m) = self.by_addr.lock() {
            if let Some(n) = m.get_mut(&local) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&local);
                }
            }
        }
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

/// What comes with an accepted connection: the client's and our address, whether the listener speaks
/// TLS, and the listener's vhosts.
pub(super) struct Accepted {
    pub peer: SocketAddr,
    /// The address the client connected to (a VIP, for a listener on a wildcard address).
    pub local: IpAddr,
    pub tls: bool,
    pub sites: Arc<ArcSwap<Sites>>,
}
