//! Fuzz targets: what must hold for any input. The cargo-fuzz harness (`fuzz/`, run long by
//! `cargo xtask bench fuzz`) and the short run in the tests (`tests/fuzz_short.rs`: the corpus
//! in `fuzz/corpus/` plus mutations of it) call the same functions.
use std::{net::Ipv4Addr, path::Path, sync::OnceLock};

use crate::{
    config::{Config, XdpMode},
    dataplane::{raw::RawState, InstanceSpec},
    vrrp::{Advert, ChecksumMode},
};

/// A VRRP message from anyone: parsing never panics, and what parses is emitted back to a
/// message that parses to the same advert (both checksum modes).
pub fn vrrp_message(data: &[u8]) {
    let (src, dst) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(224, 0, 0, 18));
    for mode in [ChecksumMode::PseudoHeader, ChecksumMode::MessageOnly] {
        if let Ok(a) = Advert::parse(data, mode, src, dst) {
            let again = Advert::parse(&a.emit(mode, src, dst), mode, src, dst)
                .expect("an emitted advert parses");
            assert_eq!(a, again, "parse(emit(a)) == a");
        }
    }
}

/// A config file: loading never panics, whatever the text.
pub fn config_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// The guard's instances for frame fuzzing: VRID 51 v3, VRID 52 v2 with a password and VRID 53
/// v3 with `auth_hmac` (key 1: bytes 0..32, enforce, monotonic), on interface index 2.
pub fn fuzz_specs() -> Vec<InstanceSpec> {
    let spec = |vrid: u8, version: u8, pass: Option<[u8; 8]>| InstanceSpec {
        name: format!("VI_{vrid}"),
        interface: "eth0".into(),
        ifindex: 2,
        vrid,
        version,
        peers: vec![[198, 18, 0, 2]],
        pseudo_header: version == 3,
        auth_pass: pass,
        auth: None,
        xdp: XdpMode::Off,
        served: vec![],
    };
    let hmac = crate::dataplane::AuthSpec::new(&crate::config::auth::ResolvedAuth {
        keys: vec![(1, (0u8..32).collect())],
        active_key: 1,
        time_mode: false,
        window_s: 5,
        mode: crate::config::auth::AuthMode::Enforce,
    });
    vec![
        spec(51, 3, None),
        spec(52, 2, Some(*b"secret42")),
        InstanceSpec {
            auth: Some(hmac),
            ..spec(53, 3, None)
        },
    ]
}

/// An Ethernet frame on a guarded interface: the guard's decision procedure (the code the XDP
/// program runs too) never panics and never loops, whatever the bytes.
pub fn guard_frame(data: &[u8]) {
    static STATE: OnceLock<RawState> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let s = RawState::default();
        let specs = fuzz_specs();
        let refs: Vec<&InstanceSpec> = specs.iter().collect();
        s.configure(&refs).expect("the fuzz instances are valid");
        s
    });
    let _ = state.handle(data, 2, 1_000_000_000);
}

/// The XDP program itself, through BPF_PROG_TEST_RUN on loopback (needs root): on any frame it
/// passes the verifier's bounds at run time (the kernel would abort it otherwise) and decides
/// exactly as the userspace path does: the same action and the same counter.
pub fn xdp_frame(data: &[u8]) {
    use crate::dataplane::xdp::XdpGuard;
    use proxy_common::maps::Reason;
    use std::sync::Mutex;
    static BOTH: OnceLock<Mutex<(XdpGuard, RawState)>> = OnceLock::new();
    if data.len() < 14 {
        return; // test-run refuses runts, and the kernel never runs XDP on them
    }
    let both = BOTH.get_or_init(|| {
        let specs: Vec<InstanceSpec> = fuzz_specs()
            .into_iter()
            .map(|s| InstanceSpec { ifindex: 1, ..s })
            .collect();
        let refs: Vec<&InstanceSpec> = specs.iter().collect();
        let mut xdp = XdpGuard::load(None).expect("load the guard (run as root)");
        xdp.configure(&refs).expect("configure the guard");
        let raw = RawState::default();
        raw.configure(&refs).expect("configure the raw path");
        Mutex::new((xdp, raw))
    });
    let Ok(guard) = both.lock() else { return };
    let (xdp, raw) = &*guard;
    let before = (xdp.counters().expect("counters"), raw.counters());
    let action = xdp.test_run(data, 1).expect("test-run");
    let _ = raw.handle(data, 1, crate::dataplane::monotonic_ns());
    let after = (xdp.counters().expect("counters"), raw.counters());
    let mut dropped = false;
    for r in Reason::ALL {
        let dx = after.0.get(r) - before.0.get(r);
        let dr = after.1.get(r) - before.1.get(r);
        assert_eq!(dx, dr, "{}: xdp {dx}, userspace {dr}", r.name());
        dropped |= r != Reason::Accepted && dr > 0;
    }
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    // A TCP connection request may also be dropped (see the guard); VRRP verdicts must agree.
    if action != XDP_DROP || dropped {
        assert_eq!(action, if dropped { XDP_DROP } else { XDP_PASS }, "action");
    }
}
