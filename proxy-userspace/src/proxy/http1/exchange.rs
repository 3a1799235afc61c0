//! One forwarded HTTP/1 request: through the upstream call (`forward.rs`: the server,
//! the connection, retries and the proxy's own answer when the upstream fails), the request
//! head and body up, the response head and body back, re-framed for the client. WebSocket
//! upgrades end in a tunnel.
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{connection_field, put, put_number, send, status_line, Conn, Done, Req, Transport};
use crate::proxy::{
    buf::{self, Buf},
    codec::{
        body::{reframe, BodyError, Decoder, LAST_CHUNK},
        head::{self, Framing},
    },
    forward::{call, Attempt, Failed, Outcome},
    headers::{self, Answer, Back},
    site::Site,
    timer::{Deadline, Watchdog},
    upstream::{self as client, Busy, Server, UpConn, UpError},
};

/// Where an exchange broke.
enum Broke {
    /// Before a response head reached the client: the upstream call decides (a retry, or
    /// the proxy's answer).
    Upstream(UpError),
    /// The client's side or midway: see [`Other`].
    Other(Other),
}

/// An exchange's failures that are not the upstream's to answer for.
pub(super) enum Other {
    /// The client's request body could not be read: it went away, or its framing broke.
    Client(Option<BodyError>),
    /// After the response head was sent: only closing is left. The message names the
    /// upstream and server.
    Midway(String),
}

/// How a response body goes to the client.
struct Plan {
    /// Re-framed as chunked (from chunked, or from a close-delimited upstream body).
    chunked: bool,
    /// The client connection ends after this response.
    close: bool,
}

/// A forwarded request's attempts on the upstream ([`call`]): the head is in `out`, the
/// client's connection and buffer are the exchange's.
struct H1Attempt<'a, 'c, S> {
    conn: &'a Conn<'c>,
    io: &'a mut S,
    buf: &'a mut Buf,
    out: &'a mut Vec<u8>,
    host: &'a str,
    site: &'a Site,
    route: usize,
    req: &'a mut Req,
    watchdog: &'a mut Watchdog,
}

impl<S: Transport> Attempt for H1Attempt<'_, '_, S> {
    type Done = Done;
    type Broke = Other;

    fn retriable(&self) -> bool {
        retriable(self.req)
    }

    fn fresh(&self) -> bool {
        // An upgrade takes its connection over: never a kept-alive one.
        self.req.upgrade
    }

    fn aim(&mut self, server: &Server) {
        if !self.site.preserve_host {
            let old = self.req.up_host.len();
            headers::set_host(self.out, &mut self.req.up_host, server.authority.as_bytes());
            self.req.up_head = self.req.up_head - old + self.req.up_host.len();
        }
    }

    async fn send(
        &mut self,
        server: &Arc<Server>,
        mut up: UpConn,
        busy: Busy<'_>,
    ) -> Result<Done, Failed<Other>> {
        let result = self
            .conn
            .exchange(
                self.io,
                self.buf,
                &self.out[..self.req.up_head],
                self.host,
                self.site,
                self.route,
                self.req,
                &mut up,
                self.watchdog,
            )
            .await;
        drop(busy);
        match result {
            Ok((done, reusable)) => {
                if reusable {
                    server.put_back(self.conn.worker, up);
                }
                Ok(done)
            }
            Err(Broke::Upstream(e)) => Err(Failed::Upstream(e)),
            Err(Broke::Other(Other::Midway(why))) => {
                let pool = &self.site.routes[self.route].pool;
                Err(Failed::Other(Other::Midway(format!(
                    "upstream {} server {}: {why}",
                    pool.name, server.authority
                ))))
            }
            Err(Broke::Other(o)) => Err(Failed::Other(o)),
        }
    }
}

