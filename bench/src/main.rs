//! hapd's benchmark suites: `bench <suite>|all [--quick]`, normally through `cargo xtask bench`.
//! Each suite prints progress, then writes `bench/results/<suite>-<timestamp>.{json,md}`.
mod anycast;
mod cleanup;
mod failover;
mod fuzz;
mod history;
mod idle;
mod interop;
mod keepalived243;
mod moves;
mod plot;
mod proxy;
mod report;
mod spoof;
mod xdp;

use clap::Parser;

#[derive(Parser)]
#[command(about = "hapd benchmarks (run as root; they build labs of network namespaces)")]
struct Cli {
    /// `xdp`, `failover`, `proxy`, `idle`, `anycast`, `interop`, `fuzz`, or `all` (all but
    /// `fuzz` and `interop`, which needs keepalived 2.4.3's source beside the clone); or
    /// `history`, which measures nothing and prints the last full proxy runs' table.
    suite: String,
    /// Short runs for a smoke check (numbers are rough).
    #[arg(long)]
    quick: bool,
    /// `proxy` suite only: run these proxies alone (comma-separated: hapd, nginx, haproxy,
    /// apache2), to look into one comparison. The report says it is partial.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
}

/// The `hapd` binary the suites run: `HAPD_BIN`, or the workspace's release build.
pub fn hapd_bin() -> anyhow::Result<std::path::PathBuf> {
    let p = std::env::var_os("HAPD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/hapd")
        });
    if !p.exists() {
        anyhow::bail!(
            "{} not found; build it with `cargo build --release -p proxy-userspace` (cargo xtask bench does)",
            p.display()
        );
    }
    Ok(p)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.peers.is_empty() && cli.suite != "proxy" {
        anyhow::bail!("--peers is for the proxy suite only");
    }
    if cli.suite == "history" {
        // Not a measurement: the last full proxy runs from their reports, as Markdown.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        print!("{}", history::tables(&dir, 10)?);
        return Ok(());
    }
    cleanup::install()?;
    let suites: Vec<&str> = match cli.suite.as_str() {
        "all" => vec!["xdp", "failover", "proxy", "idle", "anycast"],
        s @ ("xdp" | "failover" | "proxy" | "idle" | "anycast" | "interop" | "fuzz") => vec![s],
        other => {
            anyhow::bail!(
                "unknown suite {other:?}; suites: xdp, failover, proxy, idle, anycast, interop, fuzz, all (and history: the last proxy runs' table)"
            )
        }
    };
    for s in suites {
        let report = match s {
            "xdp" => xdp::run(cli.quick)?,
            "failover" => failover::run(cli.quick)?,
            "proxy" => proxy::run(cli.quick, &cli.peers)?,
            "idle" => idle::run(cli.quick)?,
            "anycast" => anycast::run(cli.quick)?,
            "interop" => interop::run(cli.quick)?,
            "fuzz" => fuzz::run(cli.quick)?,
            _ => unreachable!("suite names are checked above"),
        };
        let (json, md) = report.write()?;
        println!(
            "\n{}\nwritten: {}\n         {}",
            report.markdown(),
            json.display(),
            md.display()
        );
    }
    Ok(())
}
