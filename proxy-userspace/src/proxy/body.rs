//! The response body the proxy sends: a short body of its own, or the upstream's, streamed.
//! When it is dropped (sent completely, or the client went away) it finishes the request: the
//! access-log line with the bytes sent, the upstream connection back to its pool if the body
//! was read to its end, the server's outstanding count, the connection's in-flight count.
use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{
    log::{Access, LogFile},
    service::{Conn, Site},
    upstream::{Busy, Server, UpBody},
};

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// What to do when the response is over.
pub struct Finish {
    pub conn: Arc<Conn>,
    pub log: Option<(LogFile, Access)>,
    pub status: u16,
    pub upstream: Option<(hyper::client::conn::http1::SendRequest<UpBody>, Arc<Server>)>,
    pub busy: Option<Busy>,
    /// The vhost and route that answered, and when the request came: for the metrics.
    pub site: Option<Arc<Site>>,
    pub route: Option<usize>,
    pub started: std::time::Instant,
}

pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    ended: bool,
    finish: Option<Finish>,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            sent: 0,
            ended: false,
            finish: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }

    pub fn upstream(b: Incoming) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(b),
            sent: 0,
            ended: false,
            finish: None,
        }
    }

    pub fn set_finish(&mut self, f: Finish) {
        self.finish = Some(f);
    }

    pub fn finish_mut(&mut self) -> Option<&mut Finish> {
        self.finish.as_mut()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(i) => Pin::new(i).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(i) => i.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let complete = self.ended || self.is_end_stream();
        let Some(f) = self.finish.take() else { return };
        if let Some((conn, server)) = f.upstream {
            if complete {
                server.put_back(conn);
            }
        }
        if let Some((file, access)) = f.log {
            file.write(access.line(f.status, self.sent));
        }
        drop(f.busy);
        if let Some(site) = f.site.as_ref().filter(|_| f.status != 0) {
            let upstream = f
                .route
                .and_then(|i| site.routes.get(i))
                .map(|r| &r.pool.name);
            f.conn
                .metrics
                .record(&site.label, f.status, upstream, f.started.elapsed());
        }
        f.conn.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
