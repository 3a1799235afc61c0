//! hapd on one lab host, a VRRP peer and a non-peer on two others, over a real bridge: forged
//! adverts are dropped and counted, the peer's adverts are recorded, ping and TCP still work,
//! and SIGTERM detaches the guard and removes the pins. Once with XDP, once with `xdp = "off"`.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use aya::maps::{HashMap, MapData};
use hapd_lab::{frames::Advert, proc::Proc, Lab};
use nix::sys::signal::Signal;
use proxy_common::{
    maps::{v4_addr, AdvertRecord, InstanceKey},
    vrrp::Family,
};
use proxy_userspace::dataplane::xdp::pinned_counters;

const HAPD: &str = env!("CARGO_BIN_EXE_hapd");

fn config(pin_dir: &Path, xdp: &str) -> String {
    format!(
        r#"
[node]
name = "guarded"
pin_dir = "{}"

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = 100
advert_interval = "100ms"
virtual_ips = ["198.18.0.100/24"]
peers = ["198.18.0.2"]
xdp = "{xdp}"
"#,
        pin_dir.display()
    )
}

struct Setup {
    lab: Lab,
    hapd: Proc,
    pin_dir: std::path::PathBuf,
}

fn start(xdp: &str) -> Setup {
    let mut lab = Lab::new(3).unwrap();
    let pin_dir = lab.bpffs().unwrap().join("h0");
    let hapd = lab
        .start_hapd(0, Path::new(HAPD), &config(&pin_dir, xdp))
        .unwrap();
    Setup { lab, hapd, pin_dir }
}

/// Valid adverts from the peer (host 1) and forged ones from the non-peer (host 2): priority
/// 255 from its own address, and the peer's address spoofed as from behind a router (TTL 64).
fn send_traffic(lab: &Lab) {
    let peer = lab.host(1).addr.octets();
    let stranger = lab.host(2).addr.octets();
    let valid = Advert {
        interval: 10,
        ..Advert::v3(peer)
    }
    .frame();
    lab.send_frames(1, &vec![valid; 5]).unwrap();
    let forged = Advert {
        priority: 255,
        interval: 10,
        ..Advert::v3(stranger)
    }
    .frame();
    lab.send_frames(2, &vec![forged; 10]).unwrap();
    let spoofed = Advert {
        priority: 255,
        interval: 10,
        ttl: 64,
        ..Advert::v3(peer)
    }
    .frame();
    lab.send_frames(2, &vec![spoofed; 7]).unwrap();
}

