//! Suite reports: raw rounds and machine facts as JSON, tables as Markdown.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::Context as _;
use serde::Serialize;

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    /// The CPU model (`/proc/cpuinfo`'s first `model name`).
    pub cpu_model: String,
    pub kernel: String,
    /// What the measured hapd binary says of itself (`hapd --version`: the version and the
    /// commit it was built from, `-dirty` for a tree with changes).
    pub hapd: String,
    /// The first line each peer and load tool prints about its version.
    pub versions: std::collections::BTreeMap<String, String>,
}

/// `program args...` whose output names its version.
const VERSION_COMMANDS: [(&str, &[&str]); 7] = [
    ("keepalived", &["--version"]),
    ("nginx", &["-v"]),
    ("haproxy", &["-v"]),
    ("apache2", &["-v"]),
    ("wrk", &["--version"]),
    ("h2load", &["--version"]),
    ("bpftool", &["--version"]),
];

impl Machine {
    pub fn read() -> Machine {
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|c| {
                    c.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, m)| m.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into()),
            kernel,
            hapd: crate::hapd_bin()
                .ok()
                .and_then(|b| Command::new(b).arg("--version").output().ok())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| {
                    format!("hapd {} (binary not found)", env!("CARGO_PKG_VERSION"))
                }),
            versions: VERSION_COMMANDS
                .iter()
                .filter_map(|(prog, args)| {
                    let o = Command::new(prog).args(*args).output().ok()?;
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    let line = text
                        .lines()
                        .find(|l| !l.trim().is_empty())?
                        .trim()
                        .to_string();
                    Some((prog.to_string(), line))
                })
                .collect(),
        }
    }
}

/// One table of a report: a title, column names, rows of cells, and notes under it.
#[derive(Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    /// Drawn as `<report>-<n>.svg` beside the Markdown, shown under the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<crate::plot::Plot>,
}

#[derive(Serialize)]
pub struct Report {
    pub suite: String,
    pub timestamp: String,
    pub command: String,
    pub machine: Machine,
    pub tables: Vec<Table>,
    /// Every measurement of every round, for whoever wants to redo the statistics.
    pub raw: serde_json::Value,
}

impl Report {
    pub fn new(suite: &str, quick: bool) -> Report {
        let ts = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        Report {
            suite: suite.into(),
            timestamp: ts,
            command: format!(
                "cargo xtask bench {suite}{}",
                if quick { " --quick" } else { "" }
            ),
            machine: Machine::read(),
            tables: Vec::new(),
            raw: serde_json::Value::Null,
        }
    }

    /// The report as Markdown, without the plots (for the terminal).
    pub fn markdown(&self) -> String {
        self.markdown_with(None)
    }

    fn stem(&self) -> String {
        format!("{}-{}", self.suite, self.timestamp.replace(':', ""))
    }

    fn plot_file(stem: &str, n: usize) -> String {
        format!("{stem}-{n}.svg")
    }

    fn markdown_with(&self, plots_of: Option<&str>) -> String {
        let mut s = format!(
            "# {} benchmark, {}\n\n`{}` on {} cores ({}), kernel {}, {}.\n",
            self.suite,
            self.timestamp,
            self.command,
            self.machine.cores,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.hapd
        );
        for t in &self.tables {
            s += &format!(
                "\n## {}\n\n| {} |\n|{}\n",
                t.title,
                t.columns.join(" | "),
                " --- |".repeat(t.columns.len())
            );
            for r in &t.rows {
                s += &format!("| {} |\n", r.join(" | "));
            }
            for n in &t.notes {
                s += &format!("\n{n}\n");
            }
            if let (Some(stem), Some(p)) = (plots_of, &t.plot) {
                let file = Self::plot_file(
                    stem,
                    self.tables
                        .iter()
                        .position(|x| std::ptr::eq(x, t))
                        .unwrap_or(0),
                );
                s += &format!("\n![{}]({file})\n", p.title);
            }
        }
        if !self.machine.versions.is_empty() {
            s += "\n## Versions\n\n";
            for (k, v) in &self.machine.versions {
                s += &format!("- {k}: {v}\n");
            }
        }
        s
    }

    /// Writes `bench/results/<suite>-<timestamp>.{json,md}`; returns both paths.
    pub fn write(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = self.stem();
        for (i, t) in self.tables.iter().enumerate() {
            if let Some(p) = &t.plot {
                let file = dir.join(Self::plot_file(&stem, i));
                p.render(&file)
                    .with_context(|| format!("drawing {}", file.display()))?;
            }
        }
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&md, self.markdown_with(Some(&stem)))
            .with_context(|| format!("writing {}", md.display()))?;
        Ok((json, md))
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`); 0 if it is gone.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Median and (min, max) of `v` (not empty).
pub fn median_spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (m, s[0], s[s.len() - 1])
}
