use super::*;

fn req(bytes: &[u8]) -> Result<(Framing, bool, usize), (u16, &'static str)> {
    let mut h = [MaybeUninit::uninit(); 32];
    match parse_request(bytes, &mut h) {
        Parsed::Head(r) => Ok((r.body, r.close, r.len)),
        Parsed::Refused(r) => Err((r.status, r.reason)),
        Parsed::Partial => Err((0, "partial")),
    }
}

#[test]
fn plain_requests_are_framed() {
    assert_eq!(
        req(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
        Ok((Framing::None, false, 28))
    );
    assert_eq!(
        req(b"\r\nPOST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").map(|r| r.0),
        Ok(Framing::Length(5))
    );
    assert_eq!(
        req(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").map(|r| r.0),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        req(b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").map(|r| r.0),
        Ok(Framing::None)
    );
}

#[test]
fn incomplete_heads_are_partial_in_any_split() {
    let full = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Long: 0123456789\r\n\r\n";
    for cut in 0..full.len() {
        assert_eq!(req(&full[..cut]), Err((0, "partial")), "cut at {cut}");
    }
    assert!(req(full).is_ok());
}

#[test]
fn keep_alive_follows_version_and_connection() {
    let close = |b: &[u8]| req(b).unwrap().1;
    assert!(!close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(close(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(!close(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(close(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: te, close\r\n\r\n"
    ));
}

#[test]
fn ambiguous_framing_is_refused() {
    for (head, reason) in [
        (
            &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "Content-Length with Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            "Content-Length with Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "two Content-Length headers",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            "two Transfer-Encoding headers",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4 4\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "two Host headers",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 request without Host"),
    ] {
        assert_eq!(
            req(head).map(|r| r.0),
            Err((400, reason)),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn malformed_heads_are_refused_by_the_parser() {
    for head in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
    ] {
        assert_eq!(
            req(head).map(|r| r.0),
            Err((400, "malformed request head")),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(
        req(b"GET / HTTP/2.0\r\n\r\n").map(|r| r.0).unwrap_err().0,
        505
    );
}

#[test]
fn unknown_codings_and_expectations_are_refused() {
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n").map(|r| r.0),
        Err((501, "unsupported Transfer-Encoding"))
    );
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n").map(|r| r.0),
        Err((501, "unsupported Transfer-Encoding"))
    );
    assert_eq!(
        req(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n")
            .map(|r| r.0),
        Err((417, "unsupported expectation"))
    );
}

#[test]
fn too_many_fields_are_431() {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..40 {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(req(&head).map(|r| r.0).unwrap_err().0, 431);
}

#[test]
fn upgrade_needs_the_connection_token_and_http11() {
    let mut h = [MaybeUninit::uninit(); 8];
    let b = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let Parsed::Head(r) = parse_request(b, &mut h) else {
        panic!()
    };
    assert_eq!(r.upgrade, Some(&b"websocket"[..]));
    let mut h = [MaybeUninit::uninit(); 8];
    let b = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
    let Parsed::Head(r) = parse_request(b, &mut h) else {
        panic!()
    };
    assert_eq!(r.upgrade, None);
    let mut h = [MaybeUninit::uninit(); 8];
    let b = b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    let Parsed::Head(r) = parse_request(b, &mut h) else {
        panic!()
    };
    assert!(r.expect_continue);
}

fn resp(bytes: &[u8], head: bool) -> Result<Option<(u16, Framing, bool)>, &'static str> {
    let mut h = [httparse::EMPTY_HEADER; 16];
    parse_response(bytes, &mut h, head).map(|r| r.map(|r| (r.code, r.body, r.close)))
}

#[test]
fn response_framing_follows_rfc9112_section_6_3() {
    assert_eq!(
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false),
        Ok(Some((200, Framing::Length(12), false)))
    );
    assert_eq!(
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true),
        Ok(Some((200, Framing::None, false))),
        "HEAD: no body"
    );
    assert_eq!(
        resp(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
            false
        ),
        Ok(Some((304, Framing::None, false)))
    );
    assert_eq!(
        resp(b"HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok(Some((204, Framing::None, false)))
    );
    assert_eq!(
        resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        ),
        Ok(Some((200, Framing::Chunked, false)))
    );
    assert_eq!(
        resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Ok(Some((200, Framing::Chunked, true))),
        "both: chunked, and the connection is not reused"
    );
    assert_eq!(
        resp(b"HTTP/1.1 200 OK\r\n\r\n", false),
        Ok(Some((200, Framing::Close, true)))
    );
    assert_eq!(
        resp(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
        Ok(Some((200, Framing::Length(1), true)))
    );
    assert_eq!(
        resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            false
        ),
        Ok(Some((200, Framing::Length(2), false)))
    );
    assert_eq!(
        resp(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Err("conflicting Content-Length headers")
    );
    assert_eq!(resp(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
    assert_eq!(
        resp(b"HTTP/9 200 OK\r\n\r\n", false),
        Err("malformed response head")
    );
}
