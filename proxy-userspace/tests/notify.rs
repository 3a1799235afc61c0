//! The service manager's notify protocol, against a socket the test listens on as systemd
//! would: READY=1 once hapd serves, WATCHDOG=1 at half of WATCHDOG_USEC while it runs,
//! STOPPING=1 when SIGTERM arrives; nothing without NOTIFY_SOCKET (every other test).
mod proxy_kit;

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use proxy_kit::{free_port, one_tls_vhost, run_hapd_by, Pki, Scratch};

/// The datagrams received until `until` says stop (or `bound` passes).
fn receive(
    sock: &UnixDatagram,
    bound: Duration,
    mut until: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + bound;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    got
}

#[test]
fn ready_watchdog_and_stopping_reach_the_service_manager() {
    let dir = Scratch::new("notify");
    let pki = Pki::new();
    let (cert, key, chain) = pki.write_leaf(&dir.0, "live", &["app.example"]);
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, one_tls_vhost(&cert, &key, Some(&chain), port, admin)).unwrap();
    let path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hapd"));
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut p = run_hapd_by(cmd, &cfg);
    expect_the_protocol(&sock, &mut p);
}

/// The same from the VRRP loop (a node with a VRRP instance and no proxy).
#[test]
fn the_vrrp_loop_sends_ready_watchdog_and_stopping() {
    let mut lab = hapd_lab::Lab::new(1).unwrap();
    let pin_dir = lab.bpffs().unwrap().join("h0");
    let cfg = lab.dir().join("h0.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"n0\"\npin_dir = \"{}\"\nadmin = \"198.18.0.1:9100\"\ncontrol_socket = \"{}\"\n\n\
             [[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 100\n\
             advert_interval = \"100ms\"\nvirtual_ips = [\"198.18.0.100/24\"]\npeers = [\"198.18.0.2\"]\n",
            pin_dir.display(),
            lab.dir().join("h0.sock").display()
        ),
    )
    .unwrap();
    let path = lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut cmd = lab.command(
        0,
        &[
            env!("CARGO_BIN_EXE_hapd"),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut p = hapd_lab::proc::Proc::new("hapd", cmd.spawn().unwrap());
    expect_the_protocol(&sock, &mut p);
}

/// What a service manager must hear from `p` (started with `NOTIFY_SOCKET` = `sock` and
/// `WATCHDOG_USEC=200000`): READY=1 first, then WATCHDOG=1 at half that period (three within
/// 2 s), and STOPPING=1 once SIGTERM arrives; then a clean exit.
fn expect_the_protocol(sock: &UnixDatagram, p: &mut hapd_lab::proc::Proc) {
    let t0 = Instant::now();
    let got = receive(sock, Duration::from_secs(10), |g| {
        g.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    let took = t0.elapsed();
    assert_eq!(
        got.first().map(String::as_str),
        Some("READY=1"),
        "{got:?}\n{}",
        p.lines().join("\n")
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{got:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}: {got:?}");
    p.signal(Signal::SIGTERM).unwrap();
    let got = receive(sock, Duration::from_secs(5), |g| {
        g.iter().any(|m| m == "STOPPING=1")
    });
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
    let st = p.wait(Duration::from_secs(15)).unwrap();
    assert!(st.success(), "{}", p.lines().join("\n"));
}
