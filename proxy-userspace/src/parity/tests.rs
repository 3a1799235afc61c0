use std::path::{Path, PathBuf};

use super::*;

/// A scratch directory with two certificates (one name each) and an `auth_hmac` key file.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("hapd-parity-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![format!("{name}.example")])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node's config: what differs between nodes by design comes from the arguments.
fn node(node: &str, priority: u8, peer: &str, iface: &str, cert: &str) -> Config {
    let text = format!(
        r#"
[node]
name = "{node}"

[[vrrp]]
name = "VI_1"
interface = "{iface}"
vrid = 51
priority = {priority}
virtual_ips = ["198.18.0.100/24"]
peers = ["{peer}"]
auth_hmac = {{ keys = {{ 1 = "hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" }}, active_key = 1 }}

[tls]
protocols = ["1.2", "1.3"]
[[tls.certificate]]
cert = "{cert}"
key = "{key}"

[[listener]]
name = "https"
bind = ["198.18.0.100:443"]
tls = true

[[upstream]]
name = "app"
servers = ["198.18.0.10:8080", "198.18.0.11:8080"]

[[vhost]]
server_names = ["a.example"]
listeners = ["https"]
access_log = "/var/log/hapd/{node}-access.log"
response_headers = {{ "X-Frame-Options" = "DENY" }}
  [[vhost.route]]
  prefix = "/api/"
  upstream = "app"
  [[vhost.route]]
  prefix = "/"
  upstream = "app"
"#,
        key = cert.replace(".crt", ".key"),
    );
    Config::parse(&text, Path::new("node.toml")).unwrap().0
}

fn drifted(a: &Config, b: &Config) -> Vec<String> {
    Parity::of(a)
        .unwrap()
        .drift(&Parity::of(b).unwrap())
        .into_iter()
        .map(|d| d.section)
        .collect()
}

#[test]
fn nodes_that_differ_only_where_nodes_differ_are_in_parity() {
    let f = Files::new("same");
    // Another node name, priority, peer, interface, log file; the same certificate's bytes at
    // another path.
    let other = f.path("copy.crt");
    std::fs::copy(f.path("a.crt"), &other).unwrap();
    std::fs::copy(f.path("a.key"), f.path("copy.key")).unwrap();
    let a = node("proxy01", 110, "198.18.0.2", "eth0", &f.path("a.crt"));
    let b = node("proxy02", 100, "198.18.0.1", "ens3", &other);
    assert_eq!(drifted(&a, &b), Vec::<String>::new());
    let p = Parity::of(&a).unwrap();
    assert_eq!(
        p.sections.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut s = SECTIONS.to_vec();
            s.sort();
            s
        },
        "every section has a digest"
    );
    assert!(p.sections.values().all(|s| s.digest.len() == 32));
}

#[test]
fn a_change_shows_in_its_own_section_only() {
    let f = Files::new("change");
    let a = node("proxy01", 110, "198.18.0.2", "eth0", &f.path("a.crt"));
    let b = node("proxy02", 100, "198.18.0.1", "eth0", &f.path("a.crt"));
    let with = |cfg: &Config, edit: &dyn Fn(&mut Config)| {
        let mut c = cfg.clone();
        edit(&mut c);
        c
    };
    let cases: Vec<(&str, Config)> = vec![
        (
            "routes",
            with(&b, &|c| {
                c.vhost[0].get_mut().route[0].prefix = "/v2/".into()
            }),
        ),
        (
            "headers",
            with(&b, &|c| {
                c.vhost[0]
                    .get_mut()
                    .response_headers
                    .insert("X-Frame-Options".into(), "SAMEORIGIN".into());
            }),
        ),
        (
            "upstreams",
            with(&b, &|c| {
                c.upstream[0]
                    .get_mut()
                    .servers
                    .pop()
                    .map(drop)
                    .unwrap_or(())
            }),
        ),
        (
            "tls",
            with(&b, &|c| {
                if let Some(t) = c.tls.as_mut() {
                    t.protocols = vec!["1.3".into()];
                }
            }),
        ),
        (
            "listeners",
            with(&b, &|c| {
                c.listener[0].get_mut().bind = vec!["198.18.0.101:443".parse().unwrap()]
            }),
        ),
        (
            "vrrp",
            with(&b, &|c| {
                c.vrrp[0].get_mut().virtual_ips = vec!["198.18.0.101/24".parse().unwrap()]
            }),
        ),
        (
            "certificates",
            node("proxy02", 100, "198.18.0.1", "eth0", &f.path("b.crt")),
        ),
    ];
    for (section, changed) in cases {
        assert_eq!(
            drifted(&a, &changed),
            vec![section.to_string()],
            "{section}"
        );
        // Both sides are there to show, and they differ.
        let d = &Parity::of(&a)
            .unwrap()
            .drift(&Parity::of(&changed).unwrap())[0];
        let (ours, theirs) = (d.ours.as_ref().unwrap(), d.theirs.as_ref().unwrap());
        assert_ne!(ours.digest, theirs.digest, "{section}");
        if section != "certificates" {
            assert_ne!(ours.shown, theirs.shown, "{section}");
        }
    }
}

