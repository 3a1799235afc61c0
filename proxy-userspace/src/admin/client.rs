//! The other side of the admin endpoint: what `hapd status`, `hapd reload` and `hapd drill` use.
use std::{net::SocketAddr, time::Duration};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::status::Status;

/// How long one admin request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request to the admin endpoint at `addr`; the status code and the body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| {
                format!("connecting to the admin endpoint {addr} (is hapd running?)")
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, go)
        .await
        .map_err(|_| anyhow!("the admin endpoint {addr} did not answer within {TIMEOUT:?}"))?
}

/// `GET /status`, parsed.
pub async fn status(addr: SocketAddr) -> anyhow::Result<Status> {
    let (code, body) = request(addr, Method::GET, "/status").await?;
    if code != 200 {
        return Err(anyhow!("{addr}/status answered {code}: {}", body.trim()));
    }
    serde_json::from_str(&body).with_context(|| format!("{addr}/status: not a hapd status"))
}
