//! testssl.sh (Debian package `testssl.sh`, command `testssl`) against a TLS listener: the
//! protocol, cipher-category and HSTS checks, read from its JSON file.
use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

/// One line of testssl's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub id: String,
    pub severity: String,
    pub finding: String,
}

/// The checks that matter for a proxy's TLS: protocols, cipher categories, HSTS.
pub const CHECKS: [&str; 15] = [
    "SSLv2",
    "SSLv3",
    "TLS1",
    "TLS1_1",
    "TLS1_2",
    "TLS1_3",
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
    "cipherlist_STRONG",
    "HSTS_time",
    "banner_server",
];

/// Runs `testssl --protocols --std -h` against `url` (about 10 s), keeping the JSON in
/// `scratch`; the findings of [`CHECKS`], in that order.
pub fn scan(url: &str, scratch: &Path) -> anyhow::Result<Vec<Finding>> {
    let json = scratch.join("testssl.json");
    let _ = std::fs::remove_file(&json);
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--protocols",
            "--std",
            "-h",
        ])
        .arg("--jsonfile")
        .arg(&json)
        .arg(url)
        .output()
        .context("running testssl (Debian package testssl.sh; cargo xtask setup installs it)")?;
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!(
            "testssl wrote no {}: {}",
            json.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let all = parse(&text)?;
    let found: Vec<Finding> = CHECKS
        .iter()
        .filter_map(|id| all.iter().find(|f| f.id == *id).cloned())
        .collect();
    if found.len() < 6 {
        bail!("testssl reported too little: {all:?}");
    }
    Ok(found)
}

/// testssl's JSON file: an array of `{id, severity, finding, ...}`.
pub fn parse(text: &str) -> anyhow::Result<Vec<Finding>> {
    let v: serde_json::Value = serde_json::from_str(text).context("testssl's JSON")?;
    let arr = v.as_array().context("testssl's JSON is not an array")?;
    Ok(arr
        .iter()
        .map(|f| Finding {
            id: f["id"].as_str().unwrap_or_default().to_string(),
            severity: f["severity"].as_str().unwrap_or_default().to_string(),
            finding: f["finding"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}

/// What a proxy in front of the guide's site must show: no SSL, no TLS 1.0/1.1, no weak
/// cipher category, HSTS. The problems, if any.
pub fn problems(found: &[Finding]) -> Vec<String> {
    let get = |id: &str| found.iter().find(|f| f.id == id);
    let mut out = Vec::new();
    for id in [
        "SSLv2",
        "SSLv3",
        "TLS1",
        "TLS1_1",
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        match get(id) {
            Some(f) if f.finding.starts_with("not offered") => {}
            Some(f) => out.push(format!("{id}: {}", f.finding)),
            None => out.push(format!("{id}: not reported")),
        }
    }
    match get("HSTS_time") {
        Some(f) if f.severity == "OK" => {}
        Some(f) => out.push(format!("HSTS: {}", f.finding)),
        None => out.push("HSTS: not sent".into()),
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn findings_are_read_and_judged() {
        let text = r#"[{"id":"SSLv3","severity":"OK","finding":"not offered"},
            {"id":"TLS1","severity":"INFO","finding":"offered"},
            {"id":"HSTS_time","severity":"OK","finding":"730 days"}]"#;
        let f = super::parse(text).unwrap();
        let p = super::problems(&f);
        assert!(p.contains(&"TLS1: offered".to_string()), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("SSLv2: not reported")));
        assert!(!p.iter().any(|x| x.starts_with("HSTS")));
    }
}
