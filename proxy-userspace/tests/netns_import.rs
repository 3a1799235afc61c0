//! The guide's own files (tests/fixtures/reference: keepalived.conf of proxy01 and proxy02 and
//! the Apache vhost), imported by `hapd import` and run: two lab hosts serve the guide's TLS
//! vhost on the VIP with the imported configs, and the pair fails over and back as the guide's
//! keepalived pair would.
//!
//! What the test changes is what differs between the guide's hosts and the lab's, and nothing
//! the importer decides: in the sources, the guide's addresses become the lab's (10.0.1.10/11/
//! 100 -> 198.18.0.1/2/100), the backends' host names their addresses, the certificate paths
//! the test PKI's; in the imported config, the per-host paths of a process that shares a file
//! system with another node (pins, control socket, log directory).
//!
//! ```text
//!   h0 198.18.0.1 proxy01 (priority 110)  ─┐
//!   h1 198.18.0.2 proxy02 (priority 100)  ─┼─ bridge      VIP 198.18.0.100, vhost :443 and :80
//!   h2 198.18.0.3 the client              ─┘
//! ```
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use hapd_lab::Lab;
use nix::sys::signal::Signal;
use proxy_kit::{LabBackends, Pki, Scratch};

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const HOST: &str = "app.example-corp.com";

fn reference(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference")
            .join(name),
    )
    .unwrap()
}

/// The guide's addresses as the lab's.
fn to_lab(text: &str) -> String {
    text.replace("10.0.1.100", "198.18.0.100")
        .replace("10.0.1.10", "198.18.0.1")
        .replace("10.0.1.11", "198.18.0.2")
}

/// Imports node `node`'s files (adapted to the lab) with its peer `peer`, and returns the
/// config to run.
fn imported(lab: &mut Lab, dir: &Scratch, pki: &Pki, node: &str, peer: &str) -> String {
    let (cert, key, chain) = pki.write_leaf(&dir.0, "example-corp", &[HOST]);
    let apache = dir.path("apache-vhost.conf");
    std::fs::write(
        &apache,
        to_lab(&reference("apache-vhost.conf"))
            .replace("backend01.internal", "127.0.0.1")
            .replace("frontend01.internal", "127.0.0.1")
            .replace(
                "/etc/pki/tls/certs/example-corp.crt",
                cert.to_str().unwrap(),
            )
            .replace(
                "/etc/pki/tls/private/example-corp.key",
                key.to_str().unwrap(),
            )
            .replace(
                "/etc/pki/tls/certs/example-corp-chain.crt",
                chain.to_str().unwrap(),
            ),
    )
    .unwrap();
    let keepalived = dir.path(&format!("keepalived-{node}.conf"));
    std::fs::write(
        &keepalived,
        to_lab(&reference(&format!("keepalived-{node}.conf"))),
    )
    .unwrap();
    let o = Command::new(HAPD)
        .args(["import", "--keepalived"])
        .arg(&keepalived)
        .arg("--apache")
        .arg(&apache)
        .args(["--peer", peer])
        .output()
        .unwrap();
    let said = proxy_kit::said(&o);
    assert!(o.status.success(), "import {node}: {said}");
    assert!(said.contains("0 directive(s) not mapped"), "{said}");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // Per-host paths: these two processes share one file system.
    let mut v: toml::Table = toml::from_str(&text).unwrap();
    let pins = lab.bpffs().unwrap().join(node);
    let node_t = v["node"].as_table_mut().unwrap();
    node_t.insert("pin_dir".into(), pins.to_str().unwrap().into());
    node_t.insert(
        "control_socket".into(),
        lab.dir()
            .join(format!("{node}.sock"))
            .to_str()
            .unwrap()
            .into(),
    );
    let logs = lab.dir().join(format!("logs-{node}"));
    std::fs::create_dir_all(&logs).unwrap();
    for vh in v["vhost"].as_array_mut().unwrap() {
        for key in ["access_log", "error_log"] {
            if let Some(p) = vh.get(key).and_then(|p| p.as_str()).map(PathBuf::from) {
                assert!(p.starts_with("/var/log/hapd"), "{key}: {}", p.display());
                let moved = logs.join(p.file_name().unwrap());
                vh.as_table_mut()
                    .unwrap()
                    .insert(key.into(), moved.to_str().unwrap().into());
            }
        }
    }
    toml::to_string(&v).unwrap()
}

