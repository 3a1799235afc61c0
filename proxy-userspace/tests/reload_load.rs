//! Reload under load: wrk keeps TLS connections busy against a running `hapd` while its
//! config is reloaded again and again (routes and response headers change) and its certificate
//! is rotated on disk. Not one request may fail.
mod proxy_kit;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use proxy_kit::{free_port, run_hapd, Backend, Pki, Scratch};

const APP: &str = "app.example-corp.com";

fn config(dir: &std::path::Path, port: u16, admin: u16, backend: &str, version: u32) -> String {
    let d = dir.display();
    format!(
        r#"
[node]
name = "reload"
admin = "127.0.0.1:{admin}"
[[tls.certificate]]
cert = "{d}/app.crt"
key = "{d}/app.key"
chain = "{d}/app-chain.crt"
[[listener]]
name = "https"
bind = ["127.0.0.1:{port}"]
tls = true
[[upstream]]
name = "a"
servers = ["{backend}"]
[[upstream]]
name = "b{version}"
servers = ["{backend}"]
[[vhost]]
server_names = ["{APP}"]
listeners = ["https"]
response_headers = {{ "X-Config-Version" = "{version}" }}
  [[vhost.route]]
  prefix = "/v{version}/"
  upstream = "b{version}"
  [[vhost.route]]
  prefix = "/"
  upstream = "a"
"#
    )
}

#[test]
fn reloads_and_a_certificate_rotation_under_load_fail_no_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(Backend::start("a"));
    let dir = Scratch::new("reload-load");
    let pki = Pki::new();
    pki.write_leaf(&dir.0, "app", &[APP]);
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, config(&dir.0, port, admin, &backend.authority(), 0)).unwrap();
    let mut p = run_hapd(&cfg);

    let wrk = Command::new("wrk")
        .args(["-t1", "-c16", "-d5s", "--timeout", "2s"])
        .arg(format!("https://127.0.0.1:{port}/who"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut wrk = hapd_lab::proc::Proc::new("wrk", wrk);
    // Reload every 250 ms for 4 s with a changing config; rotate the certificate halfway.
    let t0 = Instant::now();
    let mut version = 1;
    let mut rotated = false;
    while t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(250));
        std::fs::write(
            &cfg,
            config(&dir.0, port, admin, &backend.authority(), version),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hapd"))
            .args(["reload", "--admin", &format!("127.0.0.1:{admin}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        version += 1;
        if !rotated && t0.elapsed() > Duration::from_secs(2) {
            pki.write_leaf(&dir.0, "app", &[APP, "rotated.example-corp.com"]);
            rotated = true;
        }
    }
    let st = wrk.wait(Duration::from_secs(15)).unwrap();
    assert!(st.success(), "{}", wrk.lines().join("\n"));
    let text = wrk.lines().join("\n");
    let w = hapd_lab::wrk::parse(&text);
    eprintln!("{text}");
    assert!(w.requests > 1000, "{text}");
    assert_eq!((w.failed, w.refused), (0, 0), "{text}");
    // Every reload was applied, and the new certificate was loaded.
    assert!(
        p.grep("configuration reloaded").len() >= 10,
        "{}",
        p.lines().join("\n")
    );
    assert!(
        !p.grep("rotated.example-corp.com").is_empty(),
        "{}",
        p.lines().join("\n")
    );
    assert!(p
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
}
