//! HTTP/2 from clients: hyper's server speaks the protocol; each stream is forwarded over the
//! same upstream HTTP/1.1 connections, under the same rules (`site.rs`, `headers.rs`), as the
//! HTTP/1 path. The response body streams from the upstream connection, which goes back to
//! its idle list when the body has been read to its end.
mod body;
mod rewind;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Incoming},
    header::{HeaderName, HeaderValue},
    HeaderMap, Request, Response, StatusCode,
};
use tokio::{io::AsyncWriteExt, net::tcp::OwnedWriteHalf, time::Instant};

use self::body::{Finish, Kind, Source};
pub use self::{body::ProxyBody, rewind::Rewind};
use super::{
    codec::{
        body::{chunk_head, Decoder, LAST_CHUNK},
        head::{self, Framing},
    },
    forward::{call, Attempt, Failed, Outcome},
    headers::{self, Answer, Back, Forward},
    log::Access,
    metrics::Metrics,
    site::{Decision, Site, Sites},
    timer::{Deadline, Watchdog},
    upstream::{self, Busy, OwnedBusy, Pool, Server, UpConn, UpError},
    worker::Worker,
};

/// What an HTTP/2 connection's streams share.
pub struct H2Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    pub sni: Option<String>,
    pub sites: Arc<ArcSwap<Sites>>,
    pub server_header: bool,
    pub metrics: Arc<Metrics>,
    /// The worker thread serving the connection.
    pub worker: Worker,
}

/// Serves one stream.
pub async fn handle(
    conn: Arc<H2Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    // The client's view of the host: `:authority`, else Host, else SNI.
    let host_full = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| conn.sni.clone())
        .unwrap_or_default();
    let bare = headers::strip_port(&host_full).to_ascii_lowercase();
    let site = conn.sites.load().find(&bare).clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let access = site.access_log.as_ref().map(|_| Access {
        client: headers::canonical(conn.peer.ip()),
        time: SystemTime::now(),
        request_line: format!("{} {} HTTP/2.0", req.method(), target),
        referer: text(req.headers(), "referer"),
        user_agent: text(req.headers(), "user-agent"),
    });
    let mut finish = Finish {
        site: site.clone(),
        route: None,
        status: 0,
        started,
        access,
        metrics: conn.metrics.clone(),
        worker: conn.worker,
        _busy: None,
    };
    let client = headers::canonical(conn.peer.ip());
    let method = req.method().as_str().to_string();
    let (mut resp, mut fields) = match site.decide(&method, &target, &bare, client) {
        Decision::Answer(a) => answer(&site, &conn, &a),
        Decision::Forward(route) => {
            finish.route = Some(route);
            forward(&conn, &site, route, &host_full, &target, req, &mut finish).await
        }
    };
    finish.status = resp.status().as_u16();
    std::mem::swap(resp.headers_mut(), &mut fields);
    resp.body_mut().finish = Some(finish);
    Ok(resp)
}

type Parts = (Response<ProxyBody>, HeaderMap);

fn answer(site: &Site, conn: &H2Conn, a: &Answer) -> Parts {
    let mut h = HeaderMap::new();
    a.fields(&site.headers, conn.server_header, |n, v| {
        insert(&mut h, n, v)
    });
    let mut r = Response::new(ProxyBody::full(a.body()));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (r, h)
}

fn insert(h: &mut HeaderMap, name: &[u8], value: &[u8]) {
    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
        h.append(n, v);
    }
}

fn text(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn forward(
    conn: &H2Conn,
    site: &Arc<Site>,
    route: usize,
    host_full: &str,
    target: &str,
    req: Request<Incoming>,
    finish: &mut Finish,
) -> Parts {
    let pool = site.routes[route].pool.clone();
    let (parts, body) = req.into_parts();
    let framing = if body.is_end_stream() {
        Framing::None
    } else {
        match parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let mut attempt = H2Attempt {
        conn,
        site,
        pool: &pool,
        method: parts.method.as_str(),
        is_head: parts.method == hyper::Method::HEAD,
        fields: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect(),
        host_full,
        target,
        client: headers::canonical(conn.peer.ip()).to_string(),
        framing,
        retriable: framing == Framing::None && headers::idempotent(parts.method.as_str()),
        body: Some(body),
        head: Vec::new(),
        host_at: 0..0,
    };
    attempt.write_head();
    match call(conn.worker, site, route, conn.peer, &mut attempt).await {
        Outcome::Done((r, fields, busy)) => {
            finish._busy = Some(busy);
            (r, fields)
        }
        Outcome::Answer(a) => answer(site, conn, &a),
        Outcome::Broke(never) => match never {},
    }
}

/// An HTTP/2 stream's request on its way upstream, over HTTP/1.1.
struct H2Attempt<'a> {
    conn: &'a H2Conn,
    site: &'a Arc<Site>,
    pool: &'a Arc<Pool>,
    method: &'a str,
    is_head: bool,
    fields: Vec<(&'a str, &'a [u8])>,
    host_full: &'a str,
    target: &'a str,
    client: String,
    framing: Framing,
    retriable: bool,
    /// Taken by the task that sends it (a request with a body is never retried after that).
    body: Option<Incoming>,
    /// The upstream head, for the server last aimed at.
    head: Vec<u8>,
    /// Where its `Host` value lies.
    host_at: std::ops::Range<usize>,
}

impl H2Attempt<'_> {
    /// The upstream head; its `Host` is the client's when the vhost keeps it, else the
    /// server's, set by `aim`.
    fn write_head(&mut self) {
        let up_host: &[u8] = if self.site.preserve_host {
            self.host_full.as_bytes()
        } else {
            b""
        };
        self.host_at = headers::request_head(
            &mut self.head,
            &Forward {
                method: self.method,
                target: self.target,
                host: up_host,
                client_host: self.host_full,
                client: &self.client,
                tls: self.conn.tls,
                body: self.framing,
                upgrade: None,
            },
            self.fields.iter().copied(),
        );
    }
}

