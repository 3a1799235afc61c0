//! testssl.sh against a `hapd` TLS listener with the guide's settings: no SSL, no TLS 1.0 or
//! 1.1, no weak cipher category, HSTS sent, no Server banner. (The bench records the same scan
//! in its report.)
mod proxy_kit;

use std::time::Duration;

use nix::sys::signal::Signal;
use proxy_kit::{free_port, run_hapd, Backend, Pki, Scratch};

#[test]
fn testssl_finds_nothing_weak_and_hsts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("a"));
    let dir = Scratch::new("testssl");
    let pki = Pki::new();
    let (c, k, ch) = pki.write_leaf(&dir.0, "app", &["app.example-corp.com"]);
    let port = free_port();
    let cfg = dir.path("hapd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[node]
name = "scan"
admin = "127.0.0.1:0"
[tls]
protocols = ["1.2", "1.3"]
cipher_suites = ["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256",
  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
  "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]
[[tls.certificate]]
cert = "{}"
key = "{}"
chain = "{}"
[[listener]]
name = "https"
bind = ["127.0.0.1:{port}"]
tls = true
[[upstream]]
name = "a"
servers = ["{}"]
[[vhost]]
server_names = ["app.example-corp.com"]
listeners = ["https"]
response_headers = {{ "Strict-Transport-Security" = "max-age=63072000; includeSubDomains; preload" }}
  [[vhost.route]]
  prefix = "/"
  upstream = "a"
"#,
            c.display(),
            k.display(),
            ch.display(),
            backend.authority()
        ),
    )
    .unwrap();
    let mut p = run_hapd(&cfg);
    let found = hapd_lab::testssl::scan(&format!("https://127.0.0.1:{port}/"), &dir.0).unwrap();
    for f in &found {
        eprintln!("{:22} {:6} {}", f.id, f.severity, f.finding);
    }
    let problems = hapd_lab::testssl::problems(&found);
    assert!(problems.is_empty(), "{problems:?}");
    let banner = found.iter().find(|f| f.id == "banner_server").unwrap();
    assert!(banner.finding.starts_with("No Server banner"), "{banner:?}");
    assert!(p
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
}
