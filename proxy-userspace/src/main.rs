//! The `hapd` command.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use hyper::Method;
use proxy_userspace::{
    admin,
    config::Config,
    daemon::{self, Ended},
    drill, proxy,
    upgrade::{self, Role, Successor},
};

/// hapd: highly available proxy daemon (VRRP failover with an XDP guard, and a TLS proxy).
#[derive(Parser)]
#[command(name = "hapd", version = build_info::LONG, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT (SIGHUP reloads).
    ///
    /// Example: hapd run --config /etc/hapd/hapd.toml
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file, print a summary, warnings and its parity digests;
    /// exit 1 if it is invalid. With --peer, also compare the digests with those of a running
    /// peer over the cluster channel (before a change goes live); exit 2 if they differ.
    ///
    /// Examples: hapd check --config /etc/hapd/hapd.toml;  hapd check --peer proxy02
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A peer of [cluster] (its name or address as in cluster.peers) to compare with.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Show the running daemon's state: VRRP instances, guard counters, upstreams, certificates.
    ///
    /// It asks the admin endpoint named in the config (node.admin) or given with --admin.
    ///
    /// Examples: hapd status;  hapd status --json;  hapd status --admin 127.0.0.1:8410
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the JSON the admin endpoint answers (GET /status) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its config file and apply it without dropping
    /// connections: vhosts, routes, upstreams, log files and certificates. Changes to [node],
    /// VRRP, [server] or listeners are refused (they need a restart) and nothing is applied.
    ///
    /// Example: hapd reload
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Replace the running daemon with a new process of a new binary, without a failed
    /// request or a VRRP transition: the new process takes the listening sockets, the pinned
    /// guard and the VRRP state; the old one drains its connections and exits. If the new one
    /// does not become ready (a config it refuses, a guard layout it cannot use), the old one
    /// serves on and the command fails with the reason.
    ///
    /// It asks the daemon on its control socket (node.control_socket; root only).
    ///
    /// Example: hapd upgrade;  hapd upgrade --binary /usr/sbin/hapd.new --config /etc/hapd/new.toml
    Upgrade {
        /// The config the new process runs (default: the one the daemon runs); its
        /// node.control_socket is where the daemon is asked.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The new binary (default: the daemon's own path on disk).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The control socket to ask instead of the config's node.control_socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// How long the new process has to become ready.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Take this node out of an [[anycast]] group for maintenance and put it back: `drain`
    /// withdraws the group's prefixes through BIRD, then ends the connections to them at
    /// request boundaries; `undrain` announces them again once the proxy is healthy.
    ///
    /// Example: hapd anycast drain web;  hapd anycast undrain web
    Anycast {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: AnycastAction,
    },
    /// Write the man pages (section 8) and the bash, zsh and fish completions into a
    /// directory, for packaging (`cargo xtask dist`).
    #[command(hide = true)]
    Generate {
        /// The directory: man pages go to OUT/man, completions to OUT/completions.
        #[arg(long)]
        out: PathBuf,
    },
    /// Failover drill, run on the master: step down, watch the VIP move with a client probe,
    /// report the outage, then hand back (the master takes over again if preempt is on).
    ///
    /// It refuses to start unless this node is master, the probe answers, and the peer (asked
    /// at --peer-admin) is a healthy backup that hears this node.
    ///
    /// Example: hapd drill --probe http://10.0.1.100/ --peer-admin 10.0.1.11:8410
    Drill {
        #[command(flatten)]
        target: Target,
        /// The VRRP instance (needed when the node runs more than one).
        #[arg(long)]
        instance: Option<String>,
        /// URL a client would use through the VIP (http://VIP[:PORT]/PATH). Any HTTP answer
        /// counts as served.
        #[arg(long)]
        probe: String,
        /// The peer's admin endpoint, to check it is a healthy backup before stepping down.
        #[arg(long, required_unless_present = "no_peer_check")]
        peer_admin: Option<SocketAddr>,
        /// Skip the peer check (not safe: if the peer cannot take over, the VIP is
        /// unanswered for one Master_Down_Interval before this node takes it back).
        #[arg(long)]
        no_peer_check: bool,
        /// Time between probes.
        #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
        probe_interval: Duration,
        /// Time after which a probe counts as failed.
        #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
        probe_timeout: Duration,
        /// How long to watch each step (step-down, hand-back) before giving up.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Exit 1 when an outage is longer than this.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_outage: Option<Duration>,
        /// Drill even though the nodes' configurations differ (parity drift).
        #[arg(long)]
        force: bool,
    },
    /// Turn a keepalived.conf and an Apache vhost file into a hapd config (printed, or written
    /// with --output). Directives that cannot be mapped are kept as comments saying why.
    ///
    /// Example: hapd import --keepalived /etc/keepalived/keepalived.conf
    ///   --apache /etc/httpd/conf.d/app.conf --peer 10.0.1.11 --output /etc/hapd/hapd.toml
    Import {
        /// keepalived configuration file.
        #[arg(long)]
        keepalived: Option<PathBuf>,
        /// Apache httpd configuration file with the vhosts.
        #[arg(long)]
        apache: Option<PathBuf>,
        /// The other node's address (repeat for more): the VRRP peers the XDP guard allows.
        #[arg(long)]
        peer: Vec<std::net::IpAddr>,
        /// Write here instead of standard output (refuses to overwrite an existing file).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

const DEFAULT_CONFIG: &str = "/etc/hapd/hapd.toml";

#[derive(Subcommand)]
enum AnycastAction {
    /// Withdraw group NAME and end its connections at request boundaries.
    Drain { group: String },
    /// Announce group NAME again (after its rise and hold_down).
    Undrain { group: String },
}

/// Which daemon a client command talks to.
#[derive(clap::Args)]
struct Target {
    /// The configuration file; its node.admin is the address asked.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The admin endpoint to ask instead of the config's node.admin.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl Target {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(a) = self.admin {
            return Ok(a);
        }
        let (cfg, _) = Config::load(&self.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut a = cfg.node.admin;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(a)
    }
}

fn main() -> ExitCode {
    // A supervisor may start us with signals blocked (the mask is inherited across exec);
    // SIGTERM must reach the graceful stop.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, peer } => check(&config, peer.as_deref()),
        Command::Generate { out } => match generate(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}: {e:#}", out.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => run(config),
        Command::Import {
            keepalived,
            apache,
            peer,
            output,
        } => import(
            keepalived.as_ref(),
            apache.as_ref(),
            &peer,
            output.as_deref(),
        ),
        Command::Status { target, json } => client(async move {
            let addr = target.addr()?;
            if json {
                let (code, body) = admin::client::request(addr, Method::GET, "/status").await?;
                print!("{body}");
                return Ok(code == 200);
            }
            let st = admin::client::status(addr).await?;
            print!("{}", st.render());
            let problems = st.problems();
            for p in &problems {
                println!("problem: {p}");
            }
            Ok(problems.is_empty())
        }),
        Command::Reload { target } => client(async move {
            let addr = target.addr()?;
            let (code, body) = admin::client::request(addr, Method::POST, "/reload").await?;
            if code == 200 {
                print!("{body}");
            } else {
                eprint!("error: {body}");
            }
            Ok(code == 200)
        }),
        Command::Anycast { target, action } => client(async move {
            let addr = target.addr()?;
            let (path, group) = match &action {
                AnycastAction::Drain { group } => ("/anycast/drain", group),
                AnycastAction::Undrain { group } => ("/anycast/undrain", group),
            };
            let (code, body) = admin::client::request(
                addr,
                Method::POST,
                &format!(
                    "{path}?group={}",
                    url::form_urlencoded::byte_serialize(group.as_bytes()).collect::<String>()
                ),
            )
            .await?;
            if code == 200 {
                print!("{body}");
            } else {
                eprint!("error: {body}");
            }
            Ok(code == 200)
        }),
        Command::Upgrade {
            config,
            binary,
            socket,
            timeout,
        } => client(async move {
            let absolute = |p: PathBuf| {
                std::fs::canonicalize(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            };
            let config = config.map(absolute).transpose()?;
            let binary = binary.map(absolute).transpose()?;
            let socket = match socket {
                Some(s) => s,
                None => {
                    let file = config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
                    let (cfg, _) = Config::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
                    cfg.node.control_socket
                }
            };
            let req = upgrade::Request {
                binary,
                config,
                timeout,
            };
            match upgrade::request(&socket, &req).await? {
                Ok(msg) => {
                    println!("{msg}");
                    Ok(true)
                }
                Err(msg) => {
                    eprintln!("error: {msg}");
                    Ok(false)
                }
            }
        }),
        Command::Drill {
            target,
            instance,
            probe,
            peer_admin,
            no_peer_check: _,
            probe_interval,
            probe_timeout,
            timeout,
            max_outage,
            force,
        } => client(async move {
            let plan = drill::Plan {
                admin: target.addr()?,
                instance,
                probe: drill::Probe::parse(&probe)?,
                peer_admin,
                probe_interval,
                probe_timeout,
                timeout,
                max_outage,
                force,
            };
            drill::run(plan).await
        }),
    }
}

fn import(
    keepalived: Option<&PathBuf>,
    apache: Option<&PathBuf>,
    peers: &[std::net::IpAddr],
    output: Option<&std::path::Path>,
) -> ExitCode {
    let imported = match proxy_userspace::import::run(keepalived, apache, peers) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match output {
        None => print!("{}", imported.toml),
        Some(p) => {
            // The config may hold auth_pass: readable by root only, as the package's.
            use std::os::unix::fs::OpenOptionsExt as _;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, imported.toml.as_bytes()));
            if let Err(e) = written {
                eprintln!("error: writing {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", p.display());
        }
    }
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} directive(s) not mapped: see the `# not mapped` comments",
        imported.unmapped
    );
    ExitCode::SUCCESS
}