impl Conn<'_> {
    /// Forwards a request on `site`'s route `route` (its upstream head in `out`) and answers
    /// for the upstream when that fails.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        out: &mut Vec<u8>,
        host: &str,
        site: &Site,
        route: usize,
        req: &mut Req,
        watchdog: &mut Watchdog,
    ) -> Done {
        let outcome = {
            let mut a = H1Attempt {
                conn: self,
                io: &mut *io,
                buf: &mut *buf,
                out: &mut *out,
                host,
                site,
                route,
                req: &mut *req,
                watchdog,
            };
            call(self.worker, site, route, self.peer, &mut a).await
        };
        match outcome {
            Outcome::Done(done) => done,
            // No attempt took the head from the client's buffer: answered like any request
            // the proxy answers itself.
            Outcome::Answer(answer) if !req.taken => {
                self.answer_for(io, buf, out, site, req, &answer).await
            }
            Outcome::Answer(answer) => {
                let r = self
                    .answer(io, out, site, &answer, req.head, req.minor, true)
                    .await;
                Done {
                    status: answer.status,
                    sent: r.unwrap_or(0),
                    close: true,
                }
            }
            Outcome::Broke(Other::Client(None)) => Done {
                status: 499,
                sent: 0,
                close: true,
            },
            Outcome::Broke(Other::Client(Some(e))) => {
                site.error(self.peer, &format!("request body refused: {e}"));
                let r = self
                    .answer(
                        io,
                        out,
                        site,
                        &Answer::new(400, "malformed request body"),
                        req.head,
                        req.minor,
                        true,
                    )
                    .await;
                Done {
                    status: 400,
                    sent: r.unwrap_or(0),
                    close: true,
                }
            }
            Outcome::Broke(Other::Midway(why)) => {
                site.error(self.peer, &why);
                Done {
                    status: 502,
                    sent: 0,
                    close: true,
                }
            }
        }
    }

    /// The proxy's answer in place of a forwarded request; the request's head is used up, and
    /// a body it did not read ends the connection.
    async fn answer_for<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        out: &mut Vec<u8>,
        site: &Site,
        req: &Req,
        a: &Answer,
    ) -> Done {
        buf.consume(req.len);
        let close = req.close || req.body != Framing::None;
        let r = self
            .answer(io, out, site, a, req.head, req.minor, close)
            .await;
        Done {
            status: a.status,
            sent: r.as_ref().map_or(0, |n| *n),
            close: close || r.is_err(),
        }
    }

    /// One attempt: the request to `up`, its response to the client. Returns how it ended and
    /// whether `up` can carry another request.
    #[allow(clippy::too_many_arguments)]
    async fn exchange<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        up_head: &[u8],
        host: &str,
        site: &Site,
        route: usize,
        req: &mut Req,
        up: &mut UpConn,
        watchdog: &mut Watchdog,
    ) -> Result<(Done, bool), Broke> {
        let pool = &*site.routes[route].pool;
        let handover = self.signals.handing_over(self.local);
        // The head as it will go to the client, built while the upstream's head is at hand.
        let back = Back {
            vhost: &site.headers,
            pool: Some(pool),
            tls: self.tls,
            client_host: host,
            server_header: self.serve.server_header,
            keep_length: false,
            keep_upgrade: false,
        };
        let asked = Asked {
            upgrade: req.upgrade,
            minor: req.minor,
            close: req.close,
        };
        let mut client_head = buf::take();
        let make = |r: &head::Response<'_, '_>| {
            let mut h = std::mem::take(&mut client_head);
            let plan = response_head(&mut h, r, asked, &back, handover);
            (h, plan)
        };
        if req.body == Framing::None {
            // The usual request: one write up, the answer back.
            up.io
                .write_all(up_head)
                .await
                .map_err(|e| Broke::Upstream(UpError::Io(e)))?;
            req.take_head(buf);
            let head = watchdog
                .run_for(
                    site.timeout,
                    client::read_response(&mut up.io, &mut up.buf, req.head, make),
                )
                .await
                .unwrap_or(Err(UpError::Timeout))
                .map_err(Broke::Upstream)?;
            let (client_head, plan) = head.made;
            if req.upgrade && head.code == 101 {
                let cut = self.signals.cut_off(self.local);
                return Box::pin(tunnel(io, buf, &client_head, up, cut, req.websocket)).await;
            }
            let sent = relay(
                io,
                &mut up.io,
                &mut up.buf,
                head.body,
                client_head,
                (plan.chunked, plan.close),
                site.timeout,
                watchdog,
            )
            .await?;
            let reusable = !head.close && up.buf.is_empty() && !req.upgrade;
            return Ok((
                Done {
                    status: head.code,
                    sent,
                    close: plan.close,
                },
                reusable,
            ));
        }
        // A request body: both directions at once (boxed: rarer, and large).
        Box::pin(self.exchange_with_body(io, buf, up_head, site, req, up, watchdog, make)).await
    }

    /// [`Conn::exchange`] for a request with a body.
    #[allow(clippy::too_many_arguments)]
    async fn exchange_with_body<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        up_head: &[u8],
        site: &Site,
        req: &mut Req,
        up: &mut UpConn,
        watchdog: &mut Watchdog,
        make: impl FnMut(&head::Response<'_, '_>) -> (Vec<u8>, Plan),
    ) -> Result<(Done, bool), Broke> {
        // The upstream may answer while the body is still coming, and may need the rest of it
        // to finish its answer (an echo, say).
        req.take_head(buf);
        let mut dec_req = Decoder::new(req.body);
        if req.expect_continue && !body_buffered(&dec_req, buf) {
            // RFC 9110 section 10.1.1: the client waits for this before sending the body.
            send(io, &mut b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), true)
                .await
                .map_err(|_| Broke::Other(Other::Client(None)))?;
        }
        let progress = Deadline::after(site.timeout);
        let head_sent = std::sync::atomic::AtomicBool::new(false);
        let (mut cr, mut cw) = tokio::io::split(&mut *io);
        let (mut rd, mut wr) = up.io.split();
        let up_buf = &mut up.buf;
        let sending = send_body(
            &mut cr,
            buf,
            &mut dec_req,
            &mut wr,
            up_head,
            req.body == Framing::Chunked,
            site.timeout,
            &progress,
        );
        let responding = async {
            let head = watchdog
                .run_moving(
                    &progress,
                    client::read_response(&mut rd, up_buf, req.head, make),
                )
                .await
                .unwrap_or(Err(UpError::Timeout))
                .map_err(Broke::Upstream)?;
            if head.code == 101 {
                return Err(Broke::Upstream(UpError::Bad(
                    "switching protocols for a request with a body",
                )));
            }
            let (client_head, plan) = head.made;
            head_sent.store(true, Ordering::Relaxed);
            let sent = relay(
                &mut cw,
                &mut rd,
                up_buf,
                head.body,
                client_head,
                (plan.chunked, plan.close),
                site.timeout,
                watchdog,
            )
            .await?;
            Ok((head.code, head.close, plan, sent))
        };
        tokio::pin!(sending, responding);
        let mut body_sent = false;
        let mut sending_over = false;
        let (code, up_close, plan, sent) = loop {
            tokio::select! {
                biased;
                r = &mut responding => break r?,
                r = &mut sending, if !sending_over => {
                    sending_over = true;
                    match r {
                        Ok(()) => body_sent = true,
                        // The upstream stopped reading: its answer may still come.
                        Err(SendErr::Upstream) => {}
                        Err(SendErr::Client(e)) => {
                            if !head_sent.load(Ordering::Relaxed) {
                                return Err(Broke::Other(Other::Client(e)));
                            }
                            // The answer is under way and the client's body broke off.
                            return Err(Broke::Other(Other::Midway("the client's request body broke off".into())));
                        }
                    }
                }
            }
        };
        let reusable = !up_close && body_sent;
        Ok((
            Done {
                status: code,
                sent,
                // The rest of an unread body would be taken for the next request.
                close: plan.close || !body_sent,
            },
            reusable,
        ))
    }
}

