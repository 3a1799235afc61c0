use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use rustls::{
    client::{ClientSessionMemoryCache, ClientSessionStore},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, ClientConnection, RootCertStore,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn server_config() -> (ServerConfig, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    (cfg, der)
}

/// Counts the TLS 1.3 tickets the server issues.
#[derive(Debug)]
struct Counting {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl ClientSessionStore for Counting {
    fn set_kx_hint(&self, s: ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(s, g)
    }
    fn kx_hint(&self, s: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(s)
    }
    fn set_tls12_session(
        &self,
        s: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(s, v)
    }
    fn tls12_session(&self, s: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(s)
    }
    fn remove_tls12_session(&self, s: &ServerName<'static>) {
        self.inner.remove_tls12_session(s)
    }
    fn insert_tls13_ticket(
        &self,
        s: ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
        self.inner.insert_tls13_ticket(s, v)
    }
    fn take_tls13_ticket(
        &self,
        s: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(s)
    }
}

fn client_config(ca: &CertificateDer<'static>) -> (Arc<ClientConfig>, Arc<Counting>) {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let store = Arc::new(Counting {
        inner: ClientSessionMemoryCache::new(32),
        tickets: AtomicUsize::new(0),
    });
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    (Arc::new(cfg), store)
}

fn hello(cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let mut c = ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

/// A whole handshake in memory, so the client holds tickets afterwards.
fn handshake_in_memory(client: &Arc<ClientConfig>, server: Arc<ServerConfig>) {
    let mut c = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
}

#[test]
fn client_hellos_say_whether_they_offer_a_ticket() {
    let (server, ca) = server_config();
    let (client, store) = client_config(&ca);
    let fresh = hello(&client);
    assert_eq!(offers_psk(&fresh), Some(false));
    handshake_in_memory(&client, Arc::new(server));
    assert!(store.tickets.load(Ordering::Relaxed) > 0);
    let resuming = hello(&client);
    assert_eq!(offers_psk(&resuming), Some(true));
    // Not a whole ClientHello: nothing to say.
    assert_eq!(offers_psk(&resuming[..resuming.len() - 1]), None);
    assert_eq!(offers_psk(&resuming[..3]), None);
    assert_eq!(offers_psk(b"GET / HTTP/1.1\r\n\r\n"), None);
    assert_eq!(offers_psk(&[]), None);
}

/// A server configuration with a new certificate, a TLS 1.3 client that trusts it (with its
/// ticket store) and a listener.
async fn setup() -> (
    Configs,
    Arc<ClientConfig>,
    Arc<Counting>,
    tokio::net::TcpListener,
    std::net::SocketAddr,
) {
    let (server, ca) = server_config();
    let (client, store) = client_config(&ca);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (Configs::new(server), client, store, l, addr)
}

async fn connect(
    addr: std::net::SocketAddr,
    client: Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect("localhost".try_into().unwrap(), s)
        .await
        .unwrap()
}

/// Serves one connection: reads a line, answers it, closes with close_notify.
async fn serve_one(l: &tokio::net::TcpListener, configs: &Configs) {
    let (s, _) = l.accept().await.unwrap();
    let mut t = accept(s, configs).await.unwrap();
    let mut buf = [0u8; 64];
    let n = t.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"ping");
    t.write_all(b"pong").await.unwrap();
    t.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_tickets_after_a_full_handshake_one_after_a_resumption() {
    let (configs, client, store, l, addr) = setup().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let server = serve_one(&l, &configs);
        let client = async {
            let mut t = connect(addr, client.clone()).await;
            t.write_all(b"ping").await.unwrap();
            let mut all = Vec::new();
            t.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, b"pong", "the answer, then a clean close");
            t.get_ref().1.handshake_kind()
        };
        let ((), kind) = tokio::join!(server, client);
        seen.push((kind, store.tickets.swap(0, Ordering::Relaxed)));
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(
        seen,
        [(Some(Full), 2), (Some(Resumed), 1), (Some(Resumed), 1)]
    );
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_an_error() {
    let (server, _) = server_config();
    let configs = Configs::new(server);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let server = async {
        let (s, _) = l.accept().await.unwrap();
        accept(s, &configs).await.map(|_| ())
    };
    let (alert, r) = tokio::join!(client, server);
    assert!(r.is_err());
    // A TLS alert record went back (content type 21), not silence.
    assert_eq!(alert.first(), Some(&21));
}

/// TLS 1.2: the server's last flight is part of the handshake and goes out at once.
#[tokio::test]
async fn tls12_handshakes_complete() {
    let (server, ca) = server_config();
    let configs = Configs::new(server);
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = async {
        let mut t = connect(addr, client).await;
        t.write_all(b"ping").await.unwrap();
        let mut all = Vec::new();
        t.read_to_end(&mut all).await.unwrap();
        (all, t.get_ref().1.protocol_version())
    };
    let ((all, version), ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::join!(client, serve_one(&l, &configs))
    })
    .await
    .expect("a TLS 1.2 exchange completes");
    assert_eq!(all, b"pong");
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
}

/// Many records read through small and large, initialized and uninitialized buffers: every
/// byte arrives once and in order, and the close ends the stream.
#[tokio::test]
async fn records_read_in_pieces_of_any_size_arrive_whole() {
    let (configs, client, _, l, addr) = setup().await;
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let client = async {
        let mut t = connect(addr, client).await;
        // Records of several sizes: 1 byte, a few hundred, and full 16 KiB ones.
        let mut rest = &sent[..];
        for size in [1, 300, 16_384, 5, 40_000].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*size).min(rest.len()));
            t.write_all(now).await.unwrap();
            t.flush().await.unwrap();
            rest = later;
        }
        t.shutdown().await.unwrap();
    };
    let server = async {
        let (s, _) = l.accept().await.unwrap();
        let mut t = accept(s, &configs).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 7];
        for turn in 0.. {
            let n = if turn % 2 == 0 {
                let n = t.read(&mut small).await.unwrap();
                got.extend_from_slice(&small[..n]);
                n
            } else {
                // Uninitialized room, as the proxy's buffers give.
                let mut big = Vec::with_capacity(16_384);
                let n = t.read_buf(&mut big).await.unwrap();
                got.extend_from_slice(&big);
                n
            };
            if n == 0 {
                break;
            }
        }
        got
    };
    let ((), got) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(client, server)
    })
    .await
    .expect("the exchange completes");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes arrive in order");
}
