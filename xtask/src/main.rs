//! Project tasks: `cargo xtask setup | demo | bench | dist`.
mod demo;
mod dist;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hapd project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh Debian 12 machine lacks to build, test and demo hapd (idempotent).
    Setup,
    /// Build hapd and show a failover pair with the proxy on the VIP, and the XDP guard, in a
    /// network-namespace lab.
    Demo,
    /// Build the Debian package: target/debian/hapd_<version>_<arch>.deb (see docs/operations.md).
    Dist {
        /// Package the binary already built for this cargo profile (`release`, `dev`) instead
        /// of building hapd in release first.
        #[arg(long)]
        no_build: Option<String>,
        /// Where to write the package (a file or a directory).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Run a benchmark suite (see bench/README.md): `xdp`, `failover`, `proxy`, `idle`, `fuzz`,
    /// or `all` (every suite but `fuzz`); `history` prints the last full proxy runs' table from
    /// their reports.
    Bench {
        /// Suite name.
        suite: String,
        /// Short runs, for a smoke check.
        #[arg(long)]
        quick: bool,
        /// `proxy` suite only: run these proxies alone (comma-separated, e.g. `hapd,haproxy`),
        /// to look into one comparison; the report says it is partial.
        #[arg(long)]
        peers: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => demo::run(),
        Task::Dist { no_build, output } => dist::run(no_build.as_deref(), output.as_deref()),
        Task::Bench {
            suite,
            quick,
            peers,
        } => {
            // `history` reads the reports only: nothing to build for it.
            if suite != "history" {
                build_hapd()?;
            }
            let mut c = cargo();
            c.args(["run", "--release", "--quiet", "-p", "bench", "--", &suite]);
            if quick {
                c.arg("--quick");
            }
            if let Some(p) = peers {
                c.args(["--peers", &p]);
            }
            run(&mut c)
        }
    }
}

/// Builds `hapd` in release and returns its path.
pub fn build_hapd() -> anyhow::Result<std::path::PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "proxy-userspace",
        "--bin",
        "hapd",
    ]))?;
    Ok(root().join("target/release/hapd"))
}

/// The cargo that runs us.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `c`, failing with its name if it fails.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed: {st}");
    }
    Ok(())
}

/// The workspace root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}
