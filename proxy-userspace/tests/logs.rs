//! The daemon's log lines: under journald (JOURNAL_STREAM naming its standard error) a syslog
//! priority and no timestamp; with `log_format = "json"` one JSON object per line.
mod proxy_kit;

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::{kill, Signal};
use proxy_kit::{free_port, one_tls_vhost, Pki, Scratch};

/// Runs hapd with `config` (its standard error to `log`, `env` added) until it is ready, then
/// stops it; the log's lines.
fn lines_of(
    config: &str,
    dir: &Scratch,
    env: impl Fn(&Path) -> Vec<(String, String)>,
) -> Vec<String> {
    let cfg = dir.path("hapd.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.path("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hapd"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(file);
    for (k, v) in env(&log) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("hapd ready")
    {
        assert!(
            Instant::now() < end,
            "not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn config(dir: &Scratch, extra_node: &str) -> String {
    let pki = Pki::new();
    let (cert, key, chain) = pki.write_leaf(&dir.0, "live", &["app.example"]);
    one_tls_vhost(&cert, &key, Some(&chain), free_port(), free_port()).replacen(
        "[node]\n",
        &format!("[node]\n{extra_node}"),
        1,
    )
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let dir = Scratch::new("journal");
    let cfg = config(&dir, "");
    let lines = lines_of(&cfg, &dir, |log| {
        let m = std::fs::metadata(log).unwrap();
        vec![("JOURNAL_STREAM".into(), format!("{}:{}", m.dev(), m.ino()))]
    });
    let ready = lines.iter().find(|l| l.contains("hapd ready")).unwrap();
    assert!(ready.starts_with("<6>"), "{ready}");
    assert!(lines.iter().all(|l| l.starts_with('<')), "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("2026-") || l.contains("Z ")),
        "{lines:?}"
    );
    // Another stream in JOURNAL_STREAM (a child of a journald service writing elsewhere):
    // the usual lines, with timestamps.
    let dir2 = Scratch::new("journal2");
    let cfg = config(&dir2, "");
    let lines = lines_of(&cfg, &dir2, |_| {
        vec![("JOURNAL_STREAM".into(), "1:1".into())]
    });
    assert!(!lines.iter().any(|l| l.starts_with("<6>")), "{lines:?}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let dir = Scratch::new("json");
    let cfg = config(&dir, "log_format = \"json\"\n");
    let lines = lines_of(&cfg, &dir, |_| Vec::new());
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"hapd ready\"")),
        "{lines:?}"
    );
}
