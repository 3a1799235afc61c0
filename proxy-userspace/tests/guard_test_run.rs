//! The XDP guard on crafted frames through BPF_PROG_TEST_RUN, and the same frames through the
//! raw-socket path (`xdp = "off"`): both must reach the same verdict, counters and record.
use hapd_lab::frames::{ether, ipv4, ipv6, v6, Advert, Csum, Hmac, V6};
use proxy_common::maps::{
    to_words, v4_addr, AddrWords, GuardCounters, InstanceKey, Owners, Reason, ReplayKey, TimerCfg,
    EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_MASTER_DOWN, EV_NEW_SOURCE, EV_PRIORITY_CHANGE,
    EV_PRIORITY_ZERO,
};
use proxy_common::vrrp::Family;
use proxy_userspace::{
    config::{
        auth::{AuthMode, ResolvedAuth},
        XdpMode,
    },
    dataplane::{monotonic_ns, raw::RawState, xdp::XdpGuard, AuthSpec, InstanceSpec},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The loopback device: BPF_PROG_TEST_RUN wants an existing ingress device.
const LO: u32 = 1;
const PEER: [u8; 4] = [198, 18, 0, 2];
const PEER2: [u8; 4] = [198, 18, 0, 3];
const STRANGER: [u8; 4] = [198, 18, 0, 66];

/// The IPv6 peers: link-local addresses, as adverts come from.
fn peer6() -> [u8; 16] {
    v6("fe80::2")
}
fn peer6_2() -> [u8; 16] {
    v6("fe80::3")
}

/// An IPv6 instance: v3, peers fe80::2 and fe80::3.
fn spec6(vrid: u8) -> InstanceSpec {
    InstanceSpec {
        name: format!("VI6_{vrid}"),
        family: Family::V6,
        peers: vec![peer6(), peer6_2()],
        pseudo_header: false,
        ..spec(vrid, 3, false, None)
    }
}

/// An IPv4 address as the guard's replay marks key it.
fn words(a: [u8; 4]) -> AddrWords {
    to_words(&v4_addr(a))
}

fn spec(vrid: u8, version: u8, pseudo: bool, pass: Option<&[u8; 8]>) -> InstanceSpec {
    InstanceSpec {
        name: format!("VI_{vrid}"),
        interface: "lo".into(),
        ifindex: LO,
        vrid,
        version,
        family: Family::V4,
        peers: vec![v4_addr(PEER), v4_addr(PEER2)],
        pseudo_header: pseudo,
        auth_pass: pass.copied(),
        auth: None,
        xdp: XdpMode::Auto,
        served: vec![],
    }
}

/// The auth_hmac keys of the tests: key 1 is bytes 0..32, key 2 is 40 bytes of 0xa5.
fn key1() -> Vec<u8> {
    (0u8..32).collect()
}
fn key2() -> Vec<u8> {
    vec![0xa5; 40]
}

fn with_auth(mut s: InstanceSpec, mode: AuthMode, time_mode: bool) -> InstanceSpec {
    s.auth = Some(AuthSpec::new(&ResolvedAuth {
        keys: vec![(1, key1()), (2, key2())],
        active_key: 1,
        time_mode,
        window_s: 5,
        mode,
    }));
    s
}

/// VRID 51: v3 pseudo-header; 52: v2 PASS "secret42"; 53: v3 message-only; 54: v3, no peers;
/// auth_hmac with keys 1 and 2: 55 v3 enforce (time, 5 s), 56 v2 permissive (monotonic), 57 v3
/// receive-only (time), 58 v3 enforce without a peer list. IPv6: 51 too (its own VRID space),
/// 61 (IPv6 only), 64 without a peer list, 65 enforce (time, 5 s).
fn specs() -> Vec<InstanceSpec> {
    let mut open6 = spec6(64);
    open6.peers.clear();
    let mut open = spec(54, 3, true, None);
    open.peers.clear();
    let mut open_auth = with_auth(spec(58, 3, true, None), AuthMode::Enforce, true);
    open_auth.peers.clear();
    vec![
        spec(51, 3, true, None),
        spec(52, 2, false, Some(b"secret42")),
        spec(53, 3, false, None),
        open,
        with_auth(spec(55, 3, true, None), AuthMode::Enforce, true),
        with_auth(spec(56, 2, false, None), AuthMode::Permissive, false),
        with_auth(spec(57, 3, true, None), AuthMode::ReceiveOnly, true),
        open_auth,
        spec6(51),
        spec6(61),
        open6,
        with_auth(spec6(65), AuthMode::Enforce, true),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Pass,
    Accept,
    Drop(Reason),
}

struct Both {
    xdp: XdpGuard,
    raw: RawState,
}

impl Both {
    fn new() -> Both {
        let specs = specs();
        let refs: Vec<&InstanceSpec> = specs.iter().collect();
        let mut xdp = XdpGuard::load(None, false).expect("load the guard (run the tests as root)");
        xdp.configure(&refs).unwrap();
        let raw = RawState::default();
        raw.configure(&refs).unwrap();
        Both { xdp, raw }
    }

    /// Runs `frame` through both paths and checks the verdict and the counter that moved.
    fn check(&mut self, what: &str, frame: &[u8], expect: Expect) {
        let before = (self.xdp.counters().unwrap(), self.raw.counters());
        if frame.len() < 14 {
            // The kernel never runs XDP on less than an Ethernet header, and test-run refuses
            // such input: only the raw path can see it.
            assert!(
                self.xdp.test_run(frame, LO).is_err(),
                "{what}: kernel accepted a runt"
            );
            let _ = self.raw.handle(frame, LO, monotonic_ns());
            let after = self.raw.counters();
            assert_eq!(after, before.1, "{what}: raw path counted a runt");
            assert_eq!(expect, Expect::Pass, "{what}");
            return;
        }
        let action = self.xdp.test_run(frame, LO).unwrap();
        let _ = self.raw.handle(frame, LO, monotonic_ns());
        let after = (self.xdp.counters().unwrap(), self.raw.counters());
        let moved = |b: &GuardCounters, a: &GuardCounters| -> Vec<&'static str> {
            Reason::ALL
                .iter()
                .filter(|r| a.get(**r) != b.get(**r))
                .map(|r| r.name())
                .collect()
        };
        let (xdp_moved, raw_moved) = (moved(&before.0, &after.0), moved(&before.1, &after.1));
        let want_action = if matches!(expect, Expect::Drop(_)) {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(
            action, want_action,
            "{what}: XDP action (xdp counted {xdp_moved:?}, raw {raw_moved:?})"
        );
        let moved_reason = match expect {
            Expect::Pass => None,
            Expect::Accept => Some(Reason::Accepted),
            Expect::Drop(r) => Some(r),
        };
        for (path, b, a) in [("xdp", before.0, after.0), ("raw", before.1, after.1)] {
            for r in Reason::ALL {
                let want = u64::from(Some(r) == moved_reason);
                assert_eq!(
                    a.get(r) - b.get(r),
                    want,
                    "{what}: {path} counter {}",
                    r.name()
                );
            }
        }
    }
}

fn drop_(r: Reason) -> Expect {
    Expect::Drop(r)
}

#[test]
fn valid_adverts_of_each_kind_are_accepted() {
    let mut b = Both::new();
    b.check(
        "v3 pseudo-header",
        &Advert::v3(PEER).frame(),
        Expect::Accept,
    );
    b.check(
        "v2 PASS",
        &Advert {
            vrid: 52,
            ..Advert::v2(PEER, "secret42")
        }
        .frame(),
        Expect::Accept,
    );
    let msg_only = Advert {
        vrid: 53,
        csum: Csum::MessageOnly,
        ..Advert::v3(PEER)
    };
    b.check("v3 message-only", &msg_only.frame(), Expect::Accept);
    b.check(
        "v3 no peer list",
        &Advert {
            vrid: 54,
            ..Advert::v3(STRANGER)
        }
        .frame(),
        Expect::Accept,
    );
    let many = Advert {
        addrs: (0..255).map(|i| [198, 18, 1, i as u8]).collect(),
        ..Advert::v3(PEER)
    };
    b.check("v3 with 255 addresses", &many.frame(), Expect::Accept);
    b.check(
        "ethernet padding",
        &Advert {
            padding: 18,
            ..Advert::v3(PEER)
        }
        .frame(),
        Expect::Accept,
    );
    b.check(
        "unicast destination",
        &Advert {
            dst: [198, 18, 0, 1],
            ..Advert::v3(PEER)
        }
        .frame(),
        Expect::Accept,
    );
}

#[test]
fn each_drop_reason() {
    let mut b = Both::new();
    let v3 = Advert::v3(PEER);
    let v2 = Advert {
        vrid: 52,
        ..Advert::v2(PEER, "secret42")
    };
    let cases: Vec<(&str, Advert, Expect)> = vec![
        (
            "non-peer source",
            Advert::v3(STRANGER),
            drop_(Reason::NotPeer),
        ),
        (
            "v2 non-peer with the right password",
            Advert {
                vrid: 52,
                ..Advert::v2(STRANGER, "secret42")
            },
            drop_(Reason::NotPeer),
        ),
        (
            "TTL 254",
            Advert {
                ttl: 254,
                ..v3.clone()
            },
            drop_(Reason::Ttl),
        ),
        (
            "TTL 64 from a peer address",
            Advert {
                ttl: 64,
                ..v3.clone()
            },
            drop_(Reason::Ttl),
        ),
        (
            "version 1",
            Advert {
                version: 1,
                ..v3.clone()
            },
            drop_(Reason::Version),
        ),
        (
            "version 4",
            Advert {
                version: 4,
                ..v3.clone()
            },
            drop_(Reason::Version),
        ),
        (
            "v2 advert for a v3 VRID",
            Advert {
                vrid: 51,
                ..v2.clone()
            },
            drop_(Reason::Version),
        ),
        (
            "type 2",
            Advert {
                kind: 2,
                ..v3.clone()
            },
            drop_(Reason::Type),
        ),
        (
            "VRID not configured",
            Advert {
                vrid: 99,
                ..v3.clone()
            },
            drop_(Reason::UnknownVrid),
        ),
        (
            "count says 2, one address",
            Advert {
                count: Some(2),
                ..v3.clone()
            },
            drop_(Reason::Length),
        ),
        (
            "count 0",
            Advert {
                count: Some(0),
                addrs: vec![],
                ..v3.clone()
            },
            drop_(Reason::Length),
        ),
        (
            "bad v3 checksum",
            Advert {
                csum: Csum::Bad,
                ..v3.clone()
            },
            drop_(Reason::Checksum),
        ),
        (
            "message-only checksum on a pseudo-header VRID",
            Advert {
                csum: Csum::MessageOnly,
                ..v3.clone()
            },
            drop_(Reason::Checksum),
        ),
        (
            "pseudo-header checksum on a message-only VRID",
            Advert {
                vrid: 53,
                ..v3.clone()
            },
            drop_(Reason::Checksum),
        ),
        (
            "bad v2 checksum",
            Advert {
                csum: Csum::Bad,
                ..v2.clone()
            },
            drop_(Reason::Checksum),
        ),
        (
            "v2 wrong password",
            Advert {
                vrid: 52,
                ..Advert::v2(PEER, "secret43")
            },
            drop_(Reason::Auth),
        ),
        (
            "v2 no auth",
            Advert {
                auth: (0, [0; 8]),
                ..v2.clone()
            },
            drop_(Reason::Auth),
        ),
        (
            "more fragments",
            Advert {
                frag: 0x2000,
                ..v3.clone()
            },
            drop_(Reason::Fragment),
        ),
        (
            "fragment offset",
            Advert {
                frag: 0x0010,
                ..v3.clone()
            },
            drop_(Reason::Fragment),
        ),
        (
            "interval 0",
            Advert {
                interval: 0,
                ..v3.clone()
            },
            drop_(Reason::Interval),
        ),
    ];
    for (what, a, expect) in cases {
        b.check(what, &a.frame(), expect);
    }
}

#[test]
fn every_truncation_of_a_minimal_advert() {
    let mut b = Both::new();
    for (name, a) in [
        ("v3", Advert::v3(PEER)),
        (
            "v2",
            Advert {
                vrid: 52,
                ..Advert::v2(PEER, "secret42")
            },
        ),
    ] {
        let full = a.frame();
        for len in 0..full.len() {
            // Up to the IPv4 protocol byte nothing says it is VRRP: the kernel drops such runts.
            let expect = if len < 14 + 10 {
                Expect::Pass
            } else {
                drop_(Reason::Truncated)
            };
            b.check(
                &format!("{name} cut at {len} of {}", full.len()),
                &full[..len],
                expect,
            );
        }
        b.check(&format!("{name} whole"), &full, Expect::Accept);
    }
    // IP total length larger than what arrived.
    let mut f = Advert::v3(PEER).frame();
    f.truncate(f.len() - 4);
    b.check("total length past the end", &f, drop_(Reason::Truncated));
}

#[test]
fn options_and_vlan_tags_are_no_way_around_the_filter() {
    let mut b = Both::new();
    for opts in [4, 8, 40] {
        b.check(
            &format!("{opts} B options, peer"),
            &Advert {
                ip_options: opts,
                ..Advert::v3(PEER)
            }
            .frame(),
            Expect::Accept,
        );
        b.check(
            &format!("{opts} B options, stranger"),
            &Advert {
                ip_options: opts,
                ..Advert::v3(STRANGER)
            }
            .frame(),
            drop_(Reason::NotPeer),
        );
        b.check(
            &format!("{opts} B options, TTL 1"),
            &Advert {
                ip_options: opts,
                ttl: 1,
                ..Advert::v3(PEER)
            }
            .frame(),
            drop_(Reason::Ttl),
        );
    }
    b.check(
        "802.1Q peer",
        &Advert {
            vlans: vec![100],
            ..Advert::v3(PEER)
        }
        .frame(),
        Expect::Accept,
    );
    b.check(
        "802.1Q stranger",
        &Advert {
            vlans: vec![100],
            ..Advert::v3(STRANGER)
        }
        .frame(),
        drop_(Reason::NotPeer),
    );
    b.check(
        "802.1Q bad checksum",
        &Advert {
            vlans: vec![7],
            csum: Csum::Bad,
            ..Advert::v3(PEER)
        }
        .frame(),
        drop_(Reason::Checksum),
    );
    b.check(
        "two tags stranger",
        &Advert {
            vlans: vec![10, 20],
            ..Advert::v3(STRANGER)
        }
        .frame(),
        drop_(Reason::NotPeer),
    );
    b.check(
        "IHL below 5",
        &{
            let mut f = Advert::v3(PEER).frame();
            f[14] = 0x44;
            f
        },
        drop_(Reason::Length),
    );
}

#[test]
fn everything_else_passes_untouched() {
    let mut b = Both::new();
    let tcp_syn = [0u8; 20];
    b.check(
        "TCP",
        &ether(0x0800, &ipv4(6, 64, PEER, [198, 18, 0, 1], &tcp_syn)),
        Expect::Pass,
    );
    b.check(
        "UDP",
        &ether(0x0800, &ipv4(17, 64, STRANGER, [198, 18, 0, 1], &[0; 8])),
        Expect::Pass,
    );
    b.check(
        "ICMP",
        &ether(
            0x0800,
            &ipv4(1, 64, STRANGER, [198, 18, 0, 1], &[8, 0, 0, 0, 0, 0, 0, 0]),
        ),
        Expect::Pass,
    );
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1,
    ];
    b.check("ARP", &ether(0x0806, &arp), Expect::Pass);
    let (a, c) = (v6("2001:2::3"), v6("2001:2::100"));
    b.check(
        "TCP over IPv6",
        &ether(0x86dd, &ipv6(6, 64, a, c, &tcp_syn)),
        Expect::Pass,
    );
    b.check(
        "UDP over IPv6",
        &ether(0x86dd, &ipv6(17, 64, a, c, &[0; 8])),
        Expect::Pass,
    );
    b.check(
        "ICMPv6 neighbour solicitation",
        &ether(0x86dd, &ipv6(58, 255, a, c, &[135, 0, 0, 0, 0, 0, 0, 0])),
        Expect::Pass,
    );
    b.check(
        "UDP behind a destination options header",
        &ether(
            0x86dd,
            &hapd_lab::frames::ipv6_with(&[60], 17, 64, a, c, &[0; 8]),
        ),
        Expect::Pass,
    );
    b.check(
        "VLAN-tagged TCP",
        &{
            let mut f = vec![0xff; 12];
            f.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00]);
            f.extend_from_slice(&ipv4(6, 64, PEER, [198, 18, 0, 1], &tcp_syn));
            f
        },
        Expect::Pass,
    );
    b.check("empty frame", &[], Expect::Pass);
}

