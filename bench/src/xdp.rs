//! The `xdp` suite: the guard's cost per packet for each verdict (BPF_PROG_TEST_RUN with
//! `repeat`, the kernel's own timing), and the drop rate of a forged-advert flood sent into a
//! veth where `hapd run` has the guard attached in native mode.
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aya::{
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};
use hapd_lab::{
    frames::{ether, ipv4, ipv6, v6, Advert, Csum, Hmac},
    Lab,
};
use proxy_userspace::{
    config::{
        auth::{AuthMode, ResolvedAuth},
        XdpMode,
    },
    dataplane::{
        xdp::{pinned_counters, XdpGuard, BENCH_TX_OBJECT},
        AuthSpec, InstanceSpec,
    },
};

use crate::report::{median_spread, Report, Table};

const LO: u32 = 1;
const PEER: [u8; 4] = [198, 18, 0, 2];
const STRANGER: [u8; 4] = [198, 18, 0, 66];

pub fn run(quick: bool) -> anyhow::Result<Report> {
    let mut report = Report::new("xdp", quick);
    let (verdicts, raw_verdicts) = per_verdict(quick)?;
    let (local, raw_local) = local_flow(quick)?;
    let (flood, raw_flood) = flood(quick)?;
    report.tables = vec![verdicts, local, flood];
    report.raw = serde_json::json!({
        "per_verdict_ns": raw_verdicts,
        "local_flow_ns": raw_local,
        "flood": raw_flood,
    });
    Ok(report)
}

fn spec(vrid: u8, version: u8, pass: Option<&[u8; 8]>) -> InstanceSpec {
    InstanceSpec {
        name: format!("VI_{vrid}"),
        interface: "lo".into(),
        ifindex: LO,
        vrid,
        version,
        family: proxy_common::vrrp::Family::V4,
        peers: vec![proxy_common::maps::v4_addr(PEER)],
        pseudo_header: version == 3,
        auth_pass: pass.copied(),
        auth: None,
        xdp: XdpMode::Auto,
        served: vec![],
    }
}

/// This node's Ethernet address in the benchmarks' anycast group.
const ME: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// The benchmarks' anycast group: three nodes, this one first, the other two answering.
fn bench_group() -> proxy_common::maps::AnycastPeers {
    proxy_common::maps::AnycastPeers {
        me: 0,
        count: 3,
        usable: 0b110,
        _pad: 0,
        macs: [
            ME,
            [0x02, 0, 0, 0, 0, 0x21],
            [0x02, 0, 0, 0, 0, 0x22],
            [0; 6],
            [0; 6],
            [0; 6],
            [0; 6],
            [0; 6],
        ],
    }
}

