//! New connections steered toward a CPU that has time to spare.
//!
//! With the workers pinned one per CPU, the kernel's SO_REUSEPORT hash gives each worker its
//! share of new connections whatever else runs on its CPU. When another busy process shares one
//! worker's CPU (a single-threaded client, a backup job, a local backend) that worker's
//! connections wait for the CPU while another CPU sits idle. Every `WINDOW` the accepting
//! workers read each worker's CPU idle time from `/proc/stat`. While the CPU of worker `t` is
//! the idlest by a margin, every other worker whose own CPU is busy hands a growing share of its
//! new connections to `t`: the share grows by the difference in idle time each window and
//! shrinks again when `t`'s CPU has no more to spare than its own. The share only moves new
//! connections; the ones already open stay where they are.
//!
//! Nothing here runs on a timer: samples are taken by the accept path, so an idle proxy costs
//! nothing, and a sample older than `STALE` (no accepts for a while) starts over from even
//! placement. What a window measured is the load of short connections coming and going; a
//! burst of new connections that stay open (`BURST` more than at the window's start) is not
//! that, and the rest of the window places them evenly; the reference it is measured from
//! rises by at most `BURST` a window, so a burst that spans two windows is still one.
use std::{
    fs::File,
    os::unix::fs::FileExt,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::worker::Padded;

/// How often the idle times are compared: long enough for `/proc/stat`'s 10 ms ticks to
/// resolve a tenth of a CPU.
const WINDOW: Duration = Duration::from_millis(100);
/// A window longer than this says nothing about the present: steering starts over.
const STALE: Duration = Duration::from_millis(300);
/// A worker whose CPU is idle this share of the time has room of its own: it steers nothing.
const ROOMY: f64 = 0.3;
/// The target changes only to a CPU idler than the current target's by this share (one tick
/// in a window), so that two equally busy CPUs do not take turns.
const MARGIN: f64 = 0.1;
/// Shares are fixed-point: `ONE` is "every new connection".
const ONE: u32 = 1 << 16;
const NONE: usize = usize::MAX;
/// Steering pauses until the next window once this many more connections are open than at
/// the window's start: a burst of new long-lived connections (clients opening their keep-alive
/// connections) is not a load the last window measured, and it goes out evenly.
const BURST: usize = 8;

pub struct Steer {
    /// The CPU each worker is pinned to.
    cpus: Box<[usize]>,
    epoch: Instant,
    /// When the next sample is due, in ns since `epoch`.
    due: AtomicU64,
    sampler: Mutex<Sampler>,
    /// The worker new connections are steered to, or `NONE`.
    target: AtomicUsize,
    /// Per worker: the share of its new connections it hands to the target.
    share: Box<[Padded<AtomicU32>]>,
    /// Per worker: share accumulated since its last steered connection.
    credit: Box<[Padded<AtomicU32>]>,
    /// What the open connections are compared with to tell a burst: the connections open at
    /// the last sample, but never more than `BURST` above the sample before (a burst that
    /// spans a sample is still a burst).
    open_then: AtomicUsize,
    /// Connections handed to the target so far.
    steered: AtomicU64,
    /// Set when a worker could not be pinned: its CPU's idle time says nothing about it.
    off: AtomicBool,
}

struct Sampler {
    stat: File,
    /// Room for the per-CPU lines of `/proc/stat`, sized once for the highest CPU listed.
    buf: Vec<u8>,
    /// When the last sample was taken, and each worker's CPU idle ticks then.
    last: Option<(Instant, Vec<u64>)>,
    ticks_per_sec: f64,
}

/// What a window's sample decides: the worker to steer to, if any, and the share of its new
/// connections each worker hands to it.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub target: Option<usize>,
    pub shares: Vec<f64>,
}

impl Steer {
    /// Steering for workers pinned to `cpus` (one entry per worker); `None` when there is
    /// nothing to steer (fewer than two workers, or `/proc/stat` cannot be read).
    pub fn new(cpus: Vec<usize>) -> Option<Steer> {
        if cpus.len() < 2 {
            return None;
        }
        let stat = match File::open("/proc/stat") {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/stat; new connections are not steered by CPU load");
                return None;
            }
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let n = cpus.len();
        let room = 256 * (cpus.iter().max().map_or(0, |&c| c) + 2);
        Some(Steer {
            cpus: cpus.into(),
            epoch: Instant::now(),
            due: AtomicU64::new(0),
            sampler: Mutex::new(Sampler {
                stat,
                buf: vec![0; room.max(4096)],
                last: None,
                ticks_per_sec: if hz > 0 { hz as f64 } else { 100.0 },
            }),
            target: AtomicUsize::new(NONE),
            share: (0..n).map(|_| Padded(AtomicU32::new(0))).collect(),
            credit: (0..n).map(|_| Padded(AtomicU32::new(0))).collect(),
            open_then: AtomicUsize::new(0),
            steered: AtomicU64::new(0),
            off: AtomicBool::new(false),
        })
    }