#[test]
fn records_and_wakes_userspace_only_when_it_must_act() {
    let mut b = Both::new();
    let key = InstanceKey::new(LO, 51, Family::V4);
    let run = |b: &mut Both, a: &Advert| {
        assert_eq!(b.xdp.test_run(&a.frame(), LO).unwrap(), XDP_PASS);
        let raw_ev = b.raw.handle(&a.frame(), LO, monotonic_ns());
        let ev = b.xdp.poll_events();
        assert!(ev.len() <= 1, "at most one event per advert: {ev:?}");
        assert_eq!(
            ev.first().map(|e| e.flags),
            raw_ev.map(|e| e.flags),
            "same event both paths"
        );
        ev.first().map(|e| e.flags).unwrap_or(0)
    };
    let a = Advert::v3(PEER);
    assert_eq!(run(&mut b, &a), EV_AFTER_SILENCE, "first advert");
    for _ in 0..20 {
        assert_eq!(run(&mut b, &a), 0, "steady state wakes nobody");
    }
    let rec = b.xdp.advert(&key).unwrap();
    assert_eq!(
        (rec.master, rec.priority, rec.interval_cs, rec.version),
        (v4_addr(PEER), 100, 100, 3)
    );
    assert_eq!(rec.adverts, 21);
    let raw_rec = b.raw.advert(&key).unwrap();
    assert_eq!(
        (raw_rec.master, raw_rec.priority, raw_rec.adverts),
        (v4_addr(PEER), 100, 21)
    );
    let now = monotonic_ns();
    assert!(
        rec.last_seen_ns <= now && now - rec.last_seen_ns < 5_000_000_000,
        "kernel clock"
    );

    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 90,
                ..a.clone()
            }
        ),
        EV_PRIORITY_CHANGE
    );
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 90,
                ..a.clone()
            }
        ),
        0
    );
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 90,
                interval: 10,
                ..a.clone()
            }
        ),
        EV_INTERVAL_CHANGE
    );
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 120,
                interval: 10,
                ..Advert::v3(PEER2)
            }
        ),
        EV_NEW_SOURCE | EV_PRIORITY_CHANGE
    );
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 0,
                interval: 10,
                ..Advert::v3(PEER2)
            }
        ),
        EV_PRIORITY_ZERO | EV_PRIORITY_CHANGE
    );
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 0,
                interval: 10,
                ..Advert::v3(PEER2)
            }
        ),
        EV_PRIORITY_ZERO,
        "every priority-0 advert wakes"
    );
    // Silence longer than 3 intervals (10 cs = 100 ms here) makes the next advert an event.
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(
        run(
            &mut b,
            &Advert {
                priority: 0,
                interval: 10,
                ..Advert::v3(PEER2)
            }
        ) & EV_AFTER_SILENCE,
        EV_AFTER_SILENCE
    );
    // Drops never touch the record.
    let before = b.xdp.advert(&key).unwrap();
    b.check(
        "stranger",
        &Advert::v3(STRANGER).frame(),
        drop_(Reason::NotPeer),
    );
    assert_eq!(b.xdp.advert(&key).unwrap(), before);
    assert_eq!(b.xdp.poll_events(), vec![]);
    let c: GuardCounters = b.xdp.counters().unwrap();
    assert_eq!(c.events_lost, 0);
}

