//! One client connection from accept to close: the TLS handshake on a TLS listener, then
//! HTTP/1 (`http1/`) or, by ALPN or the HTTP/2 preface, HTTP/2 (`h2/`).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::watch};
use tracing::debug;

use super::{
    buf::Buf,
    core::{Accepted, Core},
    h2::{self, H2Conn},
    headers, http1,
    site::Sites,
    tls_stream,
    worker::Worker,
};

/// Serves the connection `stream` on worker `me` until it ends or the proxy has drained.
pub(super) async fn serve(
    stream: TcpStream,
    with: Accepted,
    me: Worker,
    core: &Core,
    drain: watch::Receiver<bool>,
) {
    let Accepted {
        peer,
        local,
        tls,
        sites,
    } = with;
    let ends = Ends { peer, local };
    if tls {
        // Boxed: a rustls connection is large, and a plain connection's task should not carry
        // room for one.
        Box::pin(serve_tls(stream, ends, sites, me, core, drain)).await;
    } else {
        serve_plain(stream, ends, sites, me, core, drain).await;
    }
}

/// The two ends of a client connection.
#[derive(Clone, Copy)]
struct Ends {
    peer: SocketAddr,
    local: IpAddr,
}

async fn serve_plain(
    stream: TcpStream,
    ends: Ends,
    sites: Arc<ArcSwap<Sites>>,
    me: Worker,
    core: &Core,
    mut drain: watch::Receiver<bool>,
) {
    let conn = h1_conn(ends, false, None, &sites, me, core);
    if let Some((io, early)) = http1::serve(stream, &conn, Buf::new(), &mut drain).await {
        // HTTP/2 with prior knowledge (h2c): hyper takes it from the preface on.
        let io = h2::Rewind::new(io, early);
        // Boxed, like every HTTP/2 connection: an HTTP/1 connection's task stays small.
        Box::pin(run_h2(io, ends, false, None, sites, me, core, drain)).await;
    }
}

async fn serve_tls(
    stream: TcpStream,
    ends: Ends,
    sites: Arc<ArcSwap<Sites>>,
    me: Worker,
    core: &Core,
    mut drain: watch::Receiver<bool>,
) {
    let Some(store) = &core.serve.tls else { return };
    let peer = ends.peer;
    let configs = store.config();
    let stream = match tokio::time::timeout(
        core.serve.handshake_timeout,
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
        Box::pin(run_h2(stream, ends, true, sni, sites, me, core, drain)).await;
        return;
    }
    let conn = h1_conn(ends, true, sni.as_deref(), &sites, me, core);
    if let Some((io, early)) = http1::serve(stream, &conn, Buf::new(), &mut drain).await {
        let io = h2::Rewind::new(io, early);
        Box::pin(run_h2(io, ends, true, sni, sites, me, core, drain)).await;
    }
}

/// What an HTTP/1 connection's requests share.
fn h1_conn<'a>(
    ends: Ends,
    tls: bool,
    sni: Option<&'a str>,
    sites: &'a ArcSwap<Sites>,
    me: Worker,
    core: &'a Core,
) -> http1::Conn<'a> {
    http1::Conn {
        peer: ends.peer,
        local: ends.local,
        client: headers::canonical(ends.peer.ip()).to_string(),
        tls,
        sni,
        sites,
        serve: &core.serve,
        signals: &core.signals,
        worker: me,
    }
}

/// An HTTP/2 connection, until it ends, the proxy drains, or this node hands its address over
/// (GOAWAY: the client knows which streams were served and opens a new connection; at the end
/// of the handover window what is left is cut).
#[allow(clippy::too_many_arguments)]
async fn run_h2<IO>(
    io: IO,
    ends: Ends,
    tls: bool,
    sni: Option<String>,
    sites: Arc<ArcSwap<Sites>>,
    me: Worker,
    core: &Core,
    mut drain: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = ends.peer;
    let conn = Arc::new(H2Conn {
        peer,
        tls,
        sni,
        sites,
        server_header: core.serve.server_header,
        metrics: core.serve.metrics.clone(),
        worker: me,
    });
    let svc = service_fn(move |req| h2::handle(conn.clone(), req));
    let c = core.serve.h2.serve_connection(TokioIo::new(io), svc);
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
    let result = tokio::select! {
        r = c.as_mut() => r,
        () = draining => {
            c.as_mut().graceful_shutdown();
            c.await
        }
        () = core.signals.handed_over(ends.local) => {
            c.as_mut().graceful_shutdown();
            tokio::select! {
                r = c => r,
                () = core.signals.cut_off(ends.local) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, "connection ended: {e}");
    }
}
