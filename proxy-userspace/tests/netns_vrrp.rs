//! Two hapd nodes in the lab: first election, graceful stop, preempt back, kill -9 with the
//! stale VIP removed at restart. A third host is the client that reaches the VIP.
//!
//! ```text
//!   h0 198.18.0.1 hapd A (110) ──┐
//!   h1 198.18.0.2 hapd B (100) ──┼── bridge      VIP 198.18.0.100
//!   h2 198.18.0.3 client ────────┘
//! ```
use std::{path::Path, time::Duration};

use hapd_lab::{proc::Proc, Lab};
use nix::sys::signal::Signal;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");
const VIP: &str = "198.18.0.100";

fn config(lab: &mut Lab, i: usize, priority: u8) -> String {
    config_with(lab, i, priority, "", "")
}

/// A node's config: `vrrp_extra` goes into its [[vrrp]] table, `tail` after it. Every other
/// lab host is a peer.
fn config_with(lab: &mut Lab, i: usize, priority: u8, vrrp_extra: &str, tail: &str) -> String {
    let pin_dir = lab.bpffs().unwrap().join(format!("h{i}"));
    let peers: Vec<String> = (0..lab.hosts().len())
        .filter(|&j| j != i)
        .map(|j| format!("\"{}\"", lab.host(j).addr))
        .collect();
    format!(
        r#"
[node]
name = "node{i}"
pin_dir = "{}"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = {priority}
advert_interval = "50ms"
virtual_ips = ["{VIP}/24"]
peers = [{}]
{vrrp_extra}
{tail}
"#,
        pin_dir.display(),
        peers.join(", ")
    )
}

fn has_vip(lab: &Lab, i: usize) -> bool {
    let out = lab
        .exec(i, &["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/24"))
}

fn client_reaches_vip(lab: &Lab) -> bool {
    lab.exec(2, &["ping", "-c", "1", "-W", "1", VIP]).is_ok()
}

/// Whether an XDP program is attached to host `i`'s eth0.
fn xdp_attached(lab: &Lab, i: usize) -> bool {
    let out = lab.exec(i, &["ip", "link", "show", "eth0"]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn wait_master(p: &mut Proc, count: usize) {
    p.wait_for("=> MASTER", count, Duration::from_secs(5))
        .unwrap();
}

#[test]
fn two_nodes_elect_fail_over_and_preempt_back() {
    let mut lab = Lab::new(3).unwrap();
    let (ca, cb) = (config(&mut lab, 0, 110), config(&mut lab, 1, 100));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();

    // First election: A (110) wins.
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        b.grep("=> MASTER").is_empty(),
        "B must stay backup:\n{}",
        b.lines().join("\n")
    );
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));
    // B's master-down timer runs in its guard: B sleeps until it runs out.
    let st = lab.hapd_status(1, Path::new(HAPD)).unwrap();
    let timer = st["instances"][0]["kernel_timer"]
        .as_str()
        .unwrap_or_default();
    assert!(timer.starts_with("in use"), "{st}");

    // Graceful stop of A: priority 0, B takes over after Skew_Time.
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    wait_master(&mut b, 1);
    assert_eq!(
        b.grep("=> MASTER (master resigned (priority 0))").len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    assert!(!has_vip(&lab, 0), "A removed the VIP when it stopped");
    // A kept serving until B's first advert, then let go: no gap for clients.
    assert_eq!(
        a.grep("198.18.0.2 took over; releasing the addresses")
            .len(),
        1,
        "{}",
        a.lines().join("\n")
    );
    assert!(has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));

    // A comes back and preempts.
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    wait_master(&mut a, 1);
    assert_eq!(
        a.grep("=> MASTER (preempting a lower-priority master)")
            .len(),
        1,
        "{}",
        a.lines().join("\n")
    );
    b.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));

    // kill -9 A: no goodbye; B takes over after Master_Down_Interval (its guard's timer runs
    // out and wakes it); A's VIP stays behind.
    let ran_out = |b: &Proc| b.grep("the master-down timer ran out in the kernel").len();
    let before = ran_out(&b);
    a.stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    wait_master(&mut b, 2);
    assert_eq!(ran_out(&b), before + 1, "{}", b.lines().join("\n"));
    assert_eq!(
        b.grep("=> MASTER (master down)").len(),
        1,
        "{}",
        b.lines().join("\n")
    );
    assert!(has_vip(&lab, 0), "kill -9 leaves the VIP on A");
    // The guard stays on A's interface (its link is pinned) with its maps.
    let pins = lab.bpffs().unwrap().join("h0");
    assert!(
        xdp_attached(&lab, 0),
        "the guard outlives the killed daemon"
    );
    assert!(pins.join("link_eth0").exists() && pins.join("vrrp_adverts").exists());
    // Restart A: the stale VIP goes before the election, the old guard is replaced, then A
    // preempts again.
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    for line in [
        "removed 1 virtual address(es) left on eth0 by an earlier run",
        "replaced the guard left attached by an earlier run",
    ] {
        assert_eq!(a.grep(line).len(), 1, "{}", a.lines().join("\n"));
    }
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));
    // One master: B went back to backup when A preempted.
    assert_eq!(
        b.grep("MASTER => BACKUP").len(),
        2,
        "{}",
        b.lines().join("\n")
    );
    for p in [&mut a, &mut b] {
        assert!(p
            .stop(Signal::SIGTERM, Duration::from_secs(5))
            .unwrap()
            .success());
    }
    // A clean stop leaves nothing behind: no program, no pins.
    for i in 0..2 {
        assert!(!xdp_attached(&lab, i), "host {i}");
        let dir = lab.bpffs().unwrap().join(format!("h{i}"));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "pins left in {}: {left:?}", dir.display());
    }
    assert!(!has_vip(&lab, 0) && !has_vip(&lab, 1));
}

