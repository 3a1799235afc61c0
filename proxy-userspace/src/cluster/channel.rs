//! The cluster channel: HTTP/1.1 over mutual TLS 1.3 between the nodes of `[cluster]`.
//!
//! Both ends present a certificate that chains to the cluster CA (`ca`). A node is known by
//! the DNS name its certificate carries, which must be the `name` of one of `peers`: the client
//! checks the server's certificate for the name of the peer it dialled, and the server looks
//! the client's certificate up among its peers. A connection from an address that is not a
//! peer's is closed before any TLS work; one without a certificate, with one from another CA,
//! or naming no configured peer is refused before any request is read. One request per
//! connection: an exchange every few seconds does not need a pool.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::{
    client::{danger::ServerCertVerifier, WebPkiServerVerifier},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
    ClientConfig, RootCertStore, ServerConfig,
};

use crate::config::cluster::{Cluster, Peer};

/// The largest request or answer body: a certificate push with its chain and key is a few KiB.
pub const MAX_BODY: usize = 1 << 20;

/// This node's side of the channel: its certificate, the CA, and who its peers are.
pub struct Credentials {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    peers: Vec<Peer>,
    /// Where connections to peers come from: the listen address unless it is a wildcard.
    source: Option<IpAddr>,
    timeout: Duration,
}

/// How long a request may take: `cluster.timeout`, and for a push also the time the peer takes
/// to write and load it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Exchange,
    Push,
}

/// One certificate for every handshake.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl Credentials {
    /// Reads `c`'s CA, certificate and key; the certificate must chain to the CA and name
    /// `node` (this node's `node.name`).
    pub fn load(c: &Cluster, node: &str) -> anyhow::Result<Credentials> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&c.ca)
            .map_err(|e| anyhow!("cluster.ca: {}: {e}", c.ca.display()))?
        {
            let der = der.map_err(|e| anyhow!("cluster.ca: {}: {e}", c.ca.display()))?;
            roots
                .add(der)
                .map_err(|e| anyhow!("cluster.ca: {}: not a usable CA: {e}", c.ca.display()))?;
        }
        if roots.is_empty() {
            bail!("cluster.ca: {}: no PEM certificate in it", c.ca.display());
        }
        let roots = Arc::new(roots);
        let own = crate::config::proxy::Certificate {
            cert: c.cert.clone(),
            key: c.key.clone(),
            chain: None,
        };
        let (ck, info) =
            crate::proxy::tls::load_certified(&own, &provider).context("cluster.cert")?;
        if !info.names.iter().any(|n| n.eq_ignore_ascii_case(node)) {
            bail!(
                "cluster.cert: {} names {:?}, not this node ({node:?}, node.name): the peers check it",
                c.cert.display(),
                info.names
            );
        }
        // The peers verify it so: a certificate they would refuse is refused here, at start.
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .context("cluster.ca")?;
        let name = ServerName::try_from(node.to_string())
            .map_err(|e| anyhow!("node.name {node:?}: {e}"))?;
        verifier
            .verify_server_cert(&ck.cert[0], &ck.cert[1..], &name, &[], UnixTime::now())
            .map_err(|e| {
                anyhow!(
                    "cluster.cert: {} does not verify against cluster.ca {}: {e}",
                    c.cert.display(),
                    c.ca.display()
                )
            })?;
        let ck = Arc::new(ck);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .context("cluster.ca")?;
        // And as the peers' servers verify it when this node calls them (clientAuth).
        client_verifier
            .verify_client_cert(&ck.cert[0], &ck.cert[1..], UnixTime::now())
            .map_err(|e| {
                anyhow!(
                    "cluster.cert: {} is not usable as a client certificate (it needs clientAuth as well as serverAuth): {e}",
                    c.cert.display()
                )
            })?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("cluster: TLS 1.3")?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(Fixed(ck.clone())));
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("cluster: TLS 1.3")?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(Fixed(ck)));
        Ok(Credentials {
            server: Arc::new(server),
            client: Arc::new(client),
            peers: c.peers.clone(),
            source: (!c.listen.ip().is_unspecified()).then_some(c.listen.ip()),
            timeout: c.timeout.0,
        })
    }

    /// The configured peer a verified client certificate names, or why there is none.
    fn identify(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<&Peer, String> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_string())?;
        let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("unreadable client certificate: {e}"))?
            .valid_dns_names()
            .map(str::to_string)
            .collect();
        self.peers
            .iter()
            .find(|p| names.iter().any(|n| n.eq_ignore_ascii_case(&p.name)))
            .ok_or_else(|| format!("its certificate names {names:?}, no configured peer"))
    }

    /// Sends one request to `peer`; the status code and the body.
    pub async fn request(
        &self,
        peer: &Peer,
        method: Method,
        path: &str,
        body: Vec<u8>,
        wait: Wait,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let limit = match wait {
            Wait::Exchange => self.timeout,
            Wait::Push => self.timeout + APPLY_TIME,
        };
        let go = async {
            let sock = match peer.address {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if let Some(ip) = self
                .source
                .filter(|ip| ip.is_ipv4() == peer.address.is_ipv4())
            {
                sock.bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("binding {ip} (cluster.listen)"))?;
            }
            let tcp = sock.connect(peer.address).await.context("connecting")?;
            let name = ServerName::try_from(peer.name.clone())
                .map_err(|e| anyhow!("peer name {:?}: {e}", peer.name))?;
            let tls = tokio_rustls::TlsConnector::from(self.client.clone())
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, peer.name.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = send.send_request(req).await?;
            let code = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>((code, body))
        };
        tokio::time::timeout(limit, go)
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
            .with_context(|| format!("{} at {}", peer.name, peer.address))
    }
}

