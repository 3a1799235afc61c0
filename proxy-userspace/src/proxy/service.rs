//! One request, from the client's head to the response: vhost, route, allow list, the
//! upstream exchange, and the headers the proxy sets on the way out.
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tracing::{debug, warn};

use super::{
    body::{Finish, ProxyBody},
    guard::{ConnState, REJECT_HEADER},
    log::{error_line, Access, LogFile},
    upstream::{Pool, SendError, Tried},
};

/// One `[[vhost]]`, ready to serve.
pub struct Site {
    /// The first server name: the `vhost` label of the metrics.
    pub label: Arc<str>,
    pub names: Vec<String>,
    pub preserve_host: bool,
    pub timeout: Duration,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub access_log: Option<LogFile>,
    pub error_log: Option<LogFile>,
    pub redirect_https: bool,
    /// Longest prefix first.
    pub routes: Vec<Route>,
}

pub struct Route {
    pub prefix: String,
    pub pool: Arc<Pool>,
    pub allow: Vec<IpNet>,
}

/// The vhosts one listener serves, by name.
pub struct Sites {
    pub exact: std::collections::HashMap<String, Arc<Site>>,
    /// `*.example.com` as `.example.com`.
    pub wildcard: Vec<(String, Arc<Site>)>,
    /// The first vhost of the listener (Apache's rule).
    pub default: Arc<Site>,
}

impl Sites {
    /// Every vhost of the listener (a vhost with several names comes several times).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Site>> {
        std::iter::once(&self.default)
            .chain(self.exact.values())
            .chain(self.wildcard.iter().map(|(_, s)| s))
    }

    pub fn find(&self, host: &str) -> &Arc<Site> {
        if let Some(s) = self.exact.get(host) {
            return s;
        }
        if let Some(dot) = host.find('.') {
            if let Some((_, s)) = self.wildcard.iter().find(|(w, _)| *w == host[dot..]) {
                return s;
            }
        }
        &self.default
    }
}

/// What the service knows about the client connection.
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    pub sni: Option<String>,
    /// The vhosts of the listener; a reload swaps them, each request takes the current ones.
    pub sites: Arc<arc_swap::ArcSwap<Sites>>,
    pub state: Arc<ConnState>,
    pub server_header: bool,
    pub metrics: Arc<super::metrics::Metrics>,
    /// This node is handing its VIPs over: HTTP/1 responses close their connection.
    pub handover: Arc<std::sync::atomic::AtomicBool>,
}

/// The methods answered when TRACE is refused.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    conn.state.in_flight.fetch_add(1, Ordering::AcqRel);
    let started = SystemTime::now();
    let started_mono = std::time::Instant::now();
    // The client's view of the host: the URI's authority (HTTP/2, absolute-form), else Host.
    let host_full = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| conn.sni.clone())
        .unwrap_or_default();
    let host = strip_port(&host_full);
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    let site = conn.sites.load().find(&host).clone();
    let access = site.access_log.as_ref().map(|_| Access {
        client: conn.peer.ip(),
        time: started,
        request_line: format!(
            "{} {} {:?}",
            req.method(),
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            req.version()
        ),
        referer: header_str(req.headers(), &header::REFERER),
        user_agent: header_str(req.headers(), &header::USER_AGENT),
    });
    let mut finish = Finish {
        conn: conn.clone(),
        log: site.access_log.clone().zip(access),
        status: 0,
        upstream: None,
        busy: None,
        site: None,
        route: None,
        started: started_mono,
    };
    let http1 = req.version() < Version::HTTP_2;
    let mut resp = route(&conn, &site, &host_full, &host, req, &mut finish).await;
    if http1
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && conn.handover.load(Ordering::Acquire)
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(seal(&conn, site, resp, finish))
}

