//! The client connection's byte stream as hyper sees it, with two jobs hyper does not do:
//!
//! - **Ambiguous HTTP/1 requests are refused.** hyper resolves `Content-Length` beside
//!   `Transfer-Encoding`, and repeated equal `Content-Length`s, silently; a proxy in front of
//!   other parsers must refuse them (request smuggling). Every HTTP/1 request head is held back
//!   until it is complete, checked, and only then handed on. A refused head is replaced by a
//!   synthetic one that carries the reason in [`REJECT_HEADER`] and closes the connection, so
//!   the 400 goes through the normal response path (response headers, access log).
//! - **Timeouts by phase.** A connection idle between requests is closed after
//!   `keepalive_timeout`; a request head must arrive within `header_read_timeout` of its first
//!   byte (of the accept, for the first request). Nothing is timed while a request is being
//!   served.
//!
//! To find where each head starts, bodies are framed as hyper frames them (`Content-Length`,
//! chunked). Upgrades, `CONNECT` and HTTP/2 pass through unexamined.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The header a refused request head is replaced with; its value names the reason. A client
/// that sends it itself is refused too, so it can only come from here.
pub const REJECT_HEADER: &str = "x-hapd-reject";

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keepalive: Duration,
    pub header_read: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// What the guard and the service share about one connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests whose response has not been sent completely.
    pub in_flight: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8 },
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// A body of known length.
    Body(u64),
    Chunked(Chunk, u64),
    /// HTTP/2, an upgrade, or something hyper will refuse itself: bytes are not examined.
    Through,
    /// A refused head was replaced; nothing more is read.
    Closed,
}

pub struct Guard<IO> {
    io: IO,
    state: State,
    limits: Limits,
    conn: Arc<ConnState>,
    /// Bytes of a head not yet complete.
    head: Vec<u8>,
    /// Checked bytes waiting for hyper.
    out: Vec<u8>,
    out_pos: usize,
    deadline: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    first: bool,
}