fn per_verdict(quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let (repeat, rounds) = if quick { (200_000, 1) } else { (5_000_000, 5) };
    let mut g = XdpGuard::load(None, false)?;
    // VRID 55: auth_hmac, enforce, monotonic (a frame sent millions of times stays fresh).
    let key: Vec<u8> = (0u8..32).collect();
    let signed_spec = InstanceSpec {
        auth: Some(AuthSpec::new(&ResolvedAuth {
            keys: vec![(1, key.clone())],
            active_key: 1,
            time_mode: false,
            window_s: 5,
            mode: AuthMode::Enforce,
        })),
        ..spec(55, 3, None)
    };
    // VRID 61: an IPv6 instance; 65: IPv6 with auth_hmac as VRID 55.
    let v6_spec = |vrid: u8| InstanceSpec {
        family: proxy_common::vrrp::Family::V6,
        peers: vec![v6("fe80::2")],
        pseudo_header: false,
        ..spec(vrid, 3, None)
    };
    let signed6_spec = InstanceSpec {
        auth: signed_spec.auth.clone(),
        ..v6_spec(65)
    };
    let specs = [
        spec(51, 3, None),
        spec(52, 2, Some(b"secret42")),
        signed_spec,
        v6_spec(61),
        signed6_spec,
    ];
    g.configure(&specs.iter().collect::<Vec<_>>())?;
    let v3 = Advert::v3(PEER);
    let v6a = Advert {
        vrid: 61,
        ..Advert::v3_ipv6(v6("fe80::2"))
    };
    let signed = |addrs: u8, seq: u64, bad: bool| {
        let mut h = Hmac::new(1, &key, seq);
        h.bad_mac = bad;
        Advert {
            vrid: 55,
            addrs: (0..addrs).map(|i| [198, 18, 1, i]).collect(),
            hmac: Some(h),
            ..v3.clone()
        }
        .frame()
    };
    // A replayed advert needs a mark above its sequence number: accept a later one first.
    if g.test_run(&signed(1, 1 << 40, false), LO)? != 2 {
        bail!("a correctly signed advert was not accepted");
    }
    // A second guard with two VIPs in a planned move: 198.18.0.100 held here (flows of the
    // previous owner go there), 198.18.0.101 handed over (new connections and unknown flows go
    // to the new owner, ARP requests unanswered). Its cases are marked `true` below; the first
    // guard has no move, so its figures are those of the steady state.
    let mut moving = XdpGuard::load(None, false)?;
    moving.configure(&specs.iter().collect::<Vec<_>>())?;
    let entry = |role| proxy_common::maps::FlowEntry {
        peer_mac: [0x02, 0, 0, 0, 0, 0x22],
        role,
        _pad: 0,
    };
    moving.set_flow(
        std::net::Ipv4Addr::new(198, 18, 0, 100),
        Some(entry(proxy_common::maps::FLOW_HOLDER)),
    )?;
    moving.set_flow(
        std::net::Ipv4Addr::new(198, 18, 0, 101),
        Some(entry(proxy_common::maps::FLOW_RELEASED)),
    )?;
    // A third guard with an anycast group of three nodes (this one first) serving
    // 198.18.10.0/24: second chance runs. Its cases are marked `2` below.
    let mut anycast = XdpGuard::load(None, false)?;
    anycast.configure(&specs.iter().collect::<Vec<_>>())?;
    let group = bench_group();
    anycast.set_anycast(&[(vec!["198.18.10.0/24".parse()?], group)])?;
    // A TCP segment from a client to `dst`:8080 with `flags`, sent to this node.
    let tcp = |dst: [u8; 4], flags: u8| {
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&50000u16.to_be_bytes());
        seg[2..4].copy_from_slice(&8080u16.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = flags;
        ether(0x0800, &ipv4(6, 64, [198, 18, 0, 3], dst, &seg))
    };
    let arp_request = |target: [u8; 4]| {
        let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 198, 18, 0, 3]);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&target);
        ether(0x0806, &p)
    };
    const XDP_TX: u32 = 3;
    // As sent to this node of the anycast group (second chance walks only those).
    let to_me = |mut f: Vec<u8>| {
        f[..6].copy_from_slice(&ME);
        f
    };
    // (name, frame, the action wanted, the guard: 0 steady, 1 in a move, 2 anycast)
    let mut cases: Vec<(&str, Vec<u8>, u32, u8)> = vec![
        (
            "move: segment of another address, during a move",
            tcp([198, 18, 0, 1], 0x10),
            2,
            1,
        ),
        (
            "move: segment of a flow the other node holds (forwarded)",
            tcp([198, 18, 0, 100], 0x10),
            3,
            1,
        ),
        (
            "move: connection request to a handed-over address (forwarded)",
            tcp([198, 18, 0, 101], 0x02),
            3,
            1,
        ),
        (
            "move: ARP request for a handed-over address (dropped)",
            arp_request([198, 18, 0, 101]),
            1,
            1,
        ),
        (
            "anycast: TCP segment of another address",
            to_me(tcp([198, 18, 0, 1], 0x10)),
            2,
            2,
        ),
        (
            "anycast: connection request to the prefix (served here)",
            to_me(tcp([198, 18, 10, 100], 0x02)),
            2,
            2,
        ),
        (
            "anycast: segment of a flow no socket here holds (sent on)",
            to_me(tcp([198, 18, 10, 100], 0x10)),
            3,
            2,
        ),
        (
            "anycast: ping from a peer (answered)",
            proxy_common::second_chance::ping(ME, [0x02, 0, 0, 0, 0, 0x21], 0, 7).to_vec(),
            3,
            2,
        ),
    ];
    let steady: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "pass: TCP segment",
            ether(0x0800, &ipv4(6, 64, PEER, [198, 18, 0, 1], &[0; 20])),
            2,
        ),
        ("pass: ARP", ether(0x0806, &[0; 28]), 2),
        ("accept: v3 advert, 1 address", v3.frame(), 2),
        (
            "accept: v2 PASS advert, 1 address",
            Advert {
                vrid: 52,
                ..Advert::v2(PEER, "secret42")
            }
            .frame(),
            2,
        ),
        (
            "accept: v3 advert, 16 addresses",
            Advert {
                addrs: (0..16).map(|i| [198, 18, 1, i]).collect(),
                ..v3.clone()
            }
            .frame(),
            2,
        ),
        (
            "accept: v3 advert, 255 addresses (worst case)",
            Advert {
                addrs: (0..255).map(|i| [198, 18, 1, i as u8]).collect(),
                ..v3.clone()
            }
            .frame(),
            2,
        ),
        ("drop: not a peer", Advert::v3(STRANGER).frame(), 1),
        (
            "drop: TTL 64",
            Advert {
                ttl: 64,
                ..v3.clone()
            }
            .frame(),
            1,
        ),
        (
            "drop: unknown VRID",
            Advert {
                vrid: 99,
                ..v3.clone()
            }
            .frame(),
            1,
        ),
        (
            "drop: bad checksum",
            Advert {
                csum: Csum::Bad,
                ..v3.clone()
            }
            .frame(),
            1,
        ),
        ("drop: truncated", v3.frame()[..40].to_vec(), 1),
        (
            "auth_hmac drop: forged MAC, 1 address (full verification)",
            signed(1, 2 << 40, true),
            1,
        ),
        (
            "auth_hmac drop: forged MAC, 16 addresses",
            signed(16, 2 << 40, true),
            1,
        ),
        (
            "auth_hmac drop: replayed sequence number",
            signed(1, 1 << 39, true),
            1,
        ),
        (
            "pass: TCP segment over IPv6",
            ether(
                0x86dd,
                &ipv6(6, 64, v6("2001:2::3"), v6("2001:2::1"), &[0; 20]),
            ),
            2,
        ),
        ("accept: IPv6 advert, 1 address", v6a.frame(), 2),
        (
            "accept: IPv6 advert, 64 addresses (worst case)",
            {
                let mut a = v6a.clone();
                if let Some(v) = a.v6.as_mut() {
                    v.addrs = (0..64u8)
                        .map(|i| v6(&format!("2001:2::{:x}", i + 1)))
                        .collect();
                }
                a.frame()
            },
            2,
        ),
        (
            "accept: IPv6 advert behind a destination options header",
            {
                let mut a = v6a.clone();
                if let Some(v) = a.v6.as_mut() {
                    v.ext = vec![60];
                }
                a.frame()
            },
            2,
        ),
        (
            "drop: IPv6 not a peer",
            Advert {
                vrid: 61,
                ..Advert::v3_ipv6(v6("fe80::66"))
            }
            .frame(),
            1,
        ),
        (
            "drop: IPv6 hop limit 64",
            Advert {
                ttl: 64,
                ..v6a.clone()
            }
            .frame(),
            1,
        ),
        (
            "drop: IPv6 bad checksum",
            Advert {
                csum: Csum::Bad,
                ..v6a.clone()
            }
            .frame(),
            1,
        ),
        (
            "auth_hmac drop: IPv6 forged MAC, 1 address",
            {
                let mut h = Hmac::new(1, &key, 2 << 40);
                h.bad_mac = true;
                Advert {
                    vrid: 65,
                    hmac: Some(h),
                    ..v6a.clone()
                }
                .frame()
            },
            1,
        ),
        (
            "auth_hmac drop: no trailer",
            Advert {
                vrid: 55,
                ..v3.clone()
            }
            .frame(),
            1,
        ),
    ];
    let moves = cases.split_off(0);
    cases.extend(steady.into_iter().map(|(n, f, w)| (n, f, w, 0)));
    cases.extend(moves);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let t_start = std::time::Instant::now();
    for round in 0..rounds {
        let left = if round == 0 {
            String::new()
        } else {
            let per = t_start.elapsed().as_secs_f64() / round as f64;
            format!(
                ", about {:.0} s left before the flood",
                per * (rounds - round) as f64
            )
        };
        println!(
            "[xdp] per-verdict round {}/{rounds} ({} cases x {repeat} runs{left})",
            round + 1,
            cases.len()
        );
        // Alternate the order each round so no case always runs first (cold) or last.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            let (name, frame, want, which) = &cases[i];
            let guard = match which {
                1 => &moving,
                2 => &anycast,
                _ => &g,
            };
            let (action, per_run) = if *want == XDP_TX {
                // A run rewrites the frame's Ethernet header, and BPF_PROG_TEST_RUN repeats on
                // the rewritten buffer (by the third run the frame seems to come from the
                // other node and passes): one run per call, the kernel's times averaged.
                let calls = repeat.min(200_000);
                let mut total = Duration::ZERO;
                let mut last = 0;
                for _ in 0..calls {
                    let (a, t) = guard.bench(frame, LO, 1)?;
                    last = a;
                    total += t;
                }
                (last, total / calls)
            } else {
                guard.bench(frame, LO, repeat)?
            };
            if action != *want {
                bail!("{name}: the guard returned {action}, expected {want}");
            }
            samples[i].push(per_run.as_nanos() as f64);
        }
    }
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    let mut worst_reject = (0.0f64, "");
    let mut medians = Vec::new();
    for ((name, ..), s) in cases.iter().zip(&samples) {
        let (m, lo, hi) = median_spread(s);
        medians.push(m);
        let steady_verdict = !["accept", "auth_hmac", "move", "anycast"]
            .iter()
            .any(|p| name.starts_with(p));
        if steady_verdict && m > worst_reject.0 {
            worst_reject = (m, name);
        }
        rows.push(vec![
            name.to_string(),
            format!("{m:.0}"),
            format!("{lo:.0}..{hi:.0}"),
        ]);
        raw.insert(name.to_string(), serde_json::json!(s));
    }
    Ok((
        Table {
            title: "Guard cost per packet (BPF_PROG_TEST_RUN)".into(),
            columns: vec!["frame".into(), "ns/packet (median)".into(), "spread (min..max)".into()],
            rows,
            notes: vec![
                format!("{rounds} round(s) of {repeat} runs per frame, the kernel's mean per run."),
                format!(
                    "Target <= 50 ns per packet: the slowest pass or drop verdict is {:.0} ns ({}), {}. \
                     Accepted adverts also update the record (a hash map) and read the clock; they \
                     come from configured peers a few times a second. auth_hmac rows (VRID with \
                     keys, monotonic anti-replay) are outside the 50 ns target: a forged MAC costs \
                     the whole HMAC (three SHA-256 blocks for one address), as an accepted signed \
                     advert does. move rows run on a guard with two addresses in a planned \
                     move (one held here, one handed over): the main program's tail call to the \
                     flow program, the lookup of the address, the socket lookup where the verdict \
                     needs it, and the rewrite of the Ethernet header (XDP_TX, action 3) when the \
                     segment goes to the other node; outside a move none of it runs. anycast rows \
                     run on a guard with a group of three nodes serving 198.18.10.0/24 (second \
                     chance): every TCP segment and ARP request takes the tail call; a segment \
                     to the prefix adds a prefix lookup (LPM) and the socket lookup, and is sent \
                     on (XDP_TX) when no socket holds its flow. The bench runs outside a lab, so \
                     no socket holds any flow: the cost of a segment of a local flow is the \
                     lookup of the sent-on row without the rewrite.",
                    worst_reject.0,
                    worst_reject.1,
                    if worst_reject.0 <= 50.0 { "met" } else { "NOT met" }
                ),
            ],
            plot: Some(crate::plot::Plot {
                title: "Packets per second one core can judge, by verdict (1000 / ns per packet)".into(),
                y_label: "Mpps (median)".into(),
                categories: cases.iter().map(|(n, ..)| n.to_string()).collect(),
                series: vec![("Mpps".into(), medians.iter().map(|ns| 1000.0 / ns).collect())],
            }),
        },
        serde_json::Value::Object(raw),
    ))
}

