//! hapd's benchmark suites: `bench <suite>|all [--quick]`, normally through `cargo xtask bench`.
//! Each suite prints progress, then writes `bench/results/<suite>-<timestamp>.{json,md}`.
mod report;
mod xdp;

use clap::Parser;

#[derive(Parser)]
#[command(about = "hapd benchmarks (run as root; they build labs of network namespaces)")]
struct Cli {
    /// `xdp`, or `all`.
    suite: String,
    /// Short runs for a smoke check (numbers are rough).
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let suites: Vec<&str> = match cli.suite.as_str() {
        "all" => vec!["xdp"],
        s @ "xdp" => vec![s],
        other => anyhow::bail!("unknown suite {other:?}; suites: xdp, all"),
    };
    for s in suites {
        let report = match s {
            "xdp" => xdp::run(cli.quick)?,
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
