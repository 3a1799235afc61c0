//! The `hapd` command.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use proxy_userspace::{config::Config, daemon, proxy};

/// hapd: highly available proxy daemon (VRRP failover with an XDP guard, and a TLS proxy).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    ///
    /// Example: hapd run --config /etc/hapd/hapd.toml
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/hapd/hapd.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file, print a summary and warnings; exit 1 if it is invalid.
    ///
    /// Example: hapd check --config /etc/hapd/hapd.toml
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/hapd/hapd.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // A supervisor may start us with signals blocked (the mask is inherited across exec);
    // SIGTERM must reach the graceful stop.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok((cfg, warnings)) => {
                println!(
                    "{}: valid; node {}, {} VRRP instance(s), {} track script(s)",
                    config.display(),
                    cfg.node.name,
                    cfg.vrrp.len(),
                    cfg.track_script.len()
                );
                for v in &cfg.vrrp {
                    let v = v.get_ref();
                    println!(
                        "  vrrp {}: {} vrid {} v{} priority {} interval {} vips {} peers {} xdp {}",
                        v.name,
                        v.interface,
                        v.vrid,
                        v.version.number(),
                        v.priority,
                        v.advert_interval,
                        v.virtual_ips.len(),
                        v.peers.len(),
                        v.xdp
                    );
                }
                if !cfg.listener.is_empty() || !cfg.vhost.is_empty() {
                    println!(
                        "  proxy: {} listener(s), {} upstream(s), {} vhost(s), {} certificate(s)",
                        cfg.listener.len(),
                        cfg.upstream.len(),
                        cfg.vhost.len(),
                        cfg.tls.as_ref().map_or(0, |t| t.certificate.len())
                    );
                }
                for w in &warnings {
                    println!("warning: {w}");
                }
                match proxy::check_files(&cfg) {
                    Ok(cert_warnings) => {
                        for w in &cert_warnings {
                            println!("warning: {w}");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {}: {e}", config.display());
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            init_logging();
            let (cfg, warnings) = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            for w in &warnings {
                tracing::warn!("config: {w}");
            }
            // The VRRP engine runs on one thread: it is one task that sleeps between adverts,
            // and a single-threaded runtime wakes only itself (no worker hand-offs), which keeps
            // an idle pair at 10 ms adverts cheap and its timing independent of other work.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The proxy runs on a multi-threaded runtime of its own (see proxy/mod.rs).
            let proxy = if proxy::configured(&cfg) {
                match proxy::start(&cfg) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::error!("proxy: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            let drain = cfg
                .server
                .as_ref()
                .map_or(Duration::from_secs(10), |s| s.drain_timeout.0);
            let result = if cfg.vrrp.is_empty() {
                rt.block_on(proxy_only(&cfg.node.name))
            } else {
                let opts = daemon::Options {
                    proxy_health: proxy.as_ref().map(|p| p.health.clone()),
                    shutdown: None,
                };
                rt.block_on(daemon::run_with(cfg, opts))
            };
            // VRRP has handed the VIPs over by now; let requests in flight finish.
            if let Some(p) = proxy {
                p.stop(drain);
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// A node with a proxy and no VRRP instance: serve until SIGTERM or SIGINT.
async fn proxy_only(node: &str) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(node, instances = 0, "hapd ready");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