/// What second chance costs a segment of a flow this node holds (the common path on an
/// anycast node): in a lab host with a real connection to an anycast address, the same segment
/// judged by a guard without a group and by one with a group (tail call, prefix lookup,
/// socket lookup found, passed).
fn local_flow(quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let (repeat, rounds) = if quick { (200_000, 3) } else { (2_000_000, 5) };
    let lab = Lab::new(1)?;
    lab.exec(0, &["ip", "addr", "add", "198.18.10.100/32", "dev", "lo"])?;
    let samples = lab.in_netns(0, move || {
        let plain = XdpGuard::load(None, false)?;
        let mut anycast = XdpGuard::load(None, false)?;
        let group = bench_group();
        anycast.set_anycast(&[(vec!["198.18.10.0/24".parse()?], group)])?;
        let listener = std::net::TcpListener::bind("198.18.10.100:8080")?;
        let client = std::net::TcpStream::connect("198.18.10.100:8080")?;
        let (_served, _) = listener.accept()?;
        let local = client.local_addr()?;
        let std::net::IpAddr::V4(src) = local.ip() else {
            bail!("the client's address is not IPv4");
        };
        // The client's segment to the server (an ACK of its flow), sent to this node.
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&local.port().to_be_bytes());
        seg[2..4].copy_from_slice(&8080u16.to_be_bytes());
        seg[12] = 5 << 4;
        seg[13] = 0x10;
        let mut frame = ether(0x0800, &ipv4(6, 64, src.octets(), [198, 18, 10, 100], &seg));
        frame[..6].copy_from_slice(&ME);
        let mut out = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            println!("[xdp] local flow round {}/{rounds}", round + 1);
            for (k, g) in [&plain, &anycast].into_iter().enumerate() {
                let (action, t) = g.bench(&frame, LO, repeat)?;
                if action != 2 {
                    bail!("a segment of a flow held here was not passed (action {action})");
                }
                out[k].push(t.as_nanos() as f64);
            }
        }
        Ok(out)
    })?;
    let names = [
        "segment of a flow held here, no anycast group",
        "the same, with an anycast group for its address (second chance looks, finds the socket, passes)",
    ];
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    for (name, s) in names.iter().zip(&samples) {
        let (m, lo, hi) = median_spread(s);
        rows.push(vec![
            name.to_string(),
            format!("{m:.0}"),
            format!("{lo:.0}..{hi:.0}"),
        ]);
        raw.insert(name.to_string(), serde_json::json!(s));
    }
    Ok((
        Table {
            title: "What second chance costs a local flow (BPF_PROG_TEST_RUN in a lab host)".into(),
            columns: vec![
                "frame".into(),
                "ns/packet (median)".into(),
                "spread (min..max)".into(),
            ],
            rows,
            notes: vec![format!(
                "{rounds} round(s) of {repeat} runs per frame, the kernel's mean per run, in a lab \
                 host with a real connection to 198.18.10.100:8080 (the socket lookup finds it)."
            )],
            plot: None,
        },
        serde_json::Value::Object(raw),
    ))
}

