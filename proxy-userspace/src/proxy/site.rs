//! Virtual hosts (`[[vhost]]`) and what a request gets from one: refused (TRACE, CONNECT),
//! redirected to https, routed by the longest path prefix, refused by a route's allow list,
//! or forwarded to the route's upstream pool. The same decision serves HTTP/1 and HTTP/2.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper::header::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::{
    headers::Answer,
    log::{error_line, LogFile},
    upstream::Pool,
};

/// One `[[vhost]]`, ready to serve.
pub struct Site {
    /// The first server name: the `vhost` label of the metrics.
    pub label: Arc<str>,
    pub names: Vec<String>,
    pub preserve_host: bool,
    /// ProxyTimeout: the longest an upstream may be silent.
    pub timeout: Duration,
    /// Set on every response (they replace the upstream's fields of the same name).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub access_log: Option<LogFile>,
    pub error_log: Option<LogFile>,
    pub redirect_https: bool,
    /// Longest prefix first.
    pub routes: Vec<Route>,
}

pub struct Route {
    pub prefix: String,
    pub pool: Arc<Pool>,
    pub allow: Vec<IpNet>,
}

/// The vhosts one listener serves, by name.
pub struct Sites {
    /// FxHash (rustc-hash), not SipHash: the table holds configured names only and a request
    /// never adds to it, so a crafted host name has no collisions to exploit; it is on every
    /// request's path.
    pub exact: HashMap<String, Arc<Site>, rustc_hash::FxBuildHasher>,
    /// `*.example.com` as `.example.com`.
    pub wildcard: Vec<(String, Arc<Site>)>,
    /// The first vhost of the listener (Apache's rule).
    pub default: Arc<Site>,
}

impl Sites {
    /// Every vhost of the listener (a vhost with several names comes several times).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Site>> {
        std::iter::once(&self.default)
            .chain(self.exact.values())
            .chain(self.wildcard.iter().map(|(_, s)| s))
    }

    /// The vhost for a host name (lower case, without port).
    pub fn find(&self, host: &str) -> &Arc<Site> {
        if let Some(s) = self.exact.get(host) {
            return s;
        }
        if let Some(dot) = host.find('.') {
            if let Some((_, s)) = self.wildcard.iter().find(|(w, _)| *w == host[dot..]) {
                return s;
            }
        }
        &self.default
    }
}

/// What a request gets.
pub enum Decision {
    /// To the upstream of route `n` of the vhost.
    Forward(usize),
    Answer(Answer),
}

/// The methods answered when TRACE or CONNECT is refused.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

impl Site {
    /// A request's failure, as a warning in the daemon's log and a line in the vhost's
    /// `error_log`.
    pub fn error(&self, client: SocketAddr, msg: &str) {
        tracing::warn!(%client, "{msg}");
        if let Some(l) = &self.error_log {
            l.write(error_line(Some(client.ip()), msg));
        }
    }

    /// `host`: the client's host, lower case, without port; `target`: path and query.
    pub fn decide(&self, method: &str, target: &str, host: &str, client: IpAddr) -> Decision {
        if method == "TRACE" || method == "CONNECT" {
            return Decision::Answer(
                Answer::new(405, format!("{method} is not allowed")).with("allow", ALLOW.into()),
            );
        }
        if self.redirect_https {
            // `host` has lost its port and, for an IPv6 literal, its brackets: a URL needs
            // them back (RFC 3986 section 3.2.2).
            let location = if host.contains(':') {
                // Only an IPv6 address goes back in brackets; anything else with a colon is
                // not a host.
                if host.parse::<std::net::Ipv6Addr>().is_err() {
                    return Decision::Answer(Answer::new(400, "bad host"));
                }
                format!("https://[{host}]{target}")
            } else {
                format!("https://{host}{target}")
            };
            if !location.bytes().all(|b| b.is_ascii_graphic()) {
                return Decision::Answer(Answer::new(400, "bad host"));
            }
            return Decision::Answer(
                Answer::new(301, "Moved permanently").with("location", location),
            );
        }
        let path = target.split('?').next().unwrap_or(target);
        let Some(index) = self
            .routes
            .iter()
            .position(|r| path.starts_with(r.prefix.as_str()))
        else {
            return Decision::Answer(Answer::new(404, "No route for this path"));
        };
        let route = &self.routes[index];
        if !route.allow.is_empty() && !route.allow.iter().any(|n| n.contains(&client)) {
            return Decision::Answer(Answer::new(403, "Forbidden"));
        }
        Decision::Forward(index)
    }
}
