//! The `hapd` command line: help for every command, and a clear error for each way a client
//! command can fail before it reaches a daemon.
use std::process::{Command, Output};

fn hapd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapd"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_command_has_help_with_an_example() {
    let o = hapd(&["--help"]);
    let top = String::from_utf8_lossy(&o.stdout).into_owned();
    for cmd in [
        "run", "check", "status", "reload", "drill", "import", "upgrade",
    ] {
        assert!(top.contains(cmd), "{cmd} missing from\n{top}");
        let o = hapd(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            text.contains("Example"),
            "{cmd} --help has no example:\n{text}"
        );
    }
}

#[test]
fn client_commands_say_what_is_wrong() {
    // No daemon at the address.
    let o = hapd(&["status", "--admin", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is hapd running?"), "{}", stderr(&o));
    let o = hapd(&["reload", "--admin", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));
    // The address comes from a config that does not exist.
    let o = hapd(&["status", "--config", "/nonexistent/hapd.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/hapd.toml"),
        "{}",
        stderr(&o)
    );
    // A drill needs the peer's admin endpoint (or an explicit --no-peer-check).
    let o = hapd(&["drill", "--probe", "http://198.18.0.100/"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--peer-admin"), "{}", stderr(&o));
    // Only http:// probes; checked before anything is asked of the daemon.
    let o = hapd(&[
        "drill",
        "--admin",
        "127.0.0.1:1",
        "--no-peer-check",
        "--probe",
        "https://198.18.0.100/",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("only http://"), "{}", stderr(&o));
    // A bad duration.
    let o = hapd(&[
        "drill",
        "--no-peer-check",
        "--probe",
        "http://198.18.0.100/",
        "--timeout",
        "soon",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--timeout"), "{}", stderr(&o));
}

#[test]
fn run_stops_at_once_when_the_admin_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("hapd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("hapd.toml");
    std::fs::write(
        &cfg,
        format!("[node]\nname = \"x\"\nadmin = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let o = hapd(&["run", "--config", cfg.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("node.admin: binding 127.0.0.1:{port}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn version_names_hapd_and_its_commit() {
    let o = hapd(&["--version"]);
    assert!(o.status.success());
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // hapd 0.1.0 (0123456789ab) or (0123456789ab-dirty), or (unknown) outside git.
    let (name_ver, commit) = v.split_once(" (").unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(
        name_ver,
        format!("hapd {}", env!("CARGO_PKG_VERSION")),
        "{v:?}"
    );
    let commit = commit.strip_suffix(')').unwrap_or_else(|| panic!("{v:?}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v:?}"
    );
}

/// `hapd check` names each instance's family (decided by its addresses) and refuses a mix.
#[test]
fn check_shows_each_instances_family_and_refuses_a_mix() {
    let dir = std::env::temp_dir().join(format!("hapd-cli-family-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vrrp = |name: &str, vips: &str, peers: &str| {
        format!(
            "[[vrrp]]\nname = \"{name}\"\ninterface = \"eth0\"\nvrid = 51\npriority = 100\n\
             virtual_ips = [{vips}]\npeers = [{peers}]\n"
        )
    };
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[node]\nname = \"n\"\n{}{}",
            vrrp("VI_4", "\"198.18.0.100/24\"", "\"198.18.0.2\""),
            vrrp("VI_6", "\"2001:2::100/64\"", "\"fe80::2\"")
        ),
    )
    .unwrap();
    let o = hapd(&["check", "--config", good.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}{out}", stderr(&o));
    assert!(out.contains("vrrp VI_4: eth0 vrid 51 v3 IPv4 "), "{out}");
    assert!(out.contains("vrrp VI_6: eth0 vrid 51 v3 IPv6 "), "{out}");
    let mixed = dir.join("mixed.toml");
    std::fs::write(
        &mixed,
        format!(
            "[node]\nname = \"n\"\n{}",
            vrrp(
                "VI_1",
                "\"2001:2::100/64\", \"198.18.0.100/24\"",
                "\"fe80::2\""
            )
        ),
    )
    .unwrap();
    let o = hapd(&["check", "--config", mixed.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o)
            .contains("vrrp[0].virtual_ips[1]: 198.18.0.100/24 is IPv4 but virtual_ips[0] is IPv6"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `hapd check` prints a digest per section of what the nodes must agree on: two nodes that
/// differ only where nodes differ (name, priority, peer) print the same digests, and a changed
/// route changes the `routes` digest only.
#[test]
fn check_prints_the_parity_digests() {
    let dir = std::env::temp_dir().join(format!("hapd-cli-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |node: &str, priority: u8, peer: &str, prefix: &str| {
        format!(
            "[node]\nname = \"{node}\"\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\n\
             priority = {priority}\nvirtual_ips = [\"198.18.0.100/24\"]\npeers = [\"{peer}\"]\n\
             [[listener]]\nname = \"web\"\nbind = [\"198.18.0.100:80\"]\n\
             [[upstream]]\nname = \"app\"\nservers = [\"198.18.0.10:8080\"]\n\
             [[vhost]]\nserver_names = [\"a.example\"]\nlisteners = [\"web\"]\n\
             [[vhost.route]]\nprefix = \"{prefix}\"\nupstream = \"app\"\n"
        )
    };
    let digests = |name: &str, text: String| -> Vec<(String, String)> {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let o = hapd(&["check", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("parity "))
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().to_string(), w.next().unwrap().to_string())
            })
            .collect()
    };
    let a = digests("a.toml", cfg("proxy01", 110, "198.18.0.2", "/"));
    let b = digests("b.toml", cfg("proxy02", 100, "198.18.0.1", "/"));
    let c = digests("c.toml", cfg("proxy02", 100, "198.18.0.1", "/api/"));
    assert_eq!(a.len(), 10, "{a:?}");
    assert_eq!(a, b, "the same service on two nodes");
    let differ: Vec<&str> = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.as_str())
        .collect();
    assert_eq!(differ, ["routes"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_reads_the_cluster_credentials_and_peer_needs_a_cluster() {
    let dir = std::env::temp_dir().join(format!("hapd-cli-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base =
        "[node]\nname = \"proxy01\"\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\n\
                priority = 110\nvirtual_ips = [\"198.18.0.100/24\"]\npeers = [\"198.18.0.2\"]\n";
    let cluster = format!(
        "[cluster]\nlisten = \"198.18.0.1:9440\"\npeers = [{{ name = \"proxy02\", address = \"198.18.0.2:9440\" }}]\n\
         ca = \"{d}/ca.crt\"\ncert = \"{d}/proxy01.crt\"\nkey = \"{d}/proxy01.key\"\n",
        d = dir.display()
    );
    let path = dir.join("a.toml");
    let path = path.to_str().unwrap();
    // The credentials are read by check: a missing CA file is named.
    std::fs::write(path, format!("{base}{cluster}")).unwrap();
    let o = hapd(&["check", "--config", path]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cluster.ca") && stderr(&o).contains("ca.crt"),
        "{}",
        stderr(&o)
    );
    // A certificate for another node is refused with both names.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["proxy09".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &key)
        .unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("proxy01.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("proxy01.key"), leaf_key.serialize_pem()).unwrap();
    let o = hapd(&["check", "--config", path]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("names [\"proxy09\"], not this node (\"proxy01\""),
        "{}",
        stderr(&o)
    );
    // --peer without [cluster]: there is nothing to talk to it with.
    std::fs::write(path, base).unwrap();
    let o = hapd(&["check", "--config", path, "--peer", "proxy02"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--peer needs a [cluster] table"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
