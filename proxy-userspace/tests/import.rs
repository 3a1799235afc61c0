//! `hapd import` on the HA guide's own files (../shared/reference): the result is the setup of
//! the guide as a hapd config, which `hapd check` accepts once the certificates exist; and
//! clear errors for files it cannot read.
mod proxy_kit;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use proxy_kit::{Pki, Scratch};

fn reference(name: &str) -> PathBuf {
    // Copies of ../shared/reference (the guide's blocks, verbatim), so a clone has them.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

/// The include layouts in tests/fixtures/import.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
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
    // The guide's logs are in /var/log/httpd, which hapd.service cannot write: same names in
    // /var/log/hapd, each move said where.
    assert_eq!(
        vh["access_log"].as_str(),
        Some("/var/log/hapd/app-access.log")
    );
    assert_eq!(
        vh["error_log"].as_str(),
        Some("/var/log/hapd/app-error.log")
    );
    assert!(
        text.contains("ErrorLog /var/log/httpd/app-error.log is outside what hapd.service lets hapd write (/var/log/hapd): written to /var/log/hapd/app-error.log instead"),
        "{text}"
    );
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
        .replace("/var/log/hapd/", &format!("{}/", dir.0.display()));
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

/// A balancer's hot standby members (`status=+H`) become the upstream's `backup_servers`,
/// and the output passes `hapd check`; a balancer of standbys only serves from them.
#[test]
fn hot_standby_balancer_members_become_backup_servers() {
    let dir = Scratch::new("import-standby");
    let conf = dir.path("site.conf");
    std::fs::write(
        &conf,
        "<Proxy balancer://app>\n\
         \tBalancerMember http://198.18.0.2:8081 retry=1\n\
         \tBalancerMember http://198.18.0.3:8081 status=+H\n\
         \tbalancermember http://198.18.0.4:8081 STATUS=h-e\n\
         \tBalancerMember http://198.18.0.2:8081/other\n\
         \tBalancerMember http://198.18.0.6:8081 status=+D\n\
         </Proxy>\n\
         <Proxy balancer://spare>\n\
         \tBalancerMember http://198.18.0.5:8081 status=+H\n\
         </Proxy>\n\
         <VirtualHost *:80>\n\
         \tServerName app.example\n\
         \tProxyPass /spare balancer://spare/\n\
         \tProxyPass / balancer://app/\n\
         </VirtualHost>\n",
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let ups = v["upstream"].as_array().unwrap();
    let by = |name: &str| {
        ups.iter()
            .find(|u| u["name"].as_str() == Some(name))
            .unwrap()
    };
    let list = |u: &toml::Value, k: &str| -> Vec<String> {
        u.get(k)
            .and_then(|l| l.as_array())
            .map_or_else(Vec::new, |l| {
                l.iter().map(|s| s.as_str().unwrap().to_owned()).collect()
            })
    };
    assert_eq!(list(by("app"), "servers"), ["198.18.0.2:8081"], "{out}");
    assert_eq!(
        list(by("app"), "backup_servers"),
        ["198.18.0.3:8081", "198.18.0.4:8081"],
        "{out}"
    );
    assert_eq!(list(by("spare"), "servers"), ["198.18.0.5:8081"], "{out}");
    assert!(list(by("spare"), "backup_servers").is_empty(), "{out}");
    assert!(out.contains("every member is a hot standby"), "{out}");
    assert!(out.contains("198.18.0.2:8081 is already a member"), "{out}");
    assert!(out.contains("disabled or stopped"), "{out}");
    assert!(!out.contains("\"198.18.0.6:8081\""), "{out}");
    let checked = dir.path("hapd.toml");
    std::fs::write(&checked, &out).unwrap();
    let (ok, _, err) = hapd(&["check", "--config", checked.to_str().unwrap()]);
    assert!(ok, "{err}\n{out}");
}

fn import_apache(conf: &Path) -> (bool, String, String) {
    hapd(&["import", "--apache", conf.to_str().unwrap()])
}

fn server_names(v: &toml::Value) -> Vec<&str> {
    v["vhost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["server_names"][0].as_str().unwrap())
        .collect()
}

/// `Include` with a wildcard, relative to the last ServerRoot (the top file is elsewhere):
/// the matching files in name order, and what is in them named with their own file and line.
#[test]
fn an_include_glob_relative_to_server_root_is_followed() {
    let dir = Scratch::new("import-include");
    let conf = dir.path("httpd.conf");
    let root = fixture("root");
    std::fs::write(
        &conf,
        format!("ServerRoot \"{}\"\ninclude conf.d/*.conf\n", root.display()),
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    // conf.d/README and conf.d/.hidden.conf (not a config) are not matched.
    assert_eq!(server_names(&v), ["app.example", "api.example"]);
    let app = root.join("conf.d/10-app.conf");
    let api = root.join("conf.d/20-api.conf");
    assert!(
        out.contains(&format!("# not mapped ({}:3): LogLevel", api.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("# Included: {}, {}", app.display(), api.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:1: ServerRoot", conf.display())),
        "{out}"
    );
    assert!(err.contains("1 directive(s) not mapped"), "{err}");

    // No ServerRoot: relative paths start in the top file's directory (root/httpd.conf also
    // has IncludeOptional lines that read nothing).
    let (ok, out2, err) = import_apache(&root.join("httpd.conf"));
    assert!(ok, "{err}");
    let v2: toml::Value = toml::from_str(&out2).unwrap();
    assert_eq!(v2["vhost"], v["vhost"]);
}

/// A directory includes every file in it (any name), in name order, and its subdirectories.
#[test]
fn an_included_directory_reads_every_file_in_name_order() {
    let dir = Scratch::new("import-dir");
    let vh = |name: &str, port: u16| {
        format!("<VirtualHost *:80>\n    ServerName {name}\n    ProxyPass / http://127.0.0.1:{port}/\n</VirtualHost>\n")
    };
    std::fs::create_dir_all(dir.path("sites/more")).unwrap();
    std::fs::write(dir.path("sites/b-site"), vh("b.example", 3002)).unwrap();
    std::fs::write(dir.path("sites/a.conf"), vh("a.example", 3001)).unwrap();
    std::fs::write(dir.path("sites/more/c.conf"), vh("c.example", 3003)).unwrap();
    let conf = dir.path("app.conf");
    std::fs::write(&conf, "Include sites\n").unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(server_names(&v), ["a.example", "b.example", "c.example"]);
}

/// `IncludeOptional` of a wildcard that matches nothing, of a directory that is not there
/// and of a file that is not there reads nothing; `Include` of a wildcard that matches
/// nothing is an error (httpd 2.4), naming the file and line.
#[test]
fn include_optional_of_nothing_reads_nothing() {
    let dir = Scratch::new("import-optional");
    std::fs::create_dir(dir.path("conf.d")).unwrap();
    let conf = dir.path("app.conf");
    let vhost = "<VirtualHost *:80>\n    ServerName app.example\n    ProxyPass / http://127.0.0.1:3001/\n</VirtualHost>\n";
    std::fs::write(
        &conf,
        format!(
            "IncludeOptional conf.d/*.conf\nIncludeOptional nothing.d/*.conf\nincludeoptional not-there.conf\n{vhost}"
        ),
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    assert!(!out.contains("# Included:"), "{out}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(server_names(&v), ["app.example"]);

    std::fs::write(&conf, format!("{vhost}Include conf.d/*.conf\n")).unwrap();
    let (ok, _, err) = import_apache(&conf);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:5: Include conf.d/*.conf: ", conf.display()))
            && err.contains("no file matches the wildcard \"*.conf\""),
        "{err}"
    );
}

#[test]
fn include_of_a_missing_file_is_an_error_naming_the_file_and_line() {
    let dir = Scratch::new("import-missing");
    let conf = dir.path("app.conf");
    std::fs::write(
        &conf,
        "# app\nServerTokens Prod\nInclude conf.d/missing.conf\n",
    )
    .unwrap();
    let (ok, _, err) = import_apache(&conf);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}:3: Include conf.d/missing.conf: {} does not exist",
            conf.display(),
            dir.path("conf.d/missing.conf").display()
        )),
        "{err}"
    );
    // In an included file: that file and line, and the Include lines that led there.
    let sub = dir.path("sub.conf");
    std::fs::write(&sub, "# sub\nINCLUDE other.conf\n").unwrap();
    std::fs::write(&conf, "Include sub.conf\n").unwrap();
    let (ok, _, err) = import_apache(&conf);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:2: Include other.conf: ", sub.display()))
            && err.contains(&format!("(read through {}:1)", conf.display())),
        "{err}"
    );
}

#[test]
fn an_include_cycle_is_an_error_naming_the_chain() {
    let a = fixture("cycle/a.conf");
    let b = fixture("cycle/b.conf");
    let (ok, _, err) = import_apache(&a);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}:2: Include a.conf: include cycle: {}:2 -> {}:2 -> {}",
            b.display(),
            a.display(),
            b.display(),
            a.display()
        )),
        "{err}"
    );
    // No cycle, but includes nested more than 16 deep.
    let dir = Scratch::new("import-deep");
    for i in 0..18 {
        std::fs::write(
            dir.path(&format!("{i}.conf")),
            format!("Include {}.conf\n", i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.path("18.conf"), "ServerTokens Prod\n").unwrap();
    let (ok, _, err) = import_apache(&dir.path("0.conf"));
    assert!(!ok);
    assert!(
        err.contains("includes nested more than 16 deep: ")
            && err.contains(&format!("{}:1 -> ", dir.path("0.conf").display())),
        "{err}"
    );
}

/// mod_proxy waits ProxyTimeout for an upstream, by default Timeout: a vhost's ProxyTimeout,
/// else the server's ProxyTimeout, else the vhost's Timeout, else the server's Timeout.
#[test]
fn apache_timeout_becomes_the_vhost_timeout() {
    let dir = Scratch::new("import-timeout");
    let conf = dir.path("app.conf");
    let vh = |name: &str, port: u16, extra: &str| {
        format!("<VirtualHost *:80>\n    ServerName {name}\n{extra}    ProxyPass / http://127.0.0.1:{port}/\n</VirtualHost>\n")
    };
    // Lines 1-4, 5-9, 10-15; the server's Timeout on 16 (after the vhosts, as in the guide).
    std::fs::write(
        &conf,
        format!(
            "{}{}{}Timeout 30\n",
            vh("a.example", 3001, ""),
            vh("b.example", 3002, "    Timeout 45\n"),
            vh("c.example", 3003, "    ProxyTimeout 90\n    Timeout 10\n"),
        ),
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let timeouts = |v: &toml::Value| -> Vec<String> {
        v["vhost"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["timeout"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(timeouts(&v), ["30s", "45s", "90s"]);
    let f = conf.display();
    assert!(
        out.contains(&format!("# timeout: Timeout ({f}:16): mod_proxy's timeout")),
        "{out}"
    );
    assert!(
        out.contains(&format!("# timeout: Timeout ({f}:7): mod_proxy's timeout")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "# {f}:13: Timeout: the ProxyTimeout of {f}:12 sets the upstream timeout"
        )),
        "{out}"
    );

    // The server's ProxyTimeout comes before a vhost's Timeout (mod_proxy merges it into
    // every vhost).
    std::fs::write(
        &conf,
        format!(
            "ProxyTimeout 20\n{}{}",
            vh("a.example", 3001, ""),
            vh("b.example", 3002, "    Timeout 45\n"),
        ),
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(timeouts(&v), ["20s", "20s"]);

    // hapd has no "no timeout": 0 is an error naming the line.
    std::fs::write(&conf, format!("{}Timeout 0\n", vh("a.example", 3001, ""))).unwrap();
    let (ok, _, err) = import_apache(&conf);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{f}:5: Timeout 0: hapd needs a timeout greater than 0"
        )),
        "{err}"
    );
}

#[test]
fn vrrp_script_timing_keeps_keepalived_defaults() {
    let dir = Scratch::new("import-scripts");
    let k = dir.path("k.conf");
    std::fs::write(
        &k,
        "vrrp_script chk_redis {\n script \"/usr/bin/true redis\"\n interval 2\n fall 3\n rise 2\n weight -10\n}\n\
         vrrp_script chk_fast {\n script /usr/bin/true\n interval 0.5\n timeout 0.2\n}\n\
         vrrp_script chk_plain {\n script /usr/bin/true\n}\n\
         vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n priority 100\n advert_int 1\n \
         unicast_peer {\n  198.18.0.2\n }\n virtual_ipaddress {\n  198.18.0.100/24\n }\n \
         track_script {\n  chk_redis\n  chk_fast\n  chk_plain\n }\n}\n",
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let ts = v["track_script"].as_array().unwrap();
    let redis = &ts[0];
    assert_eq!(redis["name"].as_str(), Some("chk_redis"));
    assert_eq!(redis["command"][1].as_str(), Some("redis"));
    assert_eq!(redis["interval"].as_str(), Some("2s"));
    assert_eq!(
        redis["timeout"].as_str(),
        Some("2s"),
        "keepalived's timeout is the interval when not set"
    );
    assert!(
        out.contains("k.conf:1: no timeout: keepalived's is the interval"),
        "{out}"
    );
    assert_eq!(redis["fall"].as_integer(), Some(3));
    assert_eq!(redis["rise"].as_integer(), Some(2));
    assert_eq!(redis["weight"].as_integer(), Some(-10));
    let fast = &ts[1];
    assert_eq!(fast["interval"].as_str(), Some("500ms"));
    assert_eq!(fast["timeout"].as_str(), Some("200ms"));
    // keepalived's defaults (interval 1 s, timeout = interval, fall 1, rise 1) are hapd's:
    // nothing is written for them.
    for key in ["interval", "timeout", "fall", "rise", "weight"] {
        assert!(ts[2].get(key).is_none(), "{key}: {out}");
    }
    // ... and hapd reads the result with keepalived's values.
    let (cfg, _) = proxy_userspace::config::Config::parse(&out, Path::new("imported")).unwrap();
    let timing: Vec<(Duration, Duration, u32, u32)> = cfg
        .track_script
        .iter()
        .map(|t| {
            let t = t.get_ref();
            (t.interval.0, t.timeout.0, t.fall, t.rise)
        })
        .collect();
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!(
        timing,
        [
            (s(2), s(2), 3, 2),
            (ms(500), ms(200), 1, 1),
            (s(1), s(1), 1, 1)
        ]
    );
}

/// `enable_script_security` is always on in hapd; `script_user` becomes `[node]
/// script_user` when this host has the user, else a comment to copy once it does.
#[test]
fn script_security_and_script_user_are_mapped() {
    let dir = Scratch::new("import-security");
    let k = dir.path("k.conf");
    let instance = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n priority 100\n \
                    unicast_peer {\n  198.18.0.2\n }\n virtual_ipaddress {\n  198.18.0.100/24\n }\n \
                    notify /etc/keepalived/notify.sh\n}\n";
    std::fs::write(
        &k,
        format!("global_defs {{\n router_id LB1\n enable_script_security\n script_user nobody\n}}\n{instance}"),
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("0 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(v["node"]["script_user"].as_str(), Some("nobody"));
    assert!(
        out.contains("k.conf:3: enable_script_security: always on in hapd"),
        "{out}"
    );
    assert!(!out.contains("enable_script_security is not set"), "{out}");

    // A user this host does not have would fail the config check: a comment to copy instead.
    std::fs::write(
        &k,
        format!("global_defs {{\n enable_script_security\n script_user no-such-user-hapd script\n}}\n{instance}"),
    )
    .unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("1 directive(s) not mapped"), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert!(v["node"].get("script_user").is_none(), "{out}");
    assert!(
        out.contains("k.conf:3): script_user no-such-user-hapd script: ")
            && out.contains("set script_user = \"no-such-user-hapd:script\" under [node]"),
        "{out}"
    );

    // Without enable_script_security hapd applies it all the same, and says so.
    std::fs::write(&k, instance).unwrap();
    let (ok, out, err) = hapd(&["import", "--keepalived", k.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("enable_script_security is not set, but hapd always applies it"),
        "{out}"
    );
}

/// hapd.service lets hapd write files only in /var/log/hapd (LogsDirectory; the other
/// ReadWritePaths is the bpffs): log files elsewhere keep their name and move there.
#[test]
fn log_files_outside_what_the_unit_can_write_move_to_var_log_hapd() {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/hapd.service"))
            .unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(lines.contains(&"ProtectSystem=strict"), "{unit}");
    assert!(lines.contains(&"LogsDirectory=hapd"), "{unit}");
    assert_eq!(proxy_userspace::import::LOG_DIR, "/var/log/hapd");
    for l in lines.iter().filter(|l| l.starts_with("ReadWritePaths=")) {
        for p in l["ReadWritePaths=".len()..].split_whitespace() {
            assert!(
                ["/var/log/hapd", "/sys/fs/bpf"].contains(&p),
                "the unit can write {p} now: see whether imported logs may stay there (import::log_path)"
            );
        }
    }

    let dir = Scratch::new("import-logs");
    let conf = dir.path("app.conf");
    std::fs::write(
        &conf,
        "<VirtualHost *:80>\n    ServerName a.example\n    ErrorLog /var/log/httpd/a-error.log\n    CustomLog logs/a-access.log combined\n    ProxyPass / http://127.0.0.1:3001/\n</VirtualHost>\n\
         <VirtualHost *:80>\n    ServerName b.example\n    ErrorLog /var/log/hapd/b-error.log\n    CustomLog \"|/usr/bin/rotatelogs /var/log/httpd/b-access.%Y%m%d 86400\" combined\n    ProxyPass / http://127.0.0.1:3002/\n</VirtualHost>\n\
         <VirtualHost *:80>\n    ServerName c.example\n    ErrorLog /srv/c/a-error.log\n    ProxyPass / http://127.0.0.1:3003/\n</VirtualHost>\n",
    )
    .unwrap();
    let (ok, out, err) = import_apache(&conf);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let f = conf.display();
    let a = &v["vhost"][0];
    assert_eq!(a["error_log"].as_str(), Some("/var/log/hapd/a-error.log"));
    assert_eq!(a["access_log"].as_str(), Some("/var/log/hapd/a-access.log"));
    assert!(
        out.contains(&format!(
            "# {f}:3: ErrorLog /var/log/httpd/a-error.log is outside what hapd.service lets hapd write (/var/log/hapd): written to /var/log/hapd/a-error.log instead"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "# {f}:4: CustomLog logs/a-access.log is outside what hapd.service lets hapd write"
        )),
        "{out}"
    );
    // Already where hapd can write: kept as it is.
    let b = &v["vhost"][1];
    assert_eq!(b["error_log"].as_str(), Some("/var/log/hapd/b-error.log"));
    assert!(
        !out.contains("ErrorLog /var/log/hapd/b-error.log is outside"),
        "{out}"
    );
    // A piped logger is no file.
    assert!(b.get("access_log").is_none(), "{out}");
    assert!(
        out.contains(&format!(
            "# not mapped ({f}:10): CustomLog |/usr/bin/rotatelogs"
        )),
        "{out}"
    );
    assert!(err.contains("1 directive(s) not mapped"), "{err}");
    // Two logs of one name from different directories end in one file: said so.
    assert_eq!(
        v["vhost"][2]["error_log"].as_str(),
        Some("/var/log/hapd/a-error.log")
    );
    assert!(
        out.contains(&format!(
            "# {f}:15: /var/log/hapd/a-error.log is also where /var/log/httpd/a-error.log goes"
        )),
        "{out}"
    );
}

/// keepalived blocks hapd does not have, and words after a notify program, are named in the
/// output, never dropped unseen.
#[test]
fn keepalived_blocks_without_an_equivalent_are_named() {
    let dir = Scratch::new("import-blocks");
    let k = dir.path("keepalived.conf");
    std::fs::write(
        &k,
        "include /etc/keepalived/other.conf\n\
         vrrp_sync_group G1 {\n    group {\n        VI_1\n    }\n}\n\
         virtual_server 10.0.1.100 443 {\n    delay_loop 6\n}\n\
         vrrp_instance VI_1 {\n    interface eth0\n    virtual_router_id 51\n    priority 100\n\
         \x20   virtual_ipaddress {\n        10.0.1.100/24\n    }\n\
         \x20   notify_master \"/etc/keepalived/notify.sh MASTER now\"\n}\n",
    )
    .unwrap();
    let (ok, out, err) = hapd(&[
        "import",
        "--keepalived",
        k.to_str().unwrap(),
        "--peer",
        "10.0.1.11",
    ]);
    assert!(ok, "{err}");
    for want in [
        "keepalived.conf:1): include: hapd import reads one keepalived file",
        "keepalived.conf:2): vrrp_sync_group: hapd has no sync groups",
        "keepalived.conf:7): virtual_server: LVS is not part of hapd",
        "the words after the program (MASTER now) are dropped",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    assert!(err.contains("3 directive(s) not mapped"), "{err}");
}

/// keepalived's IPv6 instances: the family follows the first address (an address of the other
/// family is named and left out, as keepalived ignores it), a prefix-less IPv6 address is a
/// /128, `native_ipv6` and `vrrp_version 2` are explained, the `--peer` of the instance's
/// family is its peer; Apache's `*` becomes both wildcards and an IPv6 VirtualHost keeps its
/// brackets. `hapd check` accepts the result.
#[test]
fn keepalived_ipv6_instances_and_apache_ipv6_vhosts_are_imported() {
    let dir = Scratch::new("import-ipv6");
    let k = dir.path("k.conf");
    std::fs::write(
        &k,
        "vrrp_instance VI_6 {\n interface eth0\n virtual_router_id 51\n priority 110\n advert_int 1\n \
         native_ipv6\n vrrp_version 2\n virtual_ipaddress {\n  2001:2::100\n  2001:2::101/64\n  198.18.0.100/24\n }\n}\n\
         vrrp_instance VI_4 {\n interface eth0\n virtual_router_id 51\n priority 110\n advert_int 1\n \
         virtual_ipaddress {\n  198.18.0.100/24\n }\n}\n",
    )
    .unwrap();
    let a = dir.path("a.conf");
    std::fs::write(
        &a,
        "<VirtualHost *:443>\n ServerName app.example\n SSLEngine on\n SSLCertificateFile /etc/c.crt\n \
         SSLCertificateKeyFile /etc/c.key\n ProxyPass / http://[2001:2::10]:8080/\n</VirtualHost>\n\
         <VirtualHost [2001:2::100]:8443>\n ServerName v6.example\n SSLEngine on\n SSLCertificateFile /etc/c.crt\n \
         SSLCertificateKeyFile /etc/c.key\n ProxyPass / http://[2001:2::10]:8080/\n</VirtualHost>\n",
    )
    .unwrap();
    let (ok, out, err) = hapd(&[
        "import",
        "--keepalived",
        k.to_str().unwrap(),
        "--apache",
        a.to_str().unwrap(),
        "--peer",
        "198.18.0.2",
        "--peer",
        "fe80::2",
    ]);
    assert!(ok, "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap();
    let list = |x: &toml::Value| -> Vec<String> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let v6 = &v["vrrp"][0];
    assert_eq!(
        list(&v6["virtual_ips"]),
        ["2001:2::100/128", "2001:2::101/64"]
    );
    assert_eq!(list(&v6["peers"]), ["fe80::2"]);
    assert_eq!(v6["version"].as_integer(), Some(3), "{out}");
    assert_eq!(list(&v["vrrp"][1]["peers"]), ["198.18.0.2"]);
    assert!(
        out.contains("198.18.0.100/24") && out.contains("its family differs"),
        "{out}"
    );
    assert!(
        out.contains("native_ipv6: hapd takes an instance's family"),
        "{out}"
    );
    assert!(out.contains("IPv6 runs VRRPv3 only"), "{out}");
    let listeners: Vec<(String, Vec<String>)> = v["listener"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_string(), list(&l["bind"])))
        .collect();
    assert!(
        listeners.contains(&(
            "https".into(),
            vec!["0.0.0.0:443".into(), "[::]:443".into()]
        )),
        "{listeners:?}"
    );
    assert!(
        listeners.contains(&("tls-8443".into(), vec!["[2001:2::100]:8443".into()])),
        "{listeners:?}"
    );
    // The upstream keeps its IPv6 authority in brackets.
    assert!(out.contains("\"[2001:2::10]:8080\""), "{out}");
    // Certificates aside (they do not exist here), hapd check accepts it.
    let pki = Pki::new();
    let (c, key) = pki.leaf(&["app.example", "v6.example"]);
    let (cp, kp) = (dir.path("c.crt"), dir.path("c.key"));
    std::fs::write(&cp, c).unwrap();
    std::fs::write(&kp, key).unwrap();
    let cfg = dir.path("hapd.toml");
    std::fs::write(
        &cfg,
        out.replace("/etc/c.crt", cp.to_str().unwrap())
            .replace("/etc/c.key", kp.to_str().unwrap()),
    )
    .unwrap();
    let (ok, check, err) = hapd(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{check}{err}");
    assert!(check.contains("vrrp VI_6: eth0 vrid 51 v3 IPv6"), "{check}");
}