/// Which node's frontend answered the guide's vhost on the VIP, from the client (h2).
fn served_by(lab: &Lab, ca: &Path) -> Option<String> {
    let out = lab
        .command(
            2,
            &[
                "curl",
                "-s",
                "-m",
                "1",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &format!("{HOST}:443:198.18.0.100"),
                &format!("https://{HOST}/"),
            ],
        )
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["backend"].as_str().map(str::to_string)
}

fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

#[test]
fn the_guides_imported_pair_serves_and_fails_over() {
    let mut lab = Lab::new(3).unwrap();
    let dir = Scratch::new("netns-import");
    let pki = Pki::new();
    let ca = dir.path("root.pem");
    std::fs::write(&ca, &pki.root_pem).unwrap();
    let _b0 = LabBackends::start(
        &lab,
        0,
        &[
            ("127.0.0.1:3000", "proxy01-frontend"),
            ("127.0.0.1:3001", "proxy01-api"),
        ],
    );
    let _b1 = LabBackends::start(
        &lab,
        1,
        &[
            ("127.0.0.1:3000", "proxy02-frontend"),
            ("127.0.0.1:3001", "proxy02-api"),
        ],
    );
    let c1 = imported(&mut lab, &dir, &pki, "proxy01", "198.18.0.2");
    let c2 = imported(&mut lab, &dir, &pki, "proxy02", "198.18.0.1");
    // What runs is what `hapd check` accepts.
    for (name, c) in [("proxy01", &c1), ("proxy02", &c2)] {
        let path = dir.path(&format!("{name}.toml"));
        std::fs::write(&path, c).unwrap();
        let o = Command::new(HAPD)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", proxy_kit::said(&o));
    }
    let mut p1 = lab.start_hapd(0, Path::new(HAPD), &c1).unwrap();
    let mut p2 = lab.start_hapd(1, Path::new(HAPD), &c2).unwrap();

    // proxy01 (priority 110) is master and serves the vhost on the VIP; proxy02 is backup.
    p1.wait_for("=> MASTER", 1, Duration::from_secs(10))
        .unwrap();
    p2.wait_for("=> BACKUP", 1, Duration::from_secs(10))
        .unwrap();
    wait_for("proxy01 serves on the VIP", Duration::from_secs(5), || {
        served_by(&lab, &ca).as_deref() == Some("proxy01-frontend")
    });
    // The guide's port-80 vhost redirects to https.
    let redirect = lab
        .command(
            2,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "-m",
                "1",
                "-H",
                &format!("Host: {HOST}"),
                "http://198.18.0.100/x?y=1",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&redirect.stdout),
        format!("301 https://{HOST}/x?y=1")
    );

    // proxy01's host drops off the network: proxy02 takes the VIP (1 s adverts: the
    // Master_Down_Interval is about 3.6 s) and serves the vhost.
    lab.exec(0, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let took = wait_for("proxy02 serves on the VIP", Duration::from_secs(8), || {
        served_by(&lab, &ca).as_deref() == Some("proxy02-frontend")
    });
    eprintln!("proxy02 served {took:?} after proxy01's link went down");
    assert!(p2.grep("=> MASTER").len() == 1, "{}", p2.lines().join("\n"));

    // proxy01 comes back and, with the higher priority (keepalived's preempt), takes over.
    lab.exec(0, &["ip", "link", "set", "eth0", "up"]).unwrap();
    let took = wait_for("proxy01 serves again", Duration::from_secs(10), || {
        served_by(&lab, &ca).as_deref() == Some("proxy01-frontend")
    });
    eprintln!("proxy01 served again {took:?} after its link came back");
    for (name, p) in [("proxy01", &mut p1), ("proxy02", &mut p2)] {
        let st = p.stop(Signal::SIGTERM, Duration::from_secs(15)).unwrap();
        assert!(st.success(), "{name}: {}", p.lines().join("\n"));
    }
}
