//! The `fuzz` suite: the long fuzz run. Each target of `fuzz/` (cargo-fuzz, libFuzzer with
//! AddressSanitizer, nightly) runs for a fixed time on the corpus kept in the repository
//! (`fuzz/corpus/<target>`, which the run extends with the new inputs it finds). A crash
//! fails the suite and leaves its input in `fuzz/artifacts/<target>/`.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _};

use crate::report::{Report, Table};

const TARGETS: [&str; 8] = [
    "vrrp_message",
    "config_text",
    "guard_frame",
    "xdp_frame",
    "http1_head",
    "http1_chunked",
    "import_keepalived",
    "import_apache",
];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// cargo-fuzz, installed on first use (crates.io).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    println!("[fuzz] installing cargo-fuzz (once)");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

/// libFuzzer's final `stat::NAME: VALUE` line.
fn stat(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

pub fn run(quick: bool) -> anyhow::Result<Report> {
    ensure_cargo_fuzz()?;
    let secs = if quick { 10 } else { 120 };
    let dir = fuzz_dir();
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for t in TARGETS {
        println!("[fuzz] {t}: building and running for {secs} s");
        let corpus = dir.join("corpus").join(t);
        let before = std::fs::read_dir(&corpus)?.count();
        let t0 = Instant::now();
        let out = Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-max_len=4096",
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("cargo fuzz run {t}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            bail!(
                "{t}: the fuzzer failed (a crash leaves its input in fuzz/artifacts/{t}/):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let execs = stat(&text, "number_of_executed_units").unwrap_or(0);
        let after = std::fs::read_dir(&corpus)?.count();
        let wall = t0.elapsed().as_secs_f64();
        rows.push(vec![
            t.to_string(),
            format!("{secs}"),
            format!("{execs}"),
            format!("{:.0}", execs as f64 / secs as f64),
            format!("{before} -> {after}"),
            "0".into(),
        ]);
        raw.push(serde_json::json!({
            "target": t, "seconds": secs, "executions": execs, "corpus_before": before,
            "corpus_after": after, "wall_s": wall, "crashes": 0,
        }));
    }
    let mut report = Report::new("fuzz", quick);
    report.tables.push(Table {
        title: "Fuzzing (cargo-fuzz, libFuzzer + AddressSanitizer)".into(),
        columns: vec![
            "target".into(),
            "seconds".into(),
            "executions".into(),
            "exec/s".into(),
            "corpus files".into(),
            "crashes".into(),
        ],
        rows,
        notes: vec![
            "Targets in proxy-userspace/src/fuzz.rs: vrrp_message (parse never panics; parse(emit(a)) == a in both checksum modes), config_text (loading any text never panics), guard_frame (the guard's decision procedure, the code the XDP program runs, on any frame), xdp_frame (the XDP program itself through BPF_PROG_TEST_RUN, against the userspace path: same action, same counter), http1_head (the request head parser against httparse, and its smuggling rules: one framing field at most, chunked only from `Transfer-Encoding: chunked`, every refusal justified), http1_chunked (the chunked decoder, whole, split and byte by byte, against an RFC 9112 reference decoder), import_keepalived and import_apache (`hapd import` on any text: no panic, an Ok result loads). The test command runs the same targets on the corpus plus seeded mutations (200k for the VRRP and guard targets, 30k for the HTTP/1 ones, fewer for the config and import ones), and the XDP program itself against the userspace path on 20k mutated frames.".into(),
        ],
        plot: None,
    });
    report.raw = serde_json::json!({ "runs": raw });
    Ok(report)
}
