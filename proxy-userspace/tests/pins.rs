//! Pinned maps: a pin from another layout is replaced, never reused; a compatible set left by a
//! crash is reused with its counters and records; a clean stop removes every pin.
use std::{path::Path, process::Command};

use aya::maps::{Array, Map, MapData, MapInfo};
use hapd_lab::{frames::Advert, Lab};
use proxy_common::{
    maps::{v4_addr, InstanceKey, LAYOUT_VERSION},
    vrrp::Family,
};
use proxy_userspace::{
    config::XdpMode,
    dataplane::{xdp::XdpGuard, InstanceSpec},
};

const LO: u32 = 1;
const PEER: [u8; 4] = [198, 18, 0, 2];

fn spec() -> InstanceSpec {
    InstanceSpec {
        name: "VI_1".into(),
        interface: "lo".into(),
        ifindex: LO,
        vrid: 51,
        version: 3,
        family: Family::V4,
        peers: vec![v4_addr(PEER)],
        pseudo_header: true,
        auth_pass: None,
        auth: None,
        xdp: XdpMode::Auto,
        served: vec![],
    }
}

fn pin_dir(lab: &mut Lab) -> std::path::PathBuf {
    let dir = lab.bpffs().unwrap().join("pins");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn layout_version(dir: &Path) -> u32 {
    let a: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join("hapd_layout")).unwrap(),
    ))
    .unwrap();
    a.get(&0, 0).unwrap()
}

#[test]
fn a_pin_with_another_layout_is_replaced() {
    let mut lab = Lab::new(1).unwrap();
    let dir = pin_dir(&mut lab);
    // What an older build might have left: vrrp_vrids with 8-byte values.
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join("vrrp_vrids"))
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "256",
            "name",
            "vrrp_vrids",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        MapInfo::from_pin(dir.join("vrrp_vrids"))
            .unwrap()
            .value_size(),
        8
    );

    let mut g = XdpGuard::load(Some(&dir), false).unwrap();
    g.configure(&[&spec()]).unwrap();
    assert_eq!(
        MapInfo::from_pin(dir.join("vrrp_vrids"))
            .unwrap()
            .value_size(),
        std::mem::size_of::<proxy_common::maps::VridEntry>() as u32,
        "replaced"
    );
    assert_eq!(
        g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(),
        2,
        "and working"
    );
    g.shutdown().unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "shutdown removes every pin"
    );
}

#[test]
fn another_layout_version_replaces_the_pins() {
    let mut lab = Lab::new(1).unwrap();
    let dir = pin_dir(&mut lab);
    let mut g = XdpGuard::load(Some(&dir), false).unwrap();
    g.configure(&[&spec()]).unwrap();
    assert_eq!(g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(), 2);
    assert_eq!(g.counters().unwrap().accepted, 1);
    drop(g); // a crash: the pins stay
    let mut a: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join("hapd_layout")).unwrap(),
    ))
    .unwrap();
    a.set(0, LAYOUT_VERSION + 1, 0).unwrap();
    drop(a);

    let g = XdpGuard::load(Some(&dir), false).unwrap();
    assert_eq!(layout_version(&dir), LAYOUT_VERSION);
    assert_eq!(
        g.counters().unwrap().accepted,
        0,
        "fresh maps, not the old ones"
    );
    g.shutdown().unwrap();
}

/// A successor (`hapd upgrade`) shares the pins with the running hapd: another layout is
/// refused, with the reason, and nothing is replaced; the same layout is shared, state and all.
#[test]
fn a_successor_refuses_pins_of_another_layout_and_shares_matching_ones() {
    let mut lab = Lab::new(1).unwrap();
    let dir = pin_dir(&mut lab);
    let mut g = XdpGuard::load(Some(&dir), false).unwrap();
    g.configure(&[&spec()]).unwrap();
    assert_eq!(g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(), 2);
    let mut a: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join("hapd_layout")).unwrap(),
    ))
    .unwrap();
    a.set(0, LAYOUT_VERSION + 1, 0).unwrap();
    let err = XdpGuard::load(Some(&dir), true).err().expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("do not fit this hapd") && msg.contains("restart"),
        "{msg}"
    );
    assert_eq!(layout_version(&dir), LAYOUT_VERSION + 1, "nothing replaced");
    assert_eq!(
        g.counters().unwrap().accepted,
        1,
        "the running guard's maps are intact"
    );
    a.set(0, LAYOUT_VERSION, 0).unwrap();
    let next = XdpGuard::load(Some(&dir), true).unwrap();
    assert_eq!(next.counters().unwrap().accepted, 1, "the same maps");
    drop(next);
    g.shutdown().unwrap();
}

#[test]
fn compatible_pins_survive_a_crash_with_their_state() {
    let mut lab = Lab::new(1).unwrap();
    let dir = pin_dir(&mut lab);
    let mut g = XdpGuard::load(Some(&dir), false).unwrap();
    g.configure(&[&spec()]).unwrap();
    for _ in 0..3 {
        assert_eq!(g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(), 2);
    }
    drop(g); // a crash: the pins stay

    let mut g = XdpGuard::load(Some(&dir), false).unwrap();
    g.configure(&[&spec()]).unwrap();
    assert_eq!(g.counters().unwrap().accepted, 3, "counters carried on");
    let rec = g.advert(&InstanceKey::new(LO, 51, Family::V4)).unwrap();
    assert_eq!(
        (rec.adverts, rec.master),
        (3, v4_addr(PEER)),
        "the record is still true and kept"
    );
    // A restart with another config rewrites the tables: VRID 51 is gone.
    g.configure(&[&InstanceSpec { vrid: 52, ..spec() }])
        .unwrap();
    assert!(g.advert(&InstanceKey::new(LO, 51, Family::V4)).is_none());
    assert_eq!(
        g.test_run(&Advert::v3(PEER).frame(), LO).unwrap(),
        1,
        "VRID 51 no longer accepted"
    );
    g.shutdown().unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}