    /// Where a connection worker `me` just accepted goes: `Some(target)` to hand it to the
    /// steering target, `Some(me)` to keep it whatever the connection counts say, `None` to
    /// leave it to even placement. `open` counts the connections open on all workers now; it
    /// is called only when a sample is due or a target is set.
    pub fn place(&self, me: usize, open: impl Fn() -> usize) -> Option<usize> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        self.sample(&open);
        let t = self.target.load(Ordering::Relaxed);
        if t == NONE || me >= self.share.len() {
            return None;
        }
        if open() > self.open_then.load(Ordering::Relaxed) + BURST {
            return None;
        }
        if t == me {
            // Even placement would hand the target's own connections back to the others.
            return Some(me);
        }
        let s = self.share[me].load(Ordering::Relaxed);
        if s == 0 {
            return None;
        }
        // Only `me` touches its credit: a load and a store are enough.
        let c = self.credit[me].load(Ordering::Relaxed) + s;
        if c >= ONE {
            self.credit[me].store(c - ONE, Ordering::Relaxed);
            self.steered.fetch_add(1, Ordering::Relaxed);
            Some(t)
        } else {
            self.credit[me].store(c, Ordering::Relaxed);
            Some(me)
        }
    }

    /// Stops steering for good: a worker runs unpinned after all.
    pub fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }

    /// Connections handed to a worker with CPU to spare so far.
    pub fn steered(&self) -> u64 {
        self.steered.load(Ordering::Relaxed)
    }

    /// Takes a sample if one is due and no other worker is taking it.
    fn sample(&self, open: impl Fn() -> usize) {
        let now = Instant::now();
        let ns = now.duration_since(self.epoch).as_nanos() as u64;
        if ns < self.due.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut s) = self.sampler.try_lock() else {
            return;
        };
        if ns < self.due.load(Ordering::Relaxed) {
            return;
        }
        self.due
            .store(ns + WINDOW.as_nanos() as u64, Ordering::Relaxed);
        let idle = match s.read(&self.cpus) {
            Ok(idle) => idle,
            Err(e) => {
                // `last` stays as it was: the next good sample spans a stale window.
                tracing::debug!(error = %e, "reading /proc/stat");
                return;
            }
        };
        let hz = s.ticks_per_sec;
        let Some((then, before)) = s.last.replace((now, idle.clone())) else {
            return;
        };
        let window = now.duration_since(then);
        let decision = if window > STALE {
            Decision {
                target: None,
                shares: vec![0.0; self.cpus.len()],
            }
        } else {
            let ticks = window.as_secs_f64() * hz;
            let fractions: Vec<f64> = idle
                .iter()
                .zip(&before)
                .map(|(a, b)| (a.saturating_sub(*b) as f64 / ticks).min(1.0))
                .collect();
            let shares: Vec<f64> = self
                .share
                .iter()
                .map(|s| s.load(Ordering::Relaxed) as f64 / ONE as f64)
                .collect();
            decide(self.target(), &shares, &fractions)
        };
        self.apply(&decision, open());
    }

    fn target(&self) -> Option<usize> {
        Some(self.target.load(Ordering::Relaxed)).filter(|&t| t != NONE)
    }

    /// Steers by `d` from now on, `open` connections being open now.
    fn apply(&self, d: &Decision, open: usize) {
        for (s, v) in self.share.iter().zip(&d.shares) {
            s.store((v * ONE as f64) as u32, Ordering::Relaxed);
        }
        let then = self.open_then.load(Ordering::Relaxed);
        self.open_then
            .store(open.min(then + BURST), Ordering::Relaxed);
        self.target
            .store(d.target.unwrap_or(NONE), Ordering::Relaxed);
    }
}

/// One window's step: `idle` is the share of the window each worker's CPU was idle.
pub fn decide(target: Option<usize>, shares: &[f64], idle: &[f64]) -> Decision {
    let n = idle.len();
    let Some(best) = (0..n).max_by(|&a, &b| idle[a].total_cmp(&idle[b])) else {
        return Decision {
            target: None,
            shares: Vec::new(),
        };
    };
    let (t, mut shares) = match target {
        Some(t) if t < n && idle[best] < idle[t] + MARGIN => (t, shares.to_vec()),
        _ => (best, vec![0.0; n]),
    };
    for (i, s) in shares.iter_mut().enumerate() {
        *s = if i == t || idle[i] >= ROOMY {
            0.0
        } else {
            (*s + idle[t] - idle[i]).clamp(0.0, 1.0)
        };
    }
    let target = shares.iter().any(|&s| s > 0.0).then_some(t);
    Decision { target, shares }
}

