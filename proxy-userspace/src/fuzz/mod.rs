//! Fuzz targets: what must hold for any input. The cargo-fuzz harness (`fuzz/`, run long by
//! `cargo xtask bench fuzz`) and the short run in the tests ([`short`]: the corpus in
//! `fuzz/corpus/` plus mutations of it) call the same functions. Built for tests and with
//! the `fuzz` feature (which the harness turns on), never into the `hapd` binary.
use std::{
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::OnceLock,
};

use httparse::Header;

#[cfg(test)]
mod short;

use crate::{
    config::{Config, XdpMode},
    dataplane::{raw::RawState, InstanceSpec},
    proxy::codec::{
        body::Decoder,
        head::{parse_request, Framing, Parsed, Refusal, Request},
    },
    vrrp::{Advert, ChecksumMode},
};

/// A VRRP message from anyone: parsing never panics, and what parses is emitted back to a
/// message that parses to the same advert (both checksum modes, both families).
pub fn vrrp_message(data: &[u8]) {
    let v4: (IpAddr, IpAddr) = (
        Ipv4Addr::new(198, 18, 0, 1).into(),
        Ipv4Addr::new(224, 0, 0, 18).into(),
    );
    let v6: (IpAddr, IpAddr) = (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
        crate::vrrp::packet::MCAST6.into(),
    );
    for (src, dst) in [v4, v6] {
        for mode in [ChecksumMode::PseudoHeader, ChecksumMode::MessageOnly] {
            if let Ok(a) = Advert::parse(data, mode, src, dst) {
                let again = Advert::parse(&a.emit(mode, src, dst), mode, src, dst)
                    .expect("an emitted advert parses");
                assert_eq!(a, again, "parse(emit(a)) == a");
            }
        }
    }
}

/// A config file: loading never panics, whatever the text.
pub fn config_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// The guard's instances for frame fuzzing: VRID 51 v3, VRID 52 v2 with a password and VRID 53
/// v3 with `auth_hmac` (key 1: bytes 0..32, enforce, monotonic), and VRID 51 over IPv6 with
/// keepalived's captured link-local address (fe80::ff:fe00:1) as its peer, on interface index 2.
pub fn fuzz_specs() -> Vec<InstanceSpec> {
    let spec = |vrid: u8, version: u8, pass: Option<[u8; 8]>| InstanceSpec {
        name: format!("VI_{vrid}"),
        interface: "eth0".into(),
        ifindex: 2,
        vrid,
        version,
        family: proxy_common::vrrp::Family::V4,
        peers: vec![proxy_common::maps::v4_addr([198, 18, 0, 2])],
        pseudo_header: version == 3,
        auth_pass: pass,
        auth: None,
        xdp: XdpMode::Off,
        served: vec![],
    };
    let hmac = crate::dataplane::AuthSpec::new(&crate::config::auth::ResolvedAuth {
        keys: vec![(1, (0u8..32).collect())],
        active_key: 1,
        time_mode: false,
        window_s: 5,
        mode: crate::config::auth::AuthMode::Enforce,
    });
    vec![
        spec(51, 3, None),
        spec(52, 2, Some(*b"secret42")),
        InstanceSpec {
            auth: Some(hmac),
            ..spec(53, 3, None)
        },
        InstanceSpec {
            name: "VI6_51".into(),
            family: proxy_common::vrrp::Family::V6,
            peers: vec![Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 1).octets()],
            pseudo_header: false,
            ..spec(51, 3, None)
        },
    ]
}

/// An Ethernet frame on a guarded interface: the guard's decision procedure (the code the XDP
/// program runs too) never panics and never loops, whatever the bytes.
pub fn guard_frame(data: &[u8]) {
    static STATE: OnceLock<RawState> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let s = RawState::default();
        let specs = fuzz_specs();
        let refs: Vec<&InstanceSpec> = specs.iter().collect();
        s.configure(&refs).expect("the fuzz instances are valid");
        s
    });
    let _ = state.handle(data, 2, 1_000_000_000);
}

