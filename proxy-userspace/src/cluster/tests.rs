//! Certificate sync's checks on real files and a real TLS store, and the channel's mutual TLS
//! on loopback sockets.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use super::{
    channel::{Credentials, Incoming, Wait},
    sync::{apply, Push, Verdict},
};
use crate::{
    config::{
        cluster::{Cluster, Peer},
        Config, Dur,
    },
    proxy::tls::TlsStore,
};

static N: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "hapd-cluster-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// The names in it, sorted.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA that signs leaves.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }
    fn pem(&self) -> String {
        self.cert.pem()
    }
    /// A leaf for `names`, valid from 2020 until the first of January of `until` (PEM
    /// certificate, PEM key).
    fn leaf(&self, names: &[&str], until: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn jan1(year: i32) -> i64 {
    time::Date::from_calendar_date(year, time::Month::January, 1)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp()
}

/// A proxy node's config with one certificate (and its chain) in `d`.
fn site(d: &Dir, sync: bool) -> Config {
    site_with(d, sync, "")
}

/// [`site`] with more `[[tls.certificate]]` tables after the first.
fn site_with(d: &Dir, sync: bool, more: &str) -> Config {
    let text = format!(
        r#"
[node]
name = "proxy02"

[tls]
[[tls.certificate]]
cert = "{cert}"
key = "{key}"
chain = "{chain}"
{more}
[[listener]]
name = "https"
bind = ["198.18.0.100:443"]
tls = true

[[upstream]]
name = "app"
servers = ["198.18.0.10:8080"]

[[vhost]]
server_names = ["www.example"]
listeners = ["https"]
  [[vhost.route]]
  prefix = "/"
  upstream = "app"

[cluster]
listen = "198.18.0.2:9440"
peers = [{{ name = "proxy01", address = "198.18.0.1:9440" }}]
ca = "/etc/hapd/cluster/ca.crt"
cert = "/etc/hapd/cluster/proxy02.crt"
key = "/etc/hapd/cluster/proxy02.key"
sync_certificates = {sync}
"#,
        cert = d.path("site.crt").display(),
        key = d.path("site.key").display(),
        chain = d.path("chain.crt").display(),
    );
    Config::parse(&text, Path::new("proxy02.toml")).unwrap().0
}

/// A node serving a certificate valid until 2030, its key readable by its owner only.
fn serving(tag: &str) -> (Dir, Ca, Config, TlsStore) {
    serving_until(tag, 2030)
}

fn serving_until(tag: &str, until: i32) -> (Dir, Ca, Config, TlsStore) {
    let d = Dir::new(tag);
    let ca = Ca::new("web CA");
    let (c, k) = ca.leaf(&["www.example"], until);
    d.write("site.crt", &c);
    let key = d.write("site.key", &k);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.write("chain.crt", &ca.pem());
    let cfg = site(&d, true);
    let store = TlsStore::new(cfg.tls.as_ref().unwrap()).unwrap();
    (d, ca, cfg, store)
}

fn push(d: &Dir, ca: &Ca, (cert, key): (String, String)) -> Push {
    Push {
        index: 0,
        cert: d.path("site.crt"),
        certificate: cert,
        chain: Some(ca.pem()),
        key,
    }
}

#[test]
fn a_newer_certificate_is_written_served_and_then_unchanged() {
    let (d, ca, cfg, store) = serving("newer");
    let renewed = ca.leaf(&["www.example"], 2031);
    let p = push(&d, &ca, renewed.clone());
    let o = apply(&p, &cfg, true, Some(&store), "proxy01");
    assert_eq!(o.verdict, Verdict::Applied, "{o:?}");
    assert_eq!(
        std::fs::read_to_string(d.path("site.crt")).unwrap(),
        renewed.0
    );
    assert_eq!(
        std::fs::read_to_string(d.path("site.key")).unwrap(),
        renewed.1
    );
    let mode = std::fs::metadata(d.path("site.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key keeps its mode");
    assert_eq!(store.certificates()[0].not_after, jan1(2031), "served now");
    assert_eq!(
        d.listing(),
        ["chain.crt", "site.crt", "site.key"],
        "no file left behind"
    );
    let again = apply(&p, &cfg, true, Some(&store), "proxy01");
    assert_eq!(again.verdict, Verdict::Unchanged, "{again:?}");
}

#[test]
fn a_bad_push_leaves_files_and_service_as_they_were() {
    let (d, ca, cfg, store) = serving("bad");
    let before: Vec<Vec<u8>> = ["site.crt", "site.key", "chain.crt"]
        .iter()
        .map(|f| std::fs::read(d.path(f)).unwrap())
        .collect();
    let (renewed, _) = ca.leaf(&["www.example"], 2031);
    let (_, other_key) = ca.leaf(&["www.example"], 2031);
    let cases: Vec<(&str, Push, bool, &str)> = vec![
        (
            "a key that is not the certificate's",
            push(&d, &ca, (renewed.clone(), other_key)),
            true,
            "does not belong",
        ),
        (
            "an older certificate",
            push(&d, &ca, ca.leaf(&["www.example"], 2029)),
            true,
            "older than the certificate in this node's files",
        ),
        (
            "a self-signed one, newer",
            {
                let other = Ca::new("a CA no client knows");
                Push {
                    chain: Some(other.pem()),
                    ..push(&d, &ca, other.leaf(&["www.example"], 2099))
                }
            },
            true,
            "does not verify",
        ),
        (
            "no PEM in it",
            Push {
                certificate: "not a certificate".into(),
                ..push(&d, &ca, ca.leaf(&["www.example"], 2031))
            },
            true,
            "no PEM certificate",
        ),
        (
            "a place this node does not have",
            Push {
                index: 1,
                ..push(&d, &ca, ca.leaf(&["www.example"], 2031))
            },
            true,
            "this node has 1 certificate(s)",
        ),
        (
            "other names",
            push(&d, &ca, ca.leaf(&["www.example", "api.example"], 2031)),
            true,
            "is for [\"www.example\"], the pushed one for [\"api.example\", \"www.example\"]",
        ),
        (
            "no chain where this node has one",
            Push {
                chain: None,
                ..push(&d, &ca, ca.leaf(&["www.example"], 2031))
            },
            true,
            "the push has no chain",
        ),
        (
            "sync off here",
            push(&d, &ca, ca.leaf(&["www.example"], 2031)),
            false,
            "sync_certificates is off",
        ),
    ];
    for (what, p, sync_on, says) in cases {
        let o = apply(&p, &cfg, sync_on, Some(&store), "proxy01");
        assert_eq!(o.verdict, Verdict::Refused, "{what}: {o:?}");
        assert!(
            o.message.contains(says),
            "{what}: {:?} lacks {says:?}",
            o.message
        );
        assert!(
            !o.message.contains(".hapd-sync."),
            "{what}: the message names a temporary file: {}",
            o.message
        );
        let now: Vec<Vec<u8>> = ["site.crt", "site.key", "chain.crt"]
            .iter()
            .map(|f| std::fs::read(d.path(f)).unwrap())
            .collect();
        assert!(now == before, "{what}: the files changed");
        assert_eq!(
            d.listing(),
            ["chain.crt", "site.crt", "site.key"],
            "{what}: left a file"
        );
        assert_eq!(
            store.certificates()[0].not_after,
            jan1(2030),
            "{what}: served another"
        );
    }
}

#[test]
fn a_certificate_reached_through_a_symlink_is_replaced_where_the_link_leads() {
    let (d, ca, _, _) = serving("link");
    // certbot's layout: live/site.crt -> ../archive/site1.crt
    std::fs::create_dir_all(d.path("live")).unwrap();
    std::fs::create_dir_all(d.path("archive")).unwrap();
    std::fs::rename(d.path("site.crt"), d.path("archive/site1.crt")).unwrap();
    std::os::unix::fs::symlink("../archive/site1.crt", d.path("live/site.crt")).unwrap();
    let text = std::fs::read_to_string(d.path("live/site.crt")).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE"));
    let mut cfg = site(&d, true);
    cfg.tls.as_mut().unwrap().certificate[0].cert = d.path("live/site.crt");
    let store = TlsStore::new(cfg.tls.as_ref().unwrap()).unwrap();
    let renewed = ca.leaf(&["www.example"], 2031);
    let p = push(&d, &ca, renewed.clone());
    let o = apply(&p, &cfg, true, Some(&store), "proxy01");
    assert_eq!(o.verdict, Verdict::Applied, "{o:?}");
    assert!(std::fs::symlink_metadata(d.path("live/site.crt"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(d.path("archive/site1.crt")).unwrap(),
        renewed.0
    );
    assert_eq!(store.certificates()[0].not_after, jan1(2031));
}

#[test]
fn an_expired_certificate_is_refused_even_when_newer() {
    let (d, ca, cfg, store) = serving_until("expired", 2021);
    let o = apply(
        &push(&d, &ca, ca.leaf(&["www.example"], 2022)),
        &cfg,
        true,
        Some(&store),
        "proxy01",
    );
    assert_eq!(o.verdict, Verdict::Refused, "{o:?}");
    assert!(
        o.message.contains("does not verify") && o.message.to_lowercase().contains("expired"),
        "{}",
        o.message
    );
}

#[test]
fn only_changed_files_are_written_and_never_a_shared_one() {
    let (d, ca, _, _) = serving("shared");
    // A second certificate that reads the same chain file.
    let (c2, k2) = ca.leaf(&["api.example"], 2030);
    d.write("api.crt", &c2);
    d.write("api.key", &k2);
    let more = format!(
        "[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\nchain = \"{}\"\n",
        d.path("api.crt").display(),
        d.path("api.key").display(),
        d.path("chain.crt").display()
    );
    let cfg = site_with(&d, true, &more);
    let store = TlsStore::new(cfg.tls.as_ref().unwrap()).unwrap();
    // Another chain (the same CA, written differently) would be written over the shared file.
    let p = Push {
        chain: Some(format!("{}\n", ca.pem())),
        ..push(&d, &ca, ca.leaf(&["www.example"], 2031))
    };
    let o = apply(&p, &cfg, true, Some(&store), "proxy01");
    assert_eq!(o.verdict, Verdict::Refused, "{o:?}");
    assert!(
        o.message.contains("is also read by tls.certificate[1]"),
        "{}",
        o.message
    );
    // The same chain: only the certificate and the key are written.
    use std::os::unix::fs::MetadataExt as _;
    let chain_inode = std::fs::metadata(d.path("chain.crt")).unwrap().ino();
    let renewed = ca.leaf(&["www.example"], 2031);
    let o = apply(
        &push(&d, &ca, renewed.clone()),
        &cfg,
        true,
        Some(&store),
        "proxy01",
    );
    assert_eq!(o.verdict, Verdict::Applied, "{o:?}");
    assert_eq!(
        std::fs::metadata(d.path("chain.crt")).unwrap().ino(),
        chain_inode
    );
    assert_eq!(
        std::fs::read_to_string(d.path("site.crt")).unwrap(),
        renewed.0
    );
    assert_eq!(
        store.certificates()[1].not_after,
        jan1(2030),
        "the other one untouched"
    );
}

#[test]
fn a_certificate_that_cannot_be_read_here_is_not_replaced() {
    let (d, ca, cfg, store) = serving("unreadable");
    std::fs::write(d.path("site.crt"), "garbage").unwrap();
    let o = apply(
        &push(&d, &ca, ca.leaf(&["www.example"], 2031)),
        &cfg,
        true,
        Some(&store),
        "proxy01",
    );
    assert_eq!(o.verdict, Verdict::Refused, "{o:?}");
    assert!(o.message.contains("cannot be read"), "{}", o.message);
    assert_eq!(
        std::fs::read_to_string(d.path("site.crt")).unwrap(),
        "garbage"
    );
}

/// A node's `[cluster]` with its certificate in `d`.
fn member(
    d: &Dir,
    ca_file: &Path,
    node: &str,
    cert: (String, String),
    listen: std::net::SocketAddr,
    peers: Vec<Peer>,
) -> (Cluster, String) {
    let c = d.write(&format!("{node}.crt"), &cert.0);
    let k = d.write(&format!("{node}.key"), &cert.1);
    (
        Cluster {
            listen,
            peers,
            ca: ca_file.to_path_buf(),
            cert: c,
            key: k,
            exchange_interval: Dur(std::time::Duration::from_secs(10)),
            timeout: Dur(std::time::Duration::from_secs(2)),
            sync_certificates: false,
        },
        node.to_string(),
    )
}

#[test]
fn the_channel_serves_configured_peers_and_refuses_everyone_else() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = Dir::new("channel");
    let ca = Ca::new("cluster CA");
    let rogue = Ca::new("another CA");
    let ca_file = d.write("ca.crt", &ca.pem());
    let both = d.write("both.crt", &format!("{}{}", ca.pem(), rogue.pem()));
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let me = Peer {
            name: "proxy01".into(),
            address: server_addr,
        };
        let any = "127.0.0.1:9".parse().unwrap();
        let (server, name) = member(
            &d,
            &ca_file,
            "proxy01",
            ca.leaf(&["proxy01"], 2099),
            server_addr,
            vec![Peer {
                name: "proxy02".into(),
                address: any,
            }],
        );
        // A short handshake limit, for the silent client below.
        let server = Cluster {
            timeout: Dur(std::time::Duration::from_millis(300)),
            ..server
        };
        let creds = Arc::new(Credentials::load(&server, &name).unwrap());
        let refused = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = refused.clone();
        tokio::spawn(super::channel::serve(
            listener,
            creds,
            |req: Incoming| async move {
                (
                    hyper::StatusCode::OK,
                    format!("{} {} {}", req.peer, req.method, req.path).into_bytes(),
                )
            },
            move |r| seen.lock().unwrap().push(r.why),
        ));
        let client = |node: &str, ca_file: &Path, cert: (String, String)| {
            let (c, n) = member(
                &d,
                ca_file,
                node,
                cert,
                "127.0.0.1:0".parse().unwrap(),
                vec![me.clone()],
            );
            Credentials::load(&c, &n).unwrap()
        };
        // The peer.
        let peer = client("proxy02", &ca_file, ca.leaf(&["proxy02"], 2099));
        let (code, body) = peer
            .request(
                &me,
                hyper::Method::GET,
                "/v1/parity",
                Vec::new(),
                Wait::Exchange,
            )
            .await
            .unwrap();
        assert_eq!(code, hyper::StatusCode::OK);
        assert_eq!(&body[..], b"proxy02 GET /v1/parity");
        // A node of the cluster that is not this node's peer.
        let third = client("proxy03", &ca_file, ca.leaf(&["proxy03"], 2099));
        let r = third
            .request(
                &me,
                hyper::Method::GET,
                "/v1/parity",
                Vec::new(),
                Wait::Exchange,
            )
            .await;
        assert!(r.is_err(), "a node that is no peer was answered: {r:?}");
        // A peer's name from another CA (it trusts both, so it gets as far as the server).
        let forged = client("proxy02", &both, rogue.leaf(&["proxy02"], 2099));
        let r = forged
            .request(
                &me,
                hyper::Method::POST,
                "/v1/certificate",
                b"{}".to_vec(),
                Wait::Exchange,
            )
            .await;
        assert!(
            r.is_err(),
            "a certificate from another CA was answered: {r:?}"
        );
        // No certificate at all.
        let plain = {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
        };
        let tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(plain))
            .connect("proxy01".try_into().unwrap(), tcp)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = tls
            .write_all(b"GET /v1/parity HTTP/1.1\r\nhost: proxy01\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let read = tls.read_to_end(&mut buf).await;
        assert!(
            read.is_err() || buf.is_empty(),
            "answered without a certificate: {}",
            String::from_utf8_lossy(&buf)
        );
        // A peer's certificate from an address that is no peer's.
        let (c, n) = member(
            &d,
            &ca_file,
            "proxy02",
            ca.leaf(&["proxy02"], 2099),
            "127.0.0.3:0".parse().unwrap(),
            vec![me.clone()],
        );
        let elsewhere = Credentials::load(&c, &n).unwrap();
        let r = elsewhere
            .request(
                &me,
                hyper::Method::GET,
                "/v1/parity",
                Vec::new(),
                Wait::Exchange,
            )
            .await;
        assert!(r.is_err(), "answered from another address: {r:?}");
        // A client that never starts its handshake is dropped after the server's timeout.
        let mut silent = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(3), silent.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "still open: {closed:?}"
        );
        // A body over the limit is not handed on.
        let (code, body) = peer
            .request(
                &me,
                hyper::Method::POST,
                "/v1/certificate",
                vec![b'x'; (1 << 20) + 1],
                Wait::Exchange,
            )
            .await
            .unwrap();
        assert_eq!(code, hyper::StatusCode::BAD_REQUEST, "{body:?}");
        // The server said why, each time.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let why = refused.lock().unwrap().clone();
        assert_eq!(why.len(), 5, "{why:?}");
        assert!(why[0].contains("no configured peer"), "{why:?}");
        assert!(why[1].contains("TLS handshake"), "{why:?}");
        assert!(why[2].contains("TLS handshake"), "{why:?}");
        assert!(why[3].contains("not a peer's address"), "{why:?}");
        assert!(why[4].contains("no handshake within 300ms"), "{why:?}");
    });
}

