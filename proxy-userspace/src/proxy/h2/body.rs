//! The response body of an HTTP/2 stream: the proxy's own answer, or the upstream's body
//! streamed from its connection, which goes back to its idle list when the body has been read
//! to its end. Dropping it writes the access log line and the metrics.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{net::tcp::OwnedReadHalf, time::Instant};

use crate::proxy::{
    buf::Buf,
    codec::body::Decoder,
    log::Access,
    metrics::Metrics,
    site::Site,
    upstream::{self, OwnedBusy, Server, UpConn, UpError},
    worker::Worker,
};

/// The response body: the proxy's own, or the upstream's, streamed.
pub struct ProxyBody {
    pub(super) kind: Kind,
    pub(super) sent: u64,
    pub(super) finish: Option<Finish>,
}

pub(super) enum Kind {
    Full(Option<Bytes>),
    Upstream {
        src: Source,
        dec: Decoder,
        timeout: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// Where an upstream body is read from.
pub(super) enum Source {
    /// A whole connection, back to its idle list when the body is read (if `reusable`).
    Conn {
        conn: Option<UpConn>,
        server: Arc<Server>,
        /// The thread whose idle list it goes back to.
        worker: Worker,
        reusable: bool,
    },
    /// The read half of a connection whose write half still carries the request body (a task
    /// of its own, stopped when this is dropped); it is closed afterwards.
    Half {
        rd: Option<OwnedReadHalf>,
        buf: Buf,
        sender: tokio::task::AbortHandle,
    },
}

impl Source {
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        dec: &mut Decoder,
    ) -> Poll<Result<Option<Bytes>, UpError>> {
        let r = match self {
            Source::Conn { conn: None, .. } | Source::Half { rd: None, .. } => {
                return Poll::Ready(Ok(None))
            }
            Source::Conn { conn: Some(c), .. } => c.poll_data(cx, dec),
            Source::Half {
                rd: Some(rd), buf, ..
            } => upstream::poll_data(rd, buf, cx, dec),
        };
        match &r {
            Poll::Ready(Ok(None)) => self.end(true),
            // hyper stops polling once the body says it has ended: the connection goes back
            // with the last piece, not at a poll that would never come.
            Poll::Ready(Ok(Some(_))) if dec.is_done() => self.end(true),
            Poll::Ready(Err(_)) => self.end(false),
            _ => {}
        }
        r
    }

    /// The body ended (`complete`: read to its end); a reusable connection goes back.
    pub(super) fn end(&mut self, complete: bool) {
        match self {
            Source::Conn {
                conn,
                server,
                worker,
                reusable,
            } => {
                if let Some(c) = conn.take() {
                    if complete && *reusable && c.buf.is_empty() {
                        server.put_back(*worker, c);
                    }
                }
            }
            Source::Half { rd, .. } => *rd = None,
        }
    }

    fn is_over(&self) -> bool {
        matches!(
            self,
            Source::Conn { conn: None, .. } | Source::Half { rd: None, .. }
        )
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Half { sender, .. } = self {
            sender.abort();
        }
    }
}

/// What to record when the response is over (sent completely, or the client went away).
pub(super) struct Finish {
    pub(super) site: Arc<Site>,
    pub(super) route: Option<usize>,
    pub(super) status: u16,
    pub(super) started: Instant,
    pub(super) access: Option<Access>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) worker: Worker,
    pub(super) _busy: Option<OwnedBusy>,
}

impl ProxyBody {
    pub(super) fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            sent: 0,
            finish: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|d| {
                this.sent += d.len() as u64;
                Ok(Frame::data(d))
            })),
            Kind::Upstream {
                src,
                dec,
                timeout,
                sleep,
            } => match src.poll_data(cx, dec) {
                Poll::Ready(Ok(Some(d))) => {
                    *sleep = None;
                    this.sent += d.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(std::io::Error::other(e.to_string())))),
                Poll::Pending => {
                    // The vhost's timeout bounds an upstream's silence within a body too.
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*timeout)));
                    if s.as_mut().poll(cx).is_ready() {
                        src.end(false);
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "upstream silent within the answer",
                        ))));
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { src, dec, .. } => src.is_over() || dec.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream { dec, .. } => match dec.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let Some(f) = self.finish.take() else { return };
        if let (Some(log), Some(a)) = (&f.site.access_log, &f.access) {
            log.write(a.line(f.status, self.sent));
        }
        let upstream = f
            .route
            .and_then(|i| f.site.routes.get(i))
            .map(|r| &r.pool.name);
        f.metrics.record(
            f.worker,
            &f.site.label,
            f.status,
            upstream,
            f.started.elapsed(),
        );
    }
}
