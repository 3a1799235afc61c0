//! The HTTP/1 side of the proxy. One task per client connection reads each request head,
//! checks and routes it, and runs the exchange with the upstream itself: the upstream
//! connection is read and written by the same task, so a request costs one read and one
//! write on each side and no wake-up of another task.
//!
//! This is a deliberate departure from middleware stacks (tower, hyper's client and server):
//! on a proxy host the CPU spent per request is the throughput, and most of it goes to the
//! kernel; what remains in user space is one parse of each head (httparse, where the bytes
//! lie), one pass that writes the other side's head, and copies of body bytes. The rules
//! themselves live in `headers.rs` and `site.rs`, shared with the HTTP/2 path.
//!
//! Timeouts by phase: a connection idle between requests is closed after `keepalive_timeout`;
//! a request head must arrive within `header_read_timeout` of its first byte (of the accept,
//! for the first request); an upstream silent for the vhost's `timeout` gets a 504; a client
//! that stops reading or sending a body for that long is cut off.
pub mod body;
pub mod head;

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::Instant,
};
use tracing::debug;

use self::{
    body::{chunk_head, BodyError, Decoder, LAST_CHUNK},
    head::{Framing, Parsed},
};
use super::{
    buf::{self, Buf},
    client::{self, Deadline, UpConn, UpError},
    headers::{self, Answer, Back, Forward},
    log::Access,
    site::{Decision, Site, Sites},
    upstream::{Busy, Tried},
    Shared,
};

/// A client connection's byte stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read would find something: an idle connection waits for its next request
    /// with this, holding no buffer.
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        if !tls.wants_read() {
            // Decrypted bytes (or a close) wait inside rustls.
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

/// What one client connection shares with every request on it.
pub struct Conn<'a> {
    pub peer: SocketAddr,
    pub tls: bool,
    pub sni: Option<&'a str>,
    pub sites: &'a ArcSwap<Sites>,
    pub shared: &'a Shared,
}

/// Most request header fields parsed on the stack; a server configured for more pays for a
/// heap array.
const STACK_FIELDS: usize = 100;

/// What a complete request head comes to.
enum Prep {
    /// Not complete yet.
    Partial,
    /// Refused: answered, then the connection closes.
    Refuse { answer: Answer, site: Arc<Site> },
    /// The proxy answers itself (redirect, 403, 404, 405, 502, 503).
    Answer {
        answer: Answer,
        site: Arc<Site>,
        route: Option<usize>,
        req: Req,
    },
    /// To `server` of the route's pool; the upstream head is in `out`.
    Forward {
        site: Arc<Site>,
        route: usize,
        server: usize,
        busy: Busy,
        req: Req,
    },
}

/// What is kept of a request head once its bytes are no longer looked at.
struct Req {
    /// Bytes of the head in the client buffer.
    len: usize,
    body: Framing,
    /// HEAD: the response has no body.
    head: bool,
    minor: u8,
    /// The client asked to close after this exchange.
    close: bool,
    expect_continue: bool,
    upgrade: bool,
    /// Bytes of the upstream head in `out`.
    up_head: usize,
    started: Instant,
    access: Option<Access>,
}

/// How an exchange ended, for the keep-alive decision and the logs.
struct Done {
    status: u16,
    /// Response body bytes sent.
    sent: u64,
    /// The connection cannot carry another request (a body was not read to its end, the
    /// response was delimited by closing, or the exchange broke).
    close: bool,
}