/// The traffic both guard modes must handle: adverts from the peer and forgeries, the
/// peer's advert reaching hapd, and ordinary traffic still flowing.
fn exercise(s: &mut Setup) {
    send_traffic(&s.lab);
    s.hapd
        .wait_for(
            "advert from 198.18.0.2 priority 100",
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    ping_and_tcp(&s.lab);
}

fn ping_and_tcp(lab: &Lab) {
    for i in [1, 2] {
        lab.exec(i, &["ping", "-c", "1", "-W", "2", "198.18.0.1"])
            .expect("ping through the guard");
    }
    let listener = lab
        .in_netns(0, || Ok(TcpListener::bind("198.18.0.1:7000")?))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut c = lab
        .in_netns(2, || {
            Ok(TcpStream::connect_timeout(
                &"198.18.0.1:7000".parse()?,
                Duration::from_secs(2),
            )?)
        })
        .unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    server.join().unwrap();
}

fn ip_link(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.host(0).netns, "link", "show", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn xdp_guard_in_the_lab() {
    xdp_guard("auto", "native XDP", "xdp");
}

#[test]
fn generic_xdp_guard_in_the_lab() {
    xdp_guard("generic", "generic XDP", "xdpgeneric");
}

/// `xdp = mode` must attach as `shown` in the log and `ip_flag` in `ip link`.
fn xdp_guard(mode: &str, shown: &str, ip_flag: &str) {
    let mut s = start(mode);
    let modes = s.hapd.grep("VRRP guard runs as");
    let want = format!("eth0: VRRP guard runs as {shown}");
    assert!(modes.iter().any(|l| l.contains(&want)), "{modes:?}");
    let link = ip_link(&s.lab);
    // `ip link` shows the mode after the MTU ("mtu 1500 xdpgeneric qdisc") and the program.
    assert!(
        link.contains(&format!(" {ip_flag} qdisc")),
        "guard attached as {ip_flag}: {link}"
    );
    assert!(link.contains("name hapd_vrrp_guard"), "{link}");

    exercise(&mut s);

    let c = pinned_counters(&s.pin_dir).unwrap();
    assert_eq!(c.accepted, 5, "{c:?}");
    assert_eq!(c.drop_not_peer, 10, "{c:?}");
    assert_eq!(c.drop_ttl, 7, "{c:?}");
    let ifindex = s.lab.ifindex(0, "eth0").unwrap();
    let adverts: HashMap<_, InstanceKey, AdvertRecord> = HashMap::try_from(
        aya::maps::Map::HashMap(MapData::from_pin(s.pin_dir.join("vrrp_adverts")).unwrap()),
    )
    .unwrap();
    let rec = adverts
        .get(&InstanceKey::new(ifindex, 51, Family::V4), 0)
        .unwrap();
    assert_eq!(
        (rec.master, rec.priority, rec.adverts, rec.interval_cs),
        (v4_addr([198, 18, 0, 2]), 100, 5, 10)
    );
    // Only the first valid advert woke userspace; no forged one did.
    assert_eq!(s.hapd.grep("advert from").len(), 1, "{:?}", s.hapd.lines());

    // Operators read the same maps with bpftool, with field names.
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(s.pin_dir.join("guard_stats"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // Per-CPU values, each CPU's struct with its field names: they add up to the forged ten.
    let total: u64 = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"drop_not_peer\": "))
        .map(|v| v.trim_end_matches(',').parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 10, "bpftool: {text}");

    for m in [
        "guard_stats",
        "vrrp_adverts",
        "vrrp_vrids",
        "vrrp_events",
        "hapd_layout",
    ] {
        assert!(s.pin_dir.join(m).exists(), "{m} is pinned while hapd runs");
    }
    let st = s
        .hapd
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap();
    assert!(st.success(), "{st}");
    for m in [
        "guard_stats",
        "vrrp_adverts",
        "vrrp_vrids",
        "vrrp_events",
        "hapd_layout",
    ] {
        assert!(
            !s.pin_dir.join(m).exists(),
            "{m} still pinned after SIGTERM"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&s.pin_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "pins left after SIGTERM: {left:?}");
    let link = ip_link(&s.lab);
    assert!(!link.contains("xdp"), "guard detached: {link}");
}

#[test]
fn raw_socket_guard_in_the_lab() {
    let mut s = start("off");
    assert!(
        !s.hapd
            .grep("eth0: VRRP guard runs as raw socket")
            .is_empty(),
        "{:?}",
        s.hapd.lines()
    );
    exercise(&mut s);
    // Give the socket a moment to judge the last forged frames, then stop and read the tally.
    std::thread::sleep(Duration::from_millis(200));
    let st = s.hapd.stop(Signal::SIGINT, Duration::from_secs(5)).unwrap();
    assert!(st.success(), "{st}");
    let tally = s.hapd.grep("guard counters at stop");
    assert_eq!(tally.len(), 1, "{:?}", s.hapd.lines());
    for want in ["accepted: 5", "drop_not_peer: 10", "drop_ttl: 7"] {
        assert!(tally[0].contains(want), "{want} in {}", tally[0]);
    }
    assert_eq!(s.hapd.grep("advert from").len(), 1, "{:?}", s.hapd.lines());
    assert!(
        !s.pin_dir.join("guard_stats").exists(),
        "no pins in off mode"
    );
}

/// `auto` on an interface without native XDP (a bridge device) falls back to generic XDP and
/// says so.
#[test]
fn auto_falls_back_to_generic_and_says_so() {
    let mut lab = Lab::new(1).unwrap();
    lab.exec(0, &["ip", "link", "add", "dum0", "type", "bridge"])
        .unwrap();
    lab.exec(0, &["ip", "link", "set", "dum0", "up"]).unwrap();
    // An address to send adverts from (the benchmarking range).
    lab.exec(0, &["ip", "addr", "add", "198.19.0.1/24", "dev", "dum0"])
        .unwrap();
    let pin_dir = lab.bpffs().unwrap().join("h0");
    let cfg = config(&pin_dir, "auto").replace("\"eth0\"", "\"dum0\"");
    let mut hapd = lab.start_hapd(0, Path::new(HAPD), &cfg).unwrap();
    assert_eq!(
        hapd.grep("dum0: native XDP attach failed").len(),
        1,
        "{:?}",
        hapd.lines()
    );
    assert_eq!(
        hapd.grep("dum0: VRRP guard runs as generic XDP").len(),
        1,
        "{:?}",
        hapd.lines()
    );
    assert!(hapd
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap()
        .success());
}