#[test]
fn reconfigure_removes_what_is_gone() {
    let specs = specs();
    let mut g = XdpGuard::load(None, false).unwrap();
    g.configure(&specs.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(
        g.test_run(
            &Advert {
                vrid: 53,
                csum: Csum::MessageOnly,
                ..Advert::v3(PEER)
            }
            .frame(),
            LO
        )
        .unwrap(),
        XDP_PASS
    );
    // Drop VRID 53 and PEER2: its adverts are now unknown, PEER2 no longer a peer.
    let mut s51 = spec(51, 3, true, None);
    s51.peers = vec![v4_addr(PEER)];
    g.configure(&[&s51]).unwrap();
    assert_eq!(
        g.test_run(
            &Advert {
                vrid: 53,
                csum: Csum::MessageOnly,
                ..Advert::v3(PEER)
            }
            .frame(),
            LO
        )
        .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        g.test_run(&Advert::v3(PEER2).frame(), LO).unwrap(),
        XDP_DROP
    );
    assert_eq!(g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(), XDP_PASS);
    assert!(g.advert(&InstanceKey::new(LO, 53, Family::V4)).is_none());
    let c = g.counters().unwrap();
    assert_eq!(
        (c.drop_unknown_vrid, c.drop_not_peer, c.accepted),
        (1, 1, 2)
    );
}

fn fixture(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// keepalived's own adverts (captured in the lab) pass the guard when keepalived is a peer.
#[test]
fn keepalived_adverts_are_accepted() {
    const KEEPALIVED: [u8; 4] = [198, 18, 0, 1];
    for (file, version, pass) in [
        ("keepalived-v3.hex", 3, None),
        ("keepalived-v2.hex", 2, Some(b"ChangeTh")),
    ] {
        let mut s = spec(51, version, version == 3, pass);
        s.peers = vec![v4_addr(KEEPALIVED)];
        let mut g = XdpGuard::load(None, false).unwrap();
        g.configure(&[&s]).unwrap();
        let frames = fixture(file);
        assert_eq!(
            g.test_run(&frames[0], LO).unwrap(),
            XDP_PASS,
            "{file} steady advert"
        );
        assert_eq!(
            g.poll_events()
                .iter()
                .map(|e| (e.priority, e.flags))
                .collect::<Vec<_>>(),
            vec![(110, EV_AFTER_SILENCE)]
        );
        assert_eq!(
            g.test_run(&frames[1], LO).unwrap(),
            XDP_PASS,
            "{file} priority-0 advert"
        );
        assert_eq!(
            g.poll_events()
                .iter()
                .map(|e| (e.priority, e.flags))
                .collect::<Vec<_>>(),
            vec![(0, EV_PRIORITY_ZERO | EV_PRIORITY_CHANGE)]
        );
        let rec = g.advert(&InstanceKey::new(LO, 51, Family::V4)).unwrap();
        assert_eq!(
            (rec.master, rec.version, rec.interval_cs, rec.adverts),
            (v4_addr(KEEPALIVED), version, 100, 2)
        );
        // The same bytes from anyone else are forgeries.
        s.peers = vec![v4_addr(PEER)];
        g.configure(&[&s]).unwrap();
        assert_eq!(
            g.test_run(&frames[0], LO).unwrap(),
            XDP_DROP,
            "{file} from a non-peer"
        );
    }
}

/// A guard for VRID 51 whose proxy serves `vip`:8080.
fn serving(vip: [u8; 4]) -> XdpGuard {
    let mut s = spec(51, 3, true, None);
    s.served = vec![proxy_common::maps::ServedPort::new(
        v4_addr(vip),
        8080u16.to_be_bytes(),
        Family::V4,
    )];
    let mut g = XdpGuard::load(None, false).unwrap();
    g.configure(&[&s]).unwrap();
    g
}

/// A TCP segment from 198.18.0.3:50000 to `dst`:`port` with `flags`.
fn tcp(dst: [u8; 4], port: u16, flags: u8) -> Vec<u8> {
    ether(
        0x0800,
        &ipv4(6, 64, [198, 18, 0, 3], dst, &tcp_header(port, flags)),
    )
}

/// A 20-byte TCP header from port 50000 to `port` with `flags`.
fn tcp_header(port: u16, flags: u8) -> [u8; 20] {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&50000u16.to_be_bytes());
    seg[2..4].copy_from_slice(&port.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg
}

/// Connection requests to a (VIP, port) the proxy serves: dropped when no socket listens (the
/// daemon was killed: the client retries and reaches the new master instead of being
/// refused); passed otherwise. Other ports and later segments are never touched. Run in a lab
/// host, whose listening sockets the guard looks up.
#[test]
fn connection_requests_to_served_ports_without_a_listener_are_dropped() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let lab = hapd_lab::Lab::new(1).unwrap();
    lab.in_netns(0, || {
        let vip = [198, 18, 0, 100];
        let g = serving(vip);
        let run = |g: &XdpGuard, f: Vec<u8>| g.test_run(&f, LO).unwrap();
        assert_eq!(run(&g, tcp(vip, 8080, SYN)), XDP_DROP, "nobody listens");
        assert_eq!(run(&g, tcp(vip, 9090, SYN)), XDP_PASS, "not a served port");
        assert_eq!(
            run(&g, tcp(vip, 8080, ACK)),
            XDP_PASS,
            "not a connection request"
        );
        assert_eq!(
            run(&g, tcp([198, 18, 0, 9], 8080, SYN)),
            XDP_PASS,
            "not a VIP"
        );
        let listener = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        assert_eq!(run(&g, tcp(vip, 8080, SYN)), XDP_PASS, "listened for");
        drop(listener);
        Ok(())
    })
    .unwrap();
}

/// A TCP segment over IPv6 from 2001:2::3 to `dst`:`port` with `flags`.
fn tcp6(dst: [u8; 16], port: u16, flags: u8) -> Vec<u8> {
    ether(
        0x86dd,
        &ipv6(6, 64, v6("2001:2::3"), dst, &tcp_header(port, flags)),
    )
}

/// The same rule for an IPv6 VIP: its connection requests are dropped while nothing listens,
/// passed once something does; IPv4 requests to the same port of an IPv4 address with the
/// same leading bytes are not its business.
#[test]
fn connection_requests_to_served_ipv6_ports_without_a_listener_are_dropped() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let lab = hapd_lab::Lab::new(1).unwrap();
    lab.in_netns(0, || {
        let vip = v6("2001:2::100");
        let mut s = spec6(61);
        s.served = vec![proxy_common::maps::ServedPort::new(
            vip,
            8080u16.to_be_bytes(),
            Family::V6,
        )];
        let mut g = XdpGuard::load(None, false).unwrap();
        g.configure(&[&s]).unwrap();
        let run = |g: &XdpGuard, f: Vec<u8>| g.test_run(&f, LO).unwrap();
        assert_eq!(run(&g, tcp6(vip, 8080, SYN)), XDP_DROP, "nobody listens");
        assert_eq!(run(&g, tcp6(vip, 9090, SYN)), XDP_PASS, "not a served port");
        assert_eq!(
            run(&g, tcp6(vip, 8080, ACK)),
            XDP_PASS,
            "not a connection request"
        );
        assert_eq!(
            run(&g, tcp6(v6("2001:2::9"), 8080, SYN)),
            XDP_PASS,
            "not a VIP"
        );
        assert_eq!(
            run(&g, tcp([0x20, 0x01, 0, 2], 8080, SYN)),
            XDP_PASS,
            "an IPv4 address is another key"
        );
        let listener = std::net::TcpListener::bind("[::]:8080").unwrap();
        assert_eq!(run(&g, tcp6(vip, 8080, SYN)), XDP_PASS, "listened for");
        drop(listener);
        assert_eq!(
            run(&g, tcp6(vip, 8080, SYN)),
            XDP_DROP,
            "nobody listens again"
        );
        Ok(())
    })
    .unwrap();
}

