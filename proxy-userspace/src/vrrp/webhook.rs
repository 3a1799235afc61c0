//! `notify_webhook`: a JSON POST `{host, instance, state, time}` per transition, over HTTP/1.1,
//! plain or TLS (rustls, trusting the system's certificate store, where a company's own CA
//! lives), bounded by a timeout.
use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use url::Url;

/// How long one POST may take, connection and TLS included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The body hapd posts: `{"host": ..., "instance": ..., "state": ..., "time": ...}`.
pub fn body(host: &str, instance: &str, state: &str, time: std::time::SystemTime) -> String {
    serde_json::json!({
        "host": host,
        "instance": instance,
        "state": state,
        "time": humantime::format_rfc3339_seconds(time).to_string(),
    })
    .to_string()
}

/// Posts `body` to `url`; returns the HTTP status. Fails on a connection or TLS error, a
/// timeout, or a status outside 2xx.
pub async fn post(url: &Url, body: String, timeout: Duration) -> anyhow::Result<u16> {
    // Reading the CA store is local work, done once, and not part of the timed exchange.
    let tls = match url.scheme() {
        "https" => Some(tls_config()?),
        _ => None,
    };
    let status = tokio::time::timeout(timeout, send(url, body, tls))
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))??;
    if !(200..300).contains(&status) {
        bail!("{url} answered {status}");
    }
    Ok(status)
}

async fn send(
    url: &Url,
    body: String,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<u16> {
    let host = url
        .host_str()
        .with_context(|| format!("{url} has no host"))?
        .to_owned();
    let port = url
        .port_or_known_default()
        .with_context(|| format!("{url} has no port"))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let req = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "hapd")
        .header(header::CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        .context("building the request")?;
    match (url.scheme(), tls) {
        ("http", _) => exchange(TokioIo::new(tcp), req).await,
        ("https", Some(config)) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("{host} is not a TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with {host}"))?;
            exchange(TokioIo::new(tls), req).await
        }
        (other, _) => bail!("{url}: scheme {other} is not http or https"),
    }
}

async fn exchange<IO>(io: TokioIo<IO>, req: Request<Full<Bytes>>) -> anyhow::Result<u16>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .context("sending the webhook")?;
    Ok(resp.status().as_u16())
}

/// A client config trusting the system's certificate store, read once and kept.
fn tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let c = load_tls_config()?;
    Ok(CONFIG.get_or_init(|| c).clone())
}

fn load_tls_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the store holds but rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!(
            "no usable CA certificates in the system store ({} errors)",
            found.errors.len()
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback that answers `status` and hands back the request.
    async fn server(status: u16) -> (Url, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/hook?team=ops",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the body (Content-Length) is complete.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        (url, task)
    }

    #[tokio::test]
    async fn posts_the_json_body() {
        let (url, task) = server(204).await;
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let status = post(&url, body("proxy01", "VI_1", "MASTER", t), WEBHOOK_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, 204);
        let req = task.await.unwrap();
        assert!(req.starts_with("POST /hook?team=ops HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{req}"
        );
        let json = req.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["host"], "proxy01");
        assert_eq!(v["instance"], "VI_1");
        assert_eq!(v["state"], "MASTER");
        assert_eq!(v["time"], "2025-11-24T16:00:00Z");
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let (url, _task) = server(500).await;
        let e = post(&url, "{}".into(), WEBHOOK_TIMEOUT).await.unwrap_err();
        assert!(e.to_string().contains("answered 500"), "{e}");
        // Nobody listening.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        drop(l);
        assert!(post(&url, "{}".into(), WEBHOOK_TIMEOUT).await.is_err());
        // A server that never answers: the timeout ends it.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/",
            l.local_addr().unwrap().port()
        ))
        .unwrap();
        let t0 = std::time::Instant::now();
        let e = post(&url, "{}".into(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[tokio::test]
    async fn https_checks_the_certificate() {
        // A TLS server with a self-signed certificate: not in the system store, so refused.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let _ = acceptor.accept(s).await;
        });
        let url = Url::parse(&format!("https://localhost:{port}/hook")).unwrap();
        let e = post(&url, "{}".into(), WEBHOOK_TIMEOUT).await.unwrap_err();
        assert!(format!("{e:#}").contains("TLS with localhost"), "{e:#}");
        assert!(
            format!("{e:#}").to_lowercase().contains("certificate"),
            "{e:#}"
        );
    }
}
