//! The short fuzz run of the test command: every fuzz target (`crate::fuzz`, also
//! run long by `cargo xtask bench fuzz` under libFuzzer) on its corpus (`fuzz/corpus/`) and on
//! a fixed number of seeded mutations of it; and the XDP program against the userspace
//! decision path on mutated frames through BPF_PROG_TEST_RUN: same verdict, same counter.
use std::path::PathBuf;

use proxy_common::maps::Reason;

use crate::{
    dataplane::{monotonic_ns, raw::RawState, xdp::XdpGuard, InstanceSpec},
    fuzz,
};

const XDP_DROP: u32 = 1;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: empty corpus", dir.display());
    out
}

/// xorshift64*: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to eight edits: flip bits, set bytes to edge values, insert, delete, truncate,
/// duplicate a span.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                v.remove(at);
            }
            4 => v.truncate(at),
            _ if !v.is_empty() => {
                let start = rng.below(v.len());
                let len = rng.below(16).min(v.len() - start);
                let span = v[start..start + len].to_vec();
                let at = at.min(v.len());
                v.splice(at..at, span);
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, f: fn(&[u8]), iterations: usize) {
    let seeds = corpus(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for _ in 0..iterations {
        let seed = &seeds[rng.below(seeds.len())];
        f(&mutate(&mut rng, seed));
    }
}

#[test]
fn vrrp_message_short_run() {
    run("vrrp_message", fuzz::vrrp_message, 200_000);
}

#[test]
fn config_text_short_run() {
    run("config_text", fuzz::config_text, 5_000);
}

#[test]
fn guard_frame_short_run() {
    run("guard_frame", fuzz::guard_frame, 200_000);
}

#[test]
fn http1_head_short_run() {
    run("http1_head", fuzz::http1_head, 30_000);
}

#[test]
fn http1_chunked_short_run() {
    run("http1_chunked", fuzz::http1_chunked, 30_000);
}

/// Fewer runs: each import that succeeds loads its output twice (the importer's own check,
/// then the target's).
#[test]
fn import_keepalived_short_run() {
    run("import_keepalived", fuzz::import_keepalived, 1_000);
}

#[test]
fn import_apache_short_run() {
    run("import_apache", fuzz::import_apache, 1_000);
}

/// The XDP program and the userspace path on the same mutated frames (loopback, index 1).
#[test]
fn xdp_program_agrees_with_userspace_on_mutated_frames() {
    let specs: Vec<InstanceSpec> = fuzz::fuzz_specs()
        .into_iter()
        .map(|s| InstanceSpec { ifindex: 1, ..s })
        .collect();
    let refs: Vec<&InstanceSpec> = specs.iter().collect();
    let mut xdp = XdpGuard::load(None, false).expect("load the guard (run the tests as root)");
    xdp.configure(&refs).unwrap();
    let raw = RawState::default();
    raw.configure(&refs).unwrap();
    let seeds = corpus("guard_frame");
    let mut rng = Rng(0x5151_5151);
    let mut drops = 0;
    for n in 0..20_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let frame = mutate(&mut rng, seed);
        if frame.len() < 14 {
            continue; // test-run refuses runts; the kernel never runs XDP on them
        }
        let before = (xdp.counters().unwrap(), raw.counters());
        let action = xdp.test_run(&frame, 1).unwrap();
        let _ = raw.handle(&frame, 1, monotonic_ns());
        let after = (xdp.counters().unwrap(), raw.counters());
        for r in Reason::ALL {
            let (dx, dr) = (
                after.0.get(r) - before.0.get(r),
                after.1.get(r) - before.1.get(r),
            );
            assert_eq!(
                dx,
                dr,
                "frame {n} ({frame:02x?}): {} xdp {dx} raw {dr}",
                r.name()
            );
        }
        let dropped = Reason::ALL
            .iter()
            .any(|&r| r != Reason::Accepted && after.1.get(r) > before.1.get(r));
        assert_eq!(action == XDP_DROP, dropped, "frame {n} ({frame:02x?})");
        drops += usize::from(dropped);
    }
    assert!(drops > 1000, "the mutations reach the drop paths ({drops})");
}

/// The `xdp_frame` target (what the long run fuzzes) on its corpus.
#[test]
fn xdp_frame_target_on_its_corpus() {
    run("xdp_frame", fuzz::xdp_frame, 2_000);
}
