//! The HTTP/1 side of the proxy. One task per client connection reads each request head,
//! checks and routes it, and runs the exchange with the upstream itself (`exchange.rs`): the
//! upstream connection is read and written by the same task, so a request costs one read and
//! one write on each side and no wake-up of another task.
//!
//! This is a deliberate departure from middleware stacks (tower, hyper's client and server):
//! on a proxy host the CPU spent per request is the throughput, and most of it goes to the
//! kernel; what remains in user space is one parse of each head (httparse, where the bytes
//! lie), one pass that writes the other side's head, and copies of body bytes. Nothing on the
//! way is shared with the other proxy threads but read-mostly data: vhosts are borrowed from
//! the connection's snapshot (renewed when a reload bumps the generation), counters are per
//! thread. The rules themselves live in `headers.rs` and `site.rs`, shared with HTTP/2.
//!
//! Timeouts by phase, all on one timer per connection ([`Watchdog`]): a connection idle
//! between requests is closed after `keepalive_timeout`; a request head must arrive within
//! `header_read_timeout` of its first byte (of the accept, for the first request); an upstream
//! silent for the vhost's `timeout` gets a 504; a client that stops reading or sending a body
//! for that long is cut off.
mod exchange;
mod tunnel;

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    task::{Context, Poll},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::Instant,
};
use tracing::debug;