/// A killed daemon's connection requests are dropped from the moment its main thread exits,
/// although its listening socket is still open (the kernel closes a dead process's client
/// connections before its listeners, and a client that reconnects at once would lose a second
/// request there): `hapd_exit`, on `sched_process_exit`, clears the owner's slot. A thread
/// that ends is not a death.
#[test]
fn connection_requests_are_dropped_once_the_daemon_that_serves_them_has_died() {
    const SYN: u8 = 0x02;
    let lab = hapd_lab::Lab::new(1).unwrap();
    lab.in_netns(0, || {
        let vip = [198, 18, 0, 100];
        let mut g = serving(vip);
        let (owners, watched) = g.owners();
        let owners = owners.unwrap();
        assert!(watched, "the exit program is attached");
        assert_eq!(owners.tgid[0], std::process::id(), "this process serves");
        let ns = (owners.pidns_dev, owners.pidns_ino);
        let listener = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        let run = |g: &XdpGuard| g.test_run(&tcp(vip, 8080, SYN), LO).unwrap();
        assert_eq!(run(&g), XDP_PASS, "served and listened for");
        // A thread of the owner ends: nothing changes.
        std::thread::spawn(|| ()).join().unwrap();
        assert_eq!(g.owners().0.unwrap().tgid[0], std::process::id());
        assert_eq!(run(&g), XDP_PASS, "a thread's end is not a death");
        // Another process serves; while it lives, requests pass.
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        g.set_owners(Owners::only(child.id(), ns)).unwrap();
        assert_eq!(run(&g), XDP_PASS, "its owner is alive");
        // It dies: its slot is cleared in the kernel, and requests are dropped although the
        // listening socket is still there.
        child.wait().unwrap();
        assert!(g.owners().0.unwrap().none_alive(), "the slot is cleared");
        assert_eq!(run(&g), XDP_DROP, "its owner has died");
        drop(listener);
        Ok(())
    })
    .unwrap();
}

/// The other node of a planned move, and this node's own Ethernet address (where the client's
/// frames are sent).
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
const MY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const XDP_TX: u32 = 3;

/// `f` as sent to this node from `src_mac`.
fn from_mac(mut f: Vec<u8>, src_mac: [u8; 6]) -> Vec<u8> {
    f[0..6].copy_from_slice(&MY_MAC);
    f[6..12].copy_from_slice(&src_mac);
    f
}

/// An ARP request from 198.18.0.3 for `target`.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[198, 18, 0, 3]);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target);
    ether(0x0806, &p)
}

/// A planned move under BPF_PROG_TEST_RUN, in a lab host with a listener on the VIP and one
/// open connection (198.18.0.3:50000 to the VIP's port 8080): which segments stay, which go to
/// the other node (rewritten to it, from this node), and which ARP requests go unanswered.
#[test]
fn segments_of_a_moving_vip_go_to_the_node_that_holds_their_flow() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let lab = hapd_lab::Lab::new(1).unwrap();
    for a in ["198.18.0.100/32", "198.18.0.3/32"] {
        lab.exec(0, &["ip", "addr", "add", a, "dev", "lo"]).unwrap();
    }
    lab.in_netns(0, || {
        let vip = [198, 18, 0, 100];
        let mut g = serving(vip);
        let listener = std::net::TcpListener::bind("198.18.0.100:8080").unwrap();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        client.bind(&"198.18.0.3:50000".parse::<std::net::SocketAddr>()?.into())?;
        client.connect(&"198.18.0.100:8080".parse::<std::net::SocketAddr>()?.into())?;
        let (_served, _) = listener.accept()?;
        let open = |flags| from_mac(tcp(vip, 8080, flags), [0x02, 0, 0, 0, 0, 1]);
        let unknown = |flags| {
            let mut f = open(flags);
            f[14 + 20 + 1] = 0x51; // source port 50001: no socket has this flow
            f
        };
        let run = |g: &XdpGuard, f: &[u8]| g.test_run_frame(f, LO).unwrap();
        let sent_on = |out: &[u8]| out[0..6] == OTHER_MAC && out[6..12] == MY_MAC;
        let vip_addr = std::net::Ipv4Addr::from(vip);

        // No move: everything as before.
        assert_eq!(run(&g, &unknown(ACK)).0, XDP_PASS);
        assert_eq!(g.test_run(&arp_request(vip), LO).unwrap(), XDP_PASS);

        // We hold the VIP; the other node held it before and still serves its flows.
        let entry = |role| proxy_common::maps::FlowEntry {
            peer_mac: OTHER_MAC,
            role,
            _pad: 0,
        };
        g.set_flow(vip_addr, Some(entry(proxy_common::maps::FLOW_HOLDER)))?;
        assert_eq!(run(&g, &open(SYN)).0, XDP_PASS, "new connections are ours");
        assert_eq!(run(&g, &open(ACK)).0, XDP_PASS, "a flow we hold stays");
        let (action, out) = run(&g, &unknown(ACK));
        assert_eq!(
            action, XDP_TX,
            "a flow we do not hold goes to the other node"
        );
        assert!(sent_on(&out), "{:02x?}", &out[..12]);
        assert_eq!(
            &out[12..],
            &unknown(ACK)[12..],
            "only the Ethernet addresses change"
        );
        assert_eq!(
            run(&g, &from_mac(unknown(ACK), OTHER_MAC)).0,
            XDP_PASS,
            "what the other node sent on is never sent back"
        );
        assert_eq!(run(&g, &unknown(0x04)).0, XDP_TX, "a reset of its flow too");
        assert_eq!(
            g.test_run(&arp_request(vip), LO).unwrap(),
            XDP_PASS,
            "we answer ARP"
        );

        // We handed the VIP over and drain our flows.
        g.set_flow(vip_addr, Some(entry(proxy_common::maps::FLOW_RELEASED)))?;
        let (action, out) = run(&g, &open(SYN));
        assert_eq!(action, XDP_TX, "new connections go to the new owner");
        assert!(sent_on(&out));
        assert_eq!(run(&g, &open(ACK)).0, XDP_PASS, "our own flow drains here");
        assert_eq!(run(&g, &unknown(ACK)).0, XDP_TX);
        assert_eq!(run(&g, &from_mac(open(SYN), OTHER_MAC)).0, XDP_PASS);
        assert_eq!(
            g.test_run(&arp_request(vip), LO).unwrap(),
            XDP_DROP,
            "no ARP answer for a released address"
        );
        assert_eq!(
            g.test_run(&arp_request([198, 18, 0, 101]), LO).unwrap(),
            XDP_PASS,
            "other addresses are answered"
        );
        assert_eq!(
            run(
                &g,
                &from_mac(tcp([198, 18, 0, 101], 8080, ACK), [2, 0, 0, 0, 0, 1])
            )
            .0,
            XDP_PASS,
            "other addresses are not moving"
        );
        let c = g.counters().unwrap();
        assert_eq!((c.flow_forwarded, c.arp_suppressed), (4, 1));

        // The move is over.
        g.set_flow(vip_addr, None)?;
        assert_eq!(run(&g, &unknown(ACK)).0, XDP_PASS);
        assert_eq!(g.test_run(&arp_request(vip), LO).unwrap(), XDP_PASS);
        Ok(())
    })
    .unwrap();
}

/// A signed v3 advert of VRID 55 from `src` with key 1 and sequence number `seq`.
fn signed(src: [u8; 4], seq: u64) -> Advert {
    Advert {
        vrid: 55,
        hmac: Some(Hmac::new(1, &key1(), seq)),
        ..Advert::v3(src)
    }
}

