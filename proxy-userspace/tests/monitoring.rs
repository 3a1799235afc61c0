//! The monitoring files hapd ships (dist/prometheus-rules.yml, its unit tests, and
//! dist/grafana-dashboard.json) against promtool, Debian's (`cargo xtask setup` unpacks it):
//! the rules load, every alert fires on its case and stays quiet on the others, every query
//! of the dashboard parses, and every metric either file uses is one hapd exports.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool() -> PathBuf {
    let ours = workspace().join("target/tools/promtool");
    if ours.is_file() {
        return ours;
    }
    let on_path = Command::new("promtool").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "promtool is missing: run `cargo xtask setup`"
    );
    PathBuf::from("promtool")
}

fn promtool_ok(args: &[&str], files: &[&Path]) -> String {
    let o = Command::new(promtool())
        .current_dir(workspace().join("dist"))
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool {args:?}: {said}");
    said
}

/// The names of series that `text` uses (`hapd_*`, `process_*`).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("hapd_") || w.starts_with("process_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

/// The metric families hapd's /metrics serves: the names its renderer declares
/// (`o.family("hapd_...", kind, help)` in admin/prom.rs).
fn exported() -> BTreeSet<String> {
    let src =
        std::fs::read_to_string(workspace().join("proxy-userspace/src/admin/prom.rs")).unwrap();
    let names: BTreeSet<String> = src
        .split(".family(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .map(str::to_string)
        .collect();
    assert!(names.len() > 20, "{names:?}");
    names
}

#[test]
fn the_alert_rules_load_and_pass_their_tests() {
    let said = promtool_ok(&["check", "rules"], &[Path::new("prometheus-rules.yml")]);
    assert!(said.contains("SUCCESS"), "{said}");
    promtool_ok(
        &["test", "rules"],
        &[Path::new("prometheus-rules.test.yml")],
    );
    let rules = std::fs::read_to_string(workspace().join("dist/prometheus-rules.yml")).unwrap();
    let known = exported();
    let unknown: Vec<_> = metric_names(&rules).difference(&known).cloned().collect();
    assert!(
        unknown.is_empty(),
        "rules use series hapd does not export: {unknown:?}"
    );
}

#[test]
fn every_dashboard_query_parses_and_uses_exported_metrics() {
    let text = std::fs::read_to_string(workspace().join("dist/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    // Grafana's variables, as a dashboard user's choice would fill them in.
    let filled: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$__all", ".*")
                .replace("$vrrp_instance", "VI_1")
                .replace("$instance", "198.18.0.1:8410")
                .replace("$vhost", "app")
                .replace("$node", "proxy01")
                .replace("$job", "hapd")
        })
        .collect();
    for e in &filled {
        // ($1 in label_replace is PromQL's, not Grafana's.)
        let left = e
            .match_indices('$')
            .any(|(i, _)| e[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
        assert!(!left, "a variable left in {e}");
    }
    // promtool parses each as a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in filled.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("hapd-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let said = promtool_ok(&["check", "rules"], &[&file]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        said.contains(&format!("{} rules found", filled.len())),
        "{said}"
    );
    let known = exported();
    let unknown: Vec<_> = metric_names(&text).difference(&known).cloned().collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses series hapd does not export: {unknown:?}"
    );
}
