//! The TLS reverse proxy (`[server]`, `[tls]`, `[[listener]]`, `[[upstream]]`, `[[vhost]]`).
//!
//! It runs on threads of its own, one single-threaded runtime per core plus a control thread
//! for health checks and the certificate watcher (signals are the admin thread's), beside the
//! VRRP engine's thread, so load on the proxy never delays an advert. [`start`] reads every
//! file and binds every listener before it returns, so a bad certificate or a port in use is
//! an error at start. Listeners bound to a VIP use IP_FREEBIND: they work on a backup that
//! does not hold the address yet, and nothing is rebound at failover.
//!
//! The rooms, in the order a request meets them:
//! - `runtime`: the threads, pinning, start and stop; `worker`: per-thread identity and slots;
//! - `accept`: accepting and placing connections on workers (`balance`, `steer`);
//! - `conn`: one connection: TLS (`tls`, `tls_stream`), then HTTP/1 or HTTP/2;
//! - `http1/` and `h2/`: the client side of each protocol, over the same rules (`site`: the
//!   vhost's decision, `headers`: what crosses the proxy) and the same upstream call;
//! - `forward`: that call: pick a server, connect or reuse, retry, eject, and the proxy's own
//!   answer when the upstream fails; `upstream/`: pools, health checks, connections;
//! - `codec/`: HTTP/1 heads and bodies; `buf`, `timer`: buffers and deadlines;
//! - `core`: what connections share; `routing` and `view`: what reloads build and what the
//!   admin endpoint reads; `log`, `metrics`: access and error logs, counters.
mod accept;
mod balance;
mod buf;
mod cert_watch;
pub(crate) mod codec;
mod conn;
mod core;
mod forward;
mod h2;
mod headers;
mod http1;
mod log;
pub mod metrics;
mod routing;
mod runtime;
mod site;
mod steer;
mod timer;
pub mod tls;
mod tls_stream;
pub mod upstream;
mod view;
mod worker;

use std::time::Duration;

use anyhow::anyhow;

pub use self::{
    runtime::{start, start_with, Listen, ProxyHandle},
    view::ProxyView,
};
use crate::config::Config;

/// How often certificate files are looked at for changes where inotify cannot watch them.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// The `[server]` limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keepalive: Duration,
    pub header_read: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// Whether the config has a proxy to run.
pub fn configured(cfg: &Config) -> bool {
    !cfg.listener.is_empty()
}

impl From<&crate::config::proxy::Server> for Limits {
    fn from(s: &crate::config::proxy::Server) -> Self {
        Limits {
            keepalive: s.keepalive_timeout.0,
            header_read: s.header_read_timeout.0,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
        }
    }
}

/// A certificate that expires within this is worth a warning from `hapd check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Checks what `start` would read, without binding: used by `hapd check`. Returns warnings:
/// certificates that expire within [`EXPIRY_WARNING`] or have expired.
pub fn check_files(cfg: &Config) -> anyhow::Result<Vec<crate::config::Warning>> {
    let mut warnings = Vec::new();
    if let Some(t) = &cfg.tls {
        if !t.certificate.is_empty() {
            tls::build(t).map_err(|e| anyhow!("{e:#}"))?;
        }
        for (i, c) in t.certificate.iter().enumerate() {
            if let Some(w) = tls::expiry_warning(&c.cert, std::time::SystemTime::now())? {
                warnings.push(crate::config::Warning {
                    key: format!("tls.certificate[{i}].cert"),
                    message: w,
                });
            }
        }
    }
    Ok(warnings)
}