/// The start of the HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Serves HTTP/1 requests on `io` until the client closes, a timeout, or a stop. `buf` holds
/// bytes already read. A connection that opens with the HTTP/2 preface is handed back with
/// the bytes read so far.
pub async fn serve<S: Transport>(
    mut io: S,
    conn: &Conn<'_>,
    mut buf: Buf,
    drain: &mut watch::Receiver<bool>,
) -> Option<(S, Vec<u8>)> {
    let limits = conn.shared.limits;
    let accepted = Instant::now();
    let mut first = true;
    let mut out: Vec<u8> = Vec::new();
    let mut host = String::new();
    loop {
        if buf.is_empty() {
            // Idle: nothing held but the socket.
            buf.release();
            buf::give_back(std::mem::take(&mut out));
            let wait = if first {
                accepted + limits.header_read
            } else {
                Instant::now() + limits.keepalive
            };
            let ready = std::future::poll_fn(|cx| io.poll_ready_to_read(cx));
            tokio::select! {
                biased;
                r = tokio::time::timeout_at(wait, ready) => match r {
                    Ok(Ok(())) => {}
                    _ => return None,
                },
                () = drained(drain) => return None,
            }
        }
        // The head's clock starts at its first byte (at the accept for the first request).
        let deadline = if first {
            accepted + limits.header_read
        } else {
            Instant::now() + limits.header_read
        };
        let opening = first;
        first = false;
        let tried = Tried::default();
        let prep = loop {
            if opening {
                let b = buf.as_slice();
                let n = b.len().min(H2_PREFACE.len());
                if b[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Some((io, buf.take_vec()));
                    }
                    match tokio::time::timeout_at(
                        deadline,
                        buf.read_from(&mut io, limits.max_header_bytes),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => continue,
                        _ => return None,
                    }
                }
            }
            match conn.prepare(buf.as_slice(), tried, &mut host, &mut out) {
                Prep::Partial => {}
                p => break p,
            }
            if buf.len() >= limits.max_header_bytes {
                break conn.refusal(431, "request head too large", None);
            }
            match tokio::time::timeout_at(deadline, buf.read_from(&mut io, limits.max_header_bytes))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, or too slow: nothing to answer.
                _ => return None,
            }
        };
        let (done, site, route, req) = match prep {
            Prep::Partial => unreachable_partial(),
            Prep::Refuse { answer, site } => {
                debug!(client = %conn.peer, "request refused: {}", answer.message);
                site_error(&site, conn, &format!("request refused: {}", answer.message));
                let _ = conn
                    .answer(&mut io, &mut out, &site, &answer, false, 1, true)
                    .await;
                conn.count(&site, answer.status, None, accepted);
                return None;
            }
            Prep::Answer {
                answer,
                site,
                route,
                req,
            } => {
                buf.consume(req.len);
                // A body the proxy does not read leaves the stream out of step: close.
                let close = req.close || req.body != Framing::None;
                let r = conn
                    .answer(
                        &mut io, &mut out, &site, &answer, req.head, req.minor, close,
                    )
                    .await;
                let sent = r.as_ref().map_or(0, |n| *n);
                let done = Done {
                    status: answer.status,
                    sent,
                    close: close || r.is_err(),
                };
                (done, site, route, req)
            }
            Prep::Forward {
                site,
                route,
                server,
                busy,
                req,
            } => {
                let mut ex = Exchange {
                    site,
                    route,
                    server,
                    busy,
                    req,
                    tried,
                };
                let done = conn
                    .forward(&mut io, &mut buf, &mut out, &mut host, &mut ex)
                    .await;
                drop(ex.busy);
                (done, ex.site, Some(ex.route), ex.req)
            }
        };
        let upstream = route.map(|r| &site.routes[r].pool.name);
        conn.shared
            .metrics
            .record(&site.label, done.status, upstream, req.started.elapsed());
        if let (Some(log), Some(a)) = (&site.access_log, &req.access) {
            log.write(a.line(done.status, done.sent));
        }
        if done.close || *drain.borrow() {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

fn unreachable_partial() -> ! {
    // `prepare` is looped on until it returns something else.
    panic!("a partial head escaped its read loop")
}

/// Resolves when the proxy starts draining.
async fn drained(drain: &mut watch::Receiver<bool>) {
    loop {
        if *drain.borrow_and_update() {
            return;
        }
        if drain.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One forwarded request on its way.
struct Exchange {
    site: Arc<Site>,
    route: usize,
    server: usize,
    busy: Busy,
    req: Req,
    tried: Tried,
}

/// Where an exchange broke.
enum Broke {
    /// Before a response head reached the client: the proxy answers.
    Upstream(UpError),
    /// The client's request body could not be read: it went away, or its framing broke.
    Client(Option<BodyError>),
    /// After the response head was sent: only closing is left.
    Midway(String),
}

impl Conn<'_> {
    /// Parses a head, decides what it gets and, to forward it, picks a server not in `tried`
    /// and writes the upstream head into `out`; `host` receives the client's host.
    fn prepare(&self, input: &[u8], tried: Tried, host: &mut String, out: &mut Vec<u8>) -> Prep {
        let max = self.shared.limits.max_headers;
        if max <= STACK_FIELDS {
            let mut fields = [const { MaybeUninit::uninit() }; STACK_FIELDS];
            self.prepare_in(input, &mut fields[..max], tried, host, out)
        } else {
            let mut fields = Vec::with_capacity(max);
            fields.resize_with(max, MaybeUninit::uninit);
            self.prepare_in(input, &mut fields, tried, host, out)
        }
    }

    fn prepare_in<'b>(
        &self,
        input: &'b [u8],
        fields: &mut [MaybeUninit<httparse::Header<'b>>],
        tried: Tried,
        host: &mut String,
        out: &mut Vec<u8>,
    ) -> Prep {
        let r = match head::parse_request(input, fields) {
            Parsed::Partial => return Prep::Partial,
            Parsed::Refused(r) => {
                let site = self.site_for(r.host.and_then(|h| std::str::from_utf8(h).ok()), host);
                return Prep::Refuse {
                    answer: Answer::new(r.status, r.reason),
                    site,
                };
            }
            Parsed::Head(r) => r,
        };
        if r.len > self.shared.limits.max_header_bytes {
            let site = self.site_for(r.host.and_then(|h| std::str::from_utf8(h).ok()), host);
            return Prep::Refuse {
                answer: Answer::new(431, "request head too large"),
                site,
            };
        }
        let started = Instant::now();
        // The target: origin-form, or absolute-form whose authority names the host.
        let (authority, target) = match split_target(r.target) {
            Some(t) => t,
            None => {
                let site = self.site_for(r.host.and_then(|h| std::str::from_utf8(h).ok()), host);
                return Prep::Refuse {
                    answer: Answer::new(400, "malformed request target"),
                    site,
                };
            }
        };
        let named = authority.or_else(|| r.host.and_then(|h| std::str::from_utf8(h).ok()));
        let site = self.site_for(named, host);
        let access = site.access_log.as_ref().map(|_| Access {
            client: self.peer.ip(),
            time: SystemTime::now(),
            request_line: format!("{} {} HTTP/1.{}", r.method, r.target, r.minor),
            referer: field(r.headers, "referer"),
            user_agent: field(r.headers, "user-agent"),
        });
        let mut req = Req {
            len: r.len,
            body: r.body,
            head: r.method == "HEAD",
            minor: r.minor,
            close: r.close,
            expect_continue: r.expect_continue,
            upgrade: r.upgrade.is_some(),
            up_head: 0,
            started,
            access,
        };
        let client = headers::canonical(self.peer.ip());
        let bare = headers::strip_port(host);
        let route = match site.decide(r.method, target, bare, client) {
            Decision::Answer(answer) => {
                return Prep::Answer {
                    answer,
                    site,
                    route: None,
                    req,
                }
            }
            Decision::Forward(i) => i,
        };
        let pool = &site.routes[route].pool;
        let Some((server, busy)) = pool.pick(tried) else {
            let answer = if tried.none() {
                site_error(
                    &site,
                    self,
                    &format!("upstream {}: no server is up", pool.name),
                );
                Answer::new(503, "The service is not available")
            } else {
                site_error(
                    &site,
                    self,
                    &format!("upstream {}: no server accepted a connection", pool.name),
                );
                Answer::new(502, "The service is not available")
            };
            return Prep::Answer {
                answer,
                site,
                route: Some(route),
                req,
            };
        };
        let up_host = if site.preserve_host {
            host.as_bytes()
        } else {
            pool.servers[server].authority.as_bytes()
        };
        out.clear();
        headers::request_head(
            out,
            &Forward {
                method: r.method,
                target,
                host: up_host,
                client_host: host,
                client,
                tls: self.tls,
                body: r.body,
                upgrade: r.upgrade,
            },
            r.headers.iter().map(|h| (h.name, h.value)),
        );
        req.up_head = out.len();
        Prep::Forward {
            site,
            route,
            server,
            busy,
            req,
        }
    }

    /// The vhost for the host the client named (`host` receives it); the listener's default
    /// without one.
    fn site_for(&self, named: Option<&str>, host: &mut String) -> Arc<Site> {
        host.clear();
        if let Some(n) = named.or(self.sni) {
            host.push_str(n);
        }
        let bare = headers::strip_port(host);
        let sites = self.sites.load();
        if bare.bytes().any(|b| b.is_ascii_uppercase()) {
            sites.find(&bare.to_ascii_lowercase()).clone()
        } else {
            sites.find(bare).clone()
        }
    }

    fn refusal(&self, status: u16, reason: &'static str, named: Option<&str>) -> Prep {
        let mut host = String::new();
        Prep::Refuse {
            answer: Answer::new(status, reason),
            site: self.site_for(named, &mut host),
        }
    }

    /// Sends one of the proxy's own answers; returns the body bytes sent.
    #[allow(clippy::too_many_arguments)]
    async fn answer<S: Transport>(
        &self,
        io: &mut S,
        out: &mut Vec<u8>,
        site: &Site,
        a: &Answer,
        head_request: bool,
        minor: u8,
        close: bool,
    ) -> io::Result<u64> {
        let body = a.body();
        out.clear();
        status_line(out, a.status, headers::reason(a.status).as_bytes());
        a.fields(Some(site), self.shared.server_header, |n, v| put(out, n, v));
        put_number(out, b"content-length", body.len() as u64);
        self.connection_field(out, close, minor);
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(body.as_bytes());
        }
        send(io, out).await?;
        Ok(if head_request { 0 } else { body.len() as u64 })
    }

    fn connection_field(&self, out: &mut Vec<u8>, close: bool, minor: u8) {
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }

    /// Whether responses now end their connection (this node hands its VIPs over).
    fn handing_over(&self) -> bool {
        self.shared.handover.load(Ordering::Acquire)
    }

    /// Runs the exchange of a forwarded request: a connection (another server if one cannot
    /// be made, a new connection if a kept-alive one turns out closed), the request, the
    /// response, and the proxy's answer when the upstream fails.
    async fn forward<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        out: &mut Vec<u8>,
        host: &mut String,
        ex: &mut Exchange,
    ) -> Done {
        let mut fresh = ex.req.upgrade;
        let mut retried = false;
        loop {
            let site = ex.site.clone();
            let pool = site.routes[ex.route].pool.clone();
            let server = pool.servers[ex.server].clone();
            let idle = if fresh {
                None
            } else {
                server.idle_connection()
            };
            let mut up = match idle {
                Some(c) => c,
                None => match server.connect(pool.connect_timeout).await {
                    Ok(s) => UpConn::new(s),
                    Err(why) => {
                        pool.eject(ex.server, &why);
                        site_error(
                            &site,
                            self,
                            &format!("upstream {} server {}: {why}", pool.name, server.authority),
                        );
                        ex.tried.add(ex.server);
                        match self.prepare(buf.as_slice(), ex.tried, host, out) {
                            Prep::Forward {
                                site,
                                route,
                                server,
                                busy,
                                req,
                            } => {
                                (ex.site, ex.route, ex.server, ex.busy) =
                                    (site, route, server, busy);
                                ex.req.up_head = req.up_head;
                                continue;
                            }
                            Prep::Answer { answer, site, .. } | Prep::Refuse { answer, site } => {
                                buf.consume(ex.req.len);
                                let close = ex.req.close || ex.req.body != Framing::None;
                                let r = self
                                    .answer(
                                        io,
                                        out,
                                        &site,
                                        &answer,
                                        ex.req.head,
                                        ex.req.minor,
                                        close,
                                    )
                                    .await;
                                return Done {
                                    status: answer.status,
                                    sent: r.as_ref().map_or(0, |n| *n),
                                    close: close || r.is_err(),
                                };
                            }
                            Prep::Partial => unreachable_partial(),
                        }
                    }
                },
            };
            let reused = up.reused;
            match self
                .exchange(io, buf, &out[..ex.req.up_head], host, ex, &mut up)
                .await
            {
                Ok((done, reusable)) => {
                    if reusable {
                        server.put_back(up);
                    }
                    return done;
                }
                Err(Broke::Upstream(e))
                    if !retried && ex.req.body == Framing::None && e.stale(reused) =>
                {
                    // A kept-alive connection closed by the server before our request reached
                    // it: the request goes again, on a new connection. The head is still in
                    // `out`, and no body byte was taken from the client.
                    out.truncate(ex.req.up_head);
                    retried = true;
                    fresh = true;
                }
                Err(Broke::Upstream(e)) => {
                    let (status, msg, log) = match e {
                        UpError::Timeout => (
                            504,
                            "The upstream did not answer in time",
                            format!("no answer within {:?}", site.timeout),
                        ),
                        e => (502, "The upstream answer was not usable", e.to_string()),
                    };
                    site_error(
                        &site,
                        self,
                        &format!("upstream {} server {}: {log}", pool.name, server.authority),
                    );
                    let close = true;
                    let r = self
                        .answer(
                            io,
                            out,
                            &site,
                            &Answer::new(status, msg),
                            ex.req.head,
                            ex.req.minor,
                            close,
                        )
                        .await;
                    return Done {
                        status,
                        sent: r.unwrap_or(0),
                        close,
                    };
                }
                Err(Broke::Client(bad)) => {
                    let Some(e) = bad else {
                        return Done {
                            status: 499,
                            sent: 0,
                            close: true,
                        };
                    };
                    site_error(&site, self, &format!("request body refused: {e}"));
                    let r = self
                        .answer(
                            io,
                            out,
                            &site,
                            &Answer::new(400, "malformed request body"),
                            ex.req.head,
                            ex.req.minor,
                            true,
                        )
                        .await;
                    return Done {
                        status: 400,
                        sent: r.unwrap_or(0),
                        close: true,
                    };
                }
                Err(Broke::Midway(why)) => {
                    site_error(
                        &site,
                        self,
                        &format!("upstream {} server {}: {why}", pool.name, server.authority),
                    );
                    return Done {
                        status: 502,
                        sent: 0,
                        close: true,
                    };
                }
            }
        }
    }

    /// One attempt: the request to `up`, its response to the client. Returns how it ended and
    /// whether `up` can carry another request.
    async fn exchange<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        up_head: &[u8],
        host: &str,
        ex: &Exchange,
        up: &mut UpConn,
    ) -> Result<(Done, bool), Broke> {
        let req = &ex.req;
        let site = &*ex.site;
        let pool = &*site.routes[ex.route].pool;
        let handover = self.handing_over();
        // The head as it will go to the client, built while the upstream's head is at hand.
        let back = Back {
            site,
            pool: Some(pool),
            tls: self.tls,
            client_host: host,
            server_header: self.shared.server_header,
            keep_length: false,
            keep_upgrade: false,
        };
        let mut client_head = buf::take();
        let make = |r: &head::Response<'_, '_>| {
            let mut h = std::mem::take(&mut client_head);
            let plan = self.response_head(&mut h, r, req, &back, handover);
            (h, plan)
        };
        if req.body == Framing::None {
            // The usual request: one write up, the answer back.
            up.io
                .write_all(up_head)
                .await
                .map_err(|e| Broke::Upstream(UpError::Io(e)))?;
            buf.consume(req.len);
            let deadline = Deadline::after(site.timeout);
            let head = client::read_response(&mut up.io, &mut up.buf, &deadline, req.head, make)
                .await
                .map_err(Broke::Upstream)?;
            let (mut client_head, plan) = head.made;
            if req.upgrade && head.code == 101 {
                return self.tunnel(io, buf, &client_head, up).await;
            }
            let mut dec = Decoder::new(head.body);
            let sent = relay(
                io,
                &mut up.io,
                &mut up.buf,
                &mut dec,
                &mut client_head,
                plan.chunked,
                site.timeout,
            )
            .await?;
            buf::give_back(client_head);
            let reusable = !head.close && dec.is_done() && up.buf.is_empty() && !req.upgrade;
            return Ok((
                Done {
                    status: head.code,
                    sent,
                    close: plan.close,
                },
                reusable,
            ));
        }
        // A request body: both directions at once. The upstream may answer while the body is
        // still coming, and may need the rest of it to finish its answer (an echo, say).
        buf.consume(req.len);
        let mut dec_req = Decoder::new(req.body);
        if req.expect_continue && !body_buffered(&dec_req, buf) {
            // RFC 9110 section 10.1.1: the client waits for this before sending the body.
            send(io, &mut b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await
                .map_err(|_| Broke::Client(None))?;
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
            let head = client::read_response(&mut rd, up_buf, &progress, req.head, make)
                .await
                .map_err(Broke::Upstream)?;
            if head.code == 101 {
                return Err(Broke::Upstream(UpError::Bad(
                    "switching protocols for a request with a body",
                )));
            }
            let (mut client_head, plan) = head.made;
            head_sent.store(true, Ordering::Relaxed);
            let mut dec = Decoder::new(head.body);
            let sent = relay(
                &mut cw,
                &mut rd,
                up_buf,
                &mut dec,
                &mut client_head,
                plan.chunked,
                site.timeout,
            )
            .await?;
            buf::give_back(client_head);
            Ok((head.code, head.close, plan, sent, dec.is_done()))
        };
        tokio::pin!(sending, responding);
        let mut body_sent = false;
        let mut sending_over = false;
        let (code, up_close, plan, sent, resp_done) = loop {
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
                                return Err(Broke::Client(e));
                            }
                            // The answer is under way and the client's body broke off.
                            return Err(Broke::Midway("the client's request body broke off".into()));
                        }
                    }
                }
            }
        };
        let reusable = !up_close && body_sent && resp_done;
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

    /// Writes the client's response head for an upstream head `r`; says how the body goes.
    fn response_head(
        &self,
        out: &mut Vec<u8>,
        r: &head::Response<'_, '_>,
        req: &Req,
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
            // Chunked or close-delimited: chunked to an HTTP/1.1 client, close-delimited to
            // an HTTP/1.0 one.
            Framing::Chunked | Framing::Close if req.minor == 1 => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                (true, false)
            }
            Framing::Chunked | Framing::Close => (false, true),
            Framing::None => {
                // A body-less response without its length (204, 304): nothing to add.
                (false, false)
            }
        };
        // An upgrade that was not accepted stays HTTP/1: close so no request follows an
        // unexamined upgrade attempt.
        let close = req.close || by_close || handover || req.upgrade;
        self.connection_field(out, close, req.minor);
        out.extend_from_slice(b"\r\n");
        Plan { chunked, close }
    }

    /// After a 101: the client's head goes out, then bytes flow both ways until either side
    /// closes.
    async fn tunnel<S: Transport>(
        &self,
        io: &mut S,
        buf: &mut Buf,
        head: &[u8],
        up: &mut UpConn,
    ) -> Result<(Done, bool), Broke> {
        let early = up.buf.take_vec();
        let mut first = head.to_vec();
        first.extend_from_slice(&early);
        send(io, &mut first)
            .await
            .map_err(|e| Broke::Midway(e.to_string()))?;
        let pending = buf.take_vec();
        if !pending.is_empty() {
            up.io
                .write_all(&pending)
                .await
                .map_err(|e| Broke::Midway(e.to_string()))?;
        }
        let _ = tokio::io::copy_bidirectional(io, &mut up.io).await;
        Ok((
            Done {
                status: 101,
                sent: 0,
                close: true,
            },
            false,
        ))
    }

    fn count(&self, site: &Site, status: u16, upstream: Option<&Arc<str>>, since: Instant) {
        self.shared
            .metrics
            .record(&site.label, status, upstream, since.elapsed());
    }
}

