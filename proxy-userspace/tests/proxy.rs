//! The proxy against real backends and real clients on loopback: every line of the guide's
//! Apache vhost (reference/apache-vhost.conf), TLS, hardening, balancing, health checks,
//! certificate reload, logs and draining.
mod proxy_kit;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use hyper::Request;
use proxy_kit::*;

struct Guide {
    _dir: Scratch,
    dir: std::path::PathBuf,
    pki: Pki,
    _api: Backend,
    front: Backend,
    proxy: proxy_userspace::proxy::ProxyHandle,
}

const APP: &str = "app.example-corp.com";

/// The guide's setup: a TLS vhost with the guide's headers and routes, and the redirect vhost.
async fn guide(extra: &str) -> Guide {
    let dir = Scratch::new("proxy");
    let d = dir.0.clone();
    let pki = Pki::new();
    let (c, k, ch) = pki.write_leaf(&d, "app", &[APP]);
    let (c2, k2, _) = pki.write_leaf(&d, "other", &["other.example.net", "*.wild.example.net"]);
    let api = Backend::start("api").await;
    let front = Backend::start("frontend").await;
    let toml = format!(
        r#"
[node]
name = "proxy01"

[server]
keepalive_timeout = "15s"
header_read_timeout = "1s"
max_header_bytes = 8192
max_headers = 20
drain_timeout = "5s"

[tls]
protocols = ["1.2", "1.3"]
cipher_suites = ["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256",
  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]

[[tls.certificate]]
cert = "{c}"
key = "{k}"
chain = "{ch}"

[[tls.certificate]]
cert = "{c2}"
key = "{k2}"
chain = "{ch}"

[[listener]]
name = "https"
bind = ["127.0.0.1:0"]
tls = true

[[listener]]
name = "http"
bind = ["127.0.0.1:0"]

[[upstream]]
name = "api"
servers = ["{api}"]

[[upstream]]
name = "frontend"
servers = ["{front}"]

[[vhost]]
server_names = ["{APP}"]
listeners = ["https"]
preserve_host = true
timeout = "1s"
response_headers = {{ "Strict-Transport-Security" = "max-age=63072000; includeSubDomains; preload", "X-Content-Type-Options" = "nosniff", "X-Frame-Options" = "DENY", "Referrer-Policy" = "strict-origin-when-cross-origin" }}
access_log = "{d}/app-access.log"
error_log = "{d}/app-error.log"

  [[vhost.route]]
  prefix = "/health"
  upstream = "api"
  allow = ["10.0.0.0/8"]

  [[vhost.route]]
  prefix = "/api/"
  upstream = "api"

  [[vhost.route]]
  prefix = "/"
  upstream = "frontend"

[[vhost]]
server_names = ["{APP}"]
listeners = ["http"]
redirect_https = true
{extra}
"#,
        c = c.display(),
        k = k.display(),
        ch = ch.display(),
        c2 = c2.display(),
        k2 = k2.display(),
        api = api.authority(),
        front = front.authority(),
        d = d.display(),
    );
    let proxy = start_proxy(&toml);
    Guide {
        _dir: dir,
        dir: d,
        pki,
        _api: api,
        front,
        proxy,
    }
}

impl Guide {
    fn https(&self) -> std::net::SocketAddr {
        addr_of(&self.proxy, "https")
    }
    fn http(&self) -> std::net::SocketAddr {
        addr_of(&self.proxy, "http")
    }
    async fn get(&self, path: &str) -> Got {
        self.get_alpn(path, &[b"http/1.1"]).await
    }
    async fn get_alpn(&self, path: &str, alpn: &[&[u8]]) -> Got {
        let req = Request::get(path)
            .header("host", APP)
            .body(String::new())
            .unwrap();
        tls_request(self.https(), self.pki.client_config(alpn), APP, req).await
    }
}

const GUIDE_HEADERS: [(&str, &str); 4] = [
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains; preload",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
];

