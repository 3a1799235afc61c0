use std::path::Path;

use super::*;

const PROXY: &str = r#"
[tls]
protocols = ["1.2", "1.3"]
[[tls.certificate]]
cert = "/etc/c.crt"
key = "/etc/c.key"
[[listener]]
name = "https"
bind = ["0.0.0.0:443"]
tls = true
[[upstream]]
name = "api"
servers = ["backend01.internal:3001"]
[[vhost]]
server_names = ["app.example"]
listeners = ["https"]
[[vhost.route]]
prefix = "/"
upstream = "api"
"#;

const BASE: &str = r#"
[node]
name = "proxy01"
pin_dir = "/sys/fs/bpf/hapd"

[[track_script]]
name = "chk"
command = ["/bin/true"]

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = 110
advert_interval = "1s"
virtual_ips = ["198.18.0.100/24"]
peers = ["198.18.0.2"]
track_scripts = ["chk"]
"#;

/// The config and its warnings, without the one that depends on this host's users (whether
/// `hapd-script` exists: see `script_user_must_exist_and_its_absence_is_warned_about`).
fn parse(text: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
    Config::parse(text, Path::new("test.toml")).map(|(c, mut w)| {
        w.retain(|w| w.key != "node.script_user");
        (c, w)
    })
}

/// `BASE` with `lines` added to the `[[vrrp]]` table (replacing keys of the same names).
fn with_vrrp(lines: &str) -> String {
    let keys: Vec<&str> = lines
        .lines()
        .map(|l| l.split('=').next().unwrap().trim())
        .collect();
    let mut out = String::new();
    let mut in_vrrp = false;
    for l in BASE.lines() {
        if l.starts_with("[[vrrp]]") {
            in_vrrp = true;
        }
        if in_vrrp
            && l.split('=')
                .next()
                .is_some_and(|k| keys.contains(&k.trim()))
        {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(lines);
    out.push('\n');
    out
}

#[test]
fn the_documented_example_is_valid() {
    let text = include_str!("../../../docs/examples/proxy01.toml");
    let (c, warnings) = parse(text).unwrap();
    assert_eq!(c.node.name, "proxy01");
    let v = c.vrrp[0].get_ref();
    assert_eq!(
        (v.vrid.get(), v.priority.get(), v.version),
        (51, 110, VrrpVersion::V3)
    );
    assert_eq!(v.advert_interval.0, Duration::from_secs(1));
    assert_eq!(v.garp.repeat, 5);
    assert_eq!(c.track_script[0].get_ref().fall, 2);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn track_proxy_without_a_listener_is_a_warning() {
    let text = BASE.replace("[[vrrp]]\n", "[[vrrp]]\ntrack_proxy = { weight = -50 }\n");
    assert!(text.contains("track_proxy"), "BASE has a [[vrrp]] table");
    let (_, warnings) = parse(&text).unwrap();
    assert!(
        warnings.iter().any(|w| w.key == "vrrp[0].track_proxy"),
        "{warnings:?}"
    );
}

#[test]
fn defaults() {
    let (c, _) = parse(BASE).unwrap();
    let v = c.vrrp[0].get_ref();
    assert!(v.preempt);
    assert_eq!(v.v3_checksum, V3Checksum::PseudoHeader);
    assert_eq!(v.xdp, XdpMode::Auto);
    assert_eq!(c.node.admin.to_string(), "127.0.0.1:8410");
    // Pinned workers, and no steering unless asked for (issue 23).
    let s = proxy::Server::default();
    assert!(s.pin_workers && !s.steer_connections);
    let (c, _) = parse(&format!("{BASE}[server]\n")).unwrap();
    assert_eq!(c.server, Some(proxy::Server::default()));
}

/// keepalived's convention: the family comes from the addresses; an IPv4 and an IPv6 instance
/// may share a VRID on one interface (each family has its own VRID space), two of one family
/// may not.
#[test]
fn an_instance_per_family_may_share_a_vrid() {
    let v6 = "\n[[vrrp]]\nname = \"VI_6\"\ninterface = \"eth0\"\nvrid = 51\npriority = 110\n\
              virtual_ips = [\"2001:2::100/64\", \"2001:2::101/64\"]\npeers = [\"fe80::2\"]\n";
    let (c, _) = parse(&format!("{BASE}{v6}")).unwrap();
    let families: Vec<_> = c.vrrp.iter().map(|v| v.get_ref().family()).collect();
    assert_eq!(families, [Family::V4, Family::V6]);
    assert_eq!(c.vrrp[1].get_ref().version, VrrpVersion::V3);
    let twice = v6.replace("VI_6", "VI_7") + &v6.replace("VI_6", "VI_8");
    let e = parse(&format!("{BASE}{twice}")).unwrap_err().to_string();
    assert!(
        e.contains("vrrp[2].vrid: vrid 51 is used twice on interface eth0 for IPv6"),
        "{e}"
    );
}

#[test]
fn warnings_for_pass_auth_and_no_peers() {
    let text = with_vrrp("version = 2\nauth_pass = \"secret42\"")
        .replace("peers = [\"198.18.0.2\"]\n", "");
    let (_, w) = parse(&text).unwrap();
    let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["vrrp[0].auth_pass", "vrrp[0].peers",]);
    assert!(w[0].message.contains("plaintext"));
}

const HEX32: &str = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn auth_hmac_parses_with_keepalived_defaults_and_warns_about_open_key_files() {
    let text = with_vrrp(&format!(
        "auth_hmac = {{ keys = {{ 1 = \"{HEX32}\" }}, active_key = 1 }}"
    ));
    let (c, w) = parse(&text).unwrap();
    let a = c.vrrp[0].get_ref().auth_hmac.as_ref().unwrap();
    assert_eq!(a.mode, crate::config::auth::AuthMode::Enforce);
    assert_eq!(a.anti_replay, crate::config::auth::AntiReplay::Time);
    assert!(w.is_empty(), "{w:?}");
    let dir = std::env::temp_dir().join(format!("hapd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("k");
    std::fs::write(&f, HEX32).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let text = with_vrrp(&format!(
        "auth_hmac = {{ keys = {{ 7 = \"file:{}\" }}, active_key = 7, mode = \"receive-only\" }}",
        f.display()
    ));
    let (_, w) = parse(&text).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "vrrp[0].auth_hmac.keys.7");
    assert!(
        w[0].message.contains("readable by group or others"),
        "{w:?}"
    );
}

/// Each invalid file: the error must name this key and this line.
#[test]
fn every_invalid_case_names_the_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (with_vrrp("priority = 0"), "priority must be 1..=255, got 0", "@priority ="),
        (with_vrrp("priority = 256"), "priority must be 1..=255", "@priority ="),
        (with_vrrp("vrid = 0"), "vrid must be 1..=255", "@vrid ="),
        (with_vrrp("version = 4"), "version must be 2 or 3", "@version ="),
        (with_vrrp("advert_interval = \"15ms\""), "vrrp[0].advert_interval", "[[vrrp]]"),
        (with_vrrp("advert_interval = \"41s\""), "vrrp[0].advert_interval", "[[vrrp]]"),
        (with_vrrp("advert_interval = \"fast\""), "invalid duration \"fast\"", "@advert_interval ="),
        (with_vrrp("version = 2\nadvert_interval = \"1500ms\""), "vrrp[0].advert_interval", "[[vrrp]]"),
        (with_vrrp("version = 2\nauth_pass = \"ChangeThisSecret42\""), "vrrp[0].auth_pass: must be 1..=8 bytes, got 18", "[[vrrp]]"),
        (with_vrrp("auth_pass = \"secret\""), "vrrp[0].auth_pass: VRRP v3 has no authentication", "[[vrrp]]"),
        (with_vrrp("auth_hmac = { keys = { 1 = \"short\" }, active_key = 1 }"), "vrrp[0].auth_hmac.keys.1: key 1 is 5 bytes; auth_hmac keys are 32..=64 bytes", "[[vrrp]]"),
        (with_vrrp(&format!("auth_hmac = {{ keys = {{ 1 = \"{HEX32}\" }}, active_key = 2 }}")), "vrrp[0].auth_hmac.active_key: 2 is not one of the keys (1)", "[[vrrp]]"),
        (with_vrrp("auth_hmac = { keys = { 1 = \"file:/nonexistent/k\" }, active_key = 1 }"), "vrrp[0].auth_hmac.keys.1: key file /nonexistent/k", "[[vrrp]]"),
        (with_vrrp(&format!("auth_hmac = {{ keys = {{ 1 = \"{HEX32}\" }}, active_key = 1, mode = \"strict\" }}")), "unknown variant `strict`", "@auth_hmac ="),
        (with_vrrp(&format!("auth_hmac = {{ keys = {{ 1 = \"{HEX32}\" }}, active_key = 1, time_window = \"400s\" }}")), "vrrp[0].auth_hmac.time_window", "[[vrrp]]"),
        (with_vrrp(&format!("version = 2\nauth_pass = \"secret42\"\nauth_hmac = {{ keys = {{ 1 = \"{HEX32}\" }}, active_key = 1 }}")), "vrrp[0].auth_hmac: auth_hmac and auth_pass exclude each other", "[[vrrp]]"),
        (with_vrrp("virtual_ips = []"), "vrrp[0].virtual_ips", "[[vrrp]]"),
        (with_vrrp("virtual_ips = [\"10.0.1.300/24\"]"), "virtual_ips: \"10.0.1.300/24\" is not an address with prefix", "@virtual_ips ="),
        (with_vrrp("virtual_ips = [\"198.18.0.100/24\", \"2001:2::100/64\"]"), "vrrp[0].virtual_ips[1]: 2001:2::100/64 is IPv6 but virtual_ips[0] is IPv4: an instance is of one family", "[[vrrp]]"),
        (with_vrrp("virtual_ips = [\"2001:2::100/64\"]\npeers = [\"198.18.0.2\"]"), "vrrp[0].peers[0]: 198.18.0.2 is not IPv6 like the instance's virtual_ips", "[[vrrp]]"),
        (with_vrrp("virtual_ips = [\"2001:2::100/64\"]\npeers = [\"fe80::2\"]\nversion = 2"), "vrrp[0].version: VRRP v2 is IPv4 only (RFC 3768); IPv6 addresses need version = 3", "[[vrrp]]"),
        (with_vrrp(&format!("virtual_ips = [{}]\npeers = [\"fe80::2\"]", (0..65).map(|i| format!("\"2001:2::{:x}/64\"", i + 1)).collect::<Vec<_>>().join(", "))), "vrrp[0].virtual_ips: 65 addresses; at most 64 IPv6 addresses fit in an advert", "[[vrrp]]"),
        (with_vrrp("virtual_ips = [\"ff02::1/64\"]\npeers = [\"fe80::2\"]"), "vrrp[0].virtual_ips[0]: ff02::1/64 is not a host address", "[[vrrp]]"),
        (with_vrrp("peers = [\"198.18.0.2\", \"198.18.0.2\"]"), "vrrp[0].peers[1]: 198.18.0.2 is listed twice", "[[vrrp]]"),
        (with_vrrp("peers = [\"224.0.0.18\"]"), "vrrp[0].peers[0]", "[[vrrp]]"),
        (with_vrrp("peers = [\"198.18.0.2\", \"198.18.0.3\", \"198.18.0.4\", \"198.18.0.5\", \"198.18.0.6\", \"198.18.0.7\", \"198.18.0.8\", \"198.18.0.9\", \"198.18.0.10\"]"), "vrrp[0].peers: 9 peers; the guard holds at most 8", "[[vrrp]]"),
        (with_vrrp("peers = [\"proxy02\"]"), "peers: \"proxy02\" is not an IP address", "@peers ="),
        (with_vrrp("peers = []\nunicast = true"), "vrrp[0].peers: unicast = true needs at least one peer", "[[vrrp]]"),
        (with_vrrp("track_scripts = [\"nope\"]"), "vrrp[0].track_scripts[0]: no [[track_script]] named \"nope\"", "[[vrrp]]"),
        (with_vrrp("track_proxy = { weight = -300 }"), "vrrp[0].track_proxy.weight", "[[vrrp]]"),
        (with_vrrp("v3_checksum = \"crc32\""), "unknown variant `crc32`", "@v3_checksum ="),
        (with_vrrp("xdp = \"fast\""), "unknown variant `fast`", "@xdp ="),
        (with_vrrp("interface = \"averyveryverylongname\""), "vrrp[0].interface", "[[vrrp]]"),
        (with_vrrp("notify_webhook = \"ftp://x\""), "vrrp[0].notify_webhook", "[[vrrp]]"),
        (with_vrrp("garp = { repeat = 0 }"), "vrrp[0].garp.repeat", "[[vrrp]]"),
        (with_vrrp("prioritty = 5"), "unknown field `prioritty`", "@prioritty ="),
        (with_vrrp("notify = [\"\"]"), "vrrp[0].notify", "[[vrrp]]"),
        (BASE.replace("name = \"proxy01\"", "name = \"\""), "node.name", ""),
        (BASE.replace("pin_dir = \"/sys/fs/bpf/hapd\"", "pin_dir = \"relative\""), "node.pin_dir", ""),
        (BASE.replace("command = [\"/bin/true\"]", "command = []"), "track_script[0].command", "[[track_script]]"),
        (BASE.replace("command = [\"/bin/true\"]", "command = [\"/bin/true\"]\nfall = 0"), "track_script[0].fall", "[[track_script]]"),
        (BASE.replace("command = [\"/bin/true\"]", "command = [\"/bin/true\"]\nweight = 300"), "track_script[0].weight", "[[track_script]]"),
        (format!("{BASE}\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth1\"\nvrid = 52\npriority = 100\nvirtual_ips = [\"198.18.0.101/24\"]\n"), "vrrp[1].name: \"VI_1\" is used by two instances", "@[[vrrp]]"),
        (format!("{BASE}\n[[vrrp]]\nname = \"VI_2\"\ninterface = \"eth0\"\nvrid = 51\npriority = 100\nvirtual_ips = [\"198.18.0.101/24\"]\n"), "vrrp[1].vrid: vrid 51 is used twice on interface eth0", "@[[vrrp]]"),
        (format!("{BASE}\n[[vrrp]]\nname = \"VI_2\"\ninterface = \"eth0\"\nvrid = 52\npriority = 100\nxdp = \"off\"\nvirtual_ips = [\"198.18.0.101/24\"]\n"), "vrrp[1].xdp", "@[[vrrp]]"),
        (format!("{BASE}\n[nodes]\n"), "unknown field `nodes`", "@[nodes]"),
        ("[vrrp\n".to_string(), "", "[vrrp"),
        (format!("{BASE}{PROXY}").replace("protocols = [\"1.2\", \"1.3\"]", "protocols = [\"1.0\"]"), "tls.protocols[0]: \"1.0\" is not supported", ""),
        (format!("{BASE}{PROXY}").replace("protocols = [\"1.2\", \"1.3\"]", "protocols = [\"1.3\"]\ncipher_suites = [\"RC4\"]"), "tls.cipher_suites[0]: \"RC4\" is not a cipher suite", ""),
        (format!("{BASE}{PROXY}").replace("protocols = [\"1.2\", \"1.3\"]", "protocols = [\"1.3\"]\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"]"), "TLS 1.3 is enabled but none of its cipher suites", ""),
        (format!("{BASE}{PROXY}").replace("upstream = \"api\"", "upstream = \"nope\""), "vhost[0].route[0].upstream: no [[upstream]] named \"nope\"", "@[[vhost]]"),
        (format!("{BASE}{PROXY}").replace("listeners = [\"https\"]", "listeners = [\"http\"]"), "vhost[0].listeners[0]: no [[listener]] named \"http\"", "@[[vhost]]"),
        (format!("{BASE}{PROXY}").replace("backend01.internal:3001", "backend01.internal"), "upstream[0].servers[0]", "@[[upstream]]"),
        (format!("{BASE}{PROXY}").replace("servers = [\"backend01.internal:3001\"]", "servers = [\"backend01.internal:3001\"]\nbackup_servers = [\"backup\"]"), "upstream[0].backup_servers[0]: \"backup\" is not \"host:port\"", "@[[upstream]]"),
        (format!("{BASE}{PROXY}").replace("servers = [\"backend01.internal:3001\"]", "servers = [\"2001:db8::10:8080\"]"), "upstream[0].servers[0]: \"2001:db8::10:8080\": write an IPv6 address in brackets, e.g. \"[2001:db8::10]:8080\"", "@[[upstream]]"),
        (format!("{BASE}{PROXY}").replace("servers = [\"backend01.internal:3001\"]", "servers = [\"[backend]:8080\"]"), "upstream[0].servers[0]: \"[backend]:8080\": [backend] is not an IPv6 address in brackets", "@[[upstream]]"),
        (format!("{BASE}{PROXY}").replace("servers = [\"backend01.internal:3001\"]", "servers = [\"backend01.internal:3001\"]\nbackup_servers = [\"backend01.internal:3001\"]"), "upstream[0].backup_servers[0]: \"backend01.internal:3001\" is also in servers", "@[[upstream]]"),
        (format!("{BASE}{PROXY}").replace("bind = [\"0.0.0.0:443\"]", "bind = [\"0.0.0.0\"]"), "invalid socket address", "@bind ="),
        (format!("{BASE}{PROXY}").replace("prefix = \"/\"", "prefix = \"/\"\nallow = [\"10.0.0.0/33\"]"), "allow: \"10.0.0.0/33\" is not an address or network", "@allow ="),
        (format!("{BASE}{PROXY}").replace("prefix = \"/\"", "prefix = \"api\""), "vhost[0].route[0].prefix: \"api\" must start with /", "@[[vhost]]"),
        (format!("{BASE}{PROXY}").replace("[[tls.certificate]]\ncert = \"/etc/c.crt\"\nkey = \"/etc/c.key\"\n", ""), "listener[0].tls: a TLS listener needs [[tls.certificate]]", "@[[listener]]"),
        (format!("{BASE}{PROXY}").replace("[[vhost.route]]\nprefix = \"/\"\nupstream = \"api\"\n", "redirect_https = true\nresponse_headers = { \"Bad Name\" = \"x\" }\n"), "vhost[0].response_headers: \"Bad Name\" is not a header name", "@[[vhost]]"),
        (format!("{BASE}{PROXY}").replace("tls = true", "tls = true\nport = 1"), "unknown field `port`", "@port ="),
    ];
    for (text, want, line) in cases {
        let err = match parse(&text) {
            Ok(_) => panic!("accepted an invalid config expecting {want:?}:\n{text}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(
            shown.contains(want),
            "error {shown:?} does not say {want:?}"
        );
        assert!(shown.starts_with("test.toml"), "{shown}");
        // The line holding `needle` (its last occurrence with a leading '@'): where the bad
        // key is for parse errors, where its table starts for cross-field errors.
        if !line.is_empty() {
            let (needle, last) = match line.strip_prefix('@') {
                Some(n) => (n, true),
                None => (line, false),
            };
            let mut hits = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with(needle))
                .map(|(i, _)| i + 1);
            let want = if last { hits.last() } else { hits.next() };
            assert_eq!(err.line, want, "line of {shown:?}\n{text}");
        }
    }
}

#[test]
fn a_missing_file_says_so() {
    let e = Config::load(Path::new("/nonexistent/hapd.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/hapd.toml: cannot read the file"),
        "{e}"
    );
}

#[test]
fn type_errors_name_the_key() {
    let text = "[node]\nname = \"n\"\n[[listener]]\nname = \"web\"\nbind = [\"127.0.0.1:80\"]\n\
        [[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:9\"]\n[[vhost]]\nserver_names = [\"a\"]\n\
        listeners = [\"web\"]\n[[vhost.route]]\nprefix = 7\nupstream = \"u\"\n";
    let e = Config::parse(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.toml:13: vhost[0].route[0].prefix: invalid type: integer `7`, expected a string"
    );
    let e = Config::parse("[node]\nname = \"n\"\nfoo = 1\n", Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.toml:3: node.foo: unknown field `foo`"),
        "{e}"
    );
}

const ANYCAST: &str = r#"
[[anycast]]
name = "web"
prefixes = ["198.18.10.100/32"]
interface = "eth0"
peers = ["198.18.1.11", "198.18.1.12", "198.18.1.13"]
bird_socket = "/run/bird/bird.ctl"
bird_protocol = "hapd_web"
track_proxy = true
"#;

#[test]
fn anycast_groups_parse_with_the_issue_keys_and_bad_ones_name_the_key() {
    let (cfg, warnings) = parse(&format!("{BASE}{PROXY}{ANYCAST}")).unwrap();
    let g = cfg.anycast[0].get_ref();
    assert_eq!(
        (g.rise.0, g.hold_down.0, g.track_proxy),
        (Duration::from_secs(1), Duration::from_secs(10), true)
    );
    // No health check in PROXY: tracking follows failed requests only, and says so.
    assert!(
        warnings.iter().any(|w| w.key == "anycast[0].track_proxy"),
        "{warnings:?}"
    );
    for (bad, key, says) in [
        (
            ANYCAST.replace("198.18.10.100/32", "198.18.10.100/24"),
            "prefixes",
            "host bits",
        ),
        (
            ANYCAST.replace("\"hapd_web\"", "\"hapd-web\""),
            "anycast[0].bird_protocol",
            "not a BIRD protocol name",
        ),
        (
            ANYCAST.replace("\"198.18.1.13\"]", "\"198.18.1.11\"]"),
            "anycast[0].peers[2]",
            "listed twice",
        ),
        (
            ANYCAST.replace("/run/bird/bird.ctl", "bird.ctl"),
            "anycast[0].bird_socket",
            "absolute",
        ),
        (format!("{ANYCAST}{ANYCAST}"), "anycast[1].name", "twice"),
    ] {
        let e = parse(&format!("{BASE}{PROXY}{bad}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{key}: {e}");
    }
    // Tracking a proxy that is not there is an error, not a silent announcement.
    let e = parse(&format!("{BASE}{ANYCAST}")).unwrap_err().to_string();
    assert!(e.contains("anycast[0].track_proxy"), "{e}");
}

#[test]
fn script_user_must_exist_and_its_absence_is_warned_about() {
    let with_user =
        |u: &str| BASE.replace("pin_dir =", &format!("script_user = \"{u}\"\npin_dir ="));
    let (c, _) = parse(&with_user("nobody")).unwrap();
    assert_eq!(c.node.script_user.as_deref(), Some("nobody"));
    let e = parse(&with_user("no-such-user-hapd"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.script_user") && e.contains("no user \"no-such-user-hapd\""),
        "{e}"
    );
    // Not set: scripts run as hapd's user where the default user does not exist, and the
    // check says so (BASE has a track script).
    let (_, warnings) = Config::parse(BASE, Path::new("test.toml")).unwrap();
    let warned = warnings.iter().any(|w| w.key == "node.script_user");
    let default_exists = nix::unistd::User::from_name(scripts::DEFAULT_USER)
        .unwrap()
        .is_some();
    assert_eq!(warned, !default_exists, "{warnings:?}");
}

/// IPv6 adverts come from link-local addresses: a global IPv6 peer is warned about; an
/// upstream at a link-local address may name its zone.
#[test]
fn a_global_ipv6_peer_is_a_warning_and_an_upstream_may_name_its_zone() {
    let text =
        with_vrrp("virtual_ips = [\"2001:2::100/64\"]\npeers = [\"2001:2::2\", \"fe80::2\"]");
    let (_, w) = parse(&text).unwrap();
    let peers: Vec<&Warning> = w
        .iter()
        .filter(|w| w.key.starts_with("vrrp[0].peers"))
        .collect();
    assert_eq!(peers.len(), 1, "{w:?}");
    assert_eq!(peers[0].key, "vrrp[0].peers[0]");
    assert!(
        peers[0].message.contains("not a link-local address"),
        "{w:?}"
    );
    let zoned = format!("{BASE}{PROXY}").replace(
        "servers = [\"backend01.internal:3001\"]",
        "servers = [\"[fe80::10%eth0]:3001\"]",
    );
    assert!(parse(&zoned).is_ok());
}

const CLUSTER: &str = r#"
[cluster]
listen = "198.18.0.1:9440"
peers = [{ name = "proxy02", address = "198.18.0.2:9440" }]
ca = "/etc/hapd/cluster/ca.crt"
cert = "/etc/hapd/cluster/proxy01.crt"
key = "/etc/hapd/cluster/proxy01.key"
sync_certificates = true
"#;

#[test]
fn the_cluster_table_parses_with_the_issue_keys_and_bad_ones_name_the_key() {
    let (cfg, warnings) = parse(&format!("{BASE}{PROXY}{CLUSTER}")).unwrap();
    let c = cfg.cluster.as_ref().unwrap().get_ref();
    assert_eq!(
        (c.exchange_interval.0, c.timeout.0, c.sync_certificates),
        (Duration::from_secs(10), Duration::from_secs(3), true)
    );
    assert_eq!(c.peers[0].name, "proxy02");
    assert!(warnings.is_empty(), "{warnings:?}");
    // Certificate sync with no certificate to sync is worth a word.
    let (_, warnings) = parse(&format!("{BASE}{CLUSTER}")).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.key == "cluster.sync_certificates"),
        "{warnings:?}"
    );
    for (bad, key, says) in [
        (
            CLUSTER.replace("peers = [{ name = \"proxy02\", address = \"198.18.0.2:9440\" }]", "peers = []"),
            "cluster.peers",
            "at least one other node",
        ),
        (CLUSTER.replace("\"proxy02\"", "\"proxy01\""), "cluster.peers[0].name", "this node"),
        (CLUSTER.replace("\"proxy02\"", "\"proxy_02\""), "cluster.peers[0].name", "not a DNS name"),
        (
            CLUSTER.replace(
                "peers = [{ name = \"proxy02\", address = \"198.18.0.2:9440\" }]",
                "peers = [{ name = \"proxy02\", address = \"198.18.0.2:9440\" }, { name = \"PROXY02\", address = \"198.18.0.3:9440\" }]",
            ),
            "cluster.peers[1].name",
            "listed twice",
        ),
        (CLUSTER.replace("198.18.0.2:9440", "0.0.0.0:9440"), "cluster.peers[0].address", "name the peer's address"),
        (CLUSTER.replace("198.18.0.2:9440", "198.18.0.1:9440"), "cluster.peers[0].address", "this node's listen address"),
        (CLUSTER.replace("198.18.0.1:9440", "198.18.0.1:0"), "cluster.listen", "needs a port"),
        (CLUSTER.replace("/etc/hapd/cluster/ca.crt", "ca.crt"), "cluster.ca", "absolute"),
        (format!("{CLUSTER}exchange_interval = \"10ms\"\n"), "cluster.exchange_interval", "100ms..=1h"),
        (format!("{CLUSTER}timeout = \"2m\"\n"), "cluster.timeout", "100ms..=60s"),
        (format!("{CLUSTER}secret = \"x\"\n"), "cluster", "unknown field `secret`"),
        (CLUSTER.replace("198.18.0.2:9440", "198.18.0.2"), "cluster.peers", "invalid socket address"),
    ] {
        let e = match parse(&format!("{BASE}{PROXY}{bad}")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{key}: accepted:\n{bad}"),
        };
        assert!(e.contains(key) && e.contains(says), "{key}: {e}");
    }
}
