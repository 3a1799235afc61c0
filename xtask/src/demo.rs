//! `cargo xtask demo`: hapd's XDP VRRP guard in a three-host lab, narrated.
//!
//! proxy01 (198.18.0.1) runs hapd with VRRP instance VI_1 (VRID 51) whose only peer is proxy02
//! (198.18.0.2); an intruder (198.18.0.3) on the same segment forges priority-255 adverts.
use std::{process::Command, time::Duration};

use hapd_lab::{frames::Advert, proc::Proc, Lab};

use crate::{build_hapd, run as run_cmd};

pub fn run() -> anyhow::Result<()> {
    step("Building hapd (release, with the XDP guard embedded)");
    let hapd = build_hapd()?;

    step("Creating the lab: proxy01, proxy02 and an intruder on one bridge, in network namespaces");
    let mut lab = Lab::new(3)?;
    let pin_dir = lab.bpffs()?.join("proxy01");
    let names = ["proxy01", "proxy02", "intruder"];
    for (i, n) in names.iter().enumerate() {
        println!("  {n:9} {} (netns {})", lab.host(i).addr, lab.host(i).netns);
    }
    let config = format!(
        "[node]\nname = \"proxy01\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\n\
         interface = \"eth0\"\nvrid = 51\npriority = 110\nadvert_interval = \"100ms\"\n\
         virtual_ips = [\"198.18.0.100/24\"]\npeers = [\"198.18.0.2\"]\n",
        pin_dir.display()
    );
    println!("\n{config}");
    let cfg = lab.dir().join("proxy01.toml");
    std::fs::write(&cfg, &config)?;
    run_cmd(Command::new(&hapd).args(["check", "--config"]).arg(&cfg))?;

    step("Starting hapd on proxy01");
    let mut daemon = lab.start_hapd(0, &hapd, &config)?;
    show(&daemon, 0);

    step("proxy02 sends 20 VRRPv3 adverts (priority 100, every 100 ms): recorded, one wake-up");
    let peer = lab.host(1).addr.octets();
    let seen = daemon.lines().len();
    for _ in 0..20 {
        lab.send_frames(
            1,
            &[Advert {
                interval: 10,
                ..Advert::v3(peer)
            }
            .frame()],
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.wait_for("advert from 198.18.0.2", 1, Duration::from_secs(3))?;
    show(&daemon, seen);

    step("The intruder forges 10000 priority-255 adverts, and 10000 more spoofing proxy02 with TTL 64");
    let intruder = lab.host(2).addr.octets();
    let forged = Advert {
        priority: 255,
        interval: 10,
        ..Advert::v3(intruder)
    }
    .frame();
    let spoofed = Advert {
        priority: 255,
        interval: 10,
        ttl: 64,
        ..Advert::v3(peer)
    }
    .frame();
    let seen = daemon.lines().len();
    lab.send_frames(2, &vec![forged; 10_000])?;
    lab.send_frames(2, &vec![spoofed; 10_000])?;
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "  hapd log lines caused by the forgeries: {}",
        daemon.lines().len() - seen
    );

    step("Ordinary traffic still flows: ping from the intruder to proxy01");
    let out = lab.exec(2, &["ping", "-c", "2", "-i", "0.2", "198.18.0.1"])?;
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from") || l.contains("packet loss"))
    {
        println!("  {l}");
    }

    step("What the kernel recorded, as an operator reads it: bpftool map dump pinned ...");
    for map in ["guard_stats", "vrrp_adverts"] {
        let path = pin_dir.join(map);
        println!("$ bpftool map dump pinned {}", path.display());
        let out = Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&path)
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    step("Stopping hapd (SIGTERM): guard detached, pins removed");
    let seen = daemon.lines().len();
    daemon.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))?;
    show(&daemon, seen);
    let left: Vec<_> = std::fs::read_dir(&pin_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    println!("  pins left in {}: {left:?}", pin_dir.display());
    println!("\nDemo done: forged adverts never reached hapd, the peer's did, traffic flowed.");
    Ok(())
}

fn step(s: &str) {
    println!("\n== {s}");
}

fn show(p: &Proc, from: usize) {
    for l in p.lines().iter().skip(from) {
        println!("  | {l}");
    }
}