/// CPU time (user + system) of `pid` so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command name.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // /proc reports in USER_HZ, which is 100 on every Linux ABI.
    Ok(Duration::from_millis(ticks * 10))
}

/// Builds the frame a flood sends (given the lab, for its addresses).
type FrameFn = Box<dyn Fn(&Lab) -> Vec<u8>>;

/// One flood: what the DUT runs and what the intruder sends.
struct FloodCase {
    name: &'static str,
    /// Lines added to the DUT's `[[vrrp]]`.
    vrrp: String,
    /// The guard counter the flood moves.
    counter: &'static str,
    /// The frame the intruder sends (built just before each round: timestamps stay fresh).
    frame: FrameFn,
}

fn flood(quick: bool) -> anyhow::Result<(Table, serde_json::Value)> {
    let key: Vec<u8> = (0u8..32).collect();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    // The intruder spoofs 198.18.0.9, the DUT's configured peer.
    const SPOOFED: [u8; 4] = [198, 18, 0, 9];
    let cases = vec![
        FloodCase {
            name: "forged advert from a non-peer",
            vrrp: String::new(),
            counter: "drop_not_peer",
            frame: Box::new(|lab: &Lab| {
                Advert {
                    priority: 255,
                    interval: 1,
                    ..Advert::v3(lab.host(1).addr.octets())
                }
                .frame()
            }),
        },
        FloodCase {
            name: "spoofed peer, forged auth_hmac trailer",
            vrrp: format!("auth_hmac = {{ keys = {{ 1 = \"hex:{hex}\" }}, active_key = 1 }}\n"),
            counter: "drop_hmac",
            frame: Box::new(|_: &Lab| {
                let mut h = Hmac::new(1, &[0x42; 32], Hmac::now_seq(0) + (1 << 32));
                h.key_id = 1;
                Advert {
                    priority: 255,
                    interval: 1,
                    hmac: Some(h),
                    ..Advert::v3(SPOOFED)
                }
                .frame()
            }),
        },
    ];
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut notes = Vec::new();
    let mut categories = Vec::new();
    let mut medians = Vec::new();
    for case in &cases {
        let (r, generator, m) = flood_case(quick, case, &mut rows)?;
        raw.push(serde_json::json!({ "case": case.name, "generator": generator, "rounds": r }));
        notes.push(format!(
            "{}: median {m:.2} Mpps dropped ({generator}).",
            case.name
        ));
        categories.push(case.name.to_string());
        medians.push(m);
    }
    notes.push(
        "Generators: `hapd_bench_tx` (XDP_TX) under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES \
         on the intruder's veth when the kernel allows it, else `sendmmsg` on an AF_PACKET socket \
         (qdisc bypassed) in batches of 256; the frames cross to the peer veth where `hapd run` \
         attached the guard natively. Generator and guard share the machine's two cores (a veth \
         runs the receiver's XDP on the sender's CPU), so the rate is a floor for the guard. \
         Target >= 5 Mpps for the non-peer drop; an auth_hmac forgery costs a full HMAC."
            .into(),
    );
    Ok((
        Table {
            title: "Forged-advert floods into native XDP on a veth".into(),
            columns: vec![
                "case".into(),
                "round".into(),
                "frames sent".into(),
                "dropped".into(),
                "seconds".into(),
                "Mpps dropped".into(),
                "hapd CPU ms".into(),
                "hapd wake-ups".into(),
                "state changes".into(),
            ],
            rows,
            notes,
            plot: Some(crate::plot::Plot {
                title: "Forged adverts the guard drops per second (median of the rounds)".into(),
                y_label: "Mpps".into(),
                categories,
                series: vec![("Mpps".into(), medians)],
            }),
        },
        serde_json::Value::Array(raw),
    ))
}