impl Attempt for H2Attempt<'_> {
    type Done = (Response<ProxyBody>, HeaderMap, OwnedBusy);
    type Broke = Infallible;

    fn retriable(&self) -> bool {
        self.retriable
    }

    fn aim(&mut self, server: &Server) {
        if !self.site.preserve_host {
            headers::set_host(
                &mut self.head,
                &mut self.host_at,
                server.authority.as_bytes(),
            );
        }
    }

    async fn send(
        &mut self,
        server: &Arc<Server>,
        mut up: UpConn,
        busy: Busy<'_>,
    ) -> Result<Self::Done, Failed<Infallible>> {
        let site = self.site;
        let back = Back {
            vhost: &site.headers,
            pool: Some(self.pool),
            tls: self.conn.tls,
            client_host: self.host_full,
            server_header: self.conn.server_header,
            keep_length: false,
            keep_upgrade: false,
        };
        let make = |r: &head::Response<'_, '_>| {
            let mut h = HeaderMap::new();
            let back = Back {
                keep_length: r.body == Framing::None,
                ..back
            };
            headers::response_fields(
                r.headers.iter().map(|f| (f.name, f.value)),
                &back,
                |n, v| insert(&mut h, n, v),
            );
            if let Framing::Length(n) = r.body {
                h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            h
        };
        let is_head = self.is_head;
        let (h, mut src) = if self.framing == Framing::None {
            // The usual request: one write up, the answer back.
            let h = async {
                up.io.write_all(&self.head).await.map_err(UpError::Io)?;
                tokio::time::timeout(site.timeout, up.response(is_head, make))
                    .await
                    .unwrap_or(Err(UpError::Timeout))
            }
            .await
            .map_err(Failed::Upstream)?;
            let reusable = !h.close;
            (
                h,
                Source::Conn {
                    conn: Some(up),
                    server: server.clone(),
                    worker: self.conn.worker,
                    reusable,
                },
            )
        } else {
            // A request body: it goes up from a task of its own while the answer is read,
            // which may come (and stream) before the body is complete.
            let (mut rd, wr) = up.io.into_split();
            let mut up_buf = std::mem::take(&mut up.buf);
            let progress = Arc::new(Deadline::after(site.timeout));
            let sender = tokio::spawn(send_body(
                self.body.take(),
                wr,
                std::mem::take(&mut self.head),
                self.framing == Framing::Chunked,
                progress.clone(),
                site.timeout,
            ))
            .abort_handle();
            let mut watchdog = Watchdog::new(progress.get());
            let head = watchdog
                .run_moving(
                    &progress,
                    upstream::read_response(&mut rd, &mut up_buf, is_head, make),
                )
                .await
                .unwrap_or(Err(UpError::Timeout));
            match head {
                Ok(h) => (
                    h,
                    Source::Half {
                        rd: Some(rd),
                        buf: up_buf,
                        sender,
                    },
                ),
                Err(e) => {
                    sender.abort();
                    return Err(Failed::Upstream(e));
                }
            }
        };
        let status = StatusCode::from_u16(h.code).unwrap_or(StatusCode::BAD_GATEWAY);
        let dec = Decoder::new(h.body);
        let kind = if dec.is_done() {
            src.end(true);
            Kind::Full(None)
        } else {
            Kind::Upstream {
                src,
                dec,
                timeout: site.timeout,
                sleep: None,
            }
        };
        let mut r = Response::new(ProxyBody {
            kind,
            sent: 0,
            finish: None,
        });
        *r.status_mut() = status;
        Ok((r, h.made, busy.keep(server)))
    }
}

/// Sends the upstream head, then the client's body frames (chunked when `chunked`); each write
/// pushes the answer's deadline back. A client body that fails ends the upstream's too
/// (the write half closes, the upstream sees a truncated body).
async fn send_body(
    body: Option<Incoming>,
    mut up: OwnedWriteHalf,
    mut pending: Vec<u8>,
    chunked: bool,
    progress: Arc<Deadline>,
    timeout: Duration,
) {
    let Some(mut body) = body else { return };
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return,
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else {
                    // Trailers are not forwarded.
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    chunk_head(&mut pending, data.len());
                    pending.extend_from_slice(&data);
                    pending.extend_from_slice(b"\r\n");
                } else {
                    pending.extend_from_slice(&data);
                }
                if up.write_all(&pending).await.is_err() {
                    return;
                }
                progress.extend(timeout);
                pending.clear();
            }
        }
    }
    if chunked {
        pending.extend_from_slice(LAST_CHUNK);
    }
    if up.write_all(&pending).await.is_ok() {
        progress.extend(timeout);
    }
}
