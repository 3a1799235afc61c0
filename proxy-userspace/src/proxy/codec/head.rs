//! HTTP/1 message heads (RFC 9112): the client's request head and the upstream's response
//! head, parsed where they lie in the read buffer (httparse), checked, and framed.
//!
//! A proxy in front of other parsers must refuse what two parsers could read differently
//! (request smuggling): `Content-Length` beside `Transfer-Encoding`, two `Content-Length`s
//! (even equal), two `Transfer-Encoding`s, a `Content-Length` that is not a plain decimal,
//! obs-fold and whitespace before a colon (httparse refuses those), `Transfer-Encoding` in
//! HTTP/1.0, two `Host`s, and HTTP/1.1 without `Host`.
use std::mem::MaybeUninit;

use httparse::Header;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only, RFC 9112 section 6.3 rule 8).
    Close,
}

/// A request head that passed every check.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The request target as sent.
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: &'h [Header<'b>],
    /// Length of the head in the buffer, blank lines before it included.
    pub len: usize,
    pub body: Framing,
    pub host: Option<&'b [u8]>,
    /// The client wants the connection closed after this exchange.
    pub close: bool,
    /// The protocol asked for with `Upgrade` and `Connection: upgrade` (HTTP/1.1 only).
    pub upgrade: Option<&'b [u8]>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// A request head that is answered with an error and the connection closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal<'b> {
    pub status: u16,
    pub reason: &'static str,
    /// The Host, when the head was readable: the refusal is answered by that vhost.
    pub host: Option<&'b [u8]>,
}

#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    /// The head is not complete yet.
    Partial,
    Head(Request<'h, 'b>),
    Refused(Refusal<'b>),
}

fn refuse<'h, 'b>(status: u16, reason: &'static str, host: Option<&'b [u8]>) -> Parsed<'h, 'b> {
    Parsed::Refused(Refusal {
        status,
        reason,
        host,
    })
}

/// Parses the request head at the start of `buf` into `headers` (its length is the most
/// header fields accepted; it needs no initialising).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "too many header fields", None);
        }
        Err(httparse::Error::Version) => return refuse(505, "unsupported HTTP version", None),
        Err(_) => return refuse(400, "malformed request head", None),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return refuse(400, "malformed request head", None);
    };
    let headers: &'h [Header<'b>] = req.headers;
    let mut host = None;
    let mut hosts = 0;
    let mut length: Option<&[u8]> = None;
    let mut lengths = 0;
    let mut te: Option<&[u8]> = None;
    let mut tes = 0;
    let mut upgrade = None;
    let mut conn = ConnectionTokens::default();
    let mut expect: Option<&[u8]> = None;
    for h in headers {
        match h.name.len() {
            4 if h.name.eq_ignore_ascii_case("host") => {
                hosts += 1;
                host = Some(h.value);
            }
            6 if h.name.eq_ignore_ascii_case("expect") => expect = Some(h.value),
            7 if h.name.eq_ignore_ascii_case("upgrade") => upgrade = Some(h.value),
            10 if h.name.eq_ignore_ascii_case("connection") => conn.add(h.value),
            14 if h.name.eq_ignore_ascii_case("content-length") => {
                lengths += 1;
                length = Some(h.value);
            }
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                tes += 1;
                te = Some(h.value);
            }
            _ => {}
        }
    }
    if hosts > 1 {
        return refuse(400, "two Host headers", host);
    }
    if minor == 1 && hosts == 0 && !target.starts_with("http") {
        return refuse(400, "HTTP/1.1 request without Host", None);
    }
    if lengths > 1 {
        return refuse(400, "two Content-Length headers", host);
    }
    if tes > 1 {
        return refuse(400, "two Transfer-Encoding headers", host);
    }
    let body = match (te, length) {
        (Some(_), Some(_)) => return refuse(400, "Content-Length with Transfer-Encoding", host),
        // RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is a framing fault.
        (Some(_), None) if minor == 0 => {
            return refuse(400, "Transfer-Encoding in an HTTP/1.0 request", host)
        }
        (Some(te), None) => {
            if trim(te).eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                // RFC 9112 section 6.1: a transfer coding the server does not understand.
                return refuse(501, "unsupported Transfer-Encoding", host);
            }
        }
        (None, Some(v)) => match decimal(v) {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => return refuse(400, "invalid Content-Length", host),
        },
        (None, None) => Framing::None,
    };
    let mut expect_continue = false;
    if let Some(e) = expect {
        if trim(e).eq_ignore_ascii_case(b"100-continue") {
            expect_continue = minor == 1;
        } else {
            return refuse(417, "unsupported expectation", host);
        }
    }
    let upgrade = upgrade.filter(|_| conn.upgrade && minor == 1);
    Parsed::Head(Request {
        method,
        target,
        minor,
        headers,
        len,
        body,
        host,
        close: conn.close || (minor == 0 && !conn.keep_alive),
        upgrade,
        expect_continue,
    })
}

/// The error of a response head with more fields than the storage given.
pub const TOO_MANY: &str = "too many header fields";

/// An upstream's response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'h, 'b> {
    pub code: u16,
    pub reason: &'b str,
    pub minor: u8,
    pub headers: &'h [Header<'b>],
    pub len: usize,
    pub body: Framing,
    /// The connection cannot carry another request after this response.
    pub close: bool,
}

/// Parses the response head at the start of `buf`; `head_request`: the request was HEAD, so
/// no body follows whatever the head says (RFC 9112 section 6.3). `Ok(None)`: not complete.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    head_request: bool,
) -> Result<Option<Response<'h, 'b>>, &'static str> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err("malformed response head");
    };
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [Header<'b>] = resp.headers;
    let mut conn = ConnectionTokens::default();
    let mut length: Option<&[u8]> = None;
    let mut te: Option<&[u8]> = None;
    for h in headers {
        match h.name.len() {
            10 if h.name.eq_ignore_ascii_case("connection") => conn.add(h.value),
            14 if h.name.eq_ignore_ascii_case("content-length") => match length {
                // Repeated equal values are one length (RFC 9110 section 8.6).
                Some(prev) if decimal(prev) != decimal(h.value) => {
                    return Err("conflicting Content-Length headers");
                }
                _ => length = Some(h.value),
            },
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => te = Some(h.value),
            _ => {}
        }
    }
    let mut close = conn.close || (minor == 0 && !conn.keep_alive);
    // RFC 9112 section 6.3, in order.
    let body = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::None
    } else if let Some(te) = te {
        // Rule 3: Transfer-Encoding wins over Content-Length, and the connection is closed
        // afterwards when both came.
        if length.is_some() {
            close = true;
        }
        let last = te.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            close = true;
            Framing::Close
        }
    } else if let Some(v) = length {
        match decimal(v) {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => return Err("invalid Content-Length"),
        }
    } else {
        close = true;
        Framing::Close
    };
    Ok(Some(Response {
        code,
        reason,
        minor,
        headers,
        len,
        body,
        close,
    }))
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
/// The options of the Connection header fields that change how the proxy
/// treats the connection (RFC 9112 section 9.6, RFC 9110 section 7.8).
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }
}

pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &v[start..end]
}

/// A plain decimal number (no sign, no spaces inside, at most 18 digits).
fn decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests;
