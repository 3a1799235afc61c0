//! HTTP and TLS abuse against a running `hapd`: request-smuggling variants, TLS garbage and
//! truncated handshakes, and very many idle connections. Each gets a clean 4xx or a close,
//! nothing reaches the backend that should not, memory stays bounded, and hapd keeps serving.
mod proxy_kit;

use std::{process::Command, sync::atomic::Ordering, time::Duration};

use nix::sys::signal::Signal;
use proxy_kit::{free_port, raw, run_hapd, status_of, tls_connect, Backend, Pki, Scratch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "app.example-corp.com";

struct Running {
    p: hapd_lab::proc::Proc,
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    admin: u16,
    pki: Pki,
    _dir: Scratch,
}

fn start(backend: &str) -> Running {
    let dir = Scratch::new("abuse");
    let pki = Pki::new();
    let (c, k, ch) = pki.write_leaf(&dir.0, "app", &[APP]);
    let (plain, tls, admin) = (free_port(), free_port(), free_port());
    let cfg = dir.path("hapd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[node]
name = "abuse"
admin = "127.0.0.1:{admin}"
[server]
header_read_timeout = "1s"
keepalive_timeout = "2s"
max_header_bytes = 8192
[[tls.certificate]]
cert = "{}"
key = "{}"
chain = "{}"
[[listener]]
name = "plain"
bind = ["127.0.0.1:{plain}"]
[[listener]]
name = "tls"
bind = ["127.0.0.1:{tls}"]
tls = true
[[upstream]]
name = "a"
servers = ["{backend}"]
[[vhost]]
server_names = ["{APP}"]
listeners = ["plain", "tls"]
  [[vhost.route]]
  prefix = "/"
  upstream = "a"
"#,
            c.display(),
            k.display(),
            ch.display()
        ),
    )
    .unwrap();
    let p = run_hapd(&cfg);
    Running {
        p,
        plain: format!("127.0.0.1:{plain}").parse().unwrap(),
        tls: format!("127.0.0.1:{tls}").parse().unwrap(),
        admin,
        pki,
        _dir: dir,
    }
}

impl Running {
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.p.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    fn connections(&self) -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_hapd"))
            .args([
                "status",
                "--json",
                "--admin",
                &format!("127.0.0.1:{}", self.admin),
            ])
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["proxy"]["connections"].as_u64().unwrap()
    }

    fn stop(mut self) {
        assert!(self
            .p
            .stop(Signal::SIGTERM, Duration::from_secs(15))
            .unwrap()
            .success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_are_refused_and_never_reach_the_backend() {
    let backend = Backend::start("a").await;
    let r = start(&backend.authority());
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let heads = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "transfer-encoding: chunked\r\ncontent-length: 4",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding:\tchunked\r\nContent-Length: 4",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: xchunked\r\nContent-Length: 4",
        "Content-Length: 4\r\nContent-Length: 5",
        "Content-Length: -1",
        "Content-Length: 0x10",
        "Content-Length: 4 4",
        "Transfer-Encoding:\r\n chunked",
        "Transfer-Encoding: chunked\r\nX-Pad: a\r\nTransfer-Encoding: chunked",
    ];
    for h in heads {
        let req = format!("POST / HTTP/1.1\r\nHost: {APP}\r\n{h}\r\n\r\n0\r\n\r\n{smuggled}");
        let out = raw(r.plain, req.as_bytes()).await;
        let code = status_of(&out);
        assert!(
            code == 400 || code == 501 || (code == 0 && out.is_empty()),
            "{h:?}: answered {code}:\n{out}"
        );
        assert!(
            !out.contains("smuggled") && out.matches("HTTP/1.1").count() <= 1,
            "{h:?}: a second response:\n{out}"
        );
    }
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        0,
        "a refused head never reaches the backend"
    );
    // A chunk size past any integer, and a chunk that lies about its length: the head is
    // forwarded (bodies stream), the broken body ends the exchange, and what follows it is
    // never taken for a request.
    for body in [
        "ffffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {APP}\r\nTransfer-Encoding: chunked\r\n\r\n{body}{smuggled}"
        );
        let out = raw(r.plain, req.as_bytes()).await;
        assert!(
            !out.contains("/smuggled") && out.matches("HTTP/1.1 ").count() <= 1,
            "{body:?}:\n{out}"
        );
    }
    assert!(
        backend.hits.load(Ordering::Relaxed) <= 2,
        "only the two POSTs themselves"
    );
    // Still serving.
    let ok = raw(
        r.plain,
        format!("GET / HTTP/1.1\r\nHost: {APP}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_and_truncated_handshakes_are_closed() {
    let backend = Backend::start("a").await;
    let r = start(&backend.authority());
    // Garbage instead of a ClientHello: closed at once.
    let mut s = tokio::net::TcpStream::connect(r.tls).await.unwrap();
    s.write_all(&[0x47u8; 2048]).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "garbage: still open after 2 s");
    // A ClientHello cut short, then silence: closed by the handshake timeout (1 s here).
    let mut s = tokio::net::TcpStream::connect(r.tls).await.unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "truncated: still open after 5 s");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // A record header announcing 16 MB.
    let mut s = tokio::net::TcpStream::connect(r.tls).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "oversized record: still open");
    // Plain HTTP on the TLS port.
    let mut s = tokio::net::TcpStream::connect(r.tls).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "plain HTTP on TLS: still open");
    // And a real client is served.
    let tls = tls_connect(r.tls, r.pki.client_config(&[b"http/1.1"]), APP)
        .await
        .unwrap();
    assert!(tls.get_ref().1.peer_certificates().is_some());
    assert_eq!(backend.hits.load(Ordering::Relaxed), 0);
    r.stop();
}

/// Many idle connections cost a bounded amount of memory, are closed by the head timeout, and
/// do not keep others from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_many_idle_connections_are_bounded_and_timed_out() {
    const N: usize = 3000;
    let backend = Backend::start("a").await;
    let r = start(&backend.authority());
    let before = r.rss_kib();
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(tokio::net::TcpStream::connect(r.plain).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = r.rss_kib();
    let per_conn = (during.saturating_sub(before)) as f64 / N as f64;
    eprintln!("{N} idle connections: RSS {before} -> {during} KiB ({per_conn:.1} KiB each)");
    assert!(per_conn < 64.0, "{per_conn:.1} KiB per idle connection");
    // Others are still served meanwhile.
    let ok = raw(
        r.plain,
        format!("GET / HTTP/1.1\r\nHost: {APP}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    // No request within header_read_timeout (1 s): every one is closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.connections(), 0);
    let mut closed = 0;
    for mut c in conns {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(50), c.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, N, "closed by hapd");
    r.stop();
}
