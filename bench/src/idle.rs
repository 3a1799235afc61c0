//! The `idle` suite: what hapd costs while nothing happens, beside the programs it replaces.
//! A VRRP pair at 10 ms adverts (CPU and memory, hapd vs keepalived, alternating rounds), and
//! the memory each proxy holds for idle keep-alive client connections (hapd vs nginx, HAProxy
//! and Apache).
use crate::report::Report;

pub fn run(quick: bool) -> anyhow::Result<Report> {
    let hapd = crate::hapd_bin()?;
    let mut report = Report::new("idle", quick);
    let (pair, pair_raw) = crate::failover::idle(&hapd, quick)?;
    let (conns, conns_raw) = crate::proxy::idle_connections(quick)?;
    report.tables = vec![pair, conns];
    report.raw = serde_json::json!({ "pair": pair_raw, "connections": conns_raw });
    Ok(report)
}