#[test]
fn auth_hmac_accepts_signed_adverts_and_rejects_each_flaw_alike_in_xdp_and_userspace() {
    let mut b = Both::new();
    let now = Hmac::now_seq(0);
    let sec = 1u64 << 32;
    let accept = |b: &mut Both, what: &str, a: &Advert| b.check(what, &a.frame(), Expect::Accept);
    let reject = |b: &mut Both, what: &str, a: &Advert, r: Reason| {
        b.check(what, &a.frame(), Expect::Drop(r))
    };
    accept(&mut b, "signed with key 1", &signed(PEER, now));
    reject(
        &mut b,
        "the same advert again",
        &signed(PEER, now),
        Reason::Replay,
    );
    reject(
        &mut b,
        "an older one",
        &signed(PEER, now - 1),
        Reason::Replay,
    );
    accept(&mut b, "the next one", &signed(PEER, now + 1));
    // Another sender has a mark of its own.
    accept(&mut b, "the other peer, same sequence", &signed(PEER2, now));
    let mut k2 = signed(PEER, now + 2);
    k2.hmac = Some(Hmac::new(2, &key2(), now + 2));
    accept(&mut b, "signed with key 2", &k2);
    let mut unknown = signed(PEER, now + 3);
    unknown.hmac = Some(Hmac::new(3, &key2(), now + 3));
    reject(&mut b, "key ID 3", &unknown, Reason::UnknownKey);
    let mut wrong_key = signed(PEER, now + 3);
    wrong_key.hmac = Some(Hmac::new(1, &key2(), now + 3));
    reject(&mut b, "key 2's bytes under ID 1", &wrong_key, Reason::Hmac);
    let mut bad = signed(PEER, now + 3);
    bad.hmac.as_mut().unwrap().bad_mac = true;
    reject(&mut b, "one MAC bit flipped", &bad, Reason::Hmac);
    let mut ext = signed(PEER, now + 3);
    ext.hmac.as_mut().unwrap().ext_type = 2;
    reject(&mut b, "ext type 2", &ext, Reason::Trailer);
    let mut rsv = signed(PEER, now + 3);
    rsv.hmac.as_mut().unwrap().reserved = 1;
    reject(&mut b, "reserved bits", &rsv, Reason::Trailer);
    reject(
        &mut b,
        "100 s old",
        &signed(PEER, now - 100 * sec),
        Reason::Stale,
    );
    reject(
        &mut b,
        "100 s ahead",
        &signed(PEER, now + 100 * sec),
        Reason::Stale,
    );
    accept(
        &mut b,
        "4 s ahead, inside the window",
        &signed(PEER, now + 4 * sec),
    );
    let mut short = signed(PEER, now + 4 * sec + 1);
    short.hmac.as_mut().unwrap().truncate = Some(27);
    reject(&mut b, "27-byte trailer", &short, Reason::Length);
    // The priority is covered by the MAC: a forger cannot raise it on a captured advert.
    let mut t = Advert {
        priority: 255,
        ..signed(PEER, now + 4 * sec + 1)
    };
    let honest = t.frame();
    t.priority = 100;
    let mac_of_100 = t.frame();
    let mut forged = honest.clone();
    let n = forged.len();
    forged[n - 16..].copy_from_slice(&mac_of_100[n - 16..]);
    b.check(
        "priority 255 with the MAC of priority 100",
        &forged,
        drop_(Reason::Hmac),
    );
    // From an address other than the one signed for.
    let mut moved = signed(PEER, now + 4 * sec + 2).frame();
    moved[14 + 12..14 + 16].copy_from_slice(&PEER2);
    let c = ipv4_checksum(&moved[14..34]);
    moved[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    // The v3 pseudo-header checksum covers the source too: recompute it for the new one.
    fix_vrrp_checksum_len(&mut moved, true, 12);
    b.check(
        "signed for one peer, sent from the other",
        &moved,
        drop_(Reason::Hmac),
    );
    reject(
        &mut b,
        "no trailer on an enforcing instance",
        &Advert {
            vrid: 55,
            ..Advert::v3(PEER)
        },
        Reason::NoTrailer,
    );
    reject(
        &mut b,
        "a signed advert for an instance without auth_hmac",
        &Advert {
            vrid: 51,
            ..signed(PEER, now + 4 * sec + 3)
        },
        Reason::Length,
    );
    reject(
        &mut b,
        "signed but not a peer",
        &signed(STRANGER, now + 4 * sec + 3),
        Reason::NotPeer,
    );
    // Permissive (VRID 56, v2, monotonic): unsigned adverts pass, signed ones are verified,
    // and old timestamps are fine.
    let v2 = |hmac: Option<Hmac>| Advert {
        vrid: 56,
        auth: (0, [0; 8]),
        hmac,
        ..Advert::v2(PEER, "")
    };
    accept(&mut b, "permissive: unsigned", &v2(None));
    accept(
        &mut b,
        "permissive: v2 signed, an hour old",
        &v2(Some(Hmac::new(1, &key1(), now - 3600 * sec))),
    );
    reject(
        &mut b,
        "permissive: replayed",
        &v2(Some(Hmac::new(1, &key1(), now - 3600 * sec))),
        Reason::Replay,
    );
    let mut bad2 = Hmac::new(1, &key1(), now);
    bad2.bad_mac = true;
    reject(&mut b, "permissive: bad MAC", &v2(Some(bad2)), Reason::Hmac);
    // Receive-only (VRID 57) verifies what it gets too.
    let ro = |hmac: Option<Hmac>| Advert {
        vrid: 57,
        hmac,
        ..Advert::v3(PEER)
    };
    accept(&mut b, "receive-only: unsigned", &ro(None));
    accept(
        &mut b,
        "receive-only: signed",
        &ro(Some(Hmac::new(2, &key2(), now))),
    );
    let mut bad3 = Hmac::new(2, &key2(), now + 1);
    bad3.bad_mac = true;
    reject(
        &mut b,
        "receive-only: bad MAC",
        &ro(Some(bad3)),
        Reason::Hmac,
    );
    // No peer list (VRID 58): the MAC is the only proof, and a forged source fails it.
    let open = |src, seq| Advert {
        vrid: 58,
        hmac: Some(Hmac::new(1, &key1(), seq)),
        ..Advert::v3(src)
    };
    accept(
        &mut b,
        "no peer list: signed by a stranger who holds the key",
        &open(STRANGER, now),
    );
    let mut forged_open = open(PEER, now + 1);
    forged_open.hmac.as_mut().unwrap().bad_mac = true;
    reject(&mut b, "no peer list: forged", &forged_open, Reason::Hmac);
    // A long advert: 255 addresses, 18 SHA-256 blocks.
    accept(
        &mut b,
        "255 addresses, signed",
        &Advert {
            addrs: (0..255).map(|i| [198, 18, 1, i as u8]).collect(),
            ..signed(PEER, now + 4 * sec + 4)
        },
    );
    // Both paths counted the same per instance.
    for vrid in [55u8, 56, 57, 58] {
        let key = InstanceKey::new(LO, vrid, Family::V4);
        let x = b.xdp.auth_counters(&key).expect("xdp auth counters");
        let r = b.raw.auth_counters(&key).expect("raw auth counters");
        assert_eq!(x, r, "vrid {vrid}");
    }
    let c = b
        .xdp
        .auth_counters(&InstanceKey::new(LO, 55, Family::V4))
        .unwrap();
    assert_eq!(
        (
            c.signed,
            c.unsigned,
            c.drop_replay,
            c.drop_stale,
            c.drop_hmac,
            c.drop_trailer
        ),
        (6, 0, 2, 2, 4, 2)
    );
    assert_eq!((c.drop_unknown_key, c.drop_no_trailer), (1, 1));
    assert!(b
        .xdp
        .auth_counters(&InstanceKey::new(LO, 51, Family::V4))
        .is_none());
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut h = h.to_vec();
    h[10] = 0;
    h[11] = 0;
    proxy_common::guard::checksum(&h, 0)
}

#[test]
fn replay_marks_are_kept_per_sender_and_forgeries_move_none() {
    let mut b = Both::new();
    let now = Hmac::now_seq(0);
    b.check("signed", &signed(PEER, now).frame(), Expect::Accept);
    let mark = b
        .xdp
        .replay_mark(&ReplayKey::new(
            InstanceKey::new(LO, 55, Family::V4),
            &words(PEER),
        ))
        .expect("a mark for the sender");
    assert_eq!(mark, now);
    assert_eq!(
        b.xdp.replay_mark(&ReplayKey::new(
            InstanceKey::new(LO, 55, Family::V4),
            &words(PEER2)
        )),
        None
    );
    // A forged advert moves no mark.
    let mut forged = signed(PEER2, now + 1);
    forged.hmac.as_mut().unwrap().bad_mac = true;
    b.check("forged", &forged.frame(), drop_(Reason::Hmac));
    assert_eq!(
        b.xdp.replay_mark(&ReplayKey::new(
            InstanceKey::new(LO, 55, Family::V4),
            &words(PEER2)
        )),
        None
    );
}

/// Adverts captured from keepalived 2.4.3 with `auth_hmac` (key 00..1f): verified with the key,
/// rejected with another key, as replays, outside the window and with a bit flipped.
#[test]
fn keepalived_2_4_3_signed_adverts_verify_and_every_flaw_is_caught() {
    const KEEPALIVED: [u8; 4] = [198, 18, 0, 1];
    for (file, version) in [
        ("keepalived-2.4.3-hmac-v3.hex", 3u8),
        ("keepalived-2.4.3-hmac-v2.hex", 2),
    ] {
        let frames = fixture(file);
        let guard = |key: Vec<u8>, time_mode: bool| {
            let mut s = spec(51, version, version == 3, None);
            s.peers = vec![v4_addr(KEEPALIVED)];
            s.auth = Some(AuthSpec::new(&ResolvedAuth {
                keys: vec![(1, key)],
                active_key: 1,
                time_mode,
                window_s: 5,
                mode: AuthMode::Enforce,
            }));
            let mut g = XdpGuard::load(None, false).unwrap();
            g.configure(&[&s]).unwrap();
            let raw = RawState::default();
            raw.configure(&[&s]).unwrap();
            (g, raw)
        };
        let verdict = |g: &XdpGuard, raw: &RawState, f: &[u8]| {
            let before = raw.counters();
            let x = g.test_run(f, LO).unwrap();
            let _ = raw.handle(f, LO, monotonic_ns());
            let after = raw.counters();
            let moved: Vec<&str> = Reason::ALL
                .iter()
                .filter(|r| after.get(**r) != before.get(**r))
                .map(|r| r.name())
                .collect();
            assert_eq!(moved.len(), 1, "{file}: one counter moves: {moved:?}");
            assert_eq!(
                x == XDP_PASS,
                moved[0] == "accepted",
                "{file}: XDP and raw agree"
            );
            moved[0]
        };
        // Monotonic: the captured timestamps are old, the MACs good.
        let (g, raw) = guard((0u8..32).collect(), false);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(verdict(&g, &raw, f), "accepted", "{file} line {}", i + 1);
        }
        assert_eq!(
            verdict(&g, &raw, &frames[0]),
            "drop_replay",
            "{file} replayed"
        );
        let rec = g.advert(&InstanceKey::new(LO, 51, Family::V4)).unwrap();
        assert_eq!(
            (rec.master, rec.priority, rec.version),
            (v4_addr(KEEPALIVED), 0, version)
        );
        // Time mode: a capture from the past is stale.
        let (g, raw) = guard((0u8..32).collect(), true);
        assert_eq!(
            verdict(&g, &raw, &frames[0]),
            "drop_stale",
            "{file} old capture"
        );
        // Another key.
        let (g, raw) = guard(vec![0x42; 32], false);
        assert_eq!(
            verdict(&g, &raw, &frames[0]),
            "drop_hmac",
            "{file} wrong key"
        );
        // One flipped bit in a virtual address (checksum kept right) or in the MAC.
        let (g, raw) = guard((0u8..32).collect(), false);
        let mut vip = frames[0].clone();
        let at = 14 + 20 + 8;
        vip[at + 3] ^= 1;
        fix_vrrp_checksum_len(&mut vip, version == 3, if version == 3 { 16 } else { 24 });
        assert_eq!(
            verdict(&g, &raw, &vip),
            "drop_hmac",
            "{file} VIP bit flipped"
        );
        let mut mac = frames[0].clone();
        let n = mac.len();
        mac[n - 1] ^= 0x80;
        assert_eq!(
            verdict(&g, &raw, &mac),
            "drop_hmac",
            "{file} MAC bit flipped"
        );
        let mut seq = frames[0].clone();
        seq[n - 17] ^= 1;
        assert_eq!(
            verdict(&g, &raw, &seq),
            "drop_hmac",
            "{file} counter bit flipped"
        );
        assert_eq!(
            verdict(&g, &raw, &frames[0]),
            "accepted",
            "{file} the original"
        );
    }
}