fn assert_guide_headers(g: &Got) {
    for (k, v) in GUIDE_HEADERS {
        assert_eq!(g.header(k), Some(v), "{k} on a {} response", g.status);
    }
    assert!(
        g.header("server").is_none(),
        "no Server header: {:?}",
        g.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_vhost_routes_preserves_host_and_forwards_client_facts() {
    let g = guide("").await;
    let r = g.get("/api/users?id=7").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["backend"], "api");
    assert_eq!(seen["uri"], "/api/users?id=7");
    assert_eq!(seen["version"], "HTTP/1.1");
    // ProxyPreserveHost On.
    assert_eq!(seen["headers"]["host"], APP);
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-host"], APP);
    assert_guide_headers(&r);

    let r = g.get("/index.html").await;
    assert_eq!(r.json()["backend"], "frontend");
    assert_guide_headers(&r);
    // "/api" without the slash is not under "/api/".
    assert_eq!(g.get("/api").await.json()["backend"], "frontend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_are_rewritten_back_to_the_clients_view() {
    let g = guide("").await;
    let r = g.get("/api/redirect").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("https://{APP}/api/next?x=1").as_str())
    );
    assert_eq!(
        r.header("content-location"),
        Some(format!("https://{APP}/api/here").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_vhost_redirects_to_https_with_path_and_query() {
    let g = guide("").await;
    let r = get(g.http(), &format!("{APP}:80"), "/a/b?c=1&d=2").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://{APP}/a/b?c=1&d=2").as_str())
    );
    assert!(r.header("server").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_only_for_allowed_networks_and_403_carries_the_headers() {
    let g = guide("").await;
    let r = g.get("/health").await;
    assert_eq!(r.status, 403);
    assert_guide_headers(&r);
    assert!(!r.body.to_lowercase().contains("hapd/"), "{}", r.body);
    // A vhost that allows loopback.
    let g2 = guide(
        r#"
[[listener]]
name = "mon"
bind = ["127.0.0.1:0"]

[[vhost]]
server_names = ["mon"]
listeners = ["mon"]
  [[vhost.route]]
  prefix = "/health"
  upstream = "api"
  allow = ["127.0.0.0/8", "10.0.0.0/8"]
"#,
    )
    .await;
    let r = get(addr_of(&g2.proxy, "mon"), "mon", "/health").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_from_clients_goes_upstream_as_http11() {
    let g = guide("").await;
    let req = Request::get(format!("https://{APP}/api/h2"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(String::new())
        .unwrap();
    let r = tls_request(
        g.https(),
        g.pki.client_config(&[b"h2", b"http/1.1"]),
        APP,
        req,
    )
    .await;
    assert_eq!(r.version, hyper::Version::HTTP_2);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"], APP);
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2");
    assert_guide_headers(&r);
}

/// Streams of an HTTP/2 connection, one after the other and ten at once, share kept-alive
/// upstream connections: each answered body gives its connection back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_reuse_upstream_connections() {
    let g = guide("").await;
    let s = tls_connect(g.https(), g.pki.client_config(&[b"h2"]), APP)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let one = |tx: hyper::client::conn::http2::SendRequest<String>| async move {
        let mut tx = tx;
        let req = Request::get(format!("https://{APP}/page"))
            .body(String::new())
            .unwrap();
        let r = tx.send_request(req).await.unwrap();
        assert_eq!(r.status(), 200);
        http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes()
            .len()
    };
    for _ in 0..20 {
        assert!(one(tx.clone()).await > 0);
    }
    let sequential = g.front.accepts.load(Ordering::Relaxed);
    assert_eq!(sequential, 1, "20 requests one after the other");
    for _ in 0..5 {
        let rounds: Vec<_> = (0..10).map(|_| tokio::spawn(one(tx.clone()))).collect();
        for r in rounds {
            assert!(r.await.unwrap() > 0);
        }
    }
    let total = g.front.accepts.load(Ordering::Relaxed);
    assert!(
        total <= 10,
        "{total} upstream connections for 5 rounds of 10 streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_and_sent_with_their_chain() {
    let g = guide("").await;
    for (sni, want) in [
        (APP, APP),
        ("other.example.net", "other.example.net"),
        ("x.wild.example.net", "other.example.net"),
    ] {
        // The client trusts only the root: the handshake needs the intermediate from the chain.
        let s = tls_connect(g.https(), g.pki.client_config(&[b"h2"]), sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let (_, c) = s.get_ref();
        assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
        let chain = c.peer_certificates().unwrap();
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let leaf = webpki_names(&chain[0]);
        assert!(leaf.iter().any(|n| n == want), "{sni}: {leaf:?}");
    }
}

fn webpki_names(c: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    // The leaf's DNS names, found as text in the DER (test certificates only).
    let text = String::from_utf8_lossy(c.as_ref()).into_owned();
    ["app.example-corp.com", "other.example.net"]
        .iter()
        .filter(|n| text.contains(*n))
        .map(|n| n.to_string())
        .collect()
}

fn openssl(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            APP,
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocols_and_unlisted_ciphers_are_refused() {
    let g = guide("").await;
    let addr = g.https();
    let res = tokio::task::spawn_blocking(move || {
        [
            ("TLS 1.3", openssl(addr, &["-tls1_3"]), true),
            (
                "TLS 1.2 listed cipher",
                openssl(
                    addr,
                    &[
                        "-tls1_2",
                        "-cipher",
                        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384",
                    ],
                ),
                true,
            ),
            (
                "TLS 1.2 unlisted cipher",
                openssl(
                    addr,
                    &[
                        "-tls1_2",
                        "-cipher",
                        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
                    ],
                ),
                false,
            ),
            (
                "TLS 1.1",
                openssl(addr, &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]),
                false,
            ),
            (
                "TLS 1.0",
                openssl(addr, &["-tls1", "-cipher", "ALL:@SECLEVEL=0"]),
                false,
            ),
        ]
    })
    .await
    .unwrap();
    for (what, (ok, text), want) in res {
        assert_eq!(ok, want, "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_trace_ambiguous_and_oversized_requests() {
    let g = guide(
        r#"
[[listener]]
name = "plain"
bind = ["127.0.0.1:0"]

[[vhost]]
server_names = ["plain"]
listeners = ["plain"]
response_headers = { "X-Frame-Options" = "DENY" }
  [[vhost.route]]
  prefix = "/"
  upstream = "frontend"
"#,
    )
    .await;
    let a = addr_of(&g.proxy, "plain");
    let r = raw(a, b"TRACE / HTTP/1.1\r\nHost: plain\r\n\r\n").await;
    assert_eq!(status_of(&r), 405, "{r}");
    assert!(r.to_lowercase().contains("x-frame-options: deny"), "{r}");
    assert!(r.to_lowercase().contains("allow: "), "{r}");
    assert!(!r.to_lowercase().contains("server:"), "{r}");
    for (what, req) in [
        (
            "CL with TE",
            &b"POST / HTTP/1.1\r\nHost: plain\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        ),
        (
            "two CL",
            &b"POST / HTTP/1.1\r\nHost: plain\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
        (
            "two different CL",
            &b"POST / HTTP/1.1\r\nHost: plain\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        ),
        ("obs-fold", &b"GET / HTTP/1.1\r\nHost: plain\r\nX-A: 1\r\n 2\r\n\r\n"[..]),
    ] {
        let r = raw(a, req).await;
        assert_eq!(status_of(&r), 400, "{what}: {r}");
    }
    // The refusal goes through the normal path: headers set.
    let r = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: plain\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.to_lowercase().contains("x-frame-options: deny"), "{r}");
    // A smuggled second request after a refused one is never forwarded.
    let before = g.front.hits.load(Ordering::Relaxed);
    let _ = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: plain\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: plain\r\n\r\n",
    )
    .await;
    assert_eq!(g.front.hits.load(Ordering::Relaxed), before);

    // Bounded head size and count.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: plain\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(status_of(&raw(a, big.as_bytes()).await), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: plain\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&raw(a, many.as_bytes()).await), 431);

    // A pipelined pair of good requests is served in order.
    let r = raw(
        a,
        b"GET /one HTTP/1.1\r\nHost: plain\r\n\r\nGET /two HTTP/1.1\r\nHost: plain\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    assert!(r.find("/one").unwrap() < r.find("/two").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_after_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let g = guide("").await;
    let mut s = tokio::net::TcpStream::connect(g.http()).await.unwrap();
    let t = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
    let mut buf = Vec::new();
    // Dribble a byte every 300 ms: the head never completes within 1 s.
    let dribble = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(6), dribble).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    // An idle keep-alive connection stays open past header_read_timeout (keepalive is 15 s).
    let mut s = tokio::net::TcpStream::connect(g.http()).await.unwrap();
    s.write_all(format!("GET /x HTTP/1.1\r\nHost: {APP}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).await.unwrap();
    assert!(n > 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(format!("GET /y HTTP/1.1\r\nHost: {APP}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&rest)), 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let g = guide("").await;
    let s = tls_connect(g.https(), g.pki.client_config(&[b"http/1.1"]), APP)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{APP}/api/ws"), s)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        let m = format!("hello {i}");
        ws.send(Message::text(m.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), m);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let g = guide("").await;
    let body = "x".repeat(3 << 20);
    let req = Request::post("/api/echo")
        .header("host", APP)
        .body(body.clone())
        .unwrap();
    let r = tls_request(g.https(), g.pki.client_config(&[b"http/1.1"]), APP, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    let r = g.get("/api/stream").await;
    assert_eq!(r.body, "chunk0;chunk1;chunk2;chunk3;chunk4;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_and_logged() {
    let g = guide("").await;
    let r = g.get("/api/slow?ms=3000").await;
    assert_eq!(r.status, 504);
    assert_guide_headers(&r);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = std::fs::read_to_string(g.dir.join("app-error.log")).unwrap();
    assert!(err.contains("no answer within"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_apache_combined_and_reopens_after_rotation() {
    let g = guide("").await;
    let req = Request::get("/api/log-me?q=1")
        .header("host", APP)
        .header("referer", "https://ref.example/")
        .header("user-agent", "test-agent/1.0")
        .body(String::new())
        .unwrap();
    let r = tls_request(g.https(), g.pki.client_config(&[b"http/1.1"]), APP, req).await;
    assert_eq!(r.status, 200);
    let _ = g.get("/health").await; // 403
    let log = g.dir.join("app-access.log");
    let text = wait_for_lines(&log, 2).await;
    let re = regex_lite(&text);
    assert_eq!(re.len(), 2, "{text}");
    assert_eq!(re[0].0, "127.0.0.1");
    assert_eq!(re[0].1, "GET /api/log-me?q=1 HTTP/1.1");
    assert_eq!(re[0].2, 200);
    assert_eq!(re[0].3, r.body.len().to_string());
    assert_eq!(re[0].4, "https://ref.example/");
    assert_eq!(re[0].5, "test-agent/1.0");
    assert_eq!(re[1].2, 403);

    // logrotate: move the file away, reopen (what SIGUSR1 does in hapd, see
    // hapd_reloads_certificates_on_sighup_and_stops_on_sigterm), the next line goes to a new file.
    std::fs::rename(&log, g.dir.join("app-access.log.1")).unwrap();
    g.proxy.view.reopen_logs();
    let mut fresh = false;
    for _ in 0..50 {
        let _ = g.get("/after-rotate").await;
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/after-rotate")) {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fresh, "no new access log after SIGUSR1");
}

async fn wait_for_lines(p: &std::path::Path, n: usize) -> String {
    for _ in 0..50 {
        if let Ok(t) = std::fs::read_to_string(p) {
            if t.lines().count() >= n {
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Parses combined-format lines: (host, request, status, bytes, referer, agent).
fn regex_lite(text: &str) -> Vec<(String, String, u16, String, String, String)> {
    text.lines()
        .map(|l| {
            let (host, rest) = l.split_once(" - - [").expect("host - - [");
            let (time, rest) = rest.split_once("] \"").expect("time");
            assert_eq!(time.len(), 26, "time {time}");
            assert!(time.ends_with(" +0000"));
            let (req, rest) = rest.split_once("\" ").expect("request");
            let mut it = rest.splitn(3, ' ');
            let status = it.next().unwrap().parse().unwrap();
            let bytes = it.next().unwrap().to_string();
            let tail = it.next().unwrap();
            let quoted: Vec<&str> = tail.split('"').collect();
            (
                host.to_string(),
                req.to_string(),
                status,
                bytes,
                quoted[1].to_string(),
                quoted[3].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_drains_requests_in_flight() {
    let g = guide("").await;
    let Guide { proxy, pki, .. } = g;
    let addr = addr_of(&proxy, "https");
    let cfg = pki.client_config(&[b"http/1.1"]);
    let slow = tokio::spawn(async move {
        let req = Request::get("/api/slow?ms=800")
            .header("host", APP)
            .body(String::new())
            .unwrap();
        tls_request(addr, cfg, APP, req).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopper = tokio::task::spawn_blocking(move || proxy.stop(Duration::from_secs(5)));
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "slow done");
    stopper.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_never_fails_a_request() {
    let g = Arc::new(guide("").await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (g, stop) = (g.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut serials) =
                (0, Vec::new(), std::collections::HashSet::new());
            while !stop.load(Ordering::Relaxed) {
                // A new connection and a request on it, every time.
                match tls_connect(g.https(), g.pki.client_config(&[b"http/1.1"]), APP).await {
                    Ok(s) => {
                        serials.insert(s.get_ref().1.peer_certificates().unwrap()[0].to_vec());
                        match request_on(s, "/rotation").await {
                            Ok(200) => ok += 1,
                            other => failed.push(format!("request: {other:?}")),
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed, serials)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A broken pair first: a key that is not the certificate's. The old one stays.
    let (_, wrong_key) = g.pki.leaf(&[APP]);
    std::fs::write(g.dir.join("app.key"), wrong_key).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Then a good new pair (written key first, then certificate, as a renewal hook would).
    let (cert, key) = g.pki.leaf(&[APP]);
    std::fs::write(g.dir.join("app.key.new"), key).unwrap();
    std::fs::write(g.dir.join("app.crt.new"), &cert).unwrap();
    std::fs::rename(g.dir.join("app.key.new"), g.dir.join("app.key")).unwrap();
    std::fs::rename(g.dir.join("app.crt.new"), g.dir.join("app.crt")).unwrap();
    let new_der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let mut rotated = false;
    for _ in 0..60 {
        let s = tls_connect(g.https(), g.pki.client_config(&[b"http/1.1"]), APP)
            .await
            .unwrap();
        if s.get_ref().1.peer_certificates().unwrap()[0] == new_der {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for c in clients {
        let (ok, failed, serials) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed handshakes or requests: {failed:?}"
        );
        total += ok;
        seen.extend(serials);
    }
    assert!(rotated, "the new certificate was never served");
    assert!(total > 50, "only {total} requests");
    assert_eq!(
        seen.len(),
        2,
        "old and new certificate, never the broken pair"
    );
}

/// The certificate `g` serves to a new connection for APP.
async fn served(g: &Guide) -> rustls::pki_types::CertificateDer<'static> {
    let s = tls_connect(g.https(), g.pki.client_config(&[b"http/1.1"]), APP)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Waits (10 s at most) until `g` serves `cert`.
async fn until_served(g: &Guide, cert: &str, what: &str) {
    let want = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    for _ in 0..100 {
        if served(g).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the new certificate was not served within 10 s");
}

/// certbot's shape: the configured names are symlinks (live/) to files in another directory
/// (archive/). A renewal that points the links at new files is picked up, and so is a target
/// rewritten in place, which changes nothing in the links' own directory (the watcher watches
/// the targets' directory too).
#[tokio::test]
async fn certificates_behind_symlinks_are_reloaded_when_the_links_or_their_targets_change() {
    let g = guide("").await;
    let archive = g.dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // The configured files become links into archive/ (a renewal's first step: new files,
    // then the links swapped by rename).
    let (cert1, key1) = g.pki.leaf(&[APP]);
    std::fs::write(archive.join("privkey1.pem"), &key1).unwrap();
    std::fs::write(archive.join("cert1.pem"), &cert1).unwrap();
    for (name, target) in [("app.key", "privkey1.pem"), ("app.crt", "cert1.pem")] {
        let tmp = g.dir.join(format!("{name}.lnk"));
        std::os::unix::fs::symlink(archive.join(target), &tmp).unwrap();
        std::fs::rename(&tmp, g.dir.join(name)).unwrap();
    }
    until_served(&g, &cert1, "links swapped").await;
    // The targets rewritten in place: only archive/ changes.
    let (cert2, key2) = g.pki.leaf(&[APP]);
    std::fs::write(archive.join("privkey1.pem"), &key2).unwrap();
    std::fs::write(archive.join("cert1.pem"), &cert2).unwrap();
    until_served(&g, &cert2, "targets rewritten").await;
}

use rustls::pki_types::pem::PemObject;

#[test]
fn hapd_check_names_a_broken_certificate_pair() {
    let dir = Scratch::new("check");
    let pki = Pki::new();
    let (c, k, _) = pki.write_leaf(&dir.0, "app", &[APP]);
    let (_, other_key) = pki.leaf(&[APP]);
    let cfg = |cert: &std::path::Path, key: &std::path::Path| one_tls_vhost(cert, key, None, 0, 0);
    let check = |text: String| {
        let (ok, _, stderr) = hapd_check(&dir, &text);
        (ok, stderr)
    };
    assert!(check(cfg(&c, &k)).0);
    let wrong = dir.path("wrong.key");
    std::fs::write(&wrong, other_key).unwrap();
    let (ok, err) = check(cfg(&c, &wrong));
    assert!(!ok);
    assert!(
        err.contains("tls.certificate[0]")
            && err.contains("wrong.key")
            && err.contains("does not belong"),
        "{err}"
    );
    let (ok, err) = check(cfg(&dir.path("missing.crt"), &k));
    assert!(!ok);
    assert!(err.contains("missing.crt"), "{err}");
}

/// The `hapd` binary as a proxy-only node: SIGHUP reloads the certificates, SIGUSR1 reopens
/// the logs, SIGTERM drains.
#[test]
fn hapd_reloads_certificates_on_sighup_and_stops_on_sigterm() {
    use nix::sys::signal::Signal;
    let dir = Scratch::new("sighup");
    let pki = Pki::new();
    let (c, k, ch) = pki.write_leaf(&dir.0, "app", &[APP]);
    let port = free_port();
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, one_tls_vhost(&c, &k, Some(&ch), port, 0)).unwrap();
    let mut p = run_hapd(&cfg);
    // A new pair with a name the old one lacks.
    let (cert, key) = pki.leaf(&[APP, "renewed.example-corp.com"]);
    std::fs::write(&k, key).unwrap();
    std::fs::write(&c, cert).unwrap();
    p.signal(Signal::SIGHUP).unwrap();
    p.wait_for(
        "TLS certificates reloaded (SIGHUP)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        !p.grep("renewed.example-corp.com").is_empty(),
        "{}",
        p.lines().join("\n")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(async {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let s = tls_connect(
            addr,
            pki.client_config(&[b"http/1.1"]),
            "renewed.example-corp.com",
        )
        .await
        .unwrap();
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    });
    let text = String::from_utf8_lossy(served.as_ref()).into_owned();
    assert!(text.contains("renewed.example-corp.com"));
    // SIGUSR1 reopens the log files (and does not stop hapd).
    p.signal(Signal::SIGUSR1).unwrap();
    p.wait_for("reopening 0 log file(s)", 1, Duration::from_secs(5))
        .unwrap();
    let status = p.stop(Signal::SIGTERM, Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{}", p.lines().join("\n"));
}

/// One HTTP/1.1 request on an established TLS stream; the status.
async fn request_on(
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> Result<u16, String> {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", APP)
        .body(String::new())
        .unwrap();
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

#[test]
fn hapd_check_warns_about_certificates_that_expire_soon() {
    use proxy_userspace::proxy::tls::expiry_warning;
    use std::time::{Duration as D, UNIX_EPOCH};
    let dir = Scratch::new("expiry");
    let pki = Pki::new();
    // Valid until 2030-01-01T00:00:00Z (1893456000).
    let (cert, _) = pki.leaf_until(&[APP], 2030, 1, 1);
    let path = dir.path("soon.crt");
    std::fs::write(&path, cert).unwrap();
    let at = |secs: u64| UNIX_EPOCH + D::from_secs(secs);
    let end = 1_893_456_000;
    assert_eq!(expiry_warning(&path, at(end - 60 * 86_400)).unwrap(), None);
    let soon = expiry_warning(&path, at(end - 10 * 86_400 - 3600))
        .unwrap()
        .unwrap();
    assert!(
        soon.contains("soon.crt") && soon.contains("in 10 day(s)"),
        "{soon}"
    );
    let gone = expiry_warning(&path, at(end + 1)).unwrap().unwrap();
    assert!(gone.contains("expired on"), "{gone}");

    // Through the binary: an expired certificate is a warning, not an error.
    let (old_cert, old_key) = pki.leaf_until(&[APP], 2021, 1, 1);
    let (c, k) = (dir.path("old.crt"), dir.path("old.key"));
    std::fs::write(&c, old_cert).unwrap();
    std::fs::write(&k, old_key).unwrap();
    let (ok, stdout, _) = hapd_check(&dir, &one_tls_vhost(&c, &k, None, 0, 0));
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("warning: tls.certificate[0].cert: ") && stdout.contains("expired on"),
        "{stdout}"
    );
}

/// `hapd check` on `text`: whether it passed, its stdout and its stderr.
fn hapd_check(dir: &Scratch, text: &str) -> (bool, String, String) {
    let p = dir.path("hapd.toml");
    std::fs::write(&p, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hapd"))
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hapd-proxy-N` thread of `pid` → the CPUs it may run on, for every worker.
fn worker_cpus(pid: u32) -> std::collections::BTreeMap<String, Vec<usize>> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let comm = comm.trim();
            let n = comm.strip_prefix("hapd-proxy-")?;
            n.parse::<usize>().ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            Some((comm.to_string(), cpus_allowed(&status)))
        })
        .collect()
}

/// Each proxy worker runs on a CPU of its own, taken from the set hapd was started with
/// (`taskset`, a cgroup cpuset); `pin_workers = false` leaves them free.
#[test]
fn proxy_workers_are_pinned_one_per_cpu_of_the_allowed_set() {
    let dir = Scratch::new("pin");
    let pki = Pki::new();
    let (c, k, _) = pki.write_leaf(&dir.0, "app", &[APP]);
    let mine = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let start = |extra: &str, cpus: Option<usize>| {
        let cfg = dir.path("hapd.toml");
        std::fs::write(
            &cfg,
            format!("{extra}\n{}", one_tls_vhost(&c, &k, None, free_port(), 0)),
        )
        .unwrap();
        let cmd = match cpus {
            Some(cpu) => {
                let mut c = std::process::Command::new("taskset");
                c.args(["-c", &cpu.to_string(), env!("CARGO_BIN_EXE_hapd")]);
                c
            }
            None => std::process::Command::new(env!("CARGO_BIN_EXE_hapd")),
        };
        run_hapd_by(cmd, &cfg)
    };

    // Default: worker N on the N-th allowed CPU, one each.
    let p = start("", None);
    let got = worker_cpus(p.pid());
    let want: std::collections::BTreeMap<String, Vec<usize>> = mine
        .iter()
        .enumerate()
        .map(|(n, &cpu)| (format!("hapd-proxy-{n}"), vec![cpu]))
        .collect();
    assert_eq!(got, want);
    drop(p);

    // Started on the last CPU only: one worker, on that CPU.
    let last = *mine.last().unwrap();
    let p = start("", Some(last));
    assert_eq!(
        worker_cpus(p.pid()),
        [("hapd-proxy-0".to_string(), vec![last])].into()
    );
    drop(p);

    // Switched off: every worker may run anywhere hapd may.
    let p = start("[server]\npin_workers = false", None);
    let got = worker_cpus(p.pid());
    assert_eq!(got.len(), mine.len());
    assert!(got.values().all(|c| *c == mine), "{got:?}");
}