/// The XDP program itself, through BPF_PROG_TEST_RUN on loopback (needs root): on any frame it
/// passes the verifier's bounds at run time (the kernel would abort it otherwise) and decides
/// exactly as the userspace path does: the same action and the same counter.
pub fn xdp_frame(data: &[u8]) {
    use crate::dataplane::xdp::XdpGuard;
    use proxy_common::maps::Reason;
    use std::sync::Mutex;
    static BOTH: OnceLock<Mutex<(XdpGuard, RawState)>> = OnceLock::new();
    if data.len() < 14 {
        return; // test-run refuses runts, and the kernel never runs XDP on them
    }
    let both = BOTH.get_or_init(|| {
        let specs: Vec<InstanceSpec> = fuzz_specs()
            .into_iter()
            .map(|s| InstanceSpec { ifindex: 1, ..s })
            .collect();
        let refs: Vec<&InstanceSpec> = specs.iter().collect();
        let mut xdp = XdpGuard::load(None, false).expect("load the guard (run as root)");
        xdp.configure(&refs).expect("configure the guard");
        let raw = RawState::default();
        raw.configure(&refs).expect("configure the raw path");
        Mutex::new((xdp, raw))
    });
    let Ok(guard) = both.lock() else { return };
    let (xdp, raw) = &*guard;
    let before = (xdp.counters().expect("counters"), raw.counters());
    let action = xdp.test_run(data, 1).expect("test-run");
    let _ = raw.handle(data, 1, crate::dataplane::monotonic_ns());
    let after = (xdp.counters().expect("counters"), raw.counters());
    let mut dropped = false;
    for r in Reason::ALL {
        let dx = after.0.get(r) - before.0.get(r);
        let dr = after.1.get(r) - before.1.get(r);
        assert_eq!(dx, dr, "{}: xdp {dx}, userspace {dr}", r.name());
        dropped |= r != Reason::Accepted && dr > 0;
    }
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    // A TCP connection request may also be dropped (see the guard); VRRP verdicts must agree.
    if action != XDP_DROP || dropped {
        assert_eq!(action, if dropped { XDP_DROP } else { XDP_PASS }, "action");
    }
}