impl<IO> Guard<IO> {
    pub fn new(io: IO, limits: Limits, conn: Arc<ConnState>) -> Self {
        let deadline = Instant::now() + limits.header_read;
        Guard {
            io,
            state: State::Head,
            limits,
            conn,
            head: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: Some(deadline),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            first: true,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Runs `buf` through the framing state machine, moving checked bytes to `out`.
    fn push(&mut self, mut buf: Vec<u8>) {
        let mut pos = 0;
        while pos < buf.len() {
            match self.state {
                State::Through => {
                    self.out.extend_from_slice(&buf[pos..]);
                    return;
                }
                State::Closed => return,
                State::Body(n) => {
                    let take = n.min((buf.len() - pos) as u64) as usize;
                    self.out.extend_from_slice(&buf[pos..pos + take]);
                    pos += take;
                    if n == take as u64 {
                        self.enter_head();
                    } else {
                        self.state = State::Body(n - take as u64);
                    }
                }
                State::Chunked(c, size) => {
                    let used = self.chunk(c, size, &buf[pos..]);
                    self.out.extend_from_slice(&buf[pos..pos + used]);
                    pos += used;
                }
                State::Head => {
                    if self.head.is_empty() && !self.first {
                        // A head's first byte: from now on the client has header_read_timeout
                        // (the first request's clock started at the accept).
                        self.deadline = Some(Instant::now() + self.limits.header_read);
                    }
                    let scanned = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(&buf[pos..]);
                    match self.head_progress(scanned) {
                        Some(rest) => {
                            buf = rest;
                            pos = 0;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    /// Looks for the end of the head in `head` (from `from`); when it is complete, checks it
    /// and returns the bytes after it.
    fn head_progress(&mut self, from: usize) -> Option<Vec<u8>> {
        let n = self.head.len().min(H2_PREFACE_START.len());
        if self.head[..n] == H2_PREFACE_START[..n] {
            if n >= 4 {
                self.through();
            }
            return None;
        }
        // Empty lines before a request line are allowed (RFC 9112 section 2.2).
        let lead = self
            .head
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(self.head.len());
        let Some(end) = find_head_end(&self.head, from.max(lead)) else {
            if self.head.len() > self.limits.max_header_bytes + 4 {
                // hyper answers 431 and closes.
                self.through();
            }
            return None;
        };
        let rest = self.head.split_off(end);
        let head = std::mem::take(&mut self.head);
        match check_head(&head[lead..], self.limits.max_headers) {
            Verdict::Pass => {
                self.out.extend_from_slice(&head);
                self.state = State::Through;
                self.deadline = None;
                Some(rest)
            }
            Verdict::Refuse { reason, host } => {
                self.out.extend_from_slice(b"GET / HTTP/1.1\r\n");
                if let Some(h) = host {
                    self.out.extend_from_slice(b"host: ");
                    self.out.extend_from_slice(&h);
                    self.out.extend_from_slice(b"\r\n");
                }
                self.out.extend_from_slice(REJECT_HEADER.as_bytes());
                self.out.extend_from_slice(b": ");
                self.out.extend_from_slice(reason.as_bytes());
                self.out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
                self.state = State::Closed;
                self.deadline = Some(Instant::now() + self.limits.header_read);
                None
            }
            Verdict::Framed(next) => {
                self.out.extend_from_slice(&head);
                self.after_head(next);
                Some(rest)
            }
        }
    }

    /// Checks `data` where it lies, as far as it can be passed on unchanged: complete heads
    /// that are not refused, and body bytes. Returns how many bytes that is; the rest needs
    /// [`Guard::push`].
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                State::Through => return data.len(),
                State::Closed => return pos,
                State::Body(n) => {
                    let take = n.min((data.len() - pos) as u64);
                    pos += take as usize;
                    if n == take {
                        self.enter_head();
                    } else {
                        self.state = State::Body(n - take);
                    }
                }
                State::Chunked(c, size) => {
                    pos += self.chunk(c, size, &data[pos..]);
                }
                State::Head => {
                    let d = &data[pos..];
                    if d.starts_with(&H2_PREFACE_START[..d.len().min(4)]) {
                        return pos;
                    }
                    let lead = d
                        .iter()
                        .position(|&b| b != b'\r' && b != b'\n')
                        .unwrap_or(d.len());
                    let Some(end) = find_head_end(d, lead) else {
                        return pos;
                    };
                    match check_head(&d[lead..end], self.limits.max_headers) {
                        Verdict::Refuse { .. } => return pos,
                        Verdict::Pass => {
                            self.state = State::Through;
                            self.deadline = None;
                            return data.len();
                        }
                        Verdict::Framed(next) => {
                            pos += end;
                            self.after_head(next);
                        }
                    }
                }
            }
        }
        pos
    }

    /// A head passed: frame its body (or wait for the next head).
    fn after_head(&mut self, next: Framing) {
        self.first = false;
        self.deadline = None;
        match next {
            Framing::None => self.enter_head(),
            Framing::Length(n) => self.state = State::Body(n),
            Framing::Chunked => self.state = State::Chunked(Chunk::Size { digits: 0 }, 0),
        }
    }

    fn through(&mut self) {
        let head = std::mem::take(&mut self.head);
        self.out.extend_from_slice(&head);
        self.state = State::Through;
        self.deadline = None;
    }

    fn enter_head(&mut self) {
        self.state = State::Head;
        self.deadline = Some(Instant::now() + self.limits.keepalive);
    }

    /// Advances the chunked-body parser over `data`; returns how many bytes belong to it.
    fn chunk(&mut self, mut c: Chunk, mut size: u64, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(n) = c {
                let take = n.min((data.len() - i) as u64);
                i += take as usize;
                c = if n == take {
                    Chunk::DataCr
                } else {
                    Chunk::Data(n - take)
                };
                continue;
            }
            let b = data[i];
            c = match c {
                Chunk::Size { digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        size = size * 16 + u64::from(d);
                        Chunk::Size { digits: digits + 1 }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => Chunk::Ext,
                    b'\r' if digits > 0 => Chunk::SizeLf,
                    _ => return self.malformed(),
                },
                Chunk::Ext => match b {
                    b'\r' => Chunk::SizeLf,
                    b'\n' => return self.malformed(),
                    _ => Chunk::Ext,
                },
                Chunk::SizeLf if b == b'\n' => {
                    if size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(std::mem::take(&mut size))
                    }
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size { digits: 0 },
                Chunk::TrailerStart if b == b'\r' => Chunk::EndLf,
                Chunk::TrailerStart | Chunk::TrailerLine if b != b'\r' => Chunk::TrailerLine,
                Chunk::TrailerLine if b == b'\r' => Chunk::TrailerLf,
                Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
                Chunk::EndLf if b == b'\n' => {
                    self.enter_head();
                    return i + 1;
                }
                _ => return self.malformed(),
            };
            i += 1;
        }
        self.state = State::Chunked(c, size);
        i
    }

    /// A body hyper will refuse: stop examining, hyper answers and closes.
    fn malformed(&mut self) -> usize {
        self.state = State::Through;
        0
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

enum Verdict {
    /// Not examined further (hyper refuses it, or an upgrade follows).
    Pass,
    Refuse {
        reason: &'static str,
        host: Option<Vec<u8>>,
    },
    Framed(Framing),
}

fn check_head(head: &[u8], max_headers: usize) -> Verdict {
    // Most heads fit on the stack; a server configured for more fields pays for a heap array.
    const STACK: usize = 100;
    if max_headers <= STACK {
        let mut headers = [httparse::EMPTY_HEADER; STACK];
        check_parsed(head, &mut headers[..max_headers])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
        check_parsed(head, &mut headers)
    }
}

fn check_parsed<'h>(head: &'h [u8], headers: &mut [httparse::Header<'h>]) -> Verdict {
    let mut req = httparse::Request::new(headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // hyper parses it again and answers 400 or 431 itself.
        _ => return Verdict::Pass,
    }
    let mut lengths = Vec::new();
    let mut te = None;
    let mut upgrade = req.method == Some("CONNECT");
    let mut host = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return refuse("two Transfer-Encoding headers", host);
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if h.name.eq_ignore_ascii_case("host") {
            host = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case(REJECT_HEADER) {
            return refuse("reserved header", host);
        }
    }
    if lengths.len() > 1 {
        return refuse("two Content-Length headers", host);
    }
    if te.is_some() && !lengths.is_empty() {
        return refuse("Content-Length with Transfer-Encoding", host);
    }
    if upgrade {
        return Verdict::Pass;
    }
    if let Some(te) = te {
        return if te.eq_ignore_ascii_case(b"chunked") {
            Verdict::Framed(Framing::Chunked)
        } else {
            Verdict::Pass
        };
    }
    match lengths.first() {
        None => Verdict::Framed(Framing::None),
        Some(v) => match std::str::from_utf8(v).ok().and_then(|s| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        }) {
            Some(0) => Verdict::Framed(Framing::None),
            Some(n) => Verdict::Framed(Framing::Length(n)),
            None => refuse("invalid Content-Length", host),
        },
    }
}

fn refuse(reason: &'static str, host: Option<Vec<u8>>) -> Verdict {
    Verdict::Refuse { reason, host }
}

impl<IO> Guard<IO> {
    /// Waits for the phase's deadline; an error once it passes with nothing in flight.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(deadline) = self.deadline else {
                return Poll::Pending;
            };
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            ready!(self.sleep.as_mut().poll(cx));
            if self.state != State::Closed && self.conn.in_flight.load(Ordering::Acquire) > 0 {
                // A response is still being sent: that is not idleness.
                self.deadline = Some(Instant::now() + self.limits.keepalive);
                continue;
            }
            let what = match (self.state, self.head.is_empty()) {
                (State::Closed, _) => "refused request: closing",
                (_, true) => "keep-alive connection idle",
                (_, false) => "request head not complete in time",
            };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    // An idle connection should not keep a large buffer.
                    if this.out.capacity() > 4096 {
                        this.out = Vec::new();
                    } else {
                        this.out.clear();
                    }
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                // hyper answers the synthetic request and closes; it reads no further.
                State::Closed => return this.poll_deadline(cx),
                State::Through => return Pin::new(&mut this.io).poll_read(cx, buf),
                _ => {}
            }
            // Read straight into hyper's buffer; bytes that must be held back or replaced are
            // taken out again.
            let start = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - start;
                    if n == 0 {
                        // End of stream: hand over whatever head bytes there are.
                        if this.head.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.through();
                        continue;
                    }
                    // The usual case: complete heads that pass and bodies stay where they are.
                    let kept = if this.head.is_empty() {
                        this.scan(&buf.filled()[start..])
                    } else {
                        0
                    };
                    if kept == n {
                        return Poll::Ready(Ok(()));
                    }
                    // The rest (an incomplete head, a head to replace) goes the long way.
                    let rest = buf.filled()[start + kept..].to_vec();
                    buf.set_filled(start + kept);
                    this.push(rest);
                    if kept > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_deadline(cx),
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
