use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    config::{
        proxy::{Balance, Upstream},
        Dur,
    },
    proxy::site::Site,
};

fn pool() -> Pool {
    let u = Upstream {
        name: "app".into(),
        servers: vec!["10.0.0.5:8080".into(), "backend.internal:80".into()],
        backup_servers: Vec::new(),
        balance: Balance::default(),
        connect_timeout: Dur(Duration::from_secs(1)),
        health_check: None,
    };
    Pool::new(&u, tokio::sync::watch::channel(0).0, 1)
}

fn site(headers: &[(&str, &str)]) -> Site {
    Site {
        label: Arc::from("app"),
        names: vec!["app".into()],
        preserve_host: false,
        timeout: Duration::from_secs(60),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    hyper::header::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect(),
        access_log: None,
        error_log: None,
        redirect_https: false,
        routes: Vec::new(),
    }
}

fn fields<'a>(list: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> + Clone {
    list.iter().map(|(n, v)| (*n, v.as_bytes()))
}

#[test]
fn requests_lose_hop_by_hop_fields_and_gain_forwarding_ones() {
    let mut out = Vec::new();
    let list = [
        ("Host", "app.example.com"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Content-Length", "5"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Accept", "*/*"),
        ("X-Forwarded-Proto", "ftp"),
        ("X-Forwarded-For", "198.18.0.3"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
    ];
    request_head(
        &mut out,
        &Forward {
            method: "POST",
            target: "/api/x?y=1",
            host: b"10.0.0.5:8080",
            client_host: "app.example.com",
            client: "198.18.0.9",
            tls: true,
            body: super::super::codec::head::Framing::Length(5),
            upgrade: None,
        },
        fields(&list),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /api/x?y=1 HTTP/1.1\r\n\
         host: 10.0.0.5:8080\r\n\
         Accept: */*\r\n\
         x-forwarded-for: 203.0.113.7, 198.18.0.3, 198.18.0.9\r\n\
         cookie: a=1; b=2\r\n\
         x-forwarded-proto: https\r\n\
         x-forwarded-host: app.example.com\r\n\
         content-length: 5\r\n\
         \r\n"
    );
}

#[test]
fn upgrades_keep_their_protocol() {
    let mut out = Vec::new();
    let list = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "k"),
    ];
    request_head(
        &mut out,
        &Forward {
            method: "GET",
            target: "/ws",
            host: b"h",
            client_host: "h",
            client: "198.18.0.9",
            tls: false,
            body: super::super::codec::head::Framing::None,
            upgrade: Some(b"websocket"),
        },
        fields(&list),
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Sec-WebSocket-Key: k\r\n"), "{text}");
    assert!(
        text.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http\r\n"), "{text}");
}

fn back<'a>(site: &'a Site, pool: &'a Pool, server_header: bool) -> Back<'a> {
    Back {
        vhost: &site.headers,
        pool: Some(pool),
        tls: true,
        client_host: "app.example.com",
        server_header,
        keep_length: false,
        keep_upgrade: false,
    }
}

fn collect(list: &[(&str, &str)], b: &Back<'_>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    response_fields(fields(list), b, |n, val| {
        v.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(val).into_owned(),
        ))
    });
    v
}

#[test]
fn responses_are_rewritten_for_the_client() {
    let p = pool();
    let s = site(&[
        ("strict-transport-security", "max-age=63072000"),
        ("x-frame-options", "DENY"),
    ]);
    let list = [
        ("Server", "Apache/2.4.71 (Debian)"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "3"),
        ("Location", "http://10.0.0.5:8080/next?x=1"),
        ("Content-Location", "http://backend.internal:80"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Set-Cookie", "a=1"),
    ];
    let got = collect(&list, &back(&s, &p, false));
    let want: Vec<(String, String)> = [
        ("Location", "https://app.example.com/next?x=1"),
        ("Content-Location", "https://app.example.com"),
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Set-Cookie", "a=1"),
        ("strict-transport-security", "max-age=63072000"),
        ("x-frame-options", "DENY"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn locations_elsewhere_stay_and_a_date_is_added() {
    let p = pool();
    let s = site(&[]);
    let list = [
        ("Location", "http://10.0.0.5:80800/not-this-server"),
        ("Location", "https://elsewhere.example/"),
    ];
    let got = collect(&list, &back(&s, &p, true));
    assert_eq!(got[0].1, "http://10.0.0.5:80800/not-this-server");
    assert_eq!(got[1].1, "https://elsewhere.example/");
    assert_eq!(got[2], ("server".into(), "hapd".into()));
    assert_eq!(got[3].0, "date");
    assert_eq!(got[3].1.len(), 29);
    assert!(got[3].1.ends_with(" GMT"));
}

#[test]
fn dates_are_imf_fixdate() {
    assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
}

#[test]
fn answers_name_no_version() {
    let a = Answer::new(502, "<x>");
    assert!(a.body().contains("&lt;x&gt;"));
    assert!(a.body().contains("502 Bad Gateway"));
    let s = site(&[("x-frame-options", "DENY")]);
    let mut names = Vec::new();
    a.fields(&s.headers, false, |n, _| {
        names.push(String::from_utf8_lossy(n).into_owned())
    });
    assert_eq!(names, ["content-type", "x-frame-options", "date"]);
}

#[test]
fn ports_are_stripped_from_hosts() {
    assert_eq!(strip_port("a.example:8443"), "a.example");
    assert_eq!(strip_port("a.example"), "a.example");
    assert_eq!(strip_port("[2001:db8::1]:443"), "2001:db8::1");
    assert_eq!(strip_port("198.18.0.1:80"), "198.18.0.1");
}
