//! The proxy's header rules, one implementation for the HTTP/1 and the HTTP/2 paths: what goes
//! to the upstream with a request (hop-by-hop fields removed, `Host`, `X-Forwarded-*`, one
//! `Cookie` line, the body's framing), what goes back to the client with a response (hop-by-hop
//! fields removed, `Location` turned back to the client's view, the vhost's headers, no
//! `Server` or one without a version, a `Date`), and the proxy's own answers.
//!
//! Headers come in as `(name, value)` pairs from wherever they were parsed (the read buffer
//! for HTTP/1, hyper's map for HTTP/2) and go out as bytes or through a callback, so the hot
//! path copies each field once and allocates nothing.
use std::{
    cell::RefCell,
    io::Write,
    net::IpAddr,
    ops::Range,
    time::{SystemTime, UNIX_EPOCH},
};

use hyper::header::{HeaderName, HeaderValue};

use super::{codec::head::tokens, upstream::Pool};

/// A vhost's `response_headers`: set on every response, replacing the upstream's fields of
/// the same names.
pub type VhostHeaders = [(HeaderName, HeaderValue)];

/// Whether `name` is one of the vhost's headers (which replace the upstream's).
fn overrides(vhost: &VhostHeaders, name: &str) -> bool {
    vhost
        .iter()
        .any(|(n, _)| n.as_str().len() == name.len() && n.as_str().eq_ignore_ascii_case(name))
}

/// Kinds of header the rules treat specially.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Hop-by-hop (RFC 9110 section 7.6.1): never forwarded.
    HopByHop,
    Connection,
    Upgrade,
    Host,
    ContentLength,
    Expect,
    Cookie,
    XForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: set by the proxy, the client's dropped.
    XForwardedSet,
    Server,
    Location,
    Date,
    Other,
}

fn kind(name: &str) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => Kind::HopByHop,
        4 if is("host") => Kind::Host,
        4 if is("date") => Kind::Date,
        6 if is("expect") => Kind::Expect,
        6 if is("cookie") => Kind::Cookie,
        6 if is("server") => Kind::Server,
        7 if is("trailer") => Kind::HopByHop,
        7 if is("upgrade") => Kind::Upgrade,
        8 if is("location") => Kind::Location,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("proxy-connection") => Kind::HopByHop,
        16 if is("content-location") => Kind::Location,
        16 if is("x-forwarded-host") => Kind::XForwardedSet,
        17 if is("transfer-encoding") => Kind::HopByHop,
        17 if is("x-forwarded-proto") => Kind::XForwardedSet,
        _ => Kind::Other,
    }
}

/// Field names listed in `Connection` headers (hop-by-hop as well, RFC 9110 section 7.6.1).
struct Named<'h> {
    few: [&'h [u8]; 8],
    n: usize,
    more: Vec<&'h [u8]>,
}

impl<'h> Named<'h> {
    fn collect<I: Iterator<Item = (&'h str, &'h [u8])>>(headers: I) -> Named<'h> {
        let mut named = Named {
            few: [&[]; 8],
            n: 0,
            more: Vec::new(),
        };
        for (name, value) in headers {
            if name.len() == 10 && name.eq_ignore_ascii_case("connection") {
                for t in tokens(value) {
                    // These name no field, or one with a rule of its own.
                    if t.eq_ignore_ascii_case(b"close")
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || t.eq_ignore_ascii_case(b"upgrade")
                    {
                        continue;
                    }
                    if named.n < named.few.len() {
                        named.few[named.n] = t;
                        named.n += 1;
                    } else {
                        named.more.push(t);
                    }
                }
            }
        }
        named
    }

    fn contains(&self, name: &str) -> bool {
        let n = name.as_bytes();
        self.few[..self.n]
            .iter()
            .chain(self.more.iter())
            .any(|t| t.eq_ignore_ascii_case(n))
    }

    fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// What the proxy says about a request it forwards.