/// A number drawn from the input, for cut points that differ from input to input.
fn spread(data: &[u8]) -> usize {
    data.iter().fold(0usize, |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}

/// Header fields the HTTP/1 head target gives the parser: small, so that the 431 refusal is
/// reachable with small inputs (the proxy's `max_headers` is larger).
const HEAD_FIELDS: usize = 32;

/// A request head from anyone (`proxy/http1/head.rs`): parsing never panics, and it agrees
/// with httparse (the parser it wraps, default configuration) where it must:
/// - httparse partial <=> ours partial; httparse invalid => ours refused with the status of
///   httparse's error (431 too many fields, 505 version, else 400);
/// - ours accepted => httparse complete with the same method, target, version, fields (names
///   and values, in order) and head length; the head alone (without what follows it) parses
///   the same, and the head cut short is partial (the proxy parses each read again);
/// - httparse complete but ours refused: only by one of head.rs's rules, and the rule holds.
///   Ours is stricter than RFC 9112 and httparse by design (the smuggling defence): a second
///   Content-Length even if equal, Content-Length beside Transfer-Encoding, a second
///   Transfer-Encoding, any Transfer-Encoding but exactly `chunked` (RFC 9112 would allow
///   codings before a final `chunked`: 501 here), Transfer-Encoding in HTTP/1.0, a
///   Content-Length that is not 1 to 18 digits, two Hosts, HTTP/1.1 without Host (unless the
///   target is absolute), an Expect other than 100-continue (417).
///
/// Of an accepted head it checks the framing against the fields by those rules (never both
/// framings, chunked only from `Transfer-Encoding: chunked` in HTTP/1.1, a length only from one
/// plain decimal), and the Host, Expect, Connection and Upgrade decisions. Of any complete
/// head it checks what head.rs relies on httparse for: no obs-fold (no CR, LF or other
/// control byte in a value), no whitespace in a field name or before its colon, no space in
/// the target. (hyper's server parses heads with httparse too and resolves some framing
/// conflicts that ours refuses, e.g. two equal Content-Lengths; driving it takes a runtime per
/// input, so it is not an oracle here.)
pub fn http1_head(data: &[u8]) {
    let mut fields = [MaybeUninit::uninit(); HEAD_FIELDS];
    let ours = parse_request(data, &mut fields);
    let mut their_fields = [httparse::EMPTY_HEADER; HEAD_FIELDS];
    let mut theirs = httparse::Request::new(&mut their_fields);
    let status = theirs.parse(data);
    if matches!(status, Ok(httparse::Status::Complete(_))) {
        check_lexical(&theirs);
    }
    match (ours, status) {
        (Parsed::Partial, Ok(httparse::Status::Partial)) => {}
        (Parsed::Head(r), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(
                (
                    r.len,
                    Some(r.method),
                    Some(r.target),
                    Some(r.minor),
                    r.headers
                ),
                (
                    n,
                    theirs.method,
                    theirs.path,
                    theirs.version,
                    &*theirs.headers
                ),
                "ours and httparse read the head differently"
            );
            check_accepted(&r);
            let cut = spread(data) % n.max(1);
            assert_eq!(
                our_verdict(&data[..cut]),
                "Partial",
                "the head cut at {cut}"
            );
            assert_eq!(
                our_verdict(&data[..n]),
                format!("{:?}", Parsed::Head(r)),
                "the head without the bytes after it"
            );
        }
        (Parsed::Refused(f), Err(e)) => {
            let (status, reason) = match e {
                httparse::Error::TooManyHeaders => (431, "too many header fields"),
                httparse::Error::Version => (505, "unsupported HTTP version"),
                _ => (400, "malformed request head"),
            };
            assert_eq!(
                (f.status, f.reason, f.host),
                (status, reason, None),
                "httparse: {e:?}"
            );
        }
        (Parsed::Refused(f), Ok(httparse::Status::Complete(_))) => check_refusal(&f, &theirs),
        (o, t) => panic!("ours {o:?}, httparse {t:?}"),
    }
}

/// Our verdict on `buf`, as text (to compare two parses of different buffers).
fn our_verdict(buf: &[u8]) -> String {
    let mut fields = [MaybeUninit::uninit(); HEAD_FIELDS];
    format!("{:?}", parse_request(buf, &mut fields))
}

/// RFC 9110 section 5.6.2: `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What head.rs relies on httparse for, in a complete head: no obs-fold, no whitespace before
/// a colon, no CR, LF or other control byte inside a field value, no space in the target.
fn check_lexical(req: &httparse::Request<'_, '_>) {
    let method = req.method.unwrap_or_default();
    assert!(
        !method.is_empty() && method.bytes().all(is_tchar),
        "method {method:?}"
    );
    let target = req.path.unwrap_or_default();
    assert!(
        !target.is_empty() && target.bytes().all(|b| b > b' '),
        "target {target:?}"
    );
    for h in req.headers.iter() {
        assert!(
            !h.name.is_empty() && h.name.bytes().all(is_tchar),
            "field name {:?}",
            h.name
        );
        assert!(
            h.value.iter().all(|&b| b == b'\t' || b >= b' '),
            "field {}: value {:?}",
            h.name,
            h.value
        );
    }
}

/// The values of the fields named `name` (any case), in order.
fn values<'b>(headers: &[Header<'b>], name: &str) -> Vec<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// Whether the comma-separated lists in `lists` hold `token` (any case).
fn has_token(lists: &[&[u8]], token: &str) -> bool {
    lists
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 9110 section 8.6: `Content-Length = 1*DIGIT`, within optional whitespace; head.rs
/// takes at most 18 digits (no overflow).
fn plain_decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A head ours accepted: its framing and its other decisions follow from its fields by
/// head.rs's rules.
fn check_accepted(r: &Request<'_, '_>) {
    let cl = values(r.headers, "content-length");
    let te = values(r.headers, "transfer-encoding");
    let host = values(r.headers, "host");
    let conn = values(r.headers, "connection");
    let expect = values(r.headers, "expect");
    // Request smuggling: one framing field at most, never both kinds.
    assert!(
        cl.len() + te.len() <= 1,
        "accepted with {} Content-Length and {} Transfer-Encoding",
        cl.len(),
        te.len()
    );
    assert!(host.len() <= 1, "accepted with {} Host fields", host.len());
    assert_eq!(r.host, host.first().copied(), "Host");
    if r.minor == 1 && host.is_empty() {
        assert!(
            r.target.starts_with("http"),
            "HTTP/1.1 without Host, target {:?}",
            r.target
        );
    }
    match r.body {
        Framing::Chunked => {
            assert_eq!(r.minor, 1, "Transfer-Encoding in HTTP/1.0");
            assert!(
                te.len() == 1 && te[0].trim_ascii().eq_ignore_ascii_case(b"chunked"),
                "chunked framing from Transfer-Encoding {te:?}"
            );
        }
        Framing::Length(n) => {
            assert!(n > 0, "Length(0) where no body is None");
            assert_eq!(cl.len(), 1, "a length without Content-Length");
            assert_eq!(plain_decimal(cl[0]), Some(n), "Content-Length {:?}", cl[0]);
        }
        Framing::None => {
            assert!(te.is_empty(), "Transfer-Encoding {te:?} ignored");
            assert!(
                cl.iter().all(|v| plain_decimal(v) == Some(0)),
                "Content-Length {cl:?} ignored"
            );
        }
        Framing::Close => panic!("a request framed by the connection's close"),
    }
    if let Some(e) = expect.last() {
        assert!(
            e.trim_ascii().eq_ignore_ascii_case(b"100-continue"),
            "Expect {e:?} accepted"
        );
    }
    assert_eq!(
        r.expect_continue,
        r.minor == 1 && !expect.is_empty(),
        "expect_continue"
    );
    let close = has_token(&conn, "close") || (r.minor == 0 && !has_token(&conn, "keep-alive"));
    assert_eq!(r.close, close, "close");
    let upgrade = values(r.headers, "upgrade")
        .last()
        .copied()
        .filter(|_| r.minor == 1 && has_token(&conn, "upgrade"));
    assert_eq!(r.upgrade, upgrade, "upgrade");
}

/// A head httparse read in full and ours refused: the refusal is one of head.rs's rules, and
/// that rule holds for this head.
fn check_refusal(f: &Refusal<'_>, req: &httparse::Request<'_, '_>) {
    let headers = &*req.headers;
    let (target, minor) = (
        req.path.unwrap_or_default(),
        req.version.unwrap_or_default(),
    );
    let cl = values(headers, "content-length");
    let te = values(headers, "transfer-encoding");
    let host = values(headers, "host");
    let expect = values(headers, "expect");
    let holds = match (f.status, f.reason) {
        (400, "two Host headers") => host.len() > 1,
        (400, "HTTP/1.1 request without Host") => {
            minor == 1 && host.is_empty() && !target.starts_with("http")
        }
        (400, "two Content-Length headers") => cl.len() > 1,
        (400, "two Transfer-Encoding headers") => te.len() > 1,
        (400, "Content-Length with Transfer-Encoding") => !cl.is_empty() && !te.is_empty(),
        (400, "Transfer-Encoding in an HTTP/1.0 request") => minor == 0 && !te.is_empty(),
        (501, "unsupported Transfer-Encoding") => {
            te.len() == 1 && !te[0].trim_ascii().eq_ignore_ascii_case(b"chunked")
        }
        (400, "invalid Content-Length") => cl.len() == 1 && plain_decimal(cl[0]).is_none(),
        (417, "unsupported expectation") => expect
            .last()
            .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"100-continue")),
        _ => false,
    };
    assert!(
        holds,
        "refused with {} {:?}, a rule that does not hold for this head",
        f.status, f.reason
    );
    assert!(
        f.host.is_none() || f.host == host.last().copied(),
        "the refusal's Host {:?}",
        f.host
    );
}

