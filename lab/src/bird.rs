//! BIRD 2 in lab hosts, for the anycast tests and benchmark: the router's and a node's
//! config, starting BIRD with its own control socket, `birdc`, and the router's nexthops.
//!
//! The router (AS 65000) peers by eBGP with BFD (50 ms x 3) with every node (AS 65001) on
//! `eth0`, imports only the anycast prefix and installs one kernel route with a nexthop per
//! node that announces it (`merge paths`). A node announces the prefix while its
//! `protocol static` (disabled at start) is enabled: by hapd, or by a health-check script in
//! the pattern hapd replaces.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{proc::Proc, Lab};

/// The anycast prefix of the lab (a /32).
pub const PREFIX: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 100);
/// The port a node's proxy serves the prefix on ([`hapd_node_config`]).
pub const PORT: u16 = 8080;
/// The `protocol static` of a node's BIRD that hapd (or the health script) enables.
pub const PROTOCOL: &str = "hapd_web";

/// The router's BIRD config: router id `me`, a BGP session with BFD to each of `nodes`.
pub fn router_config(me: Ipv4Addr, nodes: &[Ipv4Addr]) -> String {
    let mut c = format!(
        "log stderr all;
router id {me};
protocol device {{ scan time 10; }}
protocol bfd {{ interface \"eth0\" {{ interval 50 ms; multiplier 3; }}; }}
protocol kernel {{
  ipv4 {{ import none; export where source = RTS_BGP; }};
  merge paths yes;
}}
template bgp node {{
  local {me} as 65000;
  bfd on;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ import where net = {PREFIX}/32; export none; }};
}}
"
    );
    for (k, n) in nodes.iter().enumerate() {
        c.push_str(&format!(
            "protocol bgp node{} from node {{ neighbor {n} as 65001; }}\n",
            k + 1
        ));
    }
    c
}

