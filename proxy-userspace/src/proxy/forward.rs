//! Forwarding a request: the one upstream call, for HTTP/1 and HTTP/2 alike: pick a server
//! of the route's pool, take a kept-alive connection of this thread or connect, send the
//! request ([`Attempt::send`], the protocol's part), and when that fails decide what follows:
//!
//! - a connection that cannot be made ejects the server (passive health) and the request goes
//!   to the next server not tried yet; an idempotent request that a server drops before any
//!   of its answer reached the client goes to one other server (like nginx's
//!   `proxy_next_upstream error`, but once, and without marking the server down);
//! - a kept-alive connection the server had closed before the request reached it (see
//!   [`UpError::stale`]) is retried once, on a new connection to the same server, when the
//!   request may be sent again ([`Attempt::retriable`]);
//! - any other failure before the answer reached the client becomes the proxy's own answer:
//!   504 when the upstream was silent for the vhost's timeout, else 502; 503 when no server
//!   of the pool is up, 502 when none accepted a connection.
//!
//! Every such failure is written to the vhost's error log and the daemon's log.
use std::{future::Future, net::SocketAddr, sync::Arc};

use super::{
    headers::Answer,
    site::Site,
    upstream::{Busy, Server, Tried, UpConn, UpError},
    worker::Worker,
};

/// How one attempt on one upstream connection failed.
pub enum Failed<B> {
    /// Before any of the answer reached the client: retried (a stale connection) or answered
    /// for the upstream by the call.
    Upstream(UpError),
    /// Anything else (the client went away or sent a broken body, the answer broke off
    /// midway): the protocol's to handle.
    Other(B),
}

/// The protocol's part of a call: its request, made for a server, sent on a connection.
pub trait Attempt {
    /// What a completed exchange reports.
    type Done;
    /// The protocol's own failures ([`Failed::Other`]).
    type Broke;

    /// Whether the request may go again on a new connection after a kept-alive one turned out
    /// closed: idempotent, and no byte of its body taken from the client yet.
    fn retriable(&self) -> bool;

    /// Whether it needs a connection of its own (a protocol upgrade): never a kept-alive one.
    fn fresh(&self) -> bool {
        false
    }

    /// Addresses the request to `server` (its `Host`, unless the vhost keeps the client's).
    fn aim(&mut self, server: &Server);

    /// Sends the request on `conn` and relays the answer; `busy` counts the request against
    /// the server (least-outstanding balancing) until it is dropped or kept.
    fn send(
        &mut self,
        server: &Arc<Server>,
        conn: UpConn,
        busy: Busy<'_>,
    ) -> impl Future<Output = Result<Self::Done, Failed<Self::Broke>>>;
}

/// How a call ended.
pub enum Outcome<D, B> {
    /// The exchange completed.
    Done(D),
    /// The protocol's own failure, passed through.
    Broke(B),
    /// The proxy answers for the upstream; the failure is logged already.
    Answer(Answer),
}

/// Forwards a request on `site`'s route `route` from worker `w`, for the client at `client`
/// (named in the logs).
pub async fn call<A: Attempt>(
    w: Worker,
    site: &Site,
    route: usize,
    client: SocketAddr,
    a: &mut A,
) -> Outcome<A::Done, A::Broke> {
    let pool = &site.routes[route].pool;
    let mut tried = Tried::default();
    // A request one server dropped goes to one other server at most: a request that makes
    // servers crash (a "query of death") must not take the whole pool down.
    let mut dropped = false;
    'servers: loop {
        let Some(i) = pool.pick(w, tried) else {
            let (status, why) = if tried.none() {
                (503, "no server is up")
            } else if dropped {
                (502, "the servers tried dropped the request")
            } else {
                (502, "no server accepted a connection")
            };
            site.error(client, &format!("upstream {}: {why}", pool.name));
            return Outcome::Answer(Answer::new(status, "The service is not available"));
        };
        let server = &pool.servers[i];
        a.aim(server);
        let mut fresh = a.fresh();
        let mut retried = false;
        loop {
            let busy = Busy::new(server, w);
            let idle = if fresh {
                None
            } else {
                server.idle_connection(w, !a.retriable())
            };
            let conn = match idle {
                Some(c) => c,
                None => match server.connect(pool.connect_timeout).await {
                    Ok(s) => UpConn::new(s),
                    Err(why) => {
                        drop(busy);
                        pool.eject(i, &why);
                        site.error(
                            client,
                            &format!("upstream {} server {}: {why}", pool.name, server.authority),
                        );
                        tried.add(i);
                        continue 'servers;
                    }
                },
            };
            let reused = conn.reused;
            match a.send(server, conn, busy).await {
                Ok(done) => return Outcome::Done(done),
                Err(Failed::Upstream(e)) if !retried && a.retriable() && e.stale(reused) => {
                    // The server closed the kept-alive connection before the request reached
                    // it: the same request again, on a new connection.
                    retried = true;
                    fresh = true;
                }
                Err(Failed::Upstream(e)) if a.retriable() && e.dropped() && !dropped => {
                    // The server dropped a request before any of the answer reached the
                    // client (it stopped or crashed under it): the request goes to one other
                    // server. The server is not ejected for it (a pool of one would then
                    // answer 503, where nginx never marks a lone server down); a refused
                    // connection or its health check takes it out.
                    dropped = true;
                    let why = format!("dropped a request without an answer ({e})");
                    site.error(
                        client,
                        &format!("upstream {} server {}: {why}", pool.name, server.authority),
                    );
                    tried.add(i);
                    continue 'servers;
                }
                Err(Failed::Upstream(e)) => {
                    let (status, msg, log) = e.answer(site.timeout);
                    site.error(
                        client,
                        &format!("upstream {} server {}: {log}", pool.name, server.authority),
                    );
                    return Outcome::Answer(Answer::new(status, msg));
                }
                Err(Failed::Other(b)) => return Outcome::Broke(b),
            }
        }
    }
}