/// A request from a peer, after its certificate was checked: the peer's configured name.
pub struct Incoming {
    pub peer: String,
    pub method: Method,
    pub path: String,
    pub body: Bytes,
}

/// How a connection was refused, for the caller's count and log.
pub struct Refused {
    pub from: SocketAddr,
    pub why: String,
}

/// Serves `listener` until the runtime stops: a connection from an address that is no peer's
/// is closed at once; each other's handshake and identity are checked, then its one request
/// goes to `handle`. At most [`MAX_CONNECTIONS`] are served at once; a connection beyond is
/// closed.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    creds: Arc<Credentials>,
    handle: H,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) where
    H: Fn(Incoming) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = (StatusCode, Vec<u8>)> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refused = Arc::new(refused);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("cluster: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Before any TLS work: a host that is no peer costs an accept and a close.
        if !creds.peers.iter().any(|p| p.address.ip() == from.ip()) {
            refused(Refused {
                from,
                why: "not a peer's address (cluster.peers)".into(),
            });
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(Refused {
                from,
                why: format!("{MAX_CONNECTIONS} connections are being served already"),
            });
            continue;
        };
        let (creds, handle, refused) = (creds.clone(), handle.clone(), refused.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let limit = creds.timeout * 2 + APPLY_TIME;
            let checked = tokio::time::timeout(creds.timeout, async {
                let tls = tokio_rustls::TlsAcceptor::from(creds.server.clone())
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                let peer = creds
                    .identify(tls.get_ref().1.peer_certificates())?
                    .name
                    .clone();
                Ok::<_, String>((tls, peer))
            })
            .await;
            let (tls, peer) = match checked {
                Ok(Ok(c)) => c,
                Ok(Err(why)) => return refused(Refused { from, why }),
                Err(_) => {
                    return refused(Refused {
                        from,
                        why: format!("no handshake within {:?}", creds.timeout),
                    })
                }
            };
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (handle, peer) = (handle.clone(), peer.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let (code, out) = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => {
                            handle(Incoming {
                                peer,
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                body: b.to_bytes(),
                            })
                            .await
                        }
                        Err(e) => (
                            StatusCode::BAD_REQUEST,
                            format!("reading the request: {e}").into_bytes(),
                        ),
                    };
                    Response::builder()
                        .status(code)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(out)))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(tls), service);
            match tokio::time::timeout(limit, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, "cluster: serving: {e}"),
                Err(_) => tracing::debug!(%from, "cluster: connection not done within {limit:?}"),
            }
        });
    }
}

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// What a connection may take beyond its handshake and request: writing pushed files and
/// reloading the certificates.
pub const APPLY_TIME: Duration = Duration::from_secs(10);