use super::{
    buf::{self, Buf},
    codec::head::{self, Framing, Parsed},
    core::{ServeCtx, Signals},
    headers::{self, put, Answer, Forward},
    log::Access,
    site::{Decision, Site, Sites},
    timer::Watchdog,
    worker::Worker,
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

impl Transport for super::tls_stream::TlsStream {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buffered() {
            // Decrypted bytes (or a close) wait inside rustls.
            return Poll::Ready(Ok(()));
        }
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// What one client connection shares with every request on it.
pub(in crate::proxy) struct Conn<'a> {
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: std::net::IpAddr,
    /// The client's address as `X-Forwarded-For` names it (IPv4-mapped addresses unmapped).
    pub client: String,
    pub tls: bool,
    pub sni: Option<&'a str>,
    pub sites: &'a ArcSwap<Sites>,
    pub serve: &'a ServeCtx,
    pub signals: &'a Signals,
    /// The worker thread serving the connection.
    pub worker: Worker,
}

/// Most request header fields parsed on the stack; a server configured for more pays for a
/// heap array.
const STACK_FIELDS: usize = 100;

/// The start of the HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What a complete request head comes to.
enum Prep<'s> {
    /// Refused: answered, then the connection closes.
    Refuse { answer: Answer, site: &'s Site },
    /// The proxy answers itself (redirect, 403, 404, 405, 502, 503).
    Answer {
        answer: Answer,
        site: &'s Site,
        route: Option<usize>,
        req: Req,
    },
    /// To the route's pool; the upstream head is in `out`, its `Host` value still to be
    /// aimed at a server unless the vhost keeps the client's.
    Forward {
        site: &'s Site,
        route: usize,
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
    /// RFC 9110 section 9.2.2: the request may be sent again.
    idempotent: bool,
    minor: u8,
    /// The client asked to close after this exchange.
    close: bool,
    expect_continue: bool,
    upgrade: bool,
    /// The upgrade asked for is WebSocket.
    websocket: bool,
    /// Bytes of the upstream head in `out`.
    up_head: usize,
    /// Where the upstream head's `Host` value lies in `out`.
    up_host: std::ops::Range<usize>,
    /// The head was taken from the client's buffer: an attempt on the upstream began.
    taken: bool,
    started: Instant,
    access: Option<Access>,
}

impl Req {
    /// Takes the request head out of the client's buffer, once: a retry on a new connection
    /// sends the same head (from `out`) and must not take the next request's bytes.
    fn take_head(&mut self, buf: &mut Buf) {
        if !self.taken {
            buf.consume(self.len);
            self.taken = true;
        }
    }
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

/// Serves HTTP/1 requests on `io` until the client closes, a timeout, or a stop. `buf` holds
/// bytes already read. A connection that opens with the HTTP/2 preface is handed back with
/// the bytes read so far.
pub(in crate::proxy) async fn serve<S: Transport>(
    mut io: S,
    conn: &Conn<'_>,
    mut buf: Buf,
    drain: &mut watch::Receiver<bool>,
) -> Option<(S, Vec<u8>)> {
    let limits = conn.serve.limits;
    let accepted = Instant::now();
    let mut watchdog = Watchdog::new(accepted + limits.header_read);
    let mut generation = conn.signals.generation();
    let mut sites = conn.sites.load_full();
    let mut first = true;
    let mut out: Vec<u8> = Vec::new();
    let mut host = String::new();
    // One waiter for the stop, and one for the end of a handover of the address, for the
    // connection's whole life, not one per idle wait.
    let mut drained = std::pin::pin!(drained(drain));
    let mut cut = std::pin::pin!(conn.signals.cut_off(conn.local));
    loop {
        if buf.is_empty() {
            // Idle: nothing held but the socket.
            buf.release();
            buf::give_back(std::mem::take(&mut out));
            let due = if first {
                accepted + limits.header_read
            } else {
                Instant::now() + limits.keepalive
            };
            let ready = std::future::poll_fn(|cx| io.poll_ready_to_read(cx));
            tokio::select! {
                biased;
                r = watchdog.run(due, ready) => match r {
                    Some(Ok(())) => {}
                    _ => return None,
                },
                () = &mut drained => return None,
                // The address was handed over and its window ended: a request now would
                // reach the new owner anyway.
                () = &mut cut => return None,
            }
        }
        if out.capacity() == 0 {
            out = buf::take();
        }
        // A reload since the last request: its vhosts from now on.
        let now_generation = conn.signals.generation();
        if now_generation != generation {
            generation = now_generation;
            sites = conn.sites.load_full();
        }
        // The head's clock starts at its first byte (at the accept for the first request).
        let started = Instant::now();
        let head_due = if first {
            accepted + limits.header_read
        } else {
            started + limits.header_read
        };
        let opening = first;
        first = false;
        let prep = loop {
            if opening {
                let b = buf.as_slice();
                let n = b.len().min(H2_PREFACE.len());
                if b[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Some((io, buf.take_vec()));
                    }
                    match watchdog
                        .run(head_due, buf.read_from(&mut io, limits.max_header_bytes))
                        .await
                    {
                        Some(Ok(n)) if n > 0 => continue,
                        _ => return None,
                    }
                }
            }
            if let Some(p) = conn.prepare(&sites, buf.as_slice(), started, &mut host, &mut out) {
                break p;
            }
            if buf.len() >= limits.max_header_bytes {
                break conn.refusal(&sites, 431, "request head too large");
            }
            match watchdog
                .run(head_due, buf.read_from(&mut io, limits.max_header_bytes))
                .await
            {
                Some(Ok(n)) if n > 0 => {}
                // Closed, failed, or too slow: nothing to answer.
                _ => return None,
            }
        };
        let (done, site, route, req) = match prep {
            Prep::Refuse { answer, site } => {
                debug!(client = %conn.peer, "request refused: {}", answer.message);
                site.error(conn.peer, &format!("request refused: {}", answer.message));
                let _ = conn
                    .answer(&mut io, &mut out, site, &answer, false, 1, true)
                    .await;
                let _ = io.shutdown().await;
                conn.serve.metrics.record(
                    conn.worker,
                    &site.label,
                    answer.status,
                    None,
                    started.elapsed(),
                );
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
                    .answer(&mut io, &mut out, site, &answer, req.head, req.minor, close)
                    .await;
                let done = Done {
                    status: answer.status,
                    sent: r.as_ref().map_or(0, |n| *n),
                    close: close || r.is_err(),
                };
                (done, site, route, req)
            }
            Prep::Forward {
                site,
                route,
                mut req,
            } => {
                let done = conn
                    .forward(
                        &mut io,
                        &mut buf,
                        &mut out,
                        &host,
                        site,
                        route,
                        &mut req,
                        &mut watchdog,
                    )
                    .await;
                (done, site, Some(route), req)
            }
        };
        let upstream = route.map(|r| &site.routes[r].pool.name);
        conn.serve.metrics.record(
            conn.worker,
            &site.label,
            done.status,
            upstream,
            req.started.elapsed(),
        );
        if let (Some(log), Some(a)) = (&site.access_log, &req.access) {
            log.write(a.line(done.status, done.sent));
        }
        if done.close || conn.signals.draining() {
            let _ = io.shutdown().await;
            return None;
        }
    }
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

impl Conn<'_> {
    /// Parses a head (`None`: not complete yet), decides what it gets and, to forward it,
    /// writes the upstream head into `out`; `host` receives the client's host.
    fn prepare<'s>(
        &self,
        sites: &'s Sites,
        input: &[u8],
        started: Instant,
        host: &mut String,
        out: &mut Vec<u8>,
    ) -> Option<Prep<'s>> {
        let max = self.serve.limits.max_headers;
        if max <= STACK_FIELDS {
            let mut fields = [const { MaybeUninit::uninit() }; STACK_FIELDS];
            self.prepare_in(sites, input, &mut fields[..max], started, host, out)
        } else {
            let mut fields = Vec::with_capacity(max);
            fields.resize_with(max, MaybeUninit::uninit);
            self.prepare_in(sites, input, &mut fields, started, host, out)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare_in<'s, 'b>(
        &self,
        sites: &'s Sites,
        input: &'b [u8],
        fields: &mut [MaybeUninit<httparse::Header<'b>>],
        started: Instant,
        host: &mut String,
        out: &mut Vec<u8>,
    ) -> Option<Prep<'s>> {
        let named = |h: Option<&'b [u8]>| h.and_then(|h| std::str::from_utf8(h).ok());
        let r = match head::parse_request(input, fields) {
            Parsed::Partial => return None,
            Parsed::Refused(r) => {
                return Some(Prep::Refuse {
                    answer: Answer::new(r.status, r.reason),
                    site: self.site_for(sites, named(r.host), host),
                })
            }
            Parsed::Head(r) => r,
        };
        if r.len > self.serve.limits.max_header_bytes {
            return Some(Prep::Refuse {
                answer: Answer::new(431, "request head too large"),
                site: self.site_for(sites, named(r.host), host),
            });
        }
        // The target: origin-form, or absolute-form whose authority names the host.
        let Some((authority, target)) = split_target(r.target) else {
            return Some(Prep::Refuse {
                answer: Answer::new(400, "malformed request target"),
                site: self.site_for(sites, named(r.host), host),
            });
        };
        let site = self.site_for(sites, authority.or_else(|| named(r.host)), host);
        let access = site.access_log.as_ref().map(|_| Access {
            client: headers::canonical(self.peer.ip()),
            time: SystemTime::now(),
            request_line: format!("{} {} HTTP/1.{}", r.method, r.target, r.minor),
            referer: field(r.headers, "referer"),
            user_agent: field(r.headers, "user-agent"),
        });
        let mut req = Req {
            len: r.len,
            body: r.body,
            head: r.method == "HEAD",
            idempotent: headers::idempotent(r.method),
            minor: r.minor,
            close: r.close,
            expect_continue: r.expect_continue,
            upgrade: r.upgrade.is_some(),
            websocket: r
                .upgrade
                .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")),
            up_head: 0,
            up_host: 0..0,
            taken: false,
            started,
            access,
        };
        let client = headers::canonical(self.peer.ip());
        let bare = headers::strip_port(host);
        let route = match site.decide(r.method, target, bare, client) {
            Decision::Answer(answer) => {
                return Some(Prep::Answer {
                    answer,
                    site,
                    route: None,
                    req,
                })
            }
            Decision::Forward(i) => i,
        };
        // The server's authority goes into `Host` when a server is picked (`aim`).
        let up_host: &[u8] = if site.preserve_host {
            host.as_bytes()
        } else {
            b""
        };
        out.clear();
        req.up_host = headers::request_head(
            out,
            &Forward {
                method: r.method,
                target,
                host: up_host,
                client_host: host,
                client: &self.client,
                tls: self.tls,
                body: r.body,
                upgrade: r.upgrade,
            },
            r.headers.iter().map(|h| (h.name, h.value)),
        );
        req.up_head = out.len();
        Some(Prep::Forward { site, route, req })
    }

    /// The vhost for the host the client named (`host` receives it); the listener's default
    /// without one.
    fn site_for<'s>(&self, sites: &'s Sites, named: Option<&str>, host: &mut String) -> &'s Site {
        host.clear();
        if let Some(n) = named.or(self.sni) {
            host.push_str(n);
        }
        let bare = headers::strip_port(host);
        if bare.bytes().any(|b| b.is_ascii_uppercase()) {
            sites.find(&bare.to_ascii_lowercase())
        } else {
            sites.find(bare)
        }
    }

    fn refusal<'s>(&self, sites: &'s Sites, status: u16, reason: &'static str) -> Prep<'s> {
        let mut host = String::new();
        Prep::Refuse {
            answer: Answer::new(status, reason),
            site: self.site_for(sites, None, &mut host),
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
        a.fields(&site.headers, self.serve.server_header, |n, v| {
            put(out, n, v)
        });
        put_number(out, b"content-length", body.len() as u64);
        connection_field(out, close, minor);
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(body.as_bytes());
        }
        send(io, out, !close).await?;
        Ok(if head_request { 0 } else { body.len() as u64 })
    }
}

/// `Connection` for a response: `close`, or `keep-alive` to an HTTP/1.0 client that stays.
fn connection_field(out: &mut Vec<u8>, close: bool, minor: u8) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// `origin-form` target as is; `absolute-form` split into its authority and path-and-query.
fn split_target(t: &str) -> Option<(Option<&str>, &str)> {
    if t.starts_with('/') || t == "*" {
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

/// Writes all of `out`, then empties it. `flush`: out to the socket now (TLS queues what is
/// written); the last write before a close leaves it to the close, which sends it with the
/// `close_notify` in one write.
async fn send<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>, flush: bool) -> io::Result<()> {
    io.write_all(out).await?;
    if flush {
        io.flush().await?;
    }
    out.clear();
    Ok(())
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
