//! Upstream HTTP/1.1 connections, driven by the task that serves the client: the request head
//! is written and the response read in that task, with no hand-off to a connection task and
//! no channel between them. Kept-alive connections wait in their server's idle list for this
//! thread (see `upstream/mod.rs`).
use std::{
    io,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use tokio::{io::AsyncRead, net::TcpStream};

use crate::proxy::{
    buf::Buf,
    codec::{
        body::{BodyError, Decoder},
        head::{self, Framing},
    },
};

/// Largest upstream response head read.
pub const HEAD_LIMIT: usize = 64 * 1024;
/// Fields of a response head parsed on the stack; more go to the heap, up to `MAX_FIELDS`.
const FEW_FIELDS: usize = 32;
/// Most fields in an upstream response head.
const MAX_FIELDS: usize = 256;

/// One connection to an upstream server.
pub struct UpConn {
    pub io: TcpStream,
    /// Bytes read from the server and not used yet; empty (and memory-free) while idle.
    pub buf: Buf,
    /// Came from the idle list: the server may have closed it meanwhile.
    pub reused: bool,
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum UpError {
    /// No answer within the vhost's timeout.
    Timeout,
    /// The server closed the connection; `answered`: some of a response had come.
    Closed {
        answered: bool,
    },
    Io(io::Error),
    /// What came back is not a usable HTTP/1 response.
    Bad(&'static str),
    Body(BodyError),
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Timeout => f.write_str("no answer in time"),
            UpError::Closed { answered: false } => {
                f.write_str("connection closed before an answer")
            }
            UpError::Closed { answered: true } => {
                f.write_str("connection closed within the answer")
            }
            UpError::Io(e) => write!(f, "{e}"),
            UpError::Bad(why) => f.write_str(why),
            UpError::Body(e) => write!(f, "{e}"),
        }
    }
}

impl UpError {
    /// The proxy's answer to the client for this failure, and the error log's words for it:
    /// 504 when the upstream was silent for `timeout`, else 502.
    pub fn answer(&self, timeout: Duration) -> (u16, &'static str, String) {
        match self {
            UpError::Timeout => (
                504,
                "The upstream did not answer in time",
                format!("no answer within {timeout:?}"),
            ),
            e => (502, "The upstream answer was not usable", e.to_string()),
        }
    }

    /// The server dropped the connection without an answer (closed or reset: it stopped or
    /// crashed with the request in flight). An idempotent request may go to another server,
    /// as nginx's `proxy_next_upstream error` does; a timeout, a bad answer or a broken body
    /// is not retried.
    pub fn dropped(&self) -> bool {
        match self {
            UpError::Closed { .. } => true,
            UpError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// A kept-alive connection the server had closed before the request reached it: the
    /// request may go again on a new connection.
    pub fn stale(&self, conn_reused: bool) -> bool {
        conn_reused
            && match self {
                UpError::Closed { answered } => !answered,
                UpError::Io(e) => matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ),
                _ => false,
            }
    }
}

/// What the head of a response says about what follows it.
pub struct Head<T> {
    /// What the caller made of the head while it was at hand.
    pub made: T,
    pub code: u16,
    pub body: Framing,
    /// The connection cannot carry another request.
    pub close: bool,
}

impl UpConn {
    pub fn new(io: TcpStream) -> UpConn {
        UpConn {
            io,
            buf: Buf::new(),
            reused: false,
        }
    }

    /// Whether an idle connection can carry a request: nothing arrived on it since its last
    /// response (a close, or stray bytes, make it unusable). The runtime's readiness says so
    /// without a system call in the usual case.
    pub fn usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            // Ready may be stale (a read that filled the buffer does not clear it): ask.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }

    /// [`read_response`] on this connection.
    pub async fn response<T>(
        &mut self,
        head_request: bool,
        made: impl FnMut(&head::Response<'_, '_>) -> T,
    ) -> Result<Head<T>, UpError> {
        read_response(&mut self.io, &mut self.buf, head_request, made).await
    }

    /// [`poll_data`] on this connection.
    pub fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        dec: &mut Decoder,
    ) -> Poll<Result<Option<Bytes>, UpError>> {
        poll_data(&mut self.io, &mut self.buf, cx, dec)
    }
}

/// Reads the response head, skipping interim 1xx answers other than 101 (the caller bounds
/// the wait); `made` turns the parsed head into what the caller keeps, while the head is
/// still in the buffer. The head's bytes are consumed; the body's first bytes may follow
/// in `buf`.
pub async fn read_response<R: AsyncRead + Unpin, T>(
    io: &mut R,
    buf: &mut Buf,
    head_request: bool,
    mut made: impl FnMut(&head::Response<'_, '_>) -> T,
) -> Result<Head<T>, UpError> {
    let mut answered = false;
    loop {
        let step = {
            let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
            let mut many = Vec::new();
            let mut parsed = head::parse_response(buf.as_slice(), &mut few, head_request);
            if parsed == Err(head::TOO_MANY) {
                many.resize(MAX_FIELDS, httparse::EMPTY_HEADER);
                parsed = head::parse_response(buf.as_slice(), &mut many, head_request);
            }
            match parsed {
                Ok(Some(r)) if (100..200).contains(&r.code) && r.code != 101 => Some(Err(r.len)),
                Ok(Some(r)) => Some(Ok((
                    r.len,
                    Head {
                        made: made(&r),
                        code: r.code,
                        body: r.body,
                        close: r.close,
                    },
                ))),
                Ok(None) => None,
                Err(why) => return Err(UpError::Bad(why)),
            }
        };
        match step {
            Some(Ok((len, h))) => {
                buf.consume(len);
                return Ok(h);
            }
            // An interim answer: the final one follows.
            Some(Err(len)) => {
                buf.consume(len);
                continue;
            }
            None => {}
        }
        if buf.len() >= HEAD_LIMIT {
            return Err(UpError::Bad("response head too large"));
        }
        let n = buf.read_from(io, HEAD_LIMIT).await.map_err(UpError::Io)?;
        if n == 0 {
            return Err(UpError::Closed {
                answered: answered || !buf.is_empty(),
            });
        }
        answered = true;
    }
}

/// The next piece of a response body, decoded from `buf` and then `io`, as `Bytes` (the HTTP/2 path, whose frames own their
/// data); `None` at its end.
pub fn poll_data<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Buf,
    cx: &mut Context<'_>,
    dec: &mut Decoder,
) -> Poll<Result<Option<Bytes>, UpError>> {
    loop {
        while !buf.is_empty() && !dec.is_done() {
            let step = dec.decode(buf.as_slice()).map_err(UpError::Body)?;
            let data = Bytes::copy_from_slice(&buf.as_slice()[step.data.clone()]);
            buf.consume(step.consumed);
            if !data.is_empty() {
                return Poll::Ready(Ok(Some(data)));
            }
            if step.consumed == 0 {
                break;
            }
        }
        if dec.is_done() {
            return Poll::Ready(Ok(None));
        }
        if !buf.make_room(HEAD_LIMIT) {
            return Poll::Ready(Err(UpError::Bad("body framing too large")));
        }
        let n = std::task::ready!(buf.poll_read_from(io, cx, HEAD_LIMIT)).map_err(UpError::Io)?;
        if n == 0 {
            return Poll::Ready(if *dec == Decoder::Close {
                *dec = Decoder::Done;
                Ok(None)
            } else {
                Err(UpError::Closed { answered: true })
            });
        }
    }
}
