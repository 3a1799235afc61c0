//! `cargo xtask bench history`: the proxy suite's last full runs side by side, per method,
//! worked out from their JSON reports in `bench/results/` (the raw rounds), so that the
//! README's run-by-run table is generated, not assembled by hand.
//!
//! Per run and load: hapd's median req/s over the best median of the other proxies (nginx,
//! HAProxy, Apache), the round-by-round ratio in brackets, and for the wrk loads hapd's p99
//! beside the lowest peer's. A report from before the one-CPU-each method (its raw rounds not
//! grouped by method) counts as "shared CPUs". `--quick` and `--peers` runs are left out.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    proxy::{round_by_round_ratio, Load, Method},
    report::median_spread,
};

/// The Markdown tables of the last `last` full proxy runs in `dir`, one per method that has
/// runs.
pub fn tables(dir: &Path, last: usize) -> anyhow::Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("proxy-") && n.ends_with(".json"))
        })
        .collect();
    // The names carry the time (proxy-YYYY-MM-DDTHHMMSSZ.json): in name order is in time order.
    files.sort();
    let mut runs: Vec<(String, Value)> = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        let command = report["command"].as_str().unwrap_or_default();
        if command.contains("--quick") || command.contains("--peers") {
            continue;
        }
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        runs.push((name, report));
    }
    let mut out = String::new();
    for method in Method::ALL.map(Method::label) {
        let with: Vec<&(String, Value)> = runs
            .iter()
            .filter(|(_, r)| rounds_of(r, method).is_some())
            .collect();
        let shown = &with[with.len().saturating_sub(last)..];
        if shown.is_empty() {
            continue;
        }
        out += &format!(
            "{method}: the last {} full run(s) of `cargo xtask bench proxy`; ratio of medians to \
             the best peer, round-by-round ratio in brackets:\n\n",
            shown.len()
        );
        out += "| run | plain keep-alive | TLS keep-alive | new TLS | HTTP/2 | p99 ms plain / TLS / new TLS, hapd vs lowest peer |\n";
        out += "| --- | --- | --- | --- | --- | --- |\n";
        for (name, report) in shown {
            let raw = rounds_of(report, method).unwrap_or(&Value::Null);
            let stem = name.trim_end_matches(".json");
            let when = report["timestamp"].as_str().unwrap_or_default();
            let hhmm = when.get(11..16).unwrap_or(when);
            let date = when.get(..10).unwrap_or_default();
            let mut cells = vec![format!("{date} {hhmm} (`{stem}.md`)")];
            let mut p99 = Vec::new();
            for load in Load::ALL {
                cells.push(ratio_cell(raw, load.label()));
                // h2load reports no percentiles.
                if load != Load::Http2 {
                    p99.push(p99_cell(raw, load.label()));
                }
            }
            cells.push(p99.join(" / "));
            out += &format!("| {} |\n", cells.join(" | "));
        }
        out += "\n";
    }
    if out.is_empty() {
        anyhow::bail!("no full proxy run in {}", dir.display());
    }
    Ok(out)
}

/// The raw rounds of `method` in `report`: its group, or for a report from before the
/// methods, the whole raw object under "shared CPUs".
fn rounds_of<'a>(report: &'a Value, method: &str) -> Option<&'a Value> {
    let raw = &report["raw"];
    if Method::ALL.iter().any(|m| raw[m.label()].is_object()) {
        return raw.get(method).filter(|v| v.is_object());
    }
    let flat = raw
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.ends_with("/hapd")));
    (method == Method::SharedCores.label() && flat).then_some(raw)
}

/// The proxies that ran `label`, with one figure per round (`field` of each sample).
fn per_peer(raw: &Value, label: &str, field: &str) -> Vec<(String, Vec<f64>)> {
    let Some(o) = raw.as_object() else {
        return Vec::new();
    };
    o.iter()
        .filter_map(|(k, v)| {
            let peer = k.strip_prefix(label)?.strip_prefix('/')?;
            let vals: Vec<f64> = v
                .as_array()?
                .iter()
                .filter_map(|s| s[field].as_f64())
                .collect();
            Some((peer.to_string(), vals))
        })
        .collect()
}