/// The last step of every response, the proxy's own included: response headers, no Server
/// header (or one without a version), and the finishing work attached to the body.
fn seal(
    conn: &Conn,
    site: Arc<Site>,
    mut resp: Response<ProxyBody>,
    mut finish: Finish,
) -> Response<ProxyBody> {
    let h = resp.headers_mut();
    for (name, value) in &site.headers {
        h.insert(name.clone(), value.clone());
    }
    if conn.server_header {
        h.insert(header::SERVER, HeaderValue::from_static("hapd"));
    } else {
        h.remove(header::SERVER);
    }
    finish.status = resp.status().as_u16();
    if let Some(f) = resp.body_mut().finish_mut() {
        // An upstream response already carries its upstream parts.
        f.log = finish.log.take();
        f.status = finish.status;
        f.busy = finish.busy.take().or(f.busy.take());
        f.route = finish.route;
        f.started = finish.started;
        f.site = Some(site);
    } else {
        finish.site = Some(site);
        resp.body_mut().set_finish(finish);
    }
    resp
}

async fn route(
    conn: &Arc<Conn>,
    site: &Arc<Site>,
    host_full: &str,
    host: &str,
    req: Request<Incoming>,
    finish: &mut Finish,
) -> Response<ProxyBody> {
    if let Some(reason) = req.headers().get(REJECT_HEADER) {
        let reason = reason.to_str().unwrap_or("malformed request").to_string();
        site_error(site, conn, &format!("request refused: {reason}"));
        let mut r = generated(StatusCode::BAD_REQUEST, &reason);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if req.method() == Method::TRACE {
        let mut r = generated(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        return r;
    }
    if site.redirect_https {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = format!("https://{host}{pq}");
        return match HeaderValue::from_str(&target) {
            Ok(v) => {
                let mut r = generated(StatusCode::MOVED_PERMANENTLY, "Moved permanently");
                r.headers_mut().insert(header::LOCATION, v);
                r
            }
            Err(_) => generated(StatusCode::BAD_REQUEST, "bad host"),
        };
    }
    let path = req.uri().path();
    let Some(index) = site
        .routes
        .iter()
        .position(|r| path.starts_with(r.prefix.as_str()))
    else {
        return generated(StatusCode::NOT_FOUND, "No route for this path");
    };
    let route = &site.routes[index];
    finish.route = Some(index);
    let client = canonical(conn.peer.ip());
    if !route.allow.is_empty() && !route.allow.iter().any(|n| n.contains(&client)) {
        return generated(StatusCode::FORBIDDEN, "Forbidden");
    }
    forward(conn, site, route, host_full, req, finish).await
}

async fn forward(
    conn: &Arc<Conn>,
    site: &Arc<Site>,
    route: &Route,
    host_full: &str,
    mut req: Request<Incoming>,
    finish: &mut Finish,
) -> Response<ProxyBody> {
    let upgrade = req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade");
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    // Headers to the upstream.
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    if parts.version == Version::HTTP_2 {
        // HTTP/2 may split cookies (RFC 9113 section 8.2.3); HTTP/1.1 wants one line.
        let cookies: Vec<_> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if cookies.len() > 1 {
            if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
                headers.insert(header::COOKIE, v);
            }
        }
    }
    let ip = canonical(conn.peer.ip()).to_string();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let scheme = if conn.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Ok(v) = HeaderValue::from_str(host_full) {
        headers.insert(X_FORWARDED_HOST, v.clone());
        if site.preserve_host {
            headers.insert(header::HOST, v);
        }
    }
    if let Some(u) = upgrade_value.filter(|_| upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
    // Origin-form as it came (HTTP/1), or rebuilt from the path (HTTP/2, absolute-form).
    let uri: Uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        std::mem::take(&mut parts.uri)
    } else {
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"))
    };
    let mut up = Request::new(body.boxed_unsync());
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let pool = &route.pool;
    let mut tried = Tried::default();
    let deadline = tokio::time::Instant::now() + site.timeout;
    loop {
        let Some((i, busy)) = pool.pick(tried) else {
            let msg = if tried.none() {
                format!("upstream {}: no server is up", pool.name)
            } else {
                format!("upstream {}: no server accepted a connection", pool.name)
            };
            site_error(site, conn, &msg);
            return generated(
                if tried.none() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "The service is not available",
            );
        };
        tried.add(i);
        let server = pool.servers[i].clone();
        if !site.preserve_host {
            if let Ok(v) = HeaderValue::from_str(&server.authority) {
                up.headers_mut().insert(header::HOST, v);
            }
        }
        let attempt = async {
            if upgrade {
                server
                    .send_upgrade(up, pool.connect_timeout)
                    .await
                    .map(|r| (r, None))
            } else {
                server
                    .send(up, pool.connect_timeout)
                    .await
                    .map(|(r, c)| (r, Some(c)))
            }
        };
        let result = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => {
                site_error(
                    site,
                    conn,
                    &format!(
                        "upstream {} server {}: no answer within {:?}",
                        pool.name, server.authority, site.timeout
                    ),
                );
                return generated(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The upstream did not answer in time",
                );
            }
        };
        match result {
            Ok((resp, pooled)) => {
                finish.busy = Some(busy);
                let (mut rparts, rbody) = resp.into_parts();
                if upgrade && rparts.status == StatusCode::SWITCHING_PROTOCOLS {
                    let upstream_io = hyper::upgrade::on(Response::from_parts(rparts.clone(), ()));
                    if let Some(client_io) = client_upgrade {
                        tokio::spawn(tunnel(client_io, upstream_io));
                    }
                    let mut r = Response::from_parts(rparts, ProxyBody::empty());
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    return r;
                }
                strip_hop_by_hop(&mut rparts.headers);
                rewrite_locations(&mut rparts.headers, pool, scheme, host_full);
                if upgrade {
                    // The client asked to switch protocols and stays HTTP/1: close afterwards so
                    // no request follows an unexamined upgrade attempt.
                    rparts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                let mut body = ProxyBody::upstream(rbody);
                body.set_finish(Finish {
                    conn: conn.clone(),
                    log: None,
                    status: 0,
                    upstream: pooled.map(|c| (c, server.clone())),
                    busy: None,
                    site: None,
                    route: None,
                    started: finish.started,
                });
                return Response::from_parts(rparts, body);
            }
            Err(SendError::Connect(req, why)) => {
                drop(busy);
                pool.eject(i, &why);
                site_error(
                    site,
                    conn,
                    &format!("upstream {} server {}: {why}", pool.name, server.authority),
                );
                up = *req;
            }
            Err(SendError::Upstream(e)) => {
                site_error(
                    site,
                    conn,
                    &format!("upstream {} server {}: {e}", pool.name, server.authority),
                );
                return generated(
                    StatusCode::BAD_GATEWAY,
                    "The upstream answer was not usable",
                );
            }
        }
    }
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        debug!("upgrade: one side went away before switching");
        return;
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
}

/// ProxyPassReverse: a Location pointing at an upstream server is turned back into the
/// address the client used.
fn rewrite_locations(h: &mut HeaderMap, pool: &Pool, scheme: &str, host_full: &str) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = h.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        for s in &pool.servers {
            let base = format!("http://{}", s.authority);
            let matches = v.len() >= base.len()
                && v[..base.len()].eq_ignore_ascii_case(&base)
                && matches!(
                    v.as_bytes().get(base.len()),
                    None | Some(b'/' | b'?' | b'#')
                );
            if matches {
                let new = format!("{scheme}://{host_full}{}", &v[base.len()..]);
                if let Ok(nv) = HeaderValue::from_str(&new) {
                    h.insert(name.clone(), nv);
                }
                break;
            }
        }
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn header_str(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `host:port` or `[v6]:port` without the port.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// IPv4 clients on a dual-stack socket appear as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn site_error(site: &Site, conn: &Conn, msg: &str) {
    warn!(client = %conn.peer, "{msg}");
    if let Some(l) = &site.error_log {
        l.write(error_line(Some(conn.peer.ip()), msg));
    }
}

/// A response of the proxy's own: a short HTML page with no version in it.
pub fn generated(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{} {reason}</title></head><body><h1>{reason}</h1><p>{}</p></body></html>\n",
        status.as_u16(),
        html_escape(message)
    );
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(strip_port("198.18.0.1:80"), "198.18.0.1");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn generated_pages_name_no_version() {
        let r = generated(StatusCode::BAD_GATEWAY, "<x>");
        assert_eq!(r.status(), 502);
        assert!(r.headers().get(header::SERVER).is_none());
    }
}