pub struct Forward<'a> {
    pub method: &'a str,
    /// Origin-form: path and query.
    pub target: &'a str,
    /// The `Host` the upstream gets: the client's (`preserve_host`) or the server's.
    pub host: &'a [u8],
    /// The host as the client named it, for `X-Forwarded-Host`.
    pub client_host: &'a str,
    /// The client's address as text.
    pub client: &'a str,
    pub tls: bool,
    /// How the body goes upstream: none, `Content-Length`, or chunked.
    pub body: super::codec::head::Framing,
    /// The protocol to switch to (WebSocket), when the client asked for one.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the upstream request head into `out`; returns where its `Host` value lies, for
/// [`set_host`].
pub fn request_head<'h, I>(out: &mut Vec<u8>, f: &Forward<'_>, headers: I) -> Range<usize>
where
    I: Iterator<Item = (&'h str, &'h [u8])> + Clone,
{
    use super::codec::head::Framing;
    let named = Named::collect(headers.clone());
    out.extend_from_slice(f.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(f.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let host = out.len()..out.len() + f.host.len();
    out.extend_from_slice(f.host);
    out.extend_from_slice(b"\r\n");
    let (mut xff, mut cookies) = (0, 0);
    for (name, value) in headers.clone() {
        match kind(name) {
            Kind::Other | Kind::Date | Kind::Server | Kind::Location => {
                if !named.is_empty() && named.contains(name) {
                    continue;
                }
                put(out, name.as_bytes(), value);
            }
            Kind::XForwardedFor => xff += 1,
            Kind::Cookie => cookies += 1,
            _ => {}
        }
    }
    // Earlier proxies' list, then this client.
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff > 0 {
        for (name, value) in headers.clone() {
            if kind(name) == Kind::XForwardedFor {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(f.client.as_bytes());
    out.extend_from_slice(b"\r\n");
    if cookies > 0 {
        // HTTP/2 may split cookies (RFC 9113 section 8.2.3); HTTP/1.1 wants one line.
        out.extend_from_slice(b"cookie: ");
        let mut first = true;
        for (name, value) in headers {
            if kind(name) == Kind::Cookie {
                if !first {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(value);
                first = false;
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if f.tls {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    put(out, b"x-forwarded-host", f.client_host.as_bytes());
    match f.body {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if let Some(u) = f.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put(out, b"upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
    host
}

/// Replaces the `Host` value at `range` in a head written by [`request_head`] with `host`;
/// `range` then covers the new value. Another server's authority for a retry costs one copy
/// of what follows `Host`, not a new head.
pub fn set_host(out: &mut Vec<u8>, range: &mut Range<usize>, host: &[u8]) {
    out.splice(range.clone(), host.iter().copied());
    range.end = range.start + host.len();
}

/// Whether a request with this method may be sent again (RFC 9110 section 9.2.2).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// One header field line.
pub(crate) fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What a response to the client needs besides the upstream's fields.
pub struct Back<'a> {
    /// The vhost's `response_headers`.
    pub vhost: &'a VhostHeaders,
    /// The pool that answered: a `Location` naming one of its servers is rewritten.
    pub pool: Option<&'a Pool>,
    pub tls: bool,
    /// The host as the client named it.
    pub client_host: &'a str,
    pub server_header: bool,
    /// Keep the upstream's `Content-Length` (a response without a body: HEAD, 304).
    pub keep_length: bool,
    /// Keep `Upgrade` (a 101 answer to an upgrade).
    pub keep_upgrade: bool,
}

/// The response fields for the client, in order, through `emit`: the upstream's fields under
/// the rules, then the vhost's, `Server` if configured, and `Date` if the upstream sent none.
/// Framing fields (`Content-Length` except with `keep_length`, `Transfer-Encoding`,
/// `Connection`) are the caller's to add.
pub fn response_fields<'h, I>(headers: I, b: &Back<'_>, mut emit: impl FnMut(&[u8], &[u8]))
where
    I: Iterator<Item = (&'h str, &'h [u8])> + Clone,
{
    let named = Named::collect(headers.clone());
    let mut dated = false;
    for (name, value) in headers {
        match kind(name) {
            Kind::HopByHop | Kind::Connection | Kind::Server => continue,
            Kind::Upgrade if !b.keep_upgrade => continue,
            Kind::ContentLength if !b.keep_length => continue,
            Kind::Date => dated = true,
            _ => {}
        }
        if !named.is_empty() && named.contains(name) {
            continue;
        }
        if overrides(b.vhost, name) {
            continue;
        }
        if kind(name) == Kind::Location {
            if let Some(v) = b
                .pool
                .and_then(|p| rewrite_location(value, p, b.tls, b.client_host))
            {
                emit(name.as_bytes(), v.as_bytes());
                continue;
            }
        }
        emit(name.as_bytes(), value);
    }
    for (name, value) in b.vhost {
        emit(name.as_str().as_bytes(), value.as_bytes());
    }
    if b.server_header {
        emit(b"server", b"hapd");
    }
    if !dated {
        with_date(|d| emit(b"date", d));
    }
}

/// ProxyPassReverse: a location pointing at a server of the pool is turned back into the
/// address the client used.
pub fn rewrite_location(v: &[u8], pool: &Pool, tls: bool, client_host: &str) -> Option<String> {
    let v = std::str::from_utf8(v).ok()?;
    let rest = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &v[7..])?;
    for s in &pool.servers {
        let a = s.authority.as_str();
        let matches = rest.len() >= a.len()
            && rest[..a.len()].eq_ignore_ascii_case(a)
            && matches!(
                rest.as_bytes().get(a.len()),
                None | Some(b'/' | b'?' | b'#')
            );
        if matches {
            let scheme = if tls { "https" } else { "http" };
            return Some(format!("{scheme}://{client_host}{}", &rest[a.len()..]));
        }
    }
    None
}

/// One of the proxy's own answers: a short HTML page with no version in it.
pub struct Answer {
    pub status: u16,
    pub message: std::borrow::Cow<'static, str>,
    /// `Allow` for a refused method, `Location` for a redirect.
    pub header: Option<(&'static str, String)>,
}

impl Answer {
    pub fn new(status: u16, message: impl Into<std::borrow::Cow<'static, str>>) -> Answer {
        Answer {
            status,
            message: message.into(),
            header: None,
        }
    }

    pub fn with(mut self, name: &'static str, value: String) -> Answer {
        self.header = Some((name, value));
        self
    }

    pub fn body(&self) -> String {
        let reason = reason(self.status);
        format!(
            "<!DOCTYPE html>\n<html><head><title>{} {reason}</title></head><body><h1>{reason}</h1><p>{}</p></body></html>\n",
            self.status,
            html_escape(&self.message)
        )
    }

    /// The answer's fields through `emit` (framing excepted): content type, its own header,
    /// the vhost's headers, `Server` if configured, `Date`.
    pub fn fields(
        &self,
        vhost: &VhostHeaders,
        server_header: bool,
        mut emit: impl FnMut(&[u8], &[u8]),
    ) {
        emit(b"content-type", b"text/html; charset=utf-8");
        if let Some((n, v)) = &self.header {
            emit(n.as_bytes(), v.as_bytes());
        }
        for (name, value) in vhost {
            emit(name.as_str().as_bytes(), value.as_bytes());
        }
        if server_header {
            emit(b"server", b"hapd");
        }
        with_date(|d| emit(b"date", d));
    }
}

/// The reason phrase of a status the proxy sends itself.
pub fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

thread_local! {
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// The current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once a
/// second per thread.
pub fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            d.0 = secs;
            d.1 = imf_fixdate(secs);
        }
        f(&d.1)
    })
}

fn imf_fixdate(secs: u64) -> [u8; 29] {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let mut out = [0u8; 29];
    let n = text.len().min(29);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// IPv4 clients on a dual-stack socket appear as `::ffff:a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
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

#[cfg(test)]
mod tests;
