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

/// The guard's instances for frame fuzzing: VRID 51 v3 and VRID 52 v2 with a password, on
/// interface index 2.
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
        xdp: XdpMode::Off,
        served: vec![],
    };
    vec![spec(51, 3, None), spec(52, 2, Some(*b"secret42"))]
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
