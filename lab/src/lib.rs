//! A lab of hosts for hapd's tests, benchmarks and demo.
//!
//! [`Lab::new`] makes N hosts, each a network namespace with `eth0` addressed 198.18.0.(i+1)/24
//! and 2001:2::(i+1)/64 (duplicate address detection off, so that addresses are usable at once;
//! the link-local address is there too), joined by a bridge that lives in a namespace of its own: nothing is created in, or changes,
//! the root namespace. Names are unique per lab, so tests run in parallel. Dropping the lab
//! (also while unwinding from a panic) kills every process left in its namespaces, deletes the
//! namespaces and unmounts its bpffs.
pub mod bird;
pub mod frames;
pub mod pool;
pub mod proc;
pub mod testssl;
pub mod wrk;

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One host of a lab.
#[derive(Clone, Debug)]
pub struct Host {
    /// Network namespace name.
    pub netns: String,
    /// The host's interface towards the bridge.
    pub ifname: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address, 2001:2::(i+1).
    pub addr6: Ipv6Addr,
}

/// N hosts on a bridge. See the module documentation.
pub struct Lab {
    id: String,
    switch: String,
    hosts: Vec<Host>,
    dir: PathBuf,
    bpffs: Option<PathBuf>,
}

/// The address of host `i` (0-based): 198.18.0.(i+1).
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, (i + 1) as u8)
}

/// The IPv6 address of host `i` (0-based): 2001:2::(i+1), in the IPv6 benchmarking range.
pub fn host_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, (i + 1) as u16)
}

impl Lab {
    /// Creates `n` hosts (at most 200) on a fresh bridge.
    pub fn new(n: usize) -> anyhow::Result<Lab> {
        if n == 0 || n > 200 {
            bail!("a lab has 1..=200 hosts, not {n}");
        }
        let id = format!(
            "hl{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("hapd-lab-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            switch: format!("{id}-sw"),
            id,
            hosts: Vec::new(),
            dir,
            bpffs: None,
        };
        // From here on Drop cleans up whatever was made, also on error.
        lab.build(n)?;
        Ok(lab)
    }

    fn build(&mut self, n: usize) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        // A lab switch is no firewall: where br_netfilter is loaded, every bridged frame would
        // also go through iptables in this namespace, and that cost would be charged to
        // whichever process sends. Off here (the sysctls are per namespace); absent, nothing to do.
        let _ = Command::new("ip")
            .args(["netns", "exec", &sw, "sysctl", "-qw"])
            .args([
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ])
            .stderr(Stdio::null())
            .status();
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = Host {
                netns: format!("{}-h{i}", self.id),
                ifname: "eth0".into(),
                addr: host_addr(i),
                addr6: host_addr6(i),
            };
            ip(&["netns", "add", &host.netns])?;
            self.hosts.push(host.clone());
            // No duplicate address detection on the lab's interfaces: an address (the
            // link-local one too) is usable at once, not tentative for a second.
            let out = Command::new("ip")
                .args(["netns", "exec", &host.netns, "sysctl", "-qw"])
                .args([
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ])
                .output()
                .context("running sysctl")?;
            if !out.status.success() {
                bail!(
                    "turning off IPv6 DAD in {}: {}",
                    host.netns,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let port = format!("p{i}");
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &host.netns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &host.netns,
                "-6",
                "addr",
                "add",
                &format!("{}/64", host.addr6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The IPv6 link-local address of `ifname` in host `i` (fe80::/10, where VRRP adverts
    /// over IPv6 come from).
    pub fn link_local(&self, i: usize, ifname: &str) -> anyhow::Result<Ipv6Addr> {
        let out = self.exec(
            i,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no link-local address on {ifname} of host {i}: {text:?}"))
    }

    /// Joins hosts `a` and `b` with a direct veth pair (no bridge), both ends up and without
    /// addresses: `l<b>` in host `a`, `l<a>` in host `b`. Returns the two names.
    pub fn link(&self, a: usize, b: usize) -> anyhow::Result<(String, String)> {
        let (na, nb) = (format!("l{b}"), format!("l{a}"));
        ip(&[
            "-n",
            &self.hosts[a].netns,
            "link",
            "add",
            &na,
            "type",
            "veth",
            "peer",
            "name",
            &nb,
            "netns",
            &self.hosts[b].netns,
        ])?;
        ip(&["-n", &self.hosts[a].netns, "link", "set", &na, "up"])?;
        ip(&["-n", &self.hosts[b].netns, "link", "set", &nb, "up"])?;
        Ok((na, nb))
    }

    /// Mounts a private bpffs for this lab (needed for pinning: `/sys/fs/bpf` is not mounted
    /// here and `ip netns exec` remounts `/sys`). Returns its path.
    pub fn bpffs(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.bpffs {
            return Ok(p.clone());
        }
        let p = self.dir.join("bpf");
        std::fs::create_dir_all(&p)?;
        nix::mount::mount(
            Some("bpf"),
            &p,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpffs at {}", p.display()))?;
        self.bpffs = Some(p.clone());
        Ok(p)
    }

    /// A per-lab scratch directory (configs, logs), removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's namespace (to cut a host's port: `ip -n <switch> link set p<i> down`).
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// Sets host `i`'s port on the bridge up or down: the host drops off the network (a host
    /// crash as its neighbours see it) or comes back, its own configuration untouched.
    pub fn set_port(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), state])
            .with_context(|| format!("setting host {i}'s switch port {state}"))
    }

    /// Isolates host `i`'s bridge port (`on`) or ends that: isolated ports cannot reach each
    /// other but still reach the others (a split brain between two isolated nodes that both
    /// still reach their clients).
    pub fn isolate_port(&self, i: usize, on: bool) -> anyhow::Result<()> {
        let state = if on { "on" } else { "off" };
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{i}"),
            "type",
            "bridge_slave",
            "isolated",
            state,
        ])
        .with_context(|| format!("setting host {i}'s switch port isolated {state}"))
    }

    /// A command that runs `argv` inside host `i`.
    pub fn command(&self, i: usize, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).args(argv);
        c
    }