/// Whether a request can go again on a new connection when a kept-alive one turns out closed:
/// idempotent, and without a body (whose bytes were taken from the client).
fn retriable(req: &Req) -> bool {
    req.idempotent && req.body == Framing::None
}

/// What the client's response head depends on in its request.
#[derive(Clone, Copy)]
struct Asked {
    upgrade: bool,
    minor: u8,
    close: bool,
}

/// Writes the client's response head for an upstream head `r`; says how the body goes.
fn response_head(
    out: &mut Vec<u8>,
    r: &head::Response<'_, '_>,
    req: Asked,
    back: &Back<'_>,
    handover: bool,
) -> Plan {
    let upgraded = req.upgrade && r.code == 101;
    let no_body = r.body == Framing::None;
    let back = Back {
        keep_length: no_body && !upgraded,
        keep_upgrade: upgraded,
        ..*back
    };
    out.clear();
    status_line(out, r.code, r.reason.as_bytes());
    headers::response_fields(
        r.headers.iter().map(|h| (h.name, h.value)),
        &back,
        |n, v| put(out, n, v),
    );
    if upgraded {
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
        return Plan {
            chunked: false,
            close: true,
        };
    }
    let (chunked, by_close) = match r.body {
        Framing::Length(n) => {
            put_number(out, b"content-length", n);
            (false, false)
        }
        // Chunked or close-delimited: chunked to an HTTP/1.1 client, close-delimited to an
        // HTTP/1.0 one.
        Framing::Chunked | Framing::Close if req.minor == 1 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            (true, false)
        }
        Framing::Chunked | Framing::Close => (false, true),
        // A response without a body (HEAD, 204, 304) keeps the upstream's length, if any.
        Framing::None => (false, false),
    };
    // An upgrade that was not accepted stays HTTP/1: close so no request follows an
    // unexamined upgrade attempt.
    let close = req.close || by_close || handover || req.upgrade;
    connection_field(out, close, req.minor);
    out.extend_from_slice(b"\r\n");
    Plan { chunked, close }
}