/// An `auth_hmac` key that differs is drift in `vrrp`, yet what is shown holds neither the key
/// nor its fingerprint.
#[test]
fn secrets_count_in_the_digest_but_are_never_shown() {
    let f = Files::new("secret");
    let a = node("proxy01", 110, "198.18.0.2", "eth0", &f.path("a.crt"));
    let mut b = node("proxy02", 100, "198.18.0.1", "eth0", &f.path("a.crt"));
    let key = "hex:a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";
    if let Some(h) = b.vrrp[0].get_mut().auth_hmac.as_mut() {
        h.keys
            .insert("1".into(), crate::config::auth::KeyValue(key.to_string()));
    }
    let (pa, pb) = (Parity::of(&a).unwrap(), Parity::of(&b).unwrap());
    let d = pa.drift(&pb);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].section, "vrrp");
    let (ours, theirs) = (d[0].ours.as_ref().unwrap(), d[0].theirs.as_ref().unwrap());
    assert_eq!(
        ours.shown, theirs.shown,
        "only the key differs, and it is not shown"
    );
    for s in [ours, theirs] {
        assert!(
            !s.shown.contains("a5a5") && !s.shown.contains("0001020304"),
            "{}",
            s.shown
        );
    }
    let k = ring::digest::digest(&ring::digest::SHA256, &[0xa5; 32]);
    assert!(
        !theirs.shown.contains(&hex(k.as_ref())),
        "no fingerprint either"
    );
}

#[test]
fn a_missing_certificate_file_is_an_error_naming_it() {
    let f = Files::new("missing");
    let a = node("proxy01", 110, "198.18.0.2", "eth0", &f.path("nope.crt"));
    let e = Parity::of(&a).unwrap_err();
    assert!(format!("{e:#}").contains("nope.crt"), "{e:#}");
}

/// A plain vhost that redirects and a TLS one with the same names are two vhosts: both count,
/// whatever their order.
#[test]
fn vhosts_with_the_same_names_on_other_listeners_both_count() {
    let text = |order: [&str; 2]| {
        let vh = |l: &str, redirect: bool| {
            let body = if redirect {
                "redirect_https = true\n"
            } else {
                "[[vhost.route]]\nprefix = \"/\"\nupstream = \"app\"\n"
            };
            format!("[[vhost]]\nserver_names = [\"a.example\"]\nlisteners = [\"{l}\"]\n{body}")
        };
        let vhosts: String = order.iter().map(|l| vh(l, *l == "web")).collect();
        format!(
            "[node]\nname = \"n\"\n[[listener]]\nname = \"web\"\nbind = [\"198.18.0.100:80\"]\n\
             [[listener]]\nname = \"alt\"\nbind = [\"198.18.0.100:8080\"]\n\
             [[upstream]]\nname = \"app\"\nservers = [\"198.18.0.10:8080\"]\n{vhosts}"
        )
    };
    let parse = |t: String| Config::parse(&t, Path::new("n.toml")).unwrap().0;
    let (a, b) = (parse(text(["web", "alt"])), parse(text(["alt", "web"])));
    assert_eq!(
        drifted(&a, &b),
        Vec::<String>::new(),
        "the order of the vhosts"
    );
    let v = Parity::of(&a).unwrap().sections["vhosts"].shown.clone();
    assert!(
        v.contains("a.example @ web") && v.contains("a.example @ alt"),
        "{v}"
    );
}