/// Recomputes the VRRP checksum over the `mlen`-byte message of an Ethernet + 20-byte IPv4
/// frame (`pseudo`: with the IPv4 pseudo-header).
fn fix_vrrp_checksum_len(f: &mut [u8], pseudo: bool, mlen: usize) {
    let m = 14 + 20;
    f[m + 6] = 0;
    f[m + 7] = 0;
    let p = if pseudo {
        proxy_common::guard::pseudo_header_sum(
            <[u8; 4]>::try_from(&f[26..30]).unwrap().into(),
            <[u8; 4]>::try_from(&f[30..34]).unwrap().into(),
            mlen as u16,
        )
    } else {
        0
    };
    let c = proxy_common::guard::checksum(&f[m..m + mlen], p);
    f[m + 6..m + 8].copy_from_slice(&c.to_be_bytes());
}

/// Second chance for an anycast group of three nodes (this one first) under
/// BPF_PROG_TEST_RUN, in a lab host with a listener on the prefix and one open connection
/// (198.18.0.3:50000 to 198.18.10.100:8080): a segment of a flow this node holds stays; one it
/// does not hold goes to the next node of the group that can take it, marked with where the
/// walk began and how far it went; the last node of the walk keeps it; connection requests
/// stay where they land.
#[test]
fn anycast_segments_of_flows_held_elsewhere_walk_the_group() {
    use proxy_common::second_chance::mark;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const ROUTER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const PEER1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
    const PEER2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
    let lab = hapd_lab::Lab::new(1).unwrap();
    for a in ["198.18.10.100/32", "198.18.0.3/32"] {
        lab.exec(0, &["ip", "addr", "add", a, "dev", "lo"]).unwrap();
    }
    lab.in_netns(0, || {
        let prefix = [198, 18, 10, 100];
        let mut g = serving([198, 18, 0, 100]);
        let listener = std::net::TcpListener::bind("198.18.10.100:8080").unwrap();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        client.bind(&"198.18.0.3:50000".parse::<std::net::SocketAddr>()?.into())?;
        client.connect(&"198.18.10.100:8080".parse::<std::net::SocketAddr>()?.into())?;
        let (_served, _) = listener.accept()?;
        let open = |flags, from| from_mac(tcp(prefix, 8080, flags), from);
        let unknown = |flags, from| {
            let mut f = open(flags, from);
            f[14 + 20 + 1] = 0x51; // source port 50001: no socket has this flow
            f
        };
        let run = |g: &XdpGuard, f: &[u8]| g.test_run_frame(f, LO).unwrap();
        let peers = |usable| proxy_common::maps::AnycastPeers {
            me: 0,
            count: 3,
            usable,
            _pad: 0,
            macs: [MY_MAC, PEER1, PEER2, [0; 6], [0; 6], [0; 6], [0; 6], [0; 6]],
        };
        let net: ipnet::Ipv4Net = "198.18.10.0/24".parse()?;

        // No group yet: the kernel answers (a reset), as without hapd.
        assert_eq!(run(&g, &unknown(ACK, ROUTER)).0, XDP_PASS);

        g.set_anycast(&[(vec![net], peers(0b111))])?;
        assert_eq!(
            run(&g, &open(ACK, ROUTER)).0,
            XDP_PASS,
            "a flow we hold stays"
        );
        assert_eq!(
            run(&g, &unknown(SYN, ROUTER)).0,
            XDP_PASS,
            "a new connection is served where it lands"
        );
        let (action, out) = run(&g, &unknown(ACK, ROUTER));
        assert_eq!(action, XDP_TX, "a flow we do not hold goes on");
        assert_eq!(&out[..6], &PEER1, "to the next node of the list");
        assert_eq!(&out[6..12], &mark(0, 1), "marked: from us, one step");
        assert_eq!(
            &out[12..],
            &unknown(ACK, ROUTER)[12..],
            "only Ethernet changes"
        );
        // Sent on to us by node 2 (its walk's first step): on to node 1, two steps.
        let (action, out) = run(&g, &unknown(ACK, mark(2, 1)));
        assert_eq!(action, XDP_TX);
        assert_eq!((&out[..6], &out[6..12]), (&PEER1[..], &mark(2, 2)[..]));
        // The walk from node 1 ends with us: kept, whoever holds it (nobody: a reset).
        assert_eq!(run(&g, &unknown(ACK, mark(1, 2))).0, XDP_PASS);
        // Our own flow, sent on to us by another node: ours.
        assert_eq!(run(&g, &open(ACK, mark(1, 2))).0, XDP_PASS);
        // A mark that does not fit our place in the list: kept.
        assert_eq!(run(&g, &unknown(ACK, mark(0, 1))).0, XDP_PASS);
        // A frame a switch flooded to us for another host is not ours to walk.
        let mut flooded = unknown(ACK, ROUTER);
        flooded[..6].copy_from_slice(&PEER2);
        assert_eq!(run(&g, &flooded).0, XDP_PASS);
        // Pings from another node of the group are answered to it, with their token; pings
        // for another node, or for a group we do not have, are not.
        use proxy_common::second_chance::{ping, read_pong};
        let (action, out) = run(&g, &ping(MY_MAC, PEER1, 0, 42));
        assert_eq!(action, XDP_TX);
        assert_eq!(&out[..6], &PEER1);
        assert_eq!(read_pong(&out), Some((MY_MAC, 0, 42)));
        assert_eq!(run(&g, &ping(PEER2, PEER1, 0, 43)).0, XDP_PASS);
        assert_eq!(run(&g, &ping(MY_MAC, PEER1, 1, 44)).0, XDP_PASS);
        // Other addresses are not touched.
        let elsewhere = from_mac(tcp([198, 18, 11, 1], 8080, ACK), ROUTER);
        assert_eq!(run(&g, &elsewhere).0, XDP_PASS);
        let c = g.counters().unwrap();
        assert_eq!(c.flow_forwarded, 2);

        // Node 1 cannot take segments (dead, or its address unknown): skipped.
        g.set_anycast_peers(0, peers(0b101))?;
        let (action, out) = run(&g, &unknown(ACK, ROUTER));
        assert_eq!(action, XDP_TX);
        assert_eq!((&out[..6], &out[6..12]), (&PEER2[..], &mark(0, 2)[..]));
        // Alone: nowhere to go.
        g.set_anycast_peers(0, peers(0b001))?;
        assert_eq!(run(&g, &unknown(ACK, ROUTER)).0, XDP_PASS);

        // The group is gone: nothing is walked, and pings go unanswered.
        g.set_anycast(&[])?;
        assert_eq!(run(&g, &unknown(ACK, ROUTER)).0, XDP_PASS);
        assert_eq!(run(&g, &ping(MY_MAC, PEER1, 0, 45)).0, XDP_PASS);
        Ok(())
    })
    .unwrap();
}