/// What a chunked decoder made of its whole input.
#[derive(Debug, PartialEq, Eq)]
enum Chunked {
    /// The body ended after this many bytes of input.
    Complete(usize),
    /// The body needs more input.
    Incomplete,
    /// The framing is broken.
    Invalid,
}

/// Our decoder on `data` fed in pieces ending at `cuts` (ascending) and at the end: the
/// outcome and the payload it found.
fn ours_chunked(data: &[u8], cuts: &[usize]) -> (Chunked, Vec<u8>) {
    let mut dec = Decoder::new(Framing::Chunked);
    let mut body = Vec::new();
    let mut at = 0;
    for end in cuts.iter().copied().chain([data.len()]) {
        while at < end {
            let piece = &data[at..end];
            let Ok(step) = dec.decode(piece) else {
                return (Chunked::Invalid, body);
            };
            assert!(
                step.data.start <= step.data.end
                    && step.data.end <= step.consumed
                    && step.consumed <= piece.len(),
                "step {step:?} on {} bytes",
                piece.len()
            );
            body.extend_from_slice(&piece[step.data.clone()]);
            at += step.consumed;
            if dec.is_done() {
                return (Chunked::Complete(at), body);
            }
            assert!(step.consumed > 0, "no progress on {} bytes", piece.len());
        }
    }
    (Chunked::Incomplete, body)
}

/// What the reference decoder made of a chunked body.
#[derive(Debug)]
enum Reference {
    Body { body: Vec<u8>, consumed: usize },
    Incomplete,
    Invalid,
}