    /// Runs `argv` in host `i` to completion; fails with its stderr when it fails.
    pub fn exec(&self, i: usize, argv: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(i, argv)
            .output()
            .with_context(|| format!("running {argv:?} in {}", self.hosts[i].netns))?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {} failed: {}",
                self.hosts[i].netns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Starts `argv` in host `i` with stdout and stderr piped. The lab kills it when dropped.
    pub fn spawn(&self, i: usize, argv: &[&str]) -> anyhow::Result<Child> {
        self.command(i, argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", self.hosts[i].netns))
    }

    /// Writes `config` to the lab's folder, starts `hapd run` with it in host `i` and waits
    /// until it says it is ready.
    pub fn start_hapd(&self, i: usize, hapd: &Path, config: &str) -> anyhow::Result<proc::Proc> {
        let cfg = self.dir.join(format!("h{i}.toml"));
        std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
        let hapd = hapd.to_str().context("hapd path is not UTF-8")?;
        let cfg = cfg.to_str().context("lab path is not UTF-8")?;
        let mut p = proc::Proc::new("hapd", self.spawn(i, &[hapd, "run", "--config", cfg])?);
        p.wait_for("hapd ready", 1, std::time::Duration::from_secs(10))?;
        Ok(p)
    }

    /// `hapd status --json` of host `i`, with the config [`Lab::start_hapd`] wrote for it.
    pub fn hapd_status(&self, i: usize, hapd: &Path) -> anyhow::Result<serde_json::Value> {
        let cfg = self.dir.join(format!("h{i}.toml"));
        let hapd = hapd.to_str().context("hapd path is not UTF-8")?;
        let cfg = cfg.to_str().context("lab path is not UTF-8")?;
        let out = self.exec(i, &[hapd, "status", "--json", "--config", cfg])?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "hapd status of host {i}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `f` on a thread that has entered host `i`'s network namespace: sockets it opens
    /// belong to that host.
    pub fn in_netns<R: Send>(
        &self,
        i: usize,
        f: impl FnOnce() -> anyhow::Result<R> + Send,
    ) -> anyhow::Result<R> {
        let path = format!("/run/netns/{}", self.hosts[i].netns);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {path}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {path} panicked"))?
        })
    }

    /// Sends `frames` (whole Ethernet frames) out of host `i`'s interface, as they are.
    pub fn send_frames(&self, i: usize, frames: &[Vec<u8>]) -> anyhow::Result<()> {
        let ifindex = self.ifindex(i, &self.hosts[i].ifname.clone())?;
        self.in_netns(i, move || {
            let fd = packet_socket(0)?;
            for f in frames {
                // SAFETY: sockaddr_ll is plain data.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = ifindex as i32;
                sll.sll_halen = 6;
                sll.sll_addr[..6].copy_from_slice(&f[..6.min(f.len())]);
                // SAFETY: f and sll are valid for the call.
                let n = unsafe {
                    libc::sendto(
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    bail!("sending a frame: {}", std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }

    /// Sends `frames` over and over from host `i` for `duration` as fast as one thread can
    /// (`sendmmsg` in batches of 256 on an AF_PACKET socket that bypasses the qdisc); returns
    /// how many frames left. A flood generator that needs no XDP support of its own.
    pub fn flood(
        &self,
        i: usize,
        frames: &[Vec<u8>],
        duration: std::time::Duration,
    ) -> anyhow::Result<u64> {
        self.flood_on(i, &self.hosts[i].ifname.clone(), frames, duration)
    }

    /// [`Lab::flood`] out of interface `ifname` of host `i` (a link made by [`Lab::link`]).
    pub fn flood_on(
        &self,
        i: usize,
        ifname: &str,
        frames: &[Vec<u8>],
        duration: std::time::Duration,
    ) -> anyhow::Result<u64> {
        if frames.is_empty() {
            return Ok(0);
        }
        let ifindex = self.ifindex(i, ifname)?;
        self.in_netns(i, move || {
            let fd = packet_socket(0)?;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let one: libc::c_int = 1;
            // SAFETY: a c_int option. Best effort: without it the qdisc is in the path.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frames[0][..6.min(frames[0].len())]);
            const BATCH: usize = 256;
            let mut iovs: Vec<libc::iovec> = (0..BATCH)
                .map(|k| {
                    let f = &frames[k % frames.len()];
                    libc::iovec {
                        iov_base: f.as_ptr() as *mut libc::c_void,
                        iov_len: f.len(),
                    }
                })
                .collect();
            // SAFETY: mmsghdr is plain data; every pointer set below outlives the sends.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            let t0 = std::time::Instant::now();
            let mut sent = 0u64;
            while t0.elapsed() < duration {
                // SAFETY: msgs points at BATCH valid headers.
                let n = unsafe { libc::sendmmsg(raw, msgs.as_mut_ptr(), BATCH as u32, 0) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == std::io::ErrorKind::WouldBlock
                    {
                        continue;
                    }
                    bail!("sendmmsg: {e}");
                }
                sent += n as u64;
            }
            Ok(sent)
        })
    }

    /// Receives up to `n` IPv4 frames of IP protocol `proto` on host `i`'s interface within
    /// `timeout` (what the host hears: a capture to replay later). Returns what arrived.
    pub fn capture(
        &self,
        i: usize,
        proto: u8,
        n: usize,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let ifindex = self.ifindex(i, &self.hosts[i].ifname.clone())?;
        self.in_netns(i, move || {
            let fd = packet_socket(libc::ETH_P_IP as u16)?;
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = libc::ETH_P_IP as u16;
            sll.sll_protocol = sll.sll_protocol.to_be();
            sll.sll_ifindex = ifindex as i32;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            // SAFETY: sll is a valid sockaddr_ll of the size passed.
            if unsafe {
                libc::bind(
                    raw,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            } != 0
            {
                bail!(
                    "binding the capture socket: {}",
                    std::io::Error::last_os_error()
                );
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: tv is a valid timeval for SO_RCVTIMEO.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            let deadline = std::time::Instant::now() + timeout;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 2048];
            while out.len() < n && std::time::Instant::now() < deadline {
                // SAFETY: buf is valid for its length.
                let got = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if got < 14 + 20 {
                    continue;
                }
                let f = &buf[..got as usize];
                if f[12..14] == [0x08, 0x00] && f[14 + 9] == proto {
                    out.push(f.to_vec());
                }
            }
            Ok(out)
        })
    }

    /// Starts a thread inside host `i`'s network namespace that runs `f` (a server, a prober).
    /// The caller stops it (a flag) and joins it before the lab is dropped; the thread's
    /// result is `None` only when it could not enter the namespace (then this call failed).
    pub fn spawn_in_netns<R: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<Option<R>>> {
        let path = format!("/run/netns/{}", self.hosts[i].netns);
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            ok.then(f)
        });
        ready_rx
            .recv()
            .context("namespace thread died")?
            .with_context(|| format!("entering {path}"))?;
        Ok(handle)
    }

    /// Interface index of `ifname` in host `i`.
    pub fn ifindex(&self, i: usize, ifname: &str) -> anyhow::Result<u32> {
        let name = ifname.to_owned();
        self.in_netns(i, move || {
            let c = std::ffi::CString::new(name.clone())?;
            // SAFETY: c is a valid C string.
            let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if idx == 0 {
                bail!("no interface {name}");
            }
            Ok(idx)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut namespaces: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        namespaces.push(self.switch.clone());
        for ns in &namespaces {
            kill_all_in(ns);
        }
        for ns in &namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(p) = &self.bpffs {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILLs every process in namespace `ns` and waits (briefly) until none is left.
fn kill_all_in(ns: &str) {
    for _ in 0..50 {
        let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
            return;
        };
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            // Never ourselves (a thread of ours may sit in the namespace).
            .filter(|&p| p != std::process::id() as i32)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An AF_PACKET raw socket for EtherType `proto` (0: none, for sending only), in the calling
/// thread's network namespace.
fn packet_socket(proto: u16) -> anyhow::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.to_be() as i32,
        )
    };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns; OwnedFd closes it on every path.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
