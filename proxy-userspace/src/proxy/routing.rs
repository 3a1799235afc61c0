//! What the config's vhosts, routes, upstreams and logs become ([`Routing`]), built at start
//! and again by every reload, which takes over what did not change.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use hyper::header::{HeaderName, HeaderValue};
use tokio::sync::watch;

use super::{
    log::LogFile,
    site::{Route, Site, Sites},
    upstream::Pool,
};
use crate::config::Config;

/// What a reload replaces: the vhosts of each listener, the upstream pools and the log files.
pub(super) struct Routing {
    pub sites: HashMap<String, Arc<Sites>>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub logs: HashMap<PathBuf, LogFile>,
}

impl Routing {
    /// The pools some route uses, each once: the ones whose health counts.
    pub fn routed_pools(&self) -> Vec<Arc<Pool>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for sites in self.sites.values() {
            for site in sites.all() {
                for r in &site.routes {
                    if seen.insert(Arc::as_ptr(&r.pool)) {
                        out.push(r.pool.clone());
                    }
                }
            }
        }
        out
    }
}

/// Builds the vhosts, pools and logs of `cfg`. Pools whose `[[upstream]]` is unchanged and log
/// files already open are taken over from `old`, so health state and kept-alive upstream
/// connections survive a reload.
pub(super) fn build_routing(
    cfg: &Config,
    old: Option<&Routing>,
    changes: &watch::Sender<u64>,
    threads: usize,
) -> anyhow::Result<Routing> {
    let pools: HashMap<String, Arc<Pool>> = cfg
        .upstream
        .iter()
        .map(|u| {
            let u = u.get_ref();
            let pool = old
                .and_then(|o| o.pools.get(&u.name))
                .filter(|p| p.config() == u)
                .cloned()
                .unwrap_or_else(|| Arc::new(Pool::new(u, changes.clone(), threads)));
            (u.name.clone(), pool)
        })
        .collect();
    // Log files are shared by vhosts naming the same path.
    let mut logs: HashMap<PathBuf, LogFile> = HashMap::new();
    let mut open_log = |p: &Option<PathBuf>| -> anyhow::Result<Option<LogFile>> {
        let Some(p) = p else { return Ok(None) };
        if let Some(l) = logs
            .get(p)
            .or_else(|| old.and_then(|o| o.logs.get(p)))
            .cloned()
        {
            logs.insert(p.clone(), l.clone());
            return Ok(Some(l));
        }
        let l = LogFile::open(p)?;
        logs.insert(p.clone(), l.clone());
        Ok(Some(l))
    };
    let mut sites: HashMap<String, Sites> = HashMap::new();
    for (i, v) in cfg.vhost.iter().enumerate() {
        let v = v.get_ref();
        let mut routes: Vec<Route> = v
            .route
            .iter()
            .map(|r| Route {
                prefix: r.prefix.clone(),
                pool: pools[&r.upstream].clone(),
                allow: r.allow.clone(),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let headers = v
            .response_headers
            .iter()
            .map(|(k, val)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(val)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("vhost[{i}].response_headers"))?;
        let names: Vec<String> = v
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let site = Arc::new(Site {
            label: Arc::from(names.first().map_or("", String::as_str)),
            names,
            preserve_host: v.preserve_host,
            timeout: v.timeout.0,
            headers,
            access_log: open_log(&v.access_log)
                .with_context(|| format!("vhost[{i}].access_log"))?,
            error_log: open_log(&v.error_log).with_context(|| format!("vhost[{i}].error_log"))?,
            redirect_https: v.redirect_https,
            routes,
        });
        for l in &v.listeners {
            let s = sites.entry(l.clone()).or_insert_with(|| Sites {
                exact: HashMap::default(),
                wildcard: Vec::new(),
                default: site.clone(),
            });
            for n in &site.names {
                match n.strip_prefix('*') {
                    Some(suffix) => s.wildcard.push((suffix.to_string(), site.clone())),
                    None => {
                        s.exact.entry(n.clone()).or_insert_with(|| site.clone());
                    }
                }
            }
        }
    }
    Ok(Routing {
        sites: sites.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        pools,
        logs,
    })
}