/// The events the guard posted within `wait` that are master-down events, with their times.
fn master_down_events(xdp: &mut XdpGuard, wait: std::time::Duration) -> Vec<u64> {
    let t0 = std::time::Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < wait {
        got.extend(
            xdp.poll_events()
                .into_iter()
                .filter(|e| e.flags & EV_MASTER_DOWN != 0)
                .map(|e| e.time_ns),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    got
}

/// The backup's master-down timer in the kernel: a valid advert from a master at least as
/// good re-arms it for the Master_Down_Interval (here 3 x 50 ms + Skew_Time 30.47 ms for
/// priority 100), adverts in time keep it from running out, silence makes it post exactly one
/// event at its deadline, a resigning master's advert arms it for Skew_Time, and a lower
/// priority, a v2 interval that differs, a timer turned off or an instance removed arm
/// nothing.
#[test]
fn the_master_down_timer_runs_in_the_kernel() {
    use std::time::Duration;
    let mut b = Both::new();
    let key = InstanceKey::new(LO, 51, Family::V4);
    let cfg = TimerCfg {
        on: 1,
        priority: 100,
        version: 3,
        own_interval_cs: 5,
        ..TimerCfg::default()
    };
    b.xdp.set_timer_cfg(&key, cfg).unwrap();
    let mdi = 150_000_000 + 50_000_000 * 156 / 256;
    let a = Advert {
        priority: 110,
        interval: 5,
        ..Advert::v3(PEER)
    };
    assert_eq!(b.xdp.test_run(&a.frame(), LO).unwrap(), XDP_PASS);
    let rec = b.xdp.advert(&key).unwrap();
    let t = b.xdp.timer(&key).expect("the guard created the timer");
    assert_eq!((t.armed, t.fired, t.ready), (1, 0, 1), "{t:?}");
    assert_eq!(t.deadline_ns, rec.last_seen_ns + mdi, "{t:?}");
    assert_eq!(
        (rec.master, t.priority, t.interval_cs),
        (v4_addr(PEER), 110, 5)
    );

    // Adverts every 50 ms keep re-arming it: no event in 600 ms.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(600) {
        b.xdp.test_run(&a.frame(), LO).unwrap();
        assert!(
            master_down_events(&mut b.xdp, Duration::from_millis(50)).is_empty(),
            "the timer ran out while adverts came in time"
        );
    }
    let t = b.xdp.timer(&key).unwrap();
    assert!(t.armed >= 10 && t.fired == 0, "{t:?}");

    // An advert from a new master (as good) moves the timer to it.
    let other = Advert {
        priority: 110,
        interval: 5,
        ..Advert::v3(PEER2)
    };
    b.xdp.test_run(&other.frame(), LO).unwrap();
    let t = b.xdp.timer(&key).unwrap();
    let rec = b.xdp.advert(&key).unwrap();
    assert_eq!(
        (rec.master, t.deadline_ns),
        (v4_addr(PEER2), rec.last_seen_ns + mdi)
    );
    b.xdp.poll_events();

    // Silence: exactly one event, at the deadline of the last advert.
    let deadline = t.deadline_ns;
    let events = master_down_events(&mut b.xdp, Duration::from_millis(600));
    assert_eq!(events.len(), 1, "one event for one silence: {events:?}");
    assert!(events[0] >= deadline, "the event came before the deadline");
    assert_eq!(b.xdp.timer(&key).unwrap().fired, 1);

    // A resigning master (priority 0): the event after Skew_Time.
    let bye = Advert {
        priority: 0,
        ..a.clone()
    };
    b.xdp.test_run(&bye.frame(), LO).unwrap();
    let t = b.xdp.timer(&key).unwrap();
    let rec = b.xdp.advert(&key).unwrap();
    assert_eq!(t.deadline_ns, rec.last_seen_ns + 50_000_000 * 156 / 256);
    let events = master_down_events(&mut b.xdp, Duration::from_millis(300));
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0] >= t.deadline_ns);

    // A lower priority than ours arms nothing: the engine decides (it is woken by the
    // guard's priority-change event).
    let armed = b.xdp.timer(&key).unwrap().armed;
    let lower = Advert {
        priority: 90,
        ..a.clone()
    };
    b.xdp.test_run(&lower.frame(), LO).unwrap();
    assert_eq!(b.xdp.timer(&key).unwrap().armed, armed);

    // Turned off: adverts arm nothing. Stopped while armed: no event.
    b.xdp
        .set_timer_cfg(&key, TimerCfg { on: 0, ..cfg })
        .unwrap();
    b.xdp.test_run(&a.frame(), LO).unwrap();
    assert_eq!(b.xdp.timer(&key).unwrap().armed, armed);
    b.xdp.set_timer_cfg(&key, cfg).unwrap();
    b.xdp.test_run(&a.frame(), LO).unwrap();
    b.xdp.stop_timer(&key);
    assert!(b.xdp.timer(&key).is_none());
    assert!(
        master_down_events(&mut b.xdp, Duration::from_millis(400)).is_empty(),
        "a stopped timer ran out"
    );

    // v2 (VRID 52, PASS): its own interval counts; one that differs arms nothing. 1 s adverts
    // and priority 200: 3 s + 56/256 s.
    let key2 = InstanceKey::new(LO, 52, Family::V4);
    let cfg2 = TimerCfg {
        on: 1,
        priority: 200,
        version: 2,
        own_interval_cs: 100,
        ..TimerCfg::default()
    };
    b.xdp.set_timer_cfg(&key2, cfg2).unwrap();
    let v2 = Advert {
        vrid: 52,
        priority: 200,
        ..Advert::v2(PEER, "secret42")
    };
    b.xdp.test_run(&v2.frame(), LO).unwrap();
    let t = b.xdp.timer(&key2).unwrap();
    let rec = b.xdp.advert(&key2).unwrap();
    assert_eq!(
        t.deadline_ns,
        rec.last_seen_ns + 3_000_000_000 + 1_000_000_000 * 56 / 256
    );
    let other = Advert {
        interval: 2,
        ..v2.clone()
    };
    b.xdp.test_run(&other.frame(), LO).unwrap();
    assert_eq!(b.xdp.timer(&key2).unwrap().armed, 1);
    b.xdp.stop_timer(&key2);

    // An instance removed from the config takes its timer with it.
    b.xdp.test_run(&a.frame(), LO).unwrap();
    assert!(b.xdp.timer(&key).is_some());
    let specs: Vec<InstanceSpec> = specs().into_iter().filter(|s| s.vrid != 51).collect();
    let refs: Vec<&InstanceSpec> = specs.iter().collect();
    b.xdp.configure(&refs).unwrap();
    assert!(b.xdp.timer(&key).is_none());
    assert!(master_down_events(&mut b.xdp, Duration::from_millis(400)).is_empty());
}

/// IPv6 adverts through both paths, frame by frame: what is valid, and every drop reason
/// (RFC 9568 section 7.1 and the extension header walk).
#[test]
fn ipv6_adverts_are_judged_alike_on_both_paths() {
    let mut b = Both::new();
    let a = || Advert::v3_ipv6(peer6());
    let with = |f: &dyn Fn(&mut Advert)| {
        let mut x = a();
        f(&mut x);
        x.frame()
    };
    let set6 = |f: &dyn Fn(&mut V6)| with(&|x: &mut Advert| f(x.v6.as_mut().unwrap()));
    b.check("IPv6 advert", &a().frame(), Expect::Accept);
    b.check(
        "IPv6 advert from the second peer",
        &Advert::v3_ipv6(peer6_2()).frame(),
        Expect::Accept,
    );
    b.check(
        "VRID 61 (IPv6 only)",
        &with(&|x| x.vrid = 61),
        Expect::Accept,
    );
    b.check(
        "IPv6, no peer list",
        &with(&|x| {
            x.vrid = 64;
            x.v6.as_mut().unwrap().src = v6("fe80::66");
        }),
        Expect::Accept,
    );
    b.check(
        "64 IPv6 addresses",
        &set6(&|v| {
            v.addrs = (0..64u8)
                .map(|i| v6(&format!("2001:2::{:x}", i + 1)))
                .collect()
        }),
        Expect::Accept,
    );
    for ext in [
        vec![0u8],
        vec![43],
        vec![60],
        vec![51],
        vec![0, 60, 43, 51, 60, 60, 60, 60],
    ] {
        b.check(
            &format!("behind extension headers {ext:?}"),
            &set6(&|v| v.ext = ext.clone()),
            Expect::Accept,
        );
    }
    b.check(
        "behind nine extension headers",
        &set6(&|v| v.ext = vec![60; 9]),
        drop_(Reason::ExtHeaders),
    );
    b.check(
        "a fragment",
        &set6(&|v| v.ext = vec![44]),
        drop_(Reason::Fragment),
    );
    b.check(
        "a fragment with headers after it",
        &set6(&|v| v.ext = vec![0, 44, 60]),
        drop_(Reason::Fragment),
    );
    b.check(
        "a fragment after the first (no headers to judge; never reassembled without the first)",
        &{
            let mut f = set6(&|v| v.ext = vec![44]);
            // Fragment offset 8 (bytes 2-3 of the fragment header: offset << 3 | M).
            f[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&((1u16 << 3) | 1).to_be_bytes());
            f
        },
        Expect::Pass,
    );
    let (c, d) = (v6("2001:2::3"), v6("2001:2::100"));
    b.check(
        "the first fragment of AH-protected TCP",
        &ether(
            0x86dd,
            &hapd_lab::frames::ipv6_with(&[44, 51], 6, 64, c, d, &[0; 20]),
        ),
        Expect::Pass,
    );
    b.check("hop limit 254", &with(&|x| x.ttl = 254), drop_(Reason::Ttl));
    b.check("hop limit 1", &with(&|x| x.ttl = 1), drop_(Reason::Ttl));
    b.check(
        "not a peer",
        &set6(&|v| v.src = v6("fe80::66")),
        drop_(Reason::NotPeer),
    );
    b.check(
        "a peer's address in IPv4 form is not the peer",
        &set6(&|v| {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&[0xfe, 0x80, 0, 0]);
            v.src = s;
        }),
        drop_(Reason::NotPeer),
    );
    b.check(
        "bad checksum",
        &with(&|x| x.csum = Csum::Bad),
        drop_(Reason::Checksum),
    );
    b.check(
        "message-only checksum (IPv6 always has the pseudo-header)",
        &with(&|x| x.csum = Csum::MessageOnly),
        drop_(Reason::Checksum),
    );
    b.check(
        "checksum for another destination",
        &{
            let mut x = a();
            let good = x.frame();
            x.v6.as_mut().unwrap().dst = v6("ff02::1");
            let mut f = x.frame();
            // The other destination's checksum, with the group as destination.
            f[14 + 24..14 + 40].copy_from_slice(&good[14 + 24..14 + 40]);
            f
        },
        drop_(Reason::Checksum),
    );
    b.check(
        "version 2",
        &with(&|x| x.version = 2),
        drop_(Reason::Version),
    );
    b.check(
        "version 4",
        &with(&|x| x.version = 4),
        drop_(Reason::Version),
    );
    b.check("type 2", &with(&|x| x.kind = 2), drop_(Reason::Type));
    b.check(
        "VRID without an IPv6 instance",
        &with(&|x| x.vrid = 52),
        drop_(Reason::UnknownVrid),
    );
    b.check(
        "count says two, one address",
        &with(&|x| x.count = Some(2)),
        drop_(Reason::Length),
    );
    b.check(
        "count 0",
        &with(&|x| x.count = Some(0)),
        drop_(Reason::Length),
    );
    b.check(
        "65 IPv6 addresses",
        &set6(&|v| {
            v.addrs = (0..65u8)
                .map(|i| v6(&format!("2001:2::{:x}", i + 1)))
                .collect()
        }),
        drop_(Reason::Length),
    );
    b.check(
        "an IPv4-sized address list",
        &{
            let mut f = a().frame();
            // Claim two addresses in the 16 bytes of one: a message of IPv4 length.
            f[14 + 40 + 3] = 4;
            f
        },
        drop_(Reason::Length),
    );
    b.check(
        "interval 0",
        &with(&|x| x.interval = 0),
        drop_(Reason::Interval),
    );
    let full = a().frame();
    b.check(
        "cut before the end of the message",
        &full[..full.len() - 4],
        drop_(Reason::Truncated),
    );
    b.check(
        "cut inside the IPv6 header",
        &full[..14 + 30],
        drop_(Reason::Truncated),
    );
    b.check(
        "cut inside an extension header",
        &set6(&|v| v.ext = vec![60])[..14 + 40 + 1],
        drop_(Reason::Truncated),
    );
    b.check(
        "payload length past the frame",
        &{
            let mut f = full.clone();
            f[18..20].copy_from_slice(&200u16.to_be_bytes());
            f
        },
        drop_(Reason::Truncated),
    );
    b.check(
        "extension headers longer than the payload",
        &{
            let mut f = set6(&|v| v.ext = vec![60]);
            f[18..20].copy_from_slice(&4u16.to_be_bytes());
            f
        },
        drop_(Reason::Length),
    );
    b.check(
        "IPv4 advert for an IPv6-only VRID",
        &Advert {
            vrid: 61,
            ..Advert::v3(PEER)
        }
        .frame(),
        drop_(Reason::UnknownVrid),
    );
    b.check(
        "VLAN-tagged IPv6 advert",
        &with(&|x| x.vlans = vec![7]),
        Expect::Accept,
    );
}