/// How a response body goes to the client.
struct Plan {
    /// Re-framed as chunked (from chunked, or from a close-delimited upstream body).
    chunked: bool,
    /// The client connection ends after this response.
    close: bool,
}

/// `origin-form` target as is; `absolute-form` split into its authority and path-and-query.
fn split_target(t: &str) -> Option<(Option<&str>, &str)> {
    if t.starts_with('/') {
        return Some((None, t));
    }
    if t == "*" {
        return Some((None, t));
    }
    let rest = if t.len() > 7 && t[..7].eq_ignore_ascii_case("http://") {
        &t[7..]
    } else if t.len() > 8 && t[..8].eq_ignore_ascii_case("https://") {
        &t[8..]
    } else {
        return None;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((Some(authority), if path.is_empty() { "/" } else { path }))
}

fn field(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

fn status_line(out: &mut Vec<u8>, code: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = code.min(999);
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_number(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Writes all of `out` and flushes (TLS), then empties it.
async fn send<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(out).await?;
    io.flush().await?;
    out.clear();
    Ok(())
}

fn site_error(site: &Site, conn: &Conn<'_>, msg: &str) {
    tracing::warn!(client = %conn.peer, "{msg}");
    if let Some(l) = &site.error_log {
        l.write(super::log::error_line(Some(conn.peer.ip()), msg));
    }
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
            while !buf.is_empty() && !dec.is_done() {
                let step = dec
                    .decode(buf.as_slice())
                    .map_err(|e| SendErr::Client(Some(e)))?;
                let data = &buf.as_slice()[step.data.clone()];
                if !data.is_empty() {
                    if chunked {
                        chunk_head(&mut pending, data.len());
                        pending.extend_from_slice(data);
                        pending.extend_from_slice(b"\r\n");
                    } else {
                        pending.extend_from_slice(data);
                    }
                }
                buf.consume(step.consumed);
                if step.consumed == 0 {
                    break;
                }
            }
            if dec.is_done() && chunked {
                pending.extend_from_slice(LAST_CHUNK);
            }
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

/// Sends the response: `out` holds the client's head, the body follows from the upstream
/// (`up_buf`, then `up`), re-chunked when `chunked`. Returns the body bytes sent.
async fn relay<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    client: &mut W,
    up: &mut R,
    up_buf: &mut Buf,
    dec: &mut Decoder,
    out: &mut Vec<u8>,
    chunked: bool,
    timeout: Duration,
) -> Result<u64, Broke> {
    let mut sent = 0u64;
    let midway = |e: &dyn std::fmt::Display| Broke::Midway(e.to_string());
    loop {
        while !up_buf.is_empty() && !dec.is_done() {
            let step = dec.decode(up_buf.as_slice()).map_err(|e| midway(&e))?;
            let data = &up_buf.as_slice()[step.data.clone()];
            if !data.is_empty() {
                if chunked {
                    chunk_head(out, data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(data);
                }
                sent += data.len() as u64;
            }
            up_buf.consume(step.consumed);
            if step.consumed == 0 {
                break;
            }
        }
        if dec.is_done() && chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        if !out.is_empty() {
            tokio::time::timeout(timeout, send(client, out))
                .await
                .map_err(|_| Broke::Midway("the client stopped reading".into()))?
                .map_err(|e| midway(&e))?;
        }
        if dec.is_done() {
            return Ok(sent);
        }
        let n = match tokio::time::timeout(timeout, up_buf.read_from(up, buf::SIZE)).await {
            Err(_) => {
                return Err(Broke::Midway(format!(
                    "silent for {timeout:?} within the answer"
                )))
            }
            Ok(Err(e)) => return Err(midway(&e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            if *dec == Decoder::Close {
                *dec = Decoder::Done;
                continue;
            }
            return Err(Broke::Midway("connection closed within the answer".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_authority_and_path() {
        assert_eq!(split_target("/a?b"), Some((None, "/a?b")));
        assert_eq!(
            split_target("http://app.example:8080/x?y"),
            Some((Some("app.example:8080"), "/x?y"))
        );
        assert_eq!(split_target("HTTPS://h"), Some((Some("h"), "/")));
        assert_eq!(split_target("http://u@h/"), None);
        assert_eq!(split_target("h:443"), None);
        assert_eq!(split_target("*"), Some((None, "*")));
    }

    #[test]
    fn numbers_and_status_lines() {
        let mut v = Vec::new();
        put_number(&mut v, b"content-length", 0);
        put_number(&mut v, b"x", 18_446_744_073_709_551_615);
        status_line(&mut v, 204, b"No Content");
        assert_eq!(
            v,
            b"content-length: 0\r\nx: 18446744073709551615\r\nHTTP/1.1 204 No Content\r\n"
        );
    }
}
