//! The scripts in dist/ against a real hapd: the ACME renewal hook installs a renewed
//! certificate and reloads hapd (and puts the old one back when the new one is broken); the
//! example notify script runs with the arguments hapd gives it.
mod proxy_kit;

use std::{path::Path, process::Command, time::Duration};

use nix::sys::signal::Signal;
use proxy_kit::{free_port, one_tls_vhost, run_hapd, tls_connect, Pki, Scratch};

const APP: &str = "app.example-corp.com";

fn dist(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(name)
}

/// The names in the certificate hapd serves on `port` for `sni`.
fn served_names(pki: &Pki, port: u16, sni: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tls_connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            pki.client_config(&[b"http/1.1"]),
            sni,
        )
        .await
        .unwrap();
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        String::from_utf8_lossy(der.as_ref()).into_owned()
    })
}

#[test]
fn the_acme_hook_installs_checks_and_reloads() {
    let dir = Scratch::new("acme");
    let pki = Pki::new();
    let (cert, key, chain) = pki.write_leaf(&dir.0, "live", &[APP]);
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, one_tls_vhost(&cert, &key, Some(&chain), port, admin)).unwrap();
    let mut p = run_hapd(&cfg);
    // (hapd's certificate watcher may also notice the new files; the hook's reload is the one
    // waited for below, and a broken pair is refused by both.)
    let hook = |lineage: &Path| {
        Command::new(dist("acme-renew-hook.sh"))
            .env("RENEWED_LINEAGE", lineage)
            .env("HAPD", env!("CARGO_BIN_EXE_hapd"))
            .env("HAPD_CONFIG", &cfg)
            .env("CERT", &cert)
            .env("KEY", &key)
            .env("CHAIN", &chain)
            .env("PEERS", "")
            .output()
            .unwrap()
    };
    let renewed = dir.path("renewed");
    std::fs::create_dir_all(&renewed).unwrap();
    let (c, k) = pki.leaf(&[APP, "renewed.example-corp.com"]);
    std::fs::write(renewed.join("cert.pem"), &c).unwrap();
    std::fs::write(renewed.join("privkey.pem"), &k).unwrap();
    std::fs::write(renewed.join("chain.pem"), &pki.inter_pem).unwrap();
    let o = hook(&renewed);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    p.wait_for(
        "configuration reloaded (hapd reload)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        served_names(&pki, port, "renewed.example-corp.com").contains("renewed.example-corp.com")
    );
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), c);
    // hapd status shows the certificate being served now.
    let o = Command::new(env!("CARGO_BIN_EXE_hapd"))
        .args(["status", "--json", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let certs = &st["proxy"]["certificates"];
    assert_eq!(certs[0]["names"][1], "renewed.example-corp.com", "{st}");
    assert!(certs[0]["days_left"].as_i64().unwrap() > 30, "{st}");

    // A renewal whose key does not belong to its certificate: refused, the old files back,
    // hapd still serves the good one.
    let (c2, _) = pki.leaf(&[APP, "broken.example-corp.com"]);
    let (_, other_key) = pki.leaf(&[APP]);
    std::fs::write(renewed.join("cert.pem"), &c2).unwrap();
    std::fs::write(renewed.join("privkey.pem"), other_key).unwrap();
    let o = hook(&renewed);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the old one is back"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        c,
        "old certificate restored"
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        k,
        "old key restored"
    );
    std::thread::sleep(Duration::from_millis(2500)); // past one certificate-watch poll
    assert!(
        served_names(&pki, port, "renewed.example-corp.com").contains("renewed.example-corp.com")
    );
    // A lineage without the files says which one is missing.
    let o = hook(&dir.path("nowhere"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cert.pem is missing"));

    assert!(p
        .stop(Signal::SIGTERM, Duration::from_secs(15))
        .unwrap()
        .success());
}

#[test]
fn the_example_notify_script_takes_hapds_arguments() {
    let o = Command::new(dist("notify-example.sh"))
        .args(["MASTER", "VI_1", "BACKUP"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(dist("notify-example.sh")).output().unwrap();
    assert!(!o.status.success(), "no state: an error");
}

/// logrotate reads the shipped file (debug mode: nothing is rotated) and its postrotate
/// signals hapd only, not the scripts it runs.
#[test]
fn the_logrotate_file_parses_and_signals_only_hapd() {
    let dir = proxy_kit::Scratch::new("logrotate");
    let o = Command::new("logrotate")
        .args(["-d", "--state"])
        .arg(dir.path("state"))
        .arg(dist("hapd.logrotate"))
        .output()
        .unwrap();
    let said = proxy_kit::said(&o);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("/var/log/hapd/*.log"), "{said}");
    assert!(!said.to_lowercase().contains("error"), "{said}");
    let text = std::fs::read_to_string(dist("hapd.logrotate")).unwrap();
    assert!(
        text.contains("systemctl kill --kill-whom=main --signal=USR1 hapd.service"),
        "{text}"
    );
}