/// Runs a client command; `Ok(false)` and errors exit 1.
fn client(f: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &std::path::Path, peer: Option<&str>) -> ExitCode {
    match Config::load(config) {
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
                    "  vrrp {}: {} vrid {} v{} {} priority {} interval {} vips {} peers {} xdp {}",
                    v.name,
                    v.interface,
                    v.vrid,
                    v.version.number(),
                    v.family().name(),
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
            println!("  admin endpoint: {}", cfg.node.admin);
            println!("  control socket: {}", cfg.node.control_socket.display());
            if let Ok(r) = proxy_userspace::config::scripts::run_as(cfg.node.script_user.as_deref())
            {
                match r {
                    Some(r) => println!(
                        "  scripts run as: {} (uid {}, gid {})",
                        r.name, r.uid, r.gid
                    ),
                    None => println!("  scripts run as: hapd's own user"),
                }
            }
            for w in &warnings {
                println!("warning: {w}");
            }
            for g in &cfg.anycast {
                let g = g.get_ref();
                println!(
                    "  anycast {}: {} prefix(es) on {}, BIRD protocol {} at {}",
                    g.name,
                    g.prefixes.len(),
                    g.interface,
                    g.bird_protocol,
                    g.bird_socket.display()
                );
                let seen = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|rt| rt.block_on(proxy_userspace::anycast::check(g)));
                match seen {
                    Ok(None) => {}
                    Ok(Some(w)) => println!("warning: anycast {}: {w}", g.name),
                    Err(e) => {
                        eprintln!("error: {}: anycast {}: {e}", config.display(), g.name);
                        return ExitCode::FAILURE;
                    }
                }
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
            if let Some(c) = &cfg.cluster {
                if let Err(e) = proxy_userspace::cluster::channel::Credentials::load(
                    c.get_ref(),
                    &cfg.node.name,
                ) {
                    eprintln!("error: {}: {e:#}", config.display());
                    return ExitCode::FAILURE;
                }
                let c = c.get_ref();
                println!(
                    "  cluster: listen {}, peers {}, certificate sync {}",
                    c.listen,
                    c.peers
                        .iter()
                        .map(|p| format!("{} at {}", p.name, p.address))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if c.sync_certificates { "on" } else { "off" }
                );
            }
            // What must match the other nodes', section by section (docs/operations.md,
            // "Parity between the nodes"): the same digest on every node is parity.
            let parity = match proxy_userspace::parity::Parity::of(&cfg) {
                Ok(p) => {
                    for name in proxy_userspace::parity::SECTIONS {
                        if let Some(s) = p.sections.get(name) {
                            println!("  parity {name:<12} {}", s.digest);
                        }
                    }
                    p
                }
                Err(e) => {
                    eprintln!("error: {}: parity: {e:#}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            match peer {
                None => ExitCode::SUCCESS,
                Some(peer) => compare_with_peer(&cfg, &parity, peer),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hapd check --peer`: this config's digests against a running peer's. Exit 2 on drift.
fn compare_with_peer(
    cfg: &Config,
    parity: &proxy_userspace::parity::Parity,
    peer: &str,
) -> ExitCode {
    let theirs = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(proxy_userspace::cluster::ask(cfg, peer)));
    let theirs = match theirs {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --peer {peer}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let drift = parity.drift(&theirs.parity);
    if drift.is_empty() {
        println!("in parity with {} (running)", theirs.node);
        return ExitCode::SUCCESS;
    }
    println!(
        "drift from {} (running) in: {}",
        theirs.node,
        drift
            .iter()
            .map(|d| d.section.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for d in &drift {
        let digest = |s: &Option<proxy_userspace::parity::Section>| {
            s.as_ref()
                .map_or("(absent)".to_string(), |s| s.digest.clone())
        };
        let shown = |s: &Option<proxy_userspace::parity::Section>| {
            s.as_ref().map_or(String::new(), |s| s.shown.clone())
        };
        println!("  {}:", d.section);
        println!("    this config {}  {}", digest(&d.ours), shown(&d.ours));
        println!(
            "    {:<11} {}  {}",
            theirs.node,
            digest(&d.theirs),
            shown(&d.theirs)
        );
    }
    ExitCode::from(2)
}

fn run(config: PathBuf) -> ExitCode {
    // The log format is in the config; a config that does not load is reported (below) in the
    // default one.
    // Read once: its log format sets up logging, and a config that does not load is reported
    // (below, once a successor can be told too) in the default one.
    let loaded = Config::load(&config);
    init_logging(
        loaded
            .as_ref()
            .map_or(Default::default(), |(c, _)| c.node.log_format),
    );
    let started = std::time::Instant::now();
    let successor_fd = match Successor::fd_from_env() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("upgrade: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
    // SIGHUP and SIGUSR1 are the admin thread's (reload, reopen logs), which a successor
    // starts only when it commits: until then they are caught and dropped here, not fatal
    // (a USR1 from logrotate or an operator may come at any time).
    let _early_signals = {
        let _g = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::hangup()).ok(),
            signal(SignalKind::user_defined1()).ok(),
        )
    };
    let mut successor = match successor_fd {
        None => None,
        Some(fd) => match rt.block_on(Successor::connect(fd)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("upgrade: {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    // A successor's failures before it commits are also its predecessor's answer.
    let fail = |successor: Option<&Successor>, msg: String| -> ExitCode {
        tracing::error!("{msg}");
        if let Some(s) = successor {
            rt.block_on(s.fail(&msg));
        }
        ExitCode::FAILURE
    };
    let (cfg, warnings) = match loaded {
        Ok(c) => c,
        Err(e) => return fail(successor.as_ref(), e.to_string()),
    };
    for w in &warnings {
        tracing::warn!("config: {w}");
    }
    // The cluster's credentials are read now, while a start (or an upgrade, before it commits)
    // can still fail with the reason.
    if let Some(c) = &cfg.cluster {
        if let Err(e) =
            proxy_userspace::cluster::channel::Credentials::load(c.get_ref(), &cfg.node.name)
        {
            return fail(successor.as_ref(), format!("{}: {e:#}", config.display()));
        }
    }
    // Resolved when the config was checked; looked up again here for the ids.
    match proxy_userspace::config::scripts::run_as(cfg.node.script_user.as_deref()) {
        Ok(r) => proxy_userspace::config::scripts::init(r),
        Err(e) => return fail(successor.as_ref(), format!("node.script_user: {e}")),
    }
    let mut inherited_admin = None;
    let mut inherited_cluster = None;
    let mut inherited = Vec::new();
    if let Some(s) = &mut successor {
        if let Err(e) = s.check(&cfg) {
            return fail(Some(s), format!("{}: {e:#}", config.display()));
        }
        inherited = s.take(Role::Listener);
        // The predecessor's admin socket serves on if node.admin did not change.
        inherited_admin = s.take(Role::Admin).pop().filter(|l| {
            l.local_addr()
                .is_ok_and(|a| a == cfg.node.admin || cfg.node.admin.port() == 0)
        });
        inherited_cluster = s.take(Role::Cluster).pop().filter(|l| {
            let want = cfg.cluster.as_ref().map(|c| c.get_ref().listen);
            l.local_addr().is_ok_and(|a| Some(a) == want)
        });
    }
    // The proxy runs on threads of its own (see proxy/mod.rs); a successor's does not accept
    // before it commits.
    let proxy = if proxy::configured(&cfg) {
        let listen = proxy::Listen {
            inherited,
            accepting: successor.is_none(),
        };
        match proxy::start_with(&cfg, listen) {
            Ok(p) => Some(p),
            Err(e) => return fail(successor.as_ref(), format!("proxy: {e:#}")),
        }
    } else {
        None
    };
    // `[[anycast]]` groups: announced through BIRD while the proxy is healthy.
    // A successor starts them once it has committed (its predecessor drives BIRD until then).
    // Second chance: the groups' peer tables go to the daemon, which owns the guard.
    let (tables_tx, tables_rx) = tokio::sync::mpsc::channel(4);
    let guard_xdp = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut anycast, anycast_starter) = if cfg.anycast.is_empty() {
        (None, None)
    } else {
        let groups: Vec<_> = cfg.anycast.iter().map(|g| g.get_ref().clone()).collect();
        let (g, starter) = proxy_userspace::anycast::Groups::new(&groups);
        (
            Some(g),
            Some(starter.with_second_chance(tables_tx, guard_xdp.clone())),
        )
    };
    // The daemon loop runs the guard and VRRP: for [[vrrp]] instances and for the anycast
    // groups' second chance.
    let has_guard = !cfg.vrrp.is_empty() || !cfg.anycast.is_empty();
    let anycast_health = proxy.as_ref().map(|p| p.health.clone());
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(16);
    let vrrp = has_guard.then_some(control_tx);
    let (committed_tx, committed_rx) = tokio::sync::watch::channel(false);
    let services = Services {
        admin_addr: cfg.node.admin,
        admin: admin::Admin {
            config_path: config.clone(),
            running: std::sync::Arc::new(std::sync::Mutex::new(cfg.clone())),
            started,
            vrrp: vrrp.clone(),
            proxy: proxy.as_ref().map(|p| p.view.clone()),
            anycast: anycast.as_ref().map(|a| a.view()),
            cluster: None,
            cluster_error: None,
            reloading: std::sync::Mutex::new(()),
        },
        control_socket: cfg.node.control_socket.clone(),
        host: upgrade::Host {
            config_path: config.clone(),
            instances: upgrade::identities(&cfg),
            anycast: upgrade::anycast_groups(&cfg),
            sockets: Vec::new(),
            handoff_bound: upgrade::handoff_bound(&cfg),
            vrrp,
            committed: committed_tx,
        },
        proxy_sockets: match proxy.as_ref().map(|p| p.sockets()).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => return fail(successor.as_ref(), format!("{e:#}")),
        },
    };
    // The admin endpoint and the control socket: now, or a successor's once it commits.
    let running: std::sync::Arc<std::sync::Mutex<Option<Running>>> = Default::default();
    let successor = successor.map(std::sync::Arc::new);
    match &successor {
        None => {
            match services.start(None, None, false) {
                Ok(r) => *running.lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
                Err(e) => return fail(None, format!("{e:#}")),
            }
            if let Some(a) = anycast_starter {
                let _g = rt.enter();
                a.start(anycast_health, false);
            }
        }
        Some(s) => {
            let mut committed = s.subscribe();
            let gate = proxy.as_ref().map(|p| p.accept_gate());
            let slot = running.clone();
            rt.spawn(async move {
                if committed.wait_for(|c| *c).await.is_err() {
                    return;
                }
                if let Some(g) = gate {
                    g.send_replace(true);
                }
                if let Some(a) = anycast_starter {
                    a.start(anycast_health, true);
                }
                match services.start(inherited_admin, inherited_cluster, true) {
                    Ok(r) => *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
                    Err(e) => tracing::error!("after the upgrade: {e:#}"),
                }
            });
        }
    }
    let drain = cfg
        .server
        .as_ref()
        .map_or(Duration::from_secs(10), |s| s.drain_timeout.0);
    let watchdog =
        proxy_userspace::notify::watchdog_period(successor.as_ref().map(|s| s.offer.pid));
    // With anycast groups the guard outlives the loop, until the connections are gone.
    let (keep_tx, mut keep_rx) = tokio::sync::oneshot::channel();
    let result = if !has_guard {
        rt.block_on(proxy_only(
            &cfg.node.name,
            successor.as_deref(),
            committed_rx,
            proxy.as_ref().map(|p| p.view.clone()),
            watchdog,
        ))
    } else {
        let opts = daemon::Options {
            proxy_health: proxy.as_ref().map(|p| p.health.clone()),
            shutdown: None,
            control: Some(control_rx),
            anycast: (!cfg.anycast.is_empty()).then_some((tables_rx, guard_xdp)),
            keep_guard: (!cfg.anycast.is_empty()).then_some(keep_tx),
            proxy: proxy.as_ref().map(|p| p.view.clone()),
            successor: successor.clone(),
            watchdog,
        };
        rt.block_on(daemon::run_with(cfg, opts))
    };
    // A successor that has not committed tells its predecessor why.
    if let (Err(e), Some(s)) = (&result, &successor) {
        if !*s.subscribe().borrow() {
            return fail(Some(s), format!("{e:#}"));
        }
    }
    drop(running.lock().unwrap_or_else(|e| e.into_inner()).take());
    // Stopping (not handing over): the prefixes are withdrawn before the proxy drains.
    let handed_over = matches!(result, Ok(Ended::HandedOver));
    let mut withdrawn = true;
    if let (Some(a), false) = (&mut anycast, handed_over) {
        withdrawn = rt.block_on(a.withdraw_all(drain));
        // The router still sends here until BGP has told it: keep accepting meanwhile.
        std::thread::sleep(proxy_userspace::anycast::SETTLE);
    }
    // The prefixes leave `lo` only once BIRD no longer announces them.
    let release = |a: &Option<proxy_userspace::anycast::Groups>| {
        if let (Some(a), true) = (a, withdrawn) {
            rt.block_on(a.release());
        }
    };
    // The guard kept for the drain (see below): detached once the connections are gone and
    // the prefixes released.
    let kept_guard = keep_rx.try_recv().ok();
    match result {
        Ok(Ended::HandedOver) => {
            // The successor accepts on the same sockets: ours end at request boundaries.
            if let Some(p) = proxy {
                let (open, took) = p.retire(drain);
                tracing::info!("upgrade: {open} connection(s) drained in {took:?}; exiting");
            }
            ExitCode::SUCCESS
        }
        Ok(Ended::Stopped) => {
            // VRRP has handed the VIPs over by now (and anycast withdrawn its prefixes, the
            // router sending their flows elsewhere and second chance bringing them back
            // here): every connection left ends at a request boundary, as in a planned move,
            // so that a kept-alive client is never cut while idle.
            if let Some(p) = proxy {
                let (open, took) = p.retire(drain);
                if open > 0 {
                    tracing::info!("{open} connection(s) ended at request boundaries in {took:?}");
                }
            }
            release(&anycast);
            drop(kept_guard);
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(p) = proxy {
                p.stop(drain);
            }
            release(&anycast);
            drop(kept_guard);
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `run` starts beside the proxy and VRRP: the admin endpoint and the control socket.
struct Services {
    admin_addr: SocketAddr,
    admin: admin::Admin,
    control_socket: PathBuf,
    host: upgrade::Host,
    proxy_sockets: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
}

/// The running admin endpoint and control socket (stopped when dropped).
struct Running {
    _admin: admin::AdminHandle,
    _control: Option<upgrade::ControlSocket>,
}

impl Services {
    /// Starts them (and `[cluster]` on the admin thread); `inherited` and `cluster_socket` are
    /// the admin and cluster sockets of a predecessor, and `replace` lets the control socket
    /// take over a path another process answers on (the predecessor's).
    fn start(
        mut self,
        inherited: Option<std::net::TcpListener>,
        cluster_socket: Option<std::net::TcpListener>,
        replace: bool,
    ) -> anyhow::Result<Running> {
        let tls = self.admin.proxy.as_ref().and_then(|p| p.tls());
        // A successor has committed by now: a cluster that cannot start (its listening
        // address taken) must not take the admin endpoint and the control socket with it.
        let cluster = match proxy_userspace::cluster::Cluster::new(
            self.admin.running.clone(),
            tls,
            cluster_socket,
        ) {
            Ok(c) => c,
            Err(e) if replace => {
                tracing::error!("{e:#}; running without the cluster channel until a restart");
                self.admin.cluster_error = Some(format!("{e:#}"));
                None
            }
            Err(e) => return Err(e),
        };
        let cluster_offer = match cluster.as_ref().map(|c| c.socket()).transpose() {
            Ok(o) => o.flatten(),
            Err(e) if replace => {
                tracing::warn!("cluster: {e:#}; a later upgrade opens the channel anew");
                None
            }
            Err(e) => return Err(e),
        };
        self.admin.cluster = cluster;
        let admin = admin::start(self.admin_addr, self.admin, inherited)?;
        let mut sockets = vec![(
            upgrade::Offered {
                role: Role::Admin,
                addr: admin.addr,
            },
            admin.socket.try_clone()?,
        )];
        if let Some((addr, fd)) = cluster_offer {
            sockets.push((
                upgrade::Offered {
                    role: Role::Cluster,
                    addr,
                },
                fd,
            ));
        }
        for (addr, fd) in self.proxy_sockets {
            sockets.push((
                upgrade::Offered {
                    role: Role::Listener,
                    addr,
                },
                fd,
            ));
        }
        self.host.sockets = sockets;
        // Without it the node serves as well; only `hapd upgrade` cannot reach it.
        let control = match upgrade::ControlSocket::start(&self.control_socket, self.host, replace)
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("{e:#}; `hapd upgrade` cannot reach this process");
                None
            }
        };
        Ok(Running {
            _admin: admin,
            _control: control,
        })
    }
}

/// A node with a proxy and no VRRP instance: serve until SIGTERM or SIGINT, or until a
/// successor committed (`handed_over`). A successor commits at once.
async fn proxy_only(
    node: &str,
    successor: Option<&Successor>,
    mut handed_over: tokio::sync::watch::Receiver<bool>,
    proxy: Option<std::sync::Arc<proxy::ProxyView>>,
    watchdog: Option<Duration>,
) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Some(s) = successor {
        s.prepared().await?;
        s.committed().await?;
    }
    tracing::info!(node, instances = 0, "hapd ready");
    proxy_userspace::notify::ready();
    let mut tick = watchdog.map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
            // Only a commit ends it (without a control socket the sender is gone: never).
            Ok(_) = handed_over.wait_for(|h| *h) => return Ok(Ended::HandedOver),
            _ = async {
                match &mut tick {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                proxy_userspace::notify::watchdog(proxy.as_deref()).await;
            }
        }
    }
    proxy_userspace::notify::stopping();
    Ok(Ended::Stopped)
}

fn init_logging(format: proxy_userspace::config::LogFormat) {
    use proxy_userspace::{config::LogFormat, logs};
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => fmt.json().init(),
        // journald stamps each line itself and reads `<N>` as its priority.
        LogFormat::Text if logs::stderr_is_journal() => fmt.event_format(logs::Journald).init(),
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// The man pages and completions of this command line (see [`Command::Generate`]).
fn generate(out: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    let write = |path: PathBuf, page: clap::Command| -> anyhow::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).section("8").render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
    };
    write(man.join("hapd.8"), cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // hapd-upgrade(8) for `hapd upgrade`, as git and cargo name theirs.
        let name = format!("hapd-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("hapd {}", sub.get_name()))
            .version(build_info::LONG);
        write(man.join(format!("{name}.8")), page)?;
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "hapd"),
        (clap_complete::Shell::Zsh, "_hapd"),
        (clap_complete::Shell::Fish, "hapd.fish"),
    ] {
        let path = completions.join(file);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        clap_complete::generate(shell, &mut Cli::command(), "hapd", &mut f);
    }
    Ok(())
}