#[test]
fn a_cluster_certificate_must_name_the_node_and_chain_to_the_ca() {
    let d = Dir::new("creds");
    let ca = Ca::new("cluster CA");
    let rogue = Ca::new("another CA");
    let ca_file = d.write("ca.crt", &ca.pem());
    let addr = "127.0.0.1:9440".parse().unwrap();
    let peers = vec![Peer {
        name: "proxy02".into(),
        address: "127.0.0.1:9441".parse().unwrap(),
    }];
    let (c, n) = member(
        &d,
        &ca_file,
        "proxy01",
        ca.leaf(&["proxy09"], 2099),
        addr,
        peers.clone(),
    );
    let e = Credentials::load(&c, &n).err().unwrap().to_string();
    assert!(e.contains("not this node"), "{e}");
    let (c, n) = member(
        &d,
        &ca_file,
        "proxy01",
        rogue.leaf(&["proxy01"], 2099),
        addr,
        peers.clone(),
    );
    let e = format!("{:#}", Credentials::load(&c, &n).err().unwrap());
    assert!(e.contains("does not verify against cluster.ca"), "{e}");
    let (mut c, n) = member(
        &d,
        &ca_file,
        "proxy01",
        ca.leaf(&["proxy01"], 2099),
        addr,
        peers,
    );
    c.ca = d.write("empty.crt", "");
    let e = format!("{:#}", Credentials::load(&c, &n).err().unwrap());
    assert!(
        e.contains("cluster.ca") && e.contains("no PEM certificate"),
        "{e}"
    );
}
