//! `hapd import` on the HA guide's own files (../shared/reference): the result is the setup of
//! the guide as a hapd config, which `hapd check` accepts once the certificates exist; and
//! clear errors for files it cannot read.
mod proxy_kit;

use std::{path::PathBuf, process::Command};

use proxy_kit::{Pki, Scratch};

fn reference(name: &str) -> PathBuf {
    // Copies of ../shared/reference (the guide's blocks, verbatim), so a clone has them.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

fn hapd(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_hapd"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn import_guide(node: &str, peer: &str) -> String {
    let k = reference(&format!("keepalived-{node}.conf"));
    let a = reference("apache-vhost.conf");
    let (ok, out, err) = hapd(&[
        "import",
        "--keepalived",
        k.to_str().unwrap(),
        "--apache",
        a.to_str().unwrap(),
        "--peer",
        peer,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    out
}

#[test]
fn the_guides_files_become_a_config_hapd_check_accepts() {
    let text = import_guide("proxy01", "10.0.1.11");
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["node"]["name"].as_str(), Some("proxy01"));
    let vrrp = &v["vrrp"][0];
    assert_eq!(vrrp["vrid"].as_integer(), Some(51));
    assert_eq!(vrrp["priority"].as_integer(), Some(110));
    assert_eq!(vrrp["version"].as_integer(), Some(2));
    assert_eq!(vrrp["advert_interval"].as_str(), Some("1s"));
    assert_eq!(vrrp["peers"][0].as_str(), Some("10.0.1.11"));
    assert_eq!(vrrp["virtual_ips"][0].as_str(), Some("10.0.1.100/24"));
    // keepalived sends the first 8 bytes of the 18-byte password; a mixed pair must match.
    assert_eq!(vrrp["auth_pass"].as_str(), Some("ChangeTh"));
    assert!(text.contains("auth_pass is 18 bytes"), "{text}");
    // chk_apache checked Apache itself: the proxy's own health takes its weight.
    assert_eq!(vrrp["track_proxy"]["weight"].as_integer(), Some(-20));
    assert!(v.get("track_script").is_none());
    assert_eq!(
        vrrp["notify"][0].as_str(),
        Some("/etc/keepalived/notify.sh")
    );
    assert!(
        text.contains("state MASTER: hapd has no initial state"),
        "{text}"
    );
    // The vhosts: the TLS one with its headers and routes, and the redirect.
    let vh = &v["vhost"][0];
    assert_eq!(vh["listeners"][0].as_str(), Some("https"));
    assert_eq!(vh["preserve_host"].as_bool(), Some(true));
    assert_eq!(vh["timeout"].as_str(), Some("60s"));
    assert_eq!(
        vh["response_headers"]["Strict-Transport-Security"].as_str(),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    let routes: Vec<(&str, &str)> = vh["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["prefix"].as_str().unwrap(),
                r["upstream"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("/health", "backend01"),
            ("/api/", "backend01"),
            ("/", "frontend01")
        ]
    );
    assert_eq!(vh["route"][0]["allow"][0].as_str(), Some("10.0.0.0/8"));
    assert_eq!(v["vhost"][1]["redirect_https"].as_bool(), Some(true));
    assert_eq!(v["server"]["server_header"].as_bool(), Some(false));
    assert_eq!(v["server"]["keepalive_timeout"].as_str(), Some("15s"));
    assert_eq!(
        v["tls"]["cipher_suites"].as_array().unwrap().len(),
        6,
        "three TLS 1.3 suites and the guide's three TLS 1.2 ones"
    );

    // hapd check accepts it once the certificate files exist.
    let dir = Scratch::new("import");
    let pki = Pki::new();
    let (c, k, ch) = pki.write_leaf(&dir.0, "example-corp", &["app.example-corp.com"]);
    let local = text
        .replace("/etc/pki/tls/certs/example-corp.crt", c.to_str().unwrap())
        .replace("/etc/pki/tls/private/example-corp.key", k.to_str().unwrap())
        .replace(
            "/etc/pki/tls/certs/example-corp-chain.crt",
            ch.to_str().unwrap(),
        )
        .replace("/var/log/httpd/", &format!("{}/", dir.0.display()));
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, &local).unwrap();
    let (ok, out, err) = hapd(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("valid; node proxy01, 1 VRRP instance(s)"),
        "{out}"
    );
    // auth_pass in clear text is worth a warning.
    assert!(out.contains("warning: vrrp[0].auth_pass"), "{out}");

    // proxy02: the same, with its own name and priority.
    let text2 = import_guide("proxy02", "10.0.1.10");
    let v2: toml::Value = toml::from_str(&text2).unwrap();
    assert_eq!(v2["node"]["name"].as_str(), Some("proxy02"));
    assert_eq!(v2["vrrp"][0]["priority"].as_integer(), Some(100));

    // --output writes the file once and never overwrites.
    let out_path = dir.path("imported.toml");
    let k = reference("keepalived-proxy01.conf");
    let args = [
        "import",
        "--keepalived",
        k.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ];
    assert!(hapd(&args).0);
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("[[vrrp]]"));
    let (ok, _, err) = hapd(&args);
    assert!(!ok);
    assert!(err.contains("imported.toml"), "{err}");
}

#[test]
fn what_cannot_be_mapped_is_a_comment_and_what_cannot_be_read_is_an_error() {
    let dir = Scratch::new("import-bad");
    let k = dir.path("k.conf");
    std::fs::write(
        &k,
        "vrrp_instance VI_9 {\n interface eth1\n virtual_router_id 9\n priority 50\n advert_int 0.5\n vrrp_version 3\n nopreempt\n track_interface {\n  eth2\n }\n unicast_peer {\n  198.18.0.2\n }\n virtual_ipaddress {\n  198.18.0.100\n }\n smtp_alert\n}\n",
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let vrrp = &v["vrrp"][0];
    assert_eq!(vrrp["advert_interval"].as_str(), Some("500ms"));
    assert_eq!(vrrp["version"].as_integer(), Some(3));
    assert_eq!(vrrp["preempt"].as_bool(), Some(false));
    assert_eq!(vrrp["unicast"].as_bool(), Some(true));
    assert_eq!(vrrp["peers"][0].as_str(), Some("198.18.0.2"));
    assert_eq!(vrrp["virtual_ips"][0].as_str(), Some("198.18.0.100/32"));
    assert!(out.contains("k.conf:8): track_interface:"), "{out}");
    assert!(
        out.contains("k.conf:17): smtp_alert: no hapd equivalent"),
        "{out}"
    );
    assert!(err.contains("2 directive(s) not mapped"), "{err}");

    // An unclosed block, an unreadable file, nothing to import.
    std::fs::write(&k, "vrrp_instance VI_1 {\n interface eth0\n").unwrap();
    let (ok, _, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("k.conf") && err.contains("line 1"), "{err}");
    let (ok, _, err) = hapd(&["import", "--apache", "/nonexistent/httpd.conf"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/httpd.conf"), "{err}");
    let (ok, _, err) = hapd(&["import"]);
    assert!(!ok);
    assert!(err.contains("--keepalived"), "{err}");
}

#[test]
fn a_keepalived_auth_hmac_block_becomes_hapds() {
    let dir = Scratch::new("import-hmac");
    let key = dir.path("vrrp51");
    std::fs::write(
        &key,
        "hex:a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5\n",
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let k = dir.path("k.conf");
    std::fs::write(
        &k,
        format!(
            "vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n priority 110\n advert_int 1\n \
             authentication {{\n  auth_type PASS\n  auth_pass secret42\n }}\n \
             auth_hmac {{\n  key 1 hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n  \
             key 2 file:{}\n  active_key 2\n  anti_replay time\n  time_window 10\n  mode permissive\n }}\n \
             unicast_peer {{\n  198.18.0.2\n }}\n virtual_ipaddress {{\n  198.18.0.100/24\n }}\n}}\n",
            key.display()
        ),
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let a = &v["vrrp"][0]["auth_hmac"];
    assert_eq!(
        a["keys"]["1"].as_str(),
        Some("hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    );
    assert_eq!(
        a["keys"]["2"].as_str(),
        Some(format!("file:{}", key.display()).as_str())
    );
    assert_eq!(a["active_key"].as_integer(), Some(2));
    assert_eq!(a["anti_replay"].as_str(), Some("time"));
    assert_eq!(a["time_window"].as_str(), Some("10s"));
    assert_eq!(a["mode"].as_str(), Some("permissive"));
    // The legacy block goes: keepalived drops it beside auth_hmac, hapd refuses both.
    assert!(v["vrrp"][0].get("auth_pass").is_none(), "{out}");
    assert!(
        out.contains("authentication: auth_hmac (") && out.contains("replaces it"),
        "{out}"
    );
    // The result runs past `hapd check`.
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, &out).unwrap();
    let (ok, check, err) = hapd(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{check}{err}");
}

/// Debian's layout: the TLS vhost inside `<IfModule mod_ssl.c>`, directives in any case.
#[test]
fn a_vhost_inside_ifmodule_with_lowercase_directives_is_imported() {
    let dir = Scratch::new("import-debian");
    let conf = dir.path("default-ssl.conf");
    std::fs::write(
        &conf,
        "<IfModule mod_ssl.c>\n\
         \t<virtualhost *:443>\n\
         \t\tservername app.example\n\
         \t\tsslengine on\n\
         \t\tsslcertificatefile /etc/ssl/certs/app.pem\n\
         \t\tsslcertificatekeyfile /etc/ssl/private/app.key\n\
         \t\tproxypass / http://127.0.0.1:3001/\n\
         \t</VirtualHost>\n\
         </IfModule>\n",
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--apache", conf.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("server_names = [\"app.example\"]"), "{out}");
    assert!(out.contains("/etc/ssl/certs/app.pem"), "{out}");
    assert!(out.contains("127.0.0.1:3001"), "{out}");
    assert!(out.contains("tls = true"), "{out}");
}
