//! Accepting client connections and placing each on a worker: the kernel spreads new
//! connections over the workers' sockets (SO_REUSEPORT); a worker whose CPU is busier than
//! another's hands a new connection over ([`super::steer`], [`super::balance`]), and the
//! connection is served on the worker it lands on ([`super::conn::serve`]).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::warn;

use super::{
    balance, conn,
    core::{Accepted, Core},
    site::Sites,
    worker::Worker,
};

/// One worker's socket of a listener: the socket, whether it speaks TLS, and its vhosts.
pub(super) type WorkerListener = (std::net::TcpListener, bool, Arc<ArcSwap<Sites>>);

/// A listening socket; IP_FREEBIND lets it bind a VIP this node does not hold (yet),
/// SO_REUSEPORT lets every worker have one.
pub(super) fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
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

/// Accepts on `listener` (worker `me`'s socket) until aborted, and places each connection.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    sites: Arc<ArcSwap<Sites>>,
    me: Worker,
    core: Arc<Core>,
    drain: watch::Receiver<bool>,
) {
    // A listener on a wildcard address learns each connection's address from the socket.
    let bound = listener
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
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
        let local = match bound {
            Some(ip) => ip,
            None => match stream.local_addr() {
                Ok(a) => a.ip(),
                Err(e) => {
                    warn!(%peer, "accept: the connection's own address: {e}");
                    continue;
                }
            },
        };
        core.conns.opened(local);
        let with = Accepted {
            peer,
            local,
            tls,
            sites: sites.clone(),
        };
        let conns = &core.conns;
        let steered = conns
            .steer
            .as_ref()
            .and_then(|s| s.place(me.0, || conns.balance.total()));
        let to = match steered {
            Some(to) => conns.balance.place_on(to),
            None => conns.balance.place(me.0),
        };
        if to == me.0 {
            spawn_connection(stream, with, me, &core, &drain);
            continue;
        }
        let handed = match stream.into_std() {
            Ok(stream) => conns.balance.hand(to, balance::Handed { stream, with }),
            Err(e) => {
                // Taken out of this worker's poller and not given away: it is lost, as an
                // accept error would have lost it.
                warn!(%peer, "handing a connection over: {e}");
                conns.closed(to, local);
                continue;
            }
        };
        // The other worker is stopping: serve it here after all.
        if let Err(h) = handed {
            conns.balance.recount(to, me.0);
            adopt(h, me, &core, &drain);
        }
    }
}

/// Serves a connection handed over from another worker (or back from one that is stopping) on
/// this worker, `me`, registering it with this thread's poller first.
pub(super) fn adopt(
    h: balance::Handed<Accepted>,
    me: Worker,
    core: &Arc<Core>,
    drain: &watch::Receiver<bool>,
) {
    match TcpStream::from_std(h.stream) {
        Ok(stream) => spawn_connection(stream, h.with, me, core, drain),
        Err(e) => {
            warn!(peer = %h.with.peer, "taking over a connection: {e}");
            core.conns.closed(me.0, h.with.local);
        }
    }
}

/// Serves a connection placed on worker `me` (this thread) in a task of its own.
fn spawn_connection(
    stream: TcpStream,
    with: Accepted,
    me: Worker,
    core: &Arc<Core>,
    drain: &watch::Receiver<bool>,
) {
    let core = core.clone();
    let drain = drain.clone();
    tokio::spawn(async move {
        let local = with.local;
        conn::serve(stream, with, me, &core, drain).await;
        core.conns.closed(me.0, local);
    });
}