/// "ratio (round by round)" of hapd's req/s to the best other proxy's, or "-".
fn ratio_cell(raw: &Value, label: &str) -> String {
    let peers = per_peer(raw, label, "rps");
    let Some((_, mine)) = peers.iter().find(|(p, _)| p == "hapd") else {
        return "-".into();
    };
    let others: Vec<&[f64]> = peers
        .iter()
        .filter(|(p, _)| p != "hapd")
        .map(|(_, v)| v.as_slice())
        .collect();
    let best = others
        .iter()
        .map(|v| median_spread(v).0)
        .fold(f64::NAN, f64::max);
    let ratio = median_spread(mine).0 / best;
    match (ratio.is_finite(), round_by_round_ratio(mine, &others)) {
        (true, Some(r)) => format!("{ratio:.2} ({r:.2})"),
        (true, None) => format!("{ratio:.2}"),
        _ => "-".into(),
    }
}

/// "hapd's median p99 vs the lowest other median p99", or "-".
fn p99_cell(raw: &Value, label: &str) -> String {
    let peers = per_peer(raw, label, "p99_ms");
    let med = |v: &[f64]| median_spread(v).0;
    let Some((_, mine)) = peers.iter().find(|(p, _)| p == "hapd") else {
        return "-".into();
    };
    let lowest = peers
        .iter()
        .filter(|(p, _)| p != "hapd")
        .map(|(_, v)| med(v))
        .fold(f64::NAN, f64::min);
    format!("{:.2} vs {lowest:.2}", med(mine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rps: &[f64], p99: f64) -> Value {
        Value::Array(
            rps.iter()
                .map(|r| serde_json::json!({"rps": r, "p99_ms": p99}))
                .collect(),
        )
    }

    #[test]
    fn a_run_becomes_a_row_per_method_and_quick_runs_are_left_out() {
        let dir = std::env::temp_dir().join(format!("hapd-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut raw = serde_json::Map::new();
        for label in Load::ALL.map(Load::label) {
            raw.insert(
                format!("{label}/hapd"),
                samples(&[120.0, 110.0, 130.0], 1.0),
            );
            raw.insert(
                format!("{label}/nginx"),
                samples(&[100.0, 100.0, 100.0], 2.0),
            );
        }
        let per_core = Value::Object(raw.clone());
        let new = serde_json::json!({
            "command": "cargo xtask bench proxy",
            "timestamp": "2026-12-07T21:49:00Z",
            "raw": {"one CPU each": per_core, "shared CPUs": Value::Object(raw.clone())},
        });
        let old = serde_json::json!({
            "command": "cargo xtask bench proxy",
            "timestamp": "2026-11-30T15:18:43Z",
            "raw": Value::Object(raw),
        });
        let quick = serde_json::json!({"command": "cargo xtask bench proxy --quick", "raw": {}});
        std::fs::write(dir.join("proxy-2026-12-07T214900Z.json"), new.to_string()).unwrap();
        std::fs::write(dir.join("proxy-2026-11-30T151843Z.json"), old.to_string()).unwrap();
        std::fs::write(dir.join("proxy-2026-12-08T000000Z.json"), quick.to_string()).unwrap();
        let t = tables(&dir, 10).unwrap();
        // One CPU each: the new run only; shared: both, oldest first.
        let (per_core_part, shared_part) = t.split_at(t.find("shared CPUs:").unwrap());
        assert_eq!(per_core_part.matches("| 2026-").count(), 1, "{t}");
        assert_eq!(shared_part.matches("| 2026-").count(), 2, "{t}");
        assert!(shared_part.find("2026-11-30").unwrap() < shared_part.find("2026-12-07").unwrap());
        // hapd's median 120 over nginx's 100; round by round the median of 1.2, 1.1, 1.3.
        assert!(t.contains("| 1.20 (1.20) |"), "{t}");
        assert!(
            t.contains("1.00 vs 2.00 / 1.00 vs 2.00 / 1.00 vs 2.00"),
            "{t}"
        );
        assert!(!t.contains("2026-12-08"), "a quick run is left out: {t}");
        // The last one only.
        let one = tables(&dir, 1).unwrap();
        assert!(!one.contains("2026-11-30"), "{one}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