/// Node A (110) and node B (100) with the default config, A elected.
fn start_pair(lab: &mut Lab) -> (Proc, Proc) {
    let (ca, cb) = (config(lab, 0, 110), config(lab, 1, 100));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    (a, b)
}

fn state_lines(p: &Proc) -> Vec<String> {
    p.lines()
        .into_iter()
        .filter(|l| l.contains(" => "))
        .collect()
}

#[test]
fn link_down_is_fault_and_link_up_rejoins() {
    let mut lab = Lab::new(3).unwrap();
    let (mut a, mut b) = start_pair(&mut lab);
    // Pull A's cable: its bridge port goes down and A's eth0 loses its carrier.
    let sw = lab.switch().to_string();
    let ip = |args: &[&str]| {
        assert!(std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success())
    };
    ip(&["-n", &sw, "link", "set", "p0", "down"]);
    a.wait_for("MASTER => FAULT (link down)", 1, Duration::from_secs(5))
        .unwrap();
    assert!(!has_vip(&lab, 0), "VIPs released on fault");
    wait_master(&mut b, 1);
    assert!(client_reaches_vip(&lab));
    ip(&["-n", &sw, "link", "set", "p0", "up"]);
    a.wait_for("FAULT => BACKUP (recovered)", 1, Duration::from_secs(5))
        .unwrap();
    wait_master(&mut a, 2);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        has_vip(&lab, 0) && !has_vip(&lab, 1),
        "{:?}",
        state_lines(&a)
    );
}

#[test]
fn track_script_failure_hands_over_and_recovery_takes_back() {
    let mut lab = Lab::new(3).unwrap();
    let flag = lab.dir().join("backend-ok");
    std::fs::write(&flag, "").unwrap();
    let script = format!(
        "[[track_script]]\nname = \"chk\"\ncommand = [\"/usr/bin/test\", \"-e\", \"{}\"]\ninterval = \"50ms\"\ntimeout = \"1s\"\nweight = -20\nfall = 2\nrise = 2\n",
        flag.display()
    );
    let ca = config_with(&mut lab, 0, 110, "track_scripts = [\"chk\"]", &script);
    let cb = config(&mut lab, 1, 100);
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    std::fs::remove_file(&flag).unwrap();
    // Two failures (about 100 ms), then A advertises 90 and B (100) preempts on that advert.
    a.wait_for("track script chk: failed", 1, Duration::from_secs(5))
        .unwrap();
    b.wait_for(
        "=> MASTER (preempting a lower-priority master)",
        1,
        Duration::from_secs(2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 1) && !has_vip(&lab, 0));
    std::fs::write(&flag, "").unwrap();
    a.wait_for("track script chk: healthy", 1, Duration::from_secs(5))
        .unwrap();
    wait_master(&mut a, 2);
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    let _ = b;
}

