use std::time::Duration;

use super::*;

fn guard() -> Guard<tokio::io::Empty> {
    let limits = Limits {
        keepalive: Duration::from_secs(15),
        header_read: Duration::from_secs(10),
        max_header_bytes: 8192,
        max_headers: 100,
    };
    Guard::new(tokio::io::empty(), limits, Arc::default())
}

/// Feeds `input` in pieces of `step` bytes; returns what hyper would read.
fn run(g: &mut Guard<tokio::io::Empty>, input: &[u8], step: usize) -> Vec<u8> {
    for piece in input.chunks(step) {
        g.push(piece.to_vec());
    }
    std::mem::take(&mut g.out)
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn plain_requests_pass_unchanged_in_any_split() {
    let mut input = Vec::new();
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(GET);
    input.extend_from_slice(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    input.extend_from_slice(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    input.extend_from_slice(GET);
    for step in [1, 2, 3, 7, 64, input.len()] {
        let mut g = guard();
        assert_eq!(run(&mut g, &input, step), input, "step {step}");
        assert_eq!(g.state, State::Head, "step {step}");
        assert!(g.head.is_empty());
    }
}

fn refused(out: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .find_map(|l| l.strip_prefix("x-hapd-reject: "))
        .map(str::to_owned)
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let mut g = guard();
    let out = run(
        &mut g,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        5,
    );
    assert_eq!(
        refused(&out).as_deref(),
        Some("Content-Length with Transfer-Encoding")
    );
    assert!(out.starts_with(b"GET / HTTP/1.1\r\nhost: h\r\n"));
    assert!(out.ends_with(b"connection: close\r\n\r\n"));
    assert_eq!(g.state, State::Closed);
    // Nothing after a refused head reaches hyper.
    assert!(run(&mut g, GET, 100).is_empty());
}

#[tokio::test]
async fn two_content_lengths_are_refused_even_when_equal() {
    let mut g = guard();
    let out = run(
        &mut g,
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        100,
    );
    assert_eq!(refused(&out).as_deref(), Some("two Content-Length headers"));
}

#[tokio::test]
async fn framing_is_followed_through_bodies_to_the_next_head() {
    // The second request hides inside the first one's body for a parser that ignores
    // Content-Length; the guard frames the body and finds the real second head.
    let body = b"GET /hidden HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut input = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    input.extend_from_slice(body);
    let mut g = guard();
    assert_eq!(run(&mut g, &input, 9), input);
    // The real next head with both framings is refused.
    let out = run(
        &mut g,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        100,
    );
    assert!(refused(&out).is_some());
}

#[tokio::test]
async fn a_head_after_a_chunked_body_is_checked() {
    let mut g = guard();
    let first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(run(&mut g, first, 4), first);
    let out = run(
        &mut g,
        b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        4,
    );
    assert_eq!(refused(&out).as_deref(), Some("two Content-Length headers"));
}

#[tokio::test]
async fn the_reject_header_cannot_be_forged() {
    let mut g = guard();
    let out = run(
        &mut g,
        b"GET / HTTP/1.1\r\nX-Hapd-Reject: nothing\r\n\r\n",
        100,
    );
    assert_eq!(refused(&out).as_deref(), Some("reserved header"));
}

#[tokio::test]
async fn http2_upgrades_and_unparsable_heads_pass_through() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00";
    let mut g = guard();
    assert_eq!(run(&mut g, preface, 3), preface);
    assert_eq!(g.state, State::Through);

    let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
    let mut g = guard();
    assert_eq!(run(&mut g, ws, 100), ws);
    assert_eq!(g.state, State::Through);

    // hyper answers obs-fold and bad syntax with 400 itself.
    let fold = b"GET / HTTP/1.1\r\nX-A: 1\r\n continued\r\n\r\n";
    let mut g = guard();
    assert_eq!(run(&mut g, fold, 100), fold);
    assert_eq!(g.state, State::Through);
}

#[tokio::test]
async fn malformed_chunks_are_left_to_hyper() {
    let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n";
    let mut g = guard();
    assert_eq!(run(&mut g, input, 100), input);
    assert_eq!(g.state, State::Through);
}

#[tokio::test]
async fn an_oversized_head_is_left_to_hyper() {
    let mut input = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 9000));
    let mut g = guard();
    let out = run(&mut g, &input, 1000);
    assert_eq!(out, input);
    assert_eq!(g.state, State::Through);
}

#[tokio::test]
async fn reading_through_the_guard_in_small_pieces_gives_the_same_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut input = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n".to_vec();
    input.extend_from_slice(&[b'b'; 40]);
    input.extend_from_slice(GET);
    input.extend_from_slice(
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
    );
    input.extend_from_slice(GET);
    let (mut client, server) = tokio::io::duplex(16);
    let data = input.clone();
    let writer = tokio::spawn(async move {
        for piece in data.chunks(7) {
            client.write_all(piece).await.unwrap();
        }
    });
    let limits = Limits {
        keepalive: Duration::from_secs(15),
        header_read: Duration::from_secs(10),
        max_header_bytes: 8192,
        max_headers: 100,
    };
    let mut g = Guard::new(server, limits, Arc::default());
    let mut got = Vec::new();
    let mut small = [0u8; 5];
    while got.len() < input.len() {
        let n = g.read(&mut small).await.unwrap();
        assert!(n > 0, "early end after {} bytes", got.len());
        got.extend_from_slice(&small[..n]);
    }
    writer.await.unwrap();
    assert_eq!(got, input);
    assert_eq!(g.state, State::Head);
}