/// After a 101: the client's head goes out, then bytes flow both ways until either side
/// closes ([`super::tunnel::pump`]).
async fn tunnel<S: Transport>(
    io: &mut S,
    buf: &mut Buf,
    head: &[u8],
    up: &mut UpConn,
    cut: impl std::future::Future<Output = ()>,
    websocket: bool,
) -> Result<(Done, bool), Broke> {
    let mut first = head.to_vec();
    first.extend_from_slice(&up.buf.take_vec());
    send(io, &mut first, true)
        .await
        .map_err(|e| Broke::Other(Other::Midway(e.to_string())))?;
    let pending = buf.take_vec();
    if !pending.is_empty() {
        up.io
            .write_all(&pending)
            .await
            .map_err(|e| Broke::Other(Other::Midway(e.to_string())))?;
    }
    // Until either side closes, or the window of a handover of this address ends.
    super::tunnel::pump(io, &mut up.io, cut, websocket).await;
    Ok((
        Done {
            status: 101,
            sent: 0,
            close: true,
        },
        false,
    ))
}

enum SendErr {
    Client(Option<BodyError>),
    /// The upstream stopped reading.
    Upstream,
}

/// Whether the rest of the body is already in `buf`.
fn body_buffered(dec: &Decoder, buf: &Buf) -> bool {
    dec.remaining().is_some_and(|n| n <= buf.len() as u64)
}

/// Sends the upstream head and the request body: what is in `buf` first, then what the
/// client sends, re-chunked when `chunked`. A client silent for `timeout` is cut off; every
/// write pushes the upstream's answer deadline (`progress`) back.
#[allow(clippy::too_many_arguments)]
async fn send_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut R,
    buf: &mut Buf,
    dec: &mut Decoder,
    up: &mut W,
    up_head: &[u8],
    chunked: bool,
    timeout: Duration,
    progress: &Deadline,
) -> Result<(), SendErr> {
    let mut pending = buf::take();
    pending.extend_from_slice(up_head);
    let result = async {
        loop {
            reframe(dec, buf, &mut pending, chunked).map_err(|e| SendErr::Client(Some(e)))?;
            if !pending.is_empty() {
                up.write_all(&pending)
                    .await
                    .map_err(|_| SendErr::Upstream)?;
                progress.extend(timeout);
                pending.clear();
            }
            if dec.is_done() {
                return Ok(());
            }
            match tokio::time::timeout(timeout, buf.read_from(client, buf::SIZE)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(SendErr::Client(None)),
            }
        }
    }
    .await;
    buf::give_back(pending);
    result
}

/// Sends the response: `out` holds the client's head, the body (framed as `body`) follows
/// from the upstream (`up_buf`, then `up`), re-chunked when `chunked`; `closing`: the
/// connection closes after it, and the close sends the end of it. Returns the body bytes sent;
/// `Ok` means the whole body went out.
#[allow(clippy::too_many_arguments)]
async fn relay<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    client: &mut W,
    up: &mut R,
    up_buf: &mut Buf,
    body: Framing,
    mut out: Vec<u8>,
    (chunked, closing): (bool, bool),
    timeout: Duration,
    watchdog: &mut Watchdog,
) -> Result<u64, Broke> {
    let mut dec = Decoder::new(body);
    let mut sent = 0u64;
    let midway = |e: &dyn std::fmt::Display| Broke::Other(Other::Midway(e.to_string()));
    loop {
        sent += reframe(&mut dec, up_buf, &mut out, chunked).map_err(|e| midway(&e))?;
        if !out.is_empty() {
            watchdog
                .run_for(timeout, send(client, &mut out, !(closing && dec.is_done())))
                .await
                .ok_or_else(|| Broke::Other(Other::Midway("the client stopped reading".into())))?
                .map_err(|e| midway(&e))?;
        }
        if dec.is_done() {
            buf::give_back(out);
            return Ok(sent);
        }
        let n = match watchdog
            .run_for(timeout, up_buf.read_from(up, buf::SIZE))
            .await
        {
            None => {
                return Err(Broke::Other(Other::Midway(format!(
                    "silent for {timeout:?} within the answer"
                ))))
            }
            Some(Err(e)) => return Err(midway(&e)),
            Some(Ok(n)) => n,
        };
        if n == 0 {
            if dec == Decoder::Close {
                // The upstream's close ends the body: re-chunked, it ends with the last chunk.
                dec = Decoder::Done;
                if chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                continue;
            }
            return Err(Broke::Other(Other::Midway(
                "connection closed within the answer".into(),
            )));
        }
    }
}