/// auth_hmac over IPv6: the pseudo-header names family 6 and binds the 16-byte source; the
/// checksum covers the trailer (the kernel's transport checksum, as keepalived has it).
#[test]
fn ipv6_auth_hmac_is_judged_alike_on_both_paths() {
    let mut b = Both::new();
    let now = Hmac::now_seq(0);
    let signed = |seq: u64, key: &[u8]| Advert {
        vrid: 65,
        hmac: Some(Hmac::new(1, key, seq)),
        ..Advert::v3_ipv6(peer6())
    };
    b.check("signed", &signed(now, &key1()).frame(), Expect::Accept);
    b.check(
        "replayed",
        &signed(now, &key1()).frame(),
        drop_(Reason::Replay),
    );
    b.check(
        "signed with another key",
        &signed(now + 1, &key2()).frame(),
        drop_(Reason::Hmac),
    );
    b.check(
        "unsigned in enforce mode",
        &Advert {
            vrid: 65,
            ..Advert::v3_ipv6(peer6())
        }
        .frame(),
        drop_(Reason::NoTrailer),
    );
    let mut unknown = signed(now + 1, &key2());
    unknown.hmac.as_mut().unwrap().key_id = 9;
    b.check(
        "an unknown key",
        &unknown.frame(),
        drop_(Reason::UnknownKey),
    );
    let mut odd = signed(now + 1, &key1());
    odd.hmac.as_mut().unwrap().ext_type = 2;
    b.check("another scheme", &odd.frame(), drop_(Reason::Trailer));
    let stale = signed(now - (3600 << 32), &key1());
    b.check("an hour old", &stale.frame(), drop_(Reason::Stale));
    // The MAC binds the source: the same bytes from the other peer do not verify.
    let mut moved = signed(now + 2, &key1());
    moved.hmac.as_mut().unwrap().seq = now + 2;
    let frame = moved.frame();
    let mut forged = frame.clone();
    forged[14 + 8..14 + 24].copy_from_slice(&peer6_2());
    // The checksum is made right again: only the MAC can tell.
    let msg_at = 14 + 40;
    forged[msg_at + 6..msg_at + 8].copy_from_slice(&[0, 0]);
    let p = proxy_common::guard::pseudo_header_sum(
        std::net::Ipv6Addr::from(peer6_2()).into(),
        std::net::Ipv6Addr::from(moved.v6.as_ref().unwrap().dst).into(),
        (forged.len() - msg_at) as u16,
    );
    let c = proxy_common::guard::checksum(&forged[msg_at..], p);
    forged[msg_at + 6..msg_at + 8].copy_from_slice(&c.to_be_bytes());
    b.check(
        "signed by one peer, sent as the other",
        &forged,
        drop_(Reason::Hmac),
    );
    b.check("the original", &frame, Expect::Accept);
    let k = InstanceKey::new(LO, 65, Family::V6);
    let c = b.xdp.auth_counters(&k).unwrap();
    assert_eq!((c.signed, c.drop_hmac, c.drop_replay), (2, 2, 1), "{c:?}");
    assert_eq!(b.raw.auth_counters(&k).unwrap(), c);
}

/// keepalived 2.2.7's IPv6 adverts (captured in the lab) pass when keepalived is a peer, and
/// wake userspace as IPv4 adverts do; the same bytes from elsewhere are forgeries.
#[test]
fn keepalived_ipv6_adverts_are_accepted_and_recorded() {
    let keepalived = v6("fe80::ff:fe00:1");
    let mut s = spec6(51);
    s.peers = vec![keepalived];
    let mut g = XdpGuard::load(None, false).unwrap();
    g.configure(&[&s]).unwrap();
    let raw = RawState::default();
    raw.configure(&[&s]).unwrap();
    let frames = fixture("keepalived-v3-ipv6.hex");
    assert_eq!(g.test_run(&frames[0], LO).unwrap(), XDP_PASS);
    let ev = g.poll_events();
    let raw_ev = raw.handle(&frames[0], LO, monotonic_ns()).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    for e in [ev[0], raw_ev] {
        assert_eq!(
            (e.vrid, e.family, e.src, e.priority, e.flags, e.addr_count),
            (51, 6, keepalived, 110, EV_AFTER_SILENCE, 2)
        );
    }
    assert_eq!(g.test_run(&frames[1], LO).unwrap(), XDP_PASS);
    assert_eq!(
        g.poll_events()
            .iter()
            .map(|e| (e.priority, e.flags))
            .collect::<Vec<_>>(),
        vec![(0, EV_PRIORITY_ZERO | EV_PRIORITY_CHANGE)]
    );
    let rec = g.advert(&InstanceKey::new(LO, 51, Family::V6)).unwrap();
    assert_eq!(
        (rec.master, rec.version, rec.interval_cs, rec.adverts),
        (keepalived, 3, 100, 2)
    );
    assert!(
        g.advert(&InstanceKey::new(LO, 51, Family::V4)).is_none(),
        "no IPv4 instance"
    );
    s.peers = vec![peer6()];
    g.configure(&[&s]).unwrap();
    assert_eq!(g.test_run(&frames[0], LO).unwrap(), XDP_DROP);
    assert_eq!(g.counters().unwrap().drop_not_peer, 1);
}

/// The master-down timer runs for an IPv6 instance as for IPv4: armed by its adverts, and
/// its event names the family and the master that fell silent.
#[test]
fn the_kernel_timer_runs_for_ipv6_instances() {
    let mut s = spec6(61);
    s.peers = vec![peer6()];
    let key = InstanceKey::new(LO, 61, Family::V6);
    let mut g = XdpGuard::load(None, false).unwrap();
    g.configure(&[&s]).unwrap();
    g.set_timer_cfg(
        &key,
        TimerCfg {
            on: 1,
            priority: 100,
            version: 3,
            own_interval_cs: 5,
            ..TimerCfg::default()
        },
    )
    .unwrap();
    let adv = Advert {
        vrid: 61,
        priority: 110,
        interval: 5,
        ..Advert::v3_ipv6(peer6())
    };
    assert_eq!(g.test_run(&adv.frame(), LO).unwrap(), XDP_PASS);
    let t = g.timer(&key).expect("the guard created the timer");
    assert_eq!((t.armed, t.priority, t.interval_cs), (1, 110, 5), "{t:?}");
    g.poll_events();
    let t0 = std::time::Instant::now();
    let mut ev = Vec::new();
    while t0.elapsed() < std::time::Duration::from_secs(1) {
        ev.extend(
            g.poll_events()
                .into_iter()
                .filter(|e| e.flags & EV_MASTER_DOWN != 0),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].family, ev[0].src, ev[0].vrid), (6, peer6(), 61));
}
