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