#[test]
fn notify_runs_in_order_and_fence_runs_before_a_takeover() {
    let mut lab = Lab::new(3).unwrap();
    let log = lab.dir().join("notify.log");
    let fenced = lab.dir().join("fenced.log");
    // No shell is involved for hapd: /bin/sh here is just the program the argv names.
    let notify = format!(
        "notify = [\"/bin/sh\", \"-c\", \"echo \\\"$0 $1 $2\\\" >> {}\"]",
        log.display()
    );
    let fence = format!(
        "fence = [\"/bin/sh\", \"-c\", \"echo fenced >> {}\"]",
        fenced.display()
    );
    let ca = config(&mut lab, 0, 110);
    // A webhook receiver on the client host: records each POST body, in order.
    let hooks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h2, s2) = (hooks.clone(), stop.clone());
    let receiver = lab
        .spawn_in_netns(2, move || {
            let l = std::net::TcpListener::bind("198.18.0.3:8099").unwrap();
            l.set_nonblocking(true).unwrap();
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while let Ok(n) = std::io::Read::read(&mut c, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&req).trim_end().ends_with('}') {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                h2.lock().unwrap().push(
                    text.split_once("\r\n\r\n")
                        .map(|x| x.1.to_string())
                        .unwrap_or_default(),
                );
                let _ = std::io::Write::write_all(
                    &mut c,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        })
        .unwrap();
    let hook = "notify_webhook = \"http://198.18.0.3:8099/hook\"";
    let cb = config_with(&mut lab, 1, 100, &format!("{notify}\n{fence}\n{hook}"), "");
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    a.stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    b.wait_for("fencing it before taking over", 1, Duration::from_secs(5))
        .unwrap();
    wait_master(&mut b, 1);
    assert_eq!(std::fs::read_to_string(&fenced).unwrap(), "fenced\n");
    assert!(b
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "BACKUP VI_1 STOP\nMASTER VI_1 BACKUP\nSTOP VI_1 MASTER\n",
        "every transition, in order"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    receiver.join().unwrap();
    let states: Vec<String> = hooks
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(
                (v["host"].as_str(), v["instance"].as_str()),
                (Some("node1"), Some("VI_1")),
                "{b}"
            );
            assert!(v["time"].as_str().unwrap().ends_with('Z'), "{b}");
            v["state"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        states,
        ["BACKUP", "MASTER", "STOP"],
        "the webhook saw every transition, in order"
    );
}

#[test]
fn three_nodes_fail_over_in_priority_order() {
    let mut lab = Lab::new(4).unwrap();
    let cfgs: Vec<String> = [150, 120, 100]
        .iter()
        .enumerate()
        .map(|(i, p)| config(&mut lab, i, *p))
        .collect();
    let mut n: Vec<Proc> = (0..3)
        .map(|i| lab.start_hapd(i, Path::new(HAPD), &cfgs[i]).unwrap())
        .collect();
    wait_master(&mut n[0], 1);
    n[0].stop(Signal::SIGKILL, Duration::from_secs(5)).unwrap();
    wait_master(&mut n[1], 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        n[2].grep("=> MASTER").is_empty(),
        "the middle priority takes over, not the lowest"
    );
    assert!(n[1]
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    wait_master(&mut n[2], 1);
    assert!(has_vip(&lab, 2));
    // The client is host 3 here.
    assert!(lab.exec(3, &["ping", "-c", "1", "-W", "1", VIP]).is_ok());
}

/// The MAC of host `i`'s eth0.
fn mac(lab: &Lab, i: usize) -> String {
    let out = lab
        .exec(i, &["cat", "/sys/class/net/eth0/address"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn client_neighbour_mac(lab: &Lab) -> String {
    let out = lab.exec(2, &["ip", "neigh", "show", VIP]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
fn split_brain_heals_within_one_advert_interval_with_a_garp() {
    let mut lab = Lab::new(3).unwrap();
    // _a: A must keep running.
    let (_a, mut b) = start_pair(&mut lab);
    // Cut the link between the nodes only: isolated bridge ports cannot reach each other, but
    // both still reach the client.
    lab.isolate_port(0, true).unwrap();
    lab.isolate_port(1, true).unwrap();
    wait_master(&mut b, 1);
    assert!(
        has_vip(&lab, 0) && has_vip(&lab, 1),
        "split brain: both hold the VIP"
    );
    // The client ends up talking to B (its GARP came last).
    lab.exec(2, &["ping", "-c", "1", "-W", "1", VIP]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(client_neighbour_mac(&lab), mac(&lab, 1));
    // Heal: within one advert interval (50 ms) one master is left, and A's re-announcement
    // (gratuitous ARP) points the client back at A.
    lab.isolate_port(0, false).unwrap();
    lab.isolate_port(1, false).unwrap();
    b.wait_for(
        "MASTER => BACKUP (higher-priority master)",
        1,
        Duration::from_secs(2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert_eq!(
        client_neighbour_mac(&lab),
        mac(&lab, 0),
        "the client follows the GARP"
    );
    assert!(client_reaches_vip(&lab));
}

#[test]
fn preempt_off_and_preempt_delay() {
    let mut lab = Lab::new(3).unwrap();
    let cb = config(&mut lab, 1, 100);
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut b, 1);
    // preempt = false: A (110) joins and stays backup.
    let ca = config_with(&mut lab, 0, 110, "preempt = false", "");
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(a.grep("=> MASTER").is_empty(), "{:?}", state_lines(&a));
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    // preempt_delay = 700ms: A takes over, but not before the delay, which runs from the
    // instance's start-up (after the guard is loaded, which takes a while on a busy machine).
    let ca = config_with(&mut lab, 0, 110, "preempt_delay = \"700ms\"", "");
    let t0 = std::time::Instant::now();
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for("INIT => BACKUP (start-up)", 1, Duration::from_secs(5))
        .unwrap();
    let started = std::time::Instant::now();
    wait_master(&mut a, 1);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    let after_startup = started.elapsed();
    assert!(
        after_startup < Duration::from_millis(1_500),
        "{after_startup:?} after start-up"
    );
}

#[test]
fn an_unhealthy_proxy_gives_up_master_within_one_advert() {
    use proxy_userspace::{config::Config, daemon, health::ProxyHealth};
    let mut lab = Lab::new(3).unwrap();
    let ca = config_with(&mut lab, 0, 110, "track_proxy = { weight = -50 }", "");
    let cb = config(&mut lab, 1, 100);
    let cfg_path = lab.dir().join("inproc.toml");
    std::fs::write(&cfg_path, &ca).unwrap();
    let (config, _) = Config::load(&cfg_path).unwrap();
    let (health, health_rx) = ProxyHealth::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    /// Stops the in-process node when dropped, also when an assertion below panics: the
    /// scope would otherwise wait for it forever.
    struct StopOnDrop(tokio::sync::watch::Sender<bool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(true);
        }
    }
    // Node A runs in this test process, on a thread inside host 0's namespace.
    let node_a = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            lab.in_netns(0, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(daemon::run_with(
                    config,
                    daemon::Options {
                        proxy_health: Some(health_rx),
                        shutdown: Some(stop_rx),
                        control: None,
                        proxy: None,
                        successor: None,
                        watchdog: None,
                        anycast: None,
                        keep_guard: None,
                    },
                ))
            })
        });
        let stop = StopOnDrop(stop_tx);
        let wait = |cond: &dyn Fn() -> bool| {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while !cond() {
                assert!(std::time::Instant::now() < end, "timed out");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // A first (it is master alone), then B joins as backup.
        wait(&|| has_vip(&lab, 0));
        let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(b.grep("=> MASTER").is_empty());
        let t0 = std::time::Instant::now();
        health.set(false);
        b.wait_for(
            "=> MASTER (preempting a lower-priority master)",
            1,
            Duration::from_secs(2),
        )
        .unwrap();
        let took = t0.elapsed();
        wait(&|| has_vip(&lab, 1) && !has_vip(&lab, 0));
        health.set(true);
        b.wait_for(
            "MASTER => BACKUP (higher-priority master)",
            1,
            Duration::from_secs(2),
        )
        .unwrap();
        wait(&|| has_vip(&lab, 0) && !has_vip(&lab, 1));
        drop(stop);
        (runner.join().unwrap(), took)
    });
    let (result, took) = node_a;
    result.unwrap();
    // One advert interval is 50 ms; the handover rides on A's immediate advert.
    assert!(took < Duration::from_millis(150), "{took:?}");
    assert!(!has_vip(&lab, 0), "the in-process node cleaned up at stop");
}

/// `unicast = true`: adverts go to each peer instead of 224.0.0.18; election and failover
/// work the same, and nothing is sent to the multicast group.
#[test]
fn unicast_adverts_elect_and_fail_over() {
    let mut lab = Lab::new(3).unwrap();
    // Peers: the two nodes only (config_with lists every other host, the client too).
    let only = |c: String, peer: &str| {
        c.replace(
            "peers = [\"198.18.0.2\", \"198.18.0.3\"]",
            &format!("peers = [\"{peer}\"]"),
        )
        .replace(
            "peers = [\"198.18.0.1\", \"198.18.0.3\"]",
            &format!("peers = [\"{peer}\"]"),
        )
    };
    let ca = only(
        config_with(&mut lab, 0, 110, "unicast = true", ""),
        "198.18.0.2",
    );
    let cb = only(
        config_with(&mut lab, 1, 100, "unicast = true", ""),
        "198.18.0.1",
    );
    assert!(ca.contains("peers = [\"198.18.0.2\"]") && cb.contains("peers = [\"198.18.0.1\"]"));
    // The client listens for VRRP on its own raw socket: unicast adverts never reach it.
    let sniffer = lab
        .in_netns(2, || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(112)),
            )?;
            s.join_multicast_v4(&"224.0.0.18".parse()?, &"198.18.0.3".parse()?)?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(s)
        })
        .unwrap();
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.grep("=> MASTER").is_empty());
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    assert!(
        sniffer.recv(&mut buf).is_err(),
        "a VRRP packet reached the client"
    );
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    wait_master(&mut b, 1);
    assert!(has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));
}

/// `xdp = "off"` on both nodes: the raw-socket guard feeds the same engine, with the same
/// result (election, graceful failover, preempt back).
#[test]
fn the_election_is_the_same_without_xdp() {
    let mut lab = Lab::new(3).unwrap();
    let (ca, cb) = (
        config_with(&mut lab, 0, 110, "xdp = \"off\"", ""),
        config_with(&mut lab, 1, 100, "xdp = \"off\"", ""),
    );
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    assert_eq!(
        a.grep("eth0: VRRP guard runs as raw socket (no XDP)").len(),
        1
    );
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    wait_master(&mut a, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.grep("=> MASTER").is_empty(), "{}", b.lines().join("\n"));
    assert!(a
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    b.wait_for(
        "=> MASTER (master resigned (priority 0))",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    a.wait_for(
        "=> MASTER (preempting a lower-priority master)",
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(has_vip(&lab, 0) && !has_vip(&lab, 1));
    assert!(client_reaches_vip(&lab));
}

/// Two instances in one daemon: VRID 51 (VIP .100) where node 0 is preferred and VRID 52
/// (VIP .101) where node 1 is: each node is master of one, and each takes both when the
/// other stops.
#[test]
fn two_instances_in_one_daemon() {
    let mut lab = Lab::new(3).unwrap();
    let second = |prio: u8, peer: &str| {
        format!(
            "[[vrrp]]\nname = \"VI_2\"\ninterface = \"eth0\"\nvrid = 52\npriority = {prio}\n\
             advert_interval = \"50ms\"\nvirtual_ips = [\"198.18.0.101/24\"]\npeers = [\"{peer}\"]\n"
        )
    };
    let ca = config_with(&mut lab, 0, 110, "", &second(100, "198.18.0.2"));
    let cb = config_with(&mut lab, 1, 100, "", &second(110, "198.18.0.1"));
    let mut a = lab.start_hapd(0, Path::new(HAPD), &ca).unwrap();
    let mut b = lab.start_hapd(1, Path::new(HAPD), &cb).unwrap();
    a.wait_for("VI_1: BACKUP => MASTER", 1, Duration::from_secs(5))
        .unwrap();
    b.wait_for("VI_2: BACKUP => MASTER", 1, Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let holds = |i: usize, ip: &str| {
        let out = lab
            .exec(i, &["ip", "-4", "addr", "show", "dev", "eth0"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/24"))
    };
    assert!(holds(0, "198.18.0.100") && !holds(0, "198.18.0.101"));
    assert!(holds(1, "198.18.0.101") && !holds(1, "198.18.0.100"));
    assert!(b
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
    a.wait_for("VI_2: BACKUP => MASTER", 1, Duration::from_secs(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        holds(0, "198.18.0.100") && holds(0, "198.18.0.101"),
        "node 0 holds both"
    );
    assert!(lab
        .exec(2, &["ping", "-c", "1", "-W", "1", "198.18.0.101"])
        .is_ok());
}