/// Runs one flood case; adds its rows. Returns the raw rounds, the generator used and the
/// median rate.
fn flood_case(
    quick: bool,
    case: &FloodCase,
    rows: &mut Vec<Vec<String>>,
) -> anyhow::Result<(serde_json::Value, &'static str, f64)> {
    let (frames, secs, rounds) = if quick {
        (2_000_000u32, 1u64, 1)
    } else {
        (20_000_000u32, 3, 3)
    };
    let hapd = crate::hapd_bin()?;
    let mut lab = Lab::new(2)?;
    // A direct veth pair: the generator's frames land in the DUT's veth, where the guard runs
    // in native mode (a veth takes XDP frames only when its peer has XDP attached).
    let (dut_if, gen_if) = lab.link(0, 1)?;
    // hapd sends adverts from the interface's own address.
    let out = lab.exec(0, &["ip", "addr", "add", "198.18.1.1/24", "dev", &dut_if])?;
    if !out.status.success() {
        bail!(
            "addressing {dut_if}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pin_dir = lab.bpffs()?.join("dut");
    let config = format!(
        "[node]\nname = \"dut\"\npin_dir = \"{}\"\n\n[[vrrp]]\nname = \"VI_1\"\n\
         interface = \"{dut_if}\"\nvrid = 51\npriority = 100\nadvert_interval = \"10ms\"\n\
         virtual_ips = [\"198.18.0.100/24\"]\npeers = [\"198.18.0.9\"]\nxdp = \"native\"\n{}",
        pin_dir.display(),
        case.vrrp
    );
    let mut daemon = lab.start_hapd(0, &hapd, &config)?;
    daemon.wait_for("=> MASTER", 1, Duration::from_secs(10))?;

    let mut gen_obj = Ebpf::load(BENCH_TX_OBJECT).context("loading the generator object")?;
    let gen: &mut Xdp = gen_obj
        .program_mut("hapd_bench_tx")
        .context("generator program")?
        .try_into()?;
    gen.load()?;
    let gen_ifindex = lab.ifindex(1, &gen_if)?;
    // The AF_PACKET generator sends on the host's eth0; use the direct link instead.
    let mut generator = "XDP live frames";
    let mut raw = Vec::new();
    let mut mpps = Vec::new();
    for round in 0..rounds {
        println!(
            "[xdp] flood {}: round {}/{rounds} (a few seconds)",
            case.name,
            round + 1
        );
        let forged = (case.frame)(&lab);
        let before = pinned_counters(&pin_dir)?;
        let cpu0 = cpu_time(daemon.pid())?;
        let events0 = daemon.grep("advert from").len();
        let transitions0 = daemon.grep(" => ").len();
        let t0 = Instant::now();
        let gen: &Xdp = gen_obj
            .program("hapd_bench_tx")
            .context("generator")?
            .try_into()?;
        let live = if generator == "XDP live frames" {
            lab.in_netns(1, || {
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(forged.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&gen_ifindex.to_ne_bytes());
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(&forged);
                opts.ctx_in = Some(&ctx);
                opts.repeat = frames;
                opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
                Ok(gen.test_run(opts).is_ok())
            })?
        } else {
            false
        };
        let sent = if live {
            frames as u64
        } else {
            if generator == "XDP live frames" {
                println!("[xdp] the kernel refuses XDP live frames here; sending with sendmmsg");
                generator = "AF_PACKET sendmmsg";
            }
            lab.flood_on(
                1,
                &gen_if,
                std::slice::from_ref(&forged),
                Duration::from_secs(secs),
            )?
        };
        let wall = t0.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let after = pinned_counters(&pin_dir)?;
        let cpu = cpu_time(daemon.pid())? - cpu0;
        let dropped = counter_of(&after, case.counter) - counter_of(&before, case.counter);
        let rate = dropped as f64 / wall.as_secs_f64() / 1e6;
        let woke = daemon.grep("advert from").len() - events0;
        let changes = daemon.grep(" => ").len() - transitions0;
        mpps.push(rate);
        rows.push(vec![
            case.name.to_string(),
            format!("{}", round + 1),
            format!("{sent}"),
            format!("{dropped}"),
            format!("{:.3}", wall.as_secs_f64()),
            format!("{rate:.2}"),
            format!("{:.1}", cpu.as_secs_f64() * 1000.0),
            format!("{woke}"),
            format!("{changes}"),
        ]);
        raw.push(serde_json::json!({
            "frames": sent, "dropped": dropped, "wall_s": wall.as_secs_f64(), "mpps": rate,
            "hapd_cpu_ms": cpu.as_secs_f64() * 1000.0, "hapd_events": woke,
            "state_changes": changes, "accepted": after.accepted - before.accepted,
        }));
        if changes > 0 {
            bail!(
                "{}: the flood changed hapd's state:\n{}",
                case.name,
                daemon.lines().join("\n")
            );
        }
    }
    daemon.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5))?;
    let (m, _, _) = median_spread(&mpps);
    Ok((serde_json::Value::Array(raw), generator, m))
}

fn counter_of(c: &proxy_common::maps::GuardCounters, name: &str) -> u64 {
    proxy_common::maps::Reason::ALL
        .iter()
        .find(|r| r.name() == name)
        .map_or(0, |r| c.get(*r))
}
