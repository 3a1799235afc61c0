//! `cargo xtask demo`: the guide's failover pair in a lab, narrated.
//!
//! proxy01 (198.18.0.1, priority 110) and proxy02 (198.18.0.2, priority 100) run hapd with
//! VRRP instance VI_1 (VRID 51, VIP 198.18.0.100, adverts every 100 ms) and the reverse proxy
//! on VIP:80 in front of a backend (nginx on 198.18.0.5); a client (198.18.0.3) uses the VIP;
//! an intruder (198.18.0.4) on the same segment forges adverts.
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

    step("Creating the lab: five hosts on one bridge, each a network namespace");
    let mut lab = Lab::new(5)?;
    let names = ["proxy01", "proxy02", "client", "intruder", "backend"];
    for (i, n) in names.iter().enumerate() {
        println!("  {n:9} {} (netns {})", lab.host(i).addr, lab.host(i).netns);
    }
    let bpf = lab.bpffs()?;
    let _backend = start_backend(&lab)?;
    let backend_addr = lab.host(4).addr;
    let config = |i: usize, priority: u8| {
        format!(
            "[node]\nname = \"{}\"\npin_dir = \"{}\"\nadmin = \"{}:8410\"   # status, /metrics, /healthz\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
             vrid = 51\npriority = {priority}\nadvert_interval = \"100ms\"\nvirtual_ips = [\"{VIP}/24\"]\n\
             peers = [\"{}\"]\ntrack_proxy = {{ weight = -50 }}\n\n\
             [[listener]]\nname = \"http\"\nbind = [\"{VIP}:80\"]   # the VIP: works on the backup too\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{backend_addr}:8081\"]\n\
             health_check = {{ path = \"/\", interval = \"500ms\", timeout = \"200ms\", fall = 2, rise = 2 }}\n\n\
             [[vhost]]\nserver_names = [\"app.example-corp.com\"]\nlisteners = [\"http\"]\n\
             response_headers = {{ \"X-Frame-Options\" = \"DENY\" }}\n\n  [[vhost.route]]\n  prefix = \"/\"\n  upstream = \"app\"\n",
            names[i],
            bpf.join(names[i]).display(),
            lab.host(i).addr,
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
    ask_vip(&lab)?;

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

    step("Watching the pair: hapd status on proxy02, and a few lines of proxy01's /metrics");
    let hapd_s = hapd.to_str().unwrap_or("hapd");
    shell(
        &lab,
        1,
        "hapd status   (on proxy02)",
        &[hapd_s, "status", "--admin", "198.18.0.2:8410"],
        |_| true,
    )?;
    shell(
        &lab,
        2,
        "curl http://198.18.0.1:8410/metrics | grep -E 'vrrp_state|requests_total|drop_ttl'",
        &["curl", "-s", "http://198.18.0.1:8410/metrics"],
        |l| {
            !l.starts_with('#')
                && (l.contains("state=\"MASTER\"")
                    || l.contains("requests_total")
                    || l.contains("drop_ttl"))
        },
    )?;

    step("The failover drill the guide asks for: hapd drill on proxy01 steps down, measures the outage at the VIP, hands back");
    let probe = format!("http://{VIP}/");
    let ok = shell(
        &lab,
        0,
        &format!("hapd drill --peer-admin 198.18.0.2:8410 --probe {probe}"),
        &[
            hapd_s,
            "drill",
            "--admin",
            "198.18.0.1:8410",
            "--peer-admin",
            "198.18.0.2:8410",
            "--probe",
            &probe,
        ],
        |_| true,
    )?;
    if !ok {
        anyhow::bail!("the drill failed");
    }
    where_is_vip(&lab);

    step("Graceful stop of proxy01 (SIGTERM): it resigns with priority 0, serves the VIP until proxy02 has taken over, and lets its open connections finish before it lets the address go");
    let (seen1, seen2) = (p1.lines().len(), p2.lines().len());
    let t0 = Instant::now();
    p1.signal(Signal::SIGTERM)?;
    p2.wait_for("=> MASTER", 2, Duration::from_secs(5))?;
    println!(
        "  proxy02 master {:.0} ms after the signal",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    p1.stop(Signal::SIGTERM, Duration::from_secs(5))?;
    show(&p2, "proxy02", seen2);
    show(&p1, "proxy01", seen1);
    where_is_vip(&lab);
    ask_vip(&lab)?;

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
    p2.wait_for("=> MASTER", 3, Duration::from_secs(5))?;
    println!(
        "  proxy02 master {:.0} ms after the kill",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    show(&p2, "proxy02", seen);
    where_is_vip(&lab);
    println!(
        "  (proxy01 died holding the VIP; its XDP guard stays attached, its link pinned, and drops\n   \
         connection requests nobody serves there; the next start replaces the guard and removes\n   \
         the VIP before the election)"
    );
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

/// Runs `argv` in host `i`, prints `$ shown` and the lines of its output that `keep` keeps;
/// whether it succeeded.
fn shell(
    lab: &Lab,
    i: usize,
    shown: &str,
    argv: &[&str],
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<bool> {
    let out = lab.command(i, argv).output()?;
    println!("$ {shown}");
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| keep(l))
    {
        println!("  {l}");
    }
    Ok(out.status.success())
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
            || l.contains("replaced the guard")
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

/// The client asks the VIP over HTTP; the backend says which proxy the request came through.
fn ask_vip(lab: &Lab) -> anyhow::Result<()> {
    let out = lab.exec(
        2,
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "-H",
            "Host: app.example-corp.com",
            &format!("http://{VIP}/"),
        ],
    )?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let who = if body.contains(&lab.host(0).addr.to_string()) {
        " (proxy01)"
    } else if body.contains(&lab.host(1).addr.to_string()) {
        " (proxy02)"
    } else {
        ""
    };
    println!("  client: curl http://{VIP}/ -> {body}{who}");
    Ok(())
}

/// nginx in the backend host, answering with the address the request came from: the proxy
/// that forwarded it. Stopped when dropped.
fn start_backend(lab: &Lab) -> anyhow::Result<Proc> {
    let dir = lab.dir().join("backend");
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon off;\n\
             events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{ listen 8081; location / {{ return 200 \"backend answered a request forwarded by $remote_addr\\n\"; }} }}\n}}\n"
        ),
    )?;
    let conf = conf.display().to_string();
    let prefix = d.to_string();
    let child = lab.spawn(4, &["nginx", "-c", &conf, "-p", &prefix])?;
    let p = Proc::new("nginx", child);
    // Wait until it answers.
    let url = format!("http://{}:8081/", lab.host(4).addr);
    let end = Instant::now() + Duration::from_secs(5);
    while !lab
        .exec(4, &["curl", "-s", "-m", "1", &url])
        .is_ok_and(|o| o.status.success())
    {
        anyhow::ensure!(Instant::now() < end, "the backend (nginx) did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}
