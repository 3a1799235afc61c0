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
    headers::{self, Answer, Back, Forward},
    log::Access,
    metrics::Metrics,
    site::{Decision, Site, Sites},
    timer::{Deadline, Watchdog},
    upstream::{self, OwnedBusy, Tried, UpConn, UpError},
};

/// What an HTTP/2 connection's streams share.
pub struct H2Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    pub sni: Option<String>,
    pub sites: Arc<ArcSwap<Sites>>,
    pub server_header: bool,
    pub metrics: Arc<Metrics>,
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
        client: conn.peer.ip(),
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
    a.fields(Some(site), conn.server_header, |n, v| insert(&mut h, n, v));
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
    let client = headers::canonical(conn.peer.ip()).to_string();
    let retriable = framing == Framing::None && super::http1::idempotent(parts.method.as_str());
    // Taken by the task that sends it (a request with a body is never retried after that).
    let mut body = Some(body);
    let mut tried = Tried::default();
    let mut fresh = false;
    let mut retried = false;
    let mut head = Vec::new();
    let fields: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    loop {
        let Some(i) = pool.pick(tried) else {
            let (status, msg) = if tried.none() {
                (503, format!("upstream {}: no server is up", pool.name))
            } else {
                (
                    502,
                    format!("upstream {}: no server accepted a connection", pool.name),
                )
            };
            site.error(conn.peer, &msg);
            return answer(
                site,
                conn,
                &Answer::new(status, "The service is not available"),
            );
        };
        let server = pool.servers[i].clone();
        let busy = OwnedBusy::new(server.clone());
        let idle = if fresh {
            None
        } else {
            server.idle_connection(!retriable)
        };
        let mut up = match idle {
            Some(c) => c,
            None => match server.connect(pool.connect_timeout).await {
                Ok(s) => UpConn::new(s),
                Err(why) => {
                    pool.eject(i, &why);
                    site.error(
                        conn.peer,
                        &format!("upstream {} server {}: {why}", pool.name, server.authority),
                    );
                    tried.add(i);
                    continue;
                }
            },
        };
        head.clear();
        let up_host = if site.preserve_host {
            host_full.as_bytes()
        } else {
            server.authority.as_bytes()
        };
        headers::request_head(
            &mut head,
            &Forward {
                method: parts.method.as_str(),
                target,
                host: up_host,
                client_host: host_full,
                client: &client,
                tls: conn.tls,
                body: framing,
                upgrade: None,
            },
            fields.iter().copied(),
        );
        let back = Back {
            site,
            pool: Some(&pool),
            tls: conn.tls,
            client_host: host_full,
            server_header: conn.server_header,
            keep_length: false,
            keep_upgrade: false,
        };
        let is_head = parts.method == hyper::Method::HEAD;
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
        let reused = up.reused;
        let exchange = if framing == Framing::None {
            // The usual request: one write up, the answer back.
            async {
                up.io.write_all(&head).await.map_err(UpError::Io)?;
                tokio::time::timeout(site.timeout, up.response(is_head, make))
                    .await
                    .unwrap_or(Err(UpError::Timeout))
            }
            .await
            .map(|h| {
                let reusable = !h.close;
                (
                    h,
                    Source::Conn {
                        conn: Some(up),
                        server: server.clone(),
                        reusable,
                    },
                )
            })
        } else {
            // A request body: it goes up from a task of its own while the answer is read,
            // which may come (and stream) before the body is complete.
            let (mut rd, wr) = up.io.into_split();
            let mut up_buf = std::mem::take(&mut up.buf);
            let progress = Arc::new(Deadline::after(site.timeout));
            let sender = tokio::spawn(send_body(
                body.take(),
                wr,
                std::mem::take(&mut head),
                framing == Framing::Chunked,
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
                Ok(h) => Ok((
                    h,
                    Source::Half {
                        rd: Some(rd),
                        buf: up_buf,
                        sender,
                    },
                )),
                Err(e) => {
                    sender.abort();
                    Err(e)
                }
            }
        };
        match exchange {
            Ok((h, mut src)) => {
                finish._busy = Some(busy);
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
                return (r, h.made);
            }
            Err(e) if !retried && retriable && e.stale(reused) => {
                retried = true;
                fresh = true;
                drop(busy);
            }
            Err(e) => {
                let (status, msg, log) = e.answer(site.timeout);
                site.error(
                    conn.peer,
                    &format!("upstream {} server {}: {log}", pool.name, server.authority),
                );
                return answer(site, conn, &Answer::new(status, msg));
            }
        }
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