/// RFC 9112 section 7.1, written to be read, not to be fast:
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ chunk-ext ] CRLF
/// ```
///
/// The chunk-size line is read by `httparse::parse_chunk_size`, with ours' rules on top where
/// httparse is laxer: a line starts with a hex digit (httparse reads an empty size as 0), at
/// most 15 of them (leading zeros count; ours keeps sizes below 2^60, httparse takes 16), and
/// no bare LF inside an extension (httparse skips it). Trailer lines are any bytes but CR and
/// LF, each ended by CRLF: the proxy drops trailers, so their field syntax is not checked.
fn reference_chunked(data: &[u8]) -> Reference {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line = &data[at..];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits > 15 {
            return Reference::Invalid;
        }
        if digits == line.len() {
            return Reference::Incomplete;
        }
        if digits == 0 {
            return Reference::Invalid;
        }
        let (n, size) = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Reference::Incomplete,
            Err(_) => return Reference::Invalid,
        };
        if line[..n.saturating_sub(2)].contains(&b'\n') {
            return Reference::Invalid;
        }
        at += n;
        if size == 0 {
            break;
        }
        // chunk-data CRLF
        let rest = &data[at..];
        let Some(chunk) = usize::try_from(size).ok().and_then(|s| rest.get(..s)) else {
            return Reference::Incomplete;
        };
        match &rest[chunk.len()..] {
            [b'\r', b'\n', ..] => {}
            [] | [b'\r'] => return Reference::Incomplete,
            _ => return Reference::Invalid,
        }
        body.extend_from_slice(chunk);
        at += chunk.len() + 2;
    }
    // trailer-section CRLF
    loop {
        let rest = &data[at..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            // No CRLF yet: any LF is bare, and so is a CR that is not the last byte.
            let bare = rest.contains(&b'\n')
                || rest
                    .split_last()
                    .is_some_and(|(_, init)| init.contains(&b'\r'));
            return if bare {
                Reference::Invalid
            } else {
                Reference::Incomplete
            };
        };
        if rest[..end].iter().any(|&b| b == b'\r' || b == b'\n') {
            return Reference::Invalid;
        }
        at += end + 2;
        if end == 0 {
            return Reference::Body { body, consumed: at };
        }
    }
}

/// A chunked request or response body from anyone (`proxy/http1/body.rs`): decoding never
/// panics and always progresses; it finds the same payload and the same end whether the
/// input comes in one piece, split at a point drawn from the input, or byte by byte; and it
/// agrees with the reference decoder above: a body ours completes, the reference completes
/// with the same payload and length, and a body the reference completes, ours does too
/// (so where ours refuses, the reference does not accept). The reference carries ours' three
/// stricter rules (see it).
pub fn http1_chunked(data: &[u8]) {
    let whole = ours_chunked(data, &[]);
    let cut = spread(data) % (data.len() + 1);
    assert_eq!(ours_chunked(data, &[cut]), whole, "split at {cut}");
    let every: Vec<usize> = (1..data.len()).collect();
    assert_eq!(ours_chunked(data, &every), whole, "byte by byte");
    match (&whole, reference_chunked(data)) {
        (
            (Chunked::Complete(n), body),
            Reference::Body {
                body: want,
                consumed,
            },
        ) => {
            assert_eq!((*n, body), (consumed, &want), "ours and the reference");
        }
        ((Chunked::Complete(_), _), r) => panic!("ours decoded a body, the reference: {r:?}"),
        ((ours, _), Reference::Body { .. }) => {
            panic!("the reference decoded a body, ours: {ours:?}")
        }
        _ => {}
    }
}

/// A keepalived.conf from an operator (`hapd import --keepalived`); see `import_text`.
pub fn import_keepalived(data: &[u8]) {
    import_text(data, true);
}

/// An Apache httpd config from an operator (`hapd import --apache`); see `import_text`.
pub fn import_apache(data: &[u8]) {
    import_text(data, false);
}

/// The importer on any text (invalid UTF-8 replaced; the command itself refuses it when it
/// reads the file): it never panics; what it returns loads with `Config::parse`; an error
/// names the input file: the importer's own errors say file and line, and a value copied
/// from the input that the config check refuses (a `virtual_router_id` of `0`) is reported
/// as a config imported from that file.
fn import_text(data: &[u8], keepalived: bool) {
    let text = String::from_utf8_lossy(data);
    let name = if keepalived {
        "fuzz-keepalived.conf"
    } else {
        "fuzz-httpd.conf"
    };
    let file = Some((Path::new(name), &*text));
    let peers = [IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))];
    let src = crate::import::Sources {
        keepalived: if keepalived { file } else { None },
        apache: if keepalived { None } else { file },
        peers: &peers,
    };
    match crate::import::import(&src) {
        Ok(out) => {
            if let Err(e) = Config::parse(&out.toml, Path::new("(imported)")) {
                panic!(
                    "the importer returned a config that does not load: {e}\n{}",
                    out.toml
                );
            }
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains(name), "an import error without the file: {e}");
        }
    }
}