/// A node's BIRD config: router id `me`, the disabled `protocol static` named `protocol`
/// holding the prefix, and (with `router`) its BGP session with BFD to the router, exporting
/// only that protocol's routes.
pub fn node_config(me: Ipv4Addr, router: Option<Ipv4Addr>, protocol: &str) -> String {
    let mut c = format!(
        "log stderr all;
router id {me};
protocol device {{ scan time 10; }}
protocol static {protocol} {{
  disabled;
  ipv4;
  route {PREFIX}/32 blackhole;
}}
"
    );
    if let Some(router) = router {
        c.push_str(&format!(
            "protocol bfd {{ interface \"eth0\" {{ interval 50 ms; multiplier 3; }}; }}
protocol bgp uplink {{
  local {me} as 65001;
  neighbor {router} as 65000;
  bfd on;
  connect retry time 1;
  error wait time 1, 5;
  ipv4 {{ import none; export where proto = \"{protocol}\"; }};
}}
"
        ));
    }
    c
}

/// Makes host 0 of `lab` a router for hosts 1..=`nodes` (IP forwarding, the L4 hash for
/// multipath routes: plain hash-threshold ECMP) and puts host `nodes + 1`, the client, behind
/// it on a link of its own (198.18.100.2, via the router's 198.18.100.1), so that its flows
/// are spread by the router's ECMP route, not by the shared segment.
pub fn router_and_client(lab: &Lab, nodes: usize) -> anyhow::Result<()> {
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
    ] {
        lab.exec(0, &["sysctl", "-q", "-w", &format!("{k}={v}")])?;
    }
    let client = nodes + 1;
    lab.exec(client, &["ip", "link", "set", "eth0", "down"])?;
    let (r_if, c_if) = lab.link(0, client)?;
    lab.exec(0, &["ip", "addr", "add", "198.18.100.1/24", "dev", &r_if])?;
    lab.exec(
        client,
        &["ip", "addr", "add", "198.18.100.2/24", "dev", &c_if],
    )?;
    lab.exec(
        client,
        &["ip", "route", "add", "default", "via", "198.18.100.1"],
    )?;
    for i in 1..=nodes {
        lab.exec(
            i,
            &["ip", "route", "add", "198.18.100.0/24", "via", "198.18.0.1"],
        )?;
    }
    Ok(())
}

/// A BIRD running in a lab host.
pub struct Bird {
    pub proc: Proc,
    /// Its control socket.
    pub socket: PathBuf,
    host: usize,
}

impl Bird {
    /// Starts BIRD in host `i` with `config` (files in the lab's directory, so they go with
    /// it) and waits until it answers on its control socket (5 s at most).
    pub fn start(lab: &Lab, i: usize, config: &str) -> anyhow::Result<Bird> {
        let cfg = lab.dir().join(format!("bird{i}.conf"));
        let socket = lab.dir().join(format!("bird{i}.ctl"));
        let pid = lab.dir().join(format!("bird{i}.pid"));
        std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
        let argv = [
            "bird",
            "-f",
            "-c",
            path(&cfg)?,
            "-s",
            path(&socket)?,
            "-P",
            path(&pid)?,
        ];
        let proc = Proc::new(&format!("bird{i}"), lab.spawn(i, &argv)?);
        let bird = Bird {
            proc,
            socket,
            host: i,
        };
        let t0 = Instant::now();
        while !bird.ctl(lab, &["show", "status"]).contains("Daemon is up") {
            if t0.elapsed() > Duration::from_secs(5) {
                bail!(
                    "BIRD in host {i} does not answer on {} after 5 s:\n{}",
                    bird.socket.display(),
                    bird.proc.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bird)
    }

    /// `birdc -s <socket> args...` in its host: what it printed (empty if it could not run).
    pub fn ctl(&self, lab: &Lab, args: &[&str]) -> String {
        birdc(lab, self.host, &self.socket, args)
    }
}

/// `birdc -s socket args...` in host `i`: what it printed (empty if it could not run).
pub fn birdc(lab: &Lab, i: usize, socket: &Path, args: &[&str]) -> String {
    let Some(sock) = socket.to_str() else {
        return String::new();
    };
    let mut argv = vec!["birdc", "-s", sock];
    argv.extend_from_slice(args);
    lab.command(i, &argv)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// The nexthops of host `i`'s kernel route to the prefix, sorted.
pub fn nexthops(lab: &Lab, i: usize) -> Vec<String> {
    nexthops_in(&lab.host(i).netns)
}

/// The nexthops of the kernel route to the prefix in network namespace `netns`, sorted
/// (without a [`Lab`], for a thread that watches the route while the lab is in use).
pub fn nexthops_in(netns: &str) -> Vec<String> {
    let prefix = format!("{PREFIX}/32");
    let Ok(out) = std::process::Command::new("ip")
        .args(["-n", netns, "route", "show", &prefix])
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut hops: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// How a node's hapd serves in the anycast lab (see [`hapd_node_config`]).
pub struct Node<'a> {
    /// Its upstream's `servers` and `backup_servers`, `host:port` each.
    pub servers: &'a [String],
    pub backups: &'a [String],
    /// More keys for the upstream (e.g. `connect_timeout = "1s"`), or "".
    pub upstream_extra: &'a str,
    /// The group's nodes, this one too.
    pub peers: &'a [String],
    /// Its BIRD's control socket.
    pub bird_socket: &'a Path,
    /// The group's `xdp` mode.
    pub xdp: &'a str,
}

/// Node `i`'s hapd config in the anycast lab: its proxy on the prefix, port [`PORT`], host `app`,
/// in front of `node`'s upstream (health-checked every 100 ms), and the group `web` announced
/// through its BIRD's protocol [`PROTOCOL`] while the proxy is healthy (rise 300 ms, hold-down
/// 1 s); the admin endpoint on the host's address, port 9100.
pub fn hapd_node_config(lab: &mut Lab, i: usize, node: &Node) -> anyhow::Result<String> {
    let pin_dir = lab.bpffs()?.join(format!("h{i}"));
    let control = lab.dir().join(format!("h{i}.sock"));
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let backups = if node.backups.is_empty() {
        String::new()
    } else {
        format!("backup_servers = [{}]\n", quote(node.backups))
    };
    let extra = if node.upstream_extra.is_empty() {
        String::new()
    } else {
        format!("{}\n", node.upstream_extra)
    };
    Ok(format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"
admin = "{}:9100"
control_socket = "{}"

[server]
drain_timeout = "2s"

[[listener]]
name = "web"
bind = ["{PREFIX}:{PORT}"]

[[upstream]]
name = "app"
servers = [{}]
{backups}{extra}health_check = {{ path = "/health", interval = "100ms", timeout = "100ms", fall = 1, rise = 1 }}

[[vhost]]
server_names = ["app"]
listeners = ["web"]
  [[vhost.route]]
  prefix = "/"
  upstream = "app"

[[anycast]]
name = "web"
prefixes = ["{PREFIX}/32"]
interface = "eth0"
peers = [{}]
bird_socket = "{}"
bird_protocol = "{PROTOCOL}"
track_proxy = true
rise = "300ms"
hold_down = "1s"
# Generic XDP in the lab: in native mode on a veth pair a frame sent back out (XDP_TX)
# never reaches the other host (see docs/anycast.md).
xdp = "{}"
"#,
        pin_dir.display(),
        crate::host_addr(i),
        control.display(),
        quote(node.servers),
        quote(node.peers),
        node.bird_socket.display(),
        node.xdp,
    ))
}