impl Sampler {
    /// Each listed CPU's idle and iowait ticks since boot. The per-CPU lines come first in
    /// `/proc/stat`; one read of room enough for them takes them from one snapshot (what
    /// follows, the interrupt counts, can be far longer and is not needed).
    fn read(&mut self, cpus: &[usize]) -> std::io::Result<Vec<u64>> {
        let n = self.stat.read_at(&mut self.buf, 0)?;
        // A line cut off by the end of the buffer is not parsed.
        let whole = if n == self.buf.len() {
            self.buf[..n]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        } else {
            n
        };
        let text = std::str::from_utf8(&self.buf[..whole])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        idle_ticks(text, cpus).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// The idle and iowait ticks of each of `cpus` in the text of `/proc/stat`.
fn idle_ticks(stat: &str, cpus: &[usize]) -> Result<Vec<u64>, String> {
    let mut idle = vec![None; cpus.len()];
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        // The first line ("cpu  ...") is the sum over all CPUs: no number.
        let Some(Ok(cpu)) = f.next().map(str::parse::<usize>) else {
            continue;
        };
        // user nice system idle iowait ...
        let v: Vec<u64> = f.take(5).map_while(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            return Err(format!(
                "/proc/stat: cpu{cpu}: {line:?} has no idle and iowait ticks"
            ));
        }
        for (slot, c) in idle.iter_mut().zip(cpus) {
            if *c == cpu {
                *slot = Some(v[3] + v[4]);
            }
        }
    }
    idle.into_iter()
        .zip(cpus)
        .map(|(v, c)| v.ok_or_else(|| format!("/proc/stat has no line for cpu{c}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idlest_cpu_draws_a_share_that_grows_by_the_difference() {
        // Worker 0's CPU is busy with something else, worker 1's is idle 40 % of the time.
        let d = decide(None, &[0.0, 0.0], &[0.0, 0.4]);
        assert_eq!(d.target, Some(1));
        assert_eq!(d.shares, [0.4, 0.0]);
        let d = decide(d.target, &d.shares, &[0.0, 0.4]);
        assert_eq!(d.shares, [0.8, 0.0]);
        let d = decide(d.target, &d.shares, &[0.05, 0.3]);
        assert_eq!(d.shares, [1.0, 0.0], "capped at every connection");
        // The target's CPU is as busy as worker 0's now: the share holds...
        let d = decide(d.target, &d.shares, &[0.0, 0.0]);
        assert_eq!((d.target, d.shares.as_slice()), (Some(1), &[1.0, 0.0][..]));
        // ...and shrinks once worker 0's CPU has more to spare than the target's.
        let d = decide(d.target, &d.shares, &[0.08, 0.0]);
        assert_eq!(d.target, Some(1), "within the margin: the target stays");
        assert!((d.shares[0] - 0.92).abs() < 1e-9, "{:?}", d.shares);
    }

    #[test]
    fn a_cpu_with_room_of_its_own_steers_nothing() {
        // Both CPUs mostly idle: even placement.
        let d = decide(None, &[0.0, 0.0], &[0.5, 0.9]);
        assert_eq!(
            d,
            Decision {
                target: None,
                shares: vec![0.0, 0.0]
            }
        );
        // A share learnt under load is dropped as soon as the load is gone.
        let d = decide(Some(1), &[1.0, 0.0], &[0.6, 0.7]);
        assert_eq!(d.target, None);
        assert_eq!(d.shares, [0.0, 0.0]);
        // Equally busy CPUs: nothing to gain.
        assert_eq!(decide(None, &[0.0; 3], &[0.1, 0.1, 0.1]).target, None);
    }

    #[test]
    fn the_target_moves_only_to_a_clearly_idler_cpu() {
        let d = decide(Some(1), &[0.5, 0.0, 0.5], &[0.0, 0.25, 0.3]);
        assert_eq!(d.target, Some(1), "0.3 is within the margin of 0.25");
        let d = decide(Some(1), &[0.5, 0.0, 0.5], &[0.0, 0.1, 0.28]);
        assert_eq!(d.target, Some(2));
        // A new target starts from nothing: the old shares were learnt for another CPU.
        assert_eq!(d.shares, [0.28, 0.18000000000000002, 0.0]);
    }

    #[test]
    fn no_workers_no_target() {
        assert_eq!(decide(Some(0), &[], &[]).target, None);
    }

    const STAT: &str = "cpu  2292221 0 1038243 2453880 16345 0 450201 5049 0 0
cpu0 1110434 0 512839 1273816 4063 0 225066 2511 0 0
cpu1 1181786 0 525403 1180063 12281 0 225134 2537 0 0
intr 1 2 3
ctxt 123
";

    #[test]
    fn idle_ticks_are_idle_plus_iowait_per_listed_cpu() {
        assert_eq!(
            idle_ticks(STAT, &[1, 0, 1]).unwrap(),
            [1192344, 1277879, 1192344]
        );
        assert_eq!(
            idle_ticks(STAT, &[0, 2]).unwrap_err(),
            "/proc/stat has no line for cpu2"
        );
        let short = "cpu0 1 2 3\n";
        let e = idle_ticks(short, &[0]).unwrap_err();
        assert!(e.contains("cpu0") && e.contains("idle"), "{e}");
    }

    #[test]
    fn this_hosts_proc_stat_has_cpu0_and_its_idle_ticks_only_grow() {
        let s = Steer::new(vec![0, 0]).expect("two workers and /proc/stat");
        let mut sampler = s.sampler.lock().unwrap();
        let a = sampler.read(&[0]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let b = sampler.read(&[0]).unwrap();
        assert!(b[0] >= a[0]);
    }

    /// A steer whose next sample is a long way off, steering by `d` with `open` connections
    /// open at the last sample.
    fn fixed(workers: usize, d: Decision, open: usize) -> Steer {
        let s = Steer::new(vec![0; workers]).unwrap();
        s.due.store(u64::MAX, Ordering::Relaxed);
        s.apply(&d, open);
        s.open_then.store(open, Ordering::Relaxed);
        s
    }

    #[test]
    fn the_burst_reference_rises_by_at_most_a_burst_a_window() {
        let d = || Decision {
            target: Some(1),
            shares: vec![1.0, 0.0],
        };
        let s = fixed(2, d(), 16);
        // A burst of 64 staying connections spans the next sample: still a burst.
        s.apply(&d(), 80);
        assert_eq!(s.open_then.load(Ordering::Relaxed), 16 + BURST);
        assert_eq!(s.place(0, || 81), None);
        // The load settles at 80 open: steering resumes once the reference catches up.
        for _ in 0..7 {
            s.apply(&d(), 80);
        }
        assert_eq!(s.open_then.load(Ordering::Relaxed), 80);
        assert_eq!(s.place(0, || 80), Some(1));
        // Connections closing lower it at once.
        s.apply(&d(), 20);
        assert_eq!(s.open_then.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn each_worker_hands_over_its_share_and_the_target_keeps_its_own() {
        let s = fixed(
            3,
            Decision {
                target: Some(1),
                shares: vec![0.5, 0.0, 0.25],
            },
            10,
        );
        let from0: Vec<_> = (0..6).map(|_| s.place(0, || 10)).collect();
        assert_eq!(from0, [0, 1, 0, 1, 0, 1].map(Some));
        let from2: Vec<_> = (0..8).map(|_| s.place(2, || 10)).collect();
        assert_eq!(from2, [2, 2, 2, 1, 2, 2, 2, 1].map(Some));
        assert_eq!(s.place(1, || 10), Some(1));
        assert_eq!(s.steered(), 5);
    }

    #[test]
    fn a_burst_of_new_connections_goes_out_evenly() {
        let s = fixed(
            2,
            Decision {
                target: Some(1),
                shares: vec![1.0, 0.0],
            },
            16,
        );
        assert_eq!(s.place(0, || 16 + BURST), Some(1));
        assert_eq!(s.place(0, || 17 + BURST), None);
        assert_eq!(s.place(1, || 17 + BURST), None, "the target too");
        // Fewer open again (short connections closing): steering resumes.
        assert_eq!(s.place(0, || 20), Some(1));
    }

    #[test]
    fn without_a_target_placement_is_even() {
        let s = fixed(
            2,
            Decision {
                target: None,
                shares: vec![0.0, 0.0],
            },
            0,
        );
        assert_eq!(s.place(0, || 0), None);
        assert_eq!(s.place(1, || 0), None);
        assert_eq!(s.steered(), 0);
        assert!(
            Steer::new(vec![3]).is_none(),
            "one worker: nothing to steer"
        );
    }

    #[test]
    fn turned_off_it_places_nothing() {
        let s = fixed(
            2,
            Decision {
                target: Some(1),
                shares: vec![1.0, 0.0],
            },
            0,
        );
        assert_eq!(s.place(0, || 0), Some(1));
        s.turn_off();
        assert_eq!(s.place(0, || 0), None);
        assert_eq!(s.place(1, || 0), None);
    }
}
