//! `cargo xtask demo`: the guide's failover pair in a lab, narrated.
//!
//! proxy01 (198.18.0.1, priority 110) and proxy02 (198.18.0.2, priority 100) run hapd with
//! VRRP instance VI_1 (VRID 51, VIP 198.18.0.100, adverts every 100 ms); a client
//! (198.18.0.3) uses the VIP; an intruder (198.18.0.4) on the same segment forges adverts.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use hapd_lab::{frames::Advert, proc::Proc, Lab};
use nix::sys::signal::Signal;

use crate::{build_hapd, run as run_cmd};

const VIP: &str = "198.18.0.100";

pub fn run() -> anyhow::Result<()> {
    step("Building hapd (release, with the XDP guard embedded)");
    let hapd = build_hapd()?;

    step("Creating the lab: four hosts on one bridge, each a network namespace");
    let mut lab = Lab::new(4)?;
    let names = ["proxy01", "proxy02", "client", "intruder"];
    for (i, n) in names.iter().enumerate() {
        println!("  {n:9} {} (netns {})", lab.host(i).addr, lab.host(i).netns);
    }
    let bpf = lab.bpffs()?;
    let config = |i: usize, priority: u8| {
        format!(
            "[node]\nname = \"{}\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
             vrid = 51\npriority = {priority}\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
             peers = [\"{}\"]\n",
            names[i],
            bpf.join(names[i]).display(),
            lab.host(1 - i).addr,
        )
    };
    let (c1, c2) = (config(0, 110), config(1, 100));
    println!("\nproxy01's config (proxy02 differs in name, priority 100 and its peer):\n\n{c1}");
    let cfg = lab.dir().join("check.toml");
    std::fs::write(&cfg, &c1)?;
    run_cmd(Command::new(&hapd).args(["check", "--config"]).arg(&cfg))?;

    step("Starting hapd on both: they elect proxy01 (higher priority), which takes the VIP");
    let mut p1 = lab.start_hapd(0, &hapd, &c1)?;
    let mut p2 = lab.start_hapd(1, &hapd, &c2)?;
    p1.wait_for("=> MASTER", 1, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(200));
    show(&p1, "proxy01", 0);
    show(&p2, "proxy02", 0);
    where_is_vip(&lab);
    ping_vip(&lab)?;

    step("The intruder forges 20000 priority-255 adverts for VRID 51 (from itself, and spoofing proxy01 with TTL 64)");
    let forged = Advert {
        priority: 255,
        ..Advert::v3(lab.host(3).addr.octets())
    }
    .frame();
    let spoofed = Advert {
        priority: 255,
        ttl: 64,
        ..Advert::v3(lab.host(0).addr.octets())
    }
    .frame();
    let (seen1, seen2) = (p1.lines().len(), p2.lines().len());
    lab.send_frames(3, &vec![forged; 10_000])?;
    lab.send_frames(3, &vec![spoofed; 10_000])?;
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "  log lines caused on proxy01: {}, on proxy02: {}",
        p1.lines().len() - seen1,
        p2.lines().len() - seen2
    );
    where_is_vip(&lab);
    println!(
        "$ bpftool map dump pinned {}  (proxy02's drop counters, per CPU)",
        bpf.join("proxy02/guard_stats").display()
    );
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(bpf.join("proxy02/guard_stats"))
        .output()?;
    for l in String::from_utf8_lossy(&out.stdout).lines().filter(|l| {
        l.contains("\"cpu\"")
            || l.contains("accepted")
            || l.contains("drop_not_peer")
            || l.contains("drop_ttl")
    }) {
        println!("  {}", l.trim());
    }

    step("Graceful stop of proxy01 (SIGTERM): it resigns with priority 0 and serves the VIP until proxy02 has taken over");
    let (seen1, seen2) = (p1.lines().len(), p2.lines().len());
    let t0 = Instant::now();
    p1.signal(Signal::SIGTERM)?;
    p2.wait_for("=> MASTER", 1, Duration::from_secs(5))?;
    println!(
        "  proxy02 master {:.0} ms after the signal",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    p1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    show(&p2, "proxy02", seen2);
    show(&p1, "proxy01", seen1);
    where_is_vip(&lab);
    ping_vip(&lab)?;

    step("proxy01 comes back: it preempts at proxy02's next advert");
    let mut p1 = lab.start_hapd(0, &hapd, &c1)?;
    p1.wait_for("=> MASTER", 1, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(200));
    show(&p1, "proxy01", 0);
    where_is_vip(&lab);

    step("proxy01 is killed (kill -9): proxy02 takes over after 3 adverts + skew (about 360 ms here)");
    let seen = p2.lines().len();
    let t0 = Instant::now();
    p1.stop(Signal::SIGKILL, Duration::from_secs(5))?;
    p2.wait_for("=> MASTER", 2, Duration::from_secs(5))?;
    println!(
        "  proxy02 master {:.0} ms after the kill",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    show(&p2, "proxy02", seen);
    where_is_vip(&lab);
    println!("  (proxy01 died holding the VIP; its next start removes it before the election)");
    let p1 = lab.start_hapd(0, &hapd, &c1)?;
    show(&p1, "proxy01", 0);

    step("Stopping both");
    let mut p1 = p1;
    p1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    p2.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    where_is_vip(&lab);
    println!("\nDemo done. Faster failover: set advert_interval = \"10ms\" (about 36 ms for a dead host).");
    Ok(())
}

fn step(s: &str) {
    println!("\n== {s}");
}

/// The log lines of `p` from line `from` on that an operator cares about here.
fn show(p: &Proc, name: &str, from: usize) {
    for l in p.lines().iter().skip(from) {
        if l.contains("=>")
            || l.contains("removed")
            || l.contains("ready")
            || l.contains("releasing")
        {
            let text = l.split_once(": ").map_or(l.as_str(), |(_, t)| t);
            println!("  {name} | {text}");
        }
    }
}

fn where_is_vip(lab: &Lab) {
    let holders: Vec<&str> = [(0, "proxy01"), (1, "proxy02")]
        .into_iter()
        .filter(|(i, _)| {
            lab.exec(*i, &["ip", "-4", "addr", "show", "dev", "eth0"])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {VIP}/")))
                .unwrap_or(false)
        })
        .map(|(_, n)| n)
        .collect();
    println!(
        "  VIP {VIP} is on: {}",
        if holders.is_empty() {
            "nobody".into()
        } else {
            holders.join(", ")
        }
    );
}

fn ping_vip(lab: &Lab) -> anyhow::Result<()> {
    let out = lab.exec(2, &["ping", "-c", "1", "-W", "1", VIP])?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("bytes from"))
        .unwrap_or("")
        .to_string();
    println!("  client: {line}");
    Ok(())
}
