//! Scenarios on virtual time: N engines on a simulated segment that delivers every advert at
//! once, except where a link is cut.
//!
//! ```text
//!   A 198.18.0.1 ──┐
//!   B 198.18.0.2 ──┼── segment (cut: a node neither sends nor hears)
//!   C 198.18.0.3 ──┘
//! ```
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::*;

/// An IPv4 address as the engine takes it.
fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cfg(i: u8, priority: u8, interval_cs: u16) -> Config {
    Config {
        vrid: 51,
        version: 3,
        priority,
        advert_interval: Centisecs(interval_cs),
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: ip4(198, 18, 0, i + 1),
        garp_refresh: None,
        fence: false,
    }
}

struct Node {
    inst: Instance,
    /// Holds the addresses and answers for them.
    vips: bool,
    running: bool,
    /// Stopped, but still listening for its successor (it holds the addresses until then).
    stopping: bool,
    /// The counterpart of the last planned move: `TakeVips { from }` or `HandOver { to }`.
    moved: Option<IpAddr>,
    transitions: Vec<(Duration, State, State, Reason)>,
    sent: Vec<(Duration, u8)>,
    reannounced: usize,
    ignored: usize,
    fences: usize,
}

struct Sim {
    now: Duration,
    nodes: Vec<Node>,
    cut: BTreeSet<usize>,
    /// What happened, one JSON line each: transitions, address changes, resignations,
    /// fences (not the periodic adverts). Compared with a golden file by [`Sim::golden`].
    trace: Vec<String>,
}

impl Sim {
    fn new(cfgs: Vec<Config>) -> Sim {
        let nodes = cfgs
            .into_iter()
            .map(|c| Node {
                inst: Instance::new(c),
                vips: false,
                running: false,
                stopping: false,
                moved: None,
                transitions: vec![],
                sent: vec![],
                reannounced: 0,
                ignored: 0,
                fences: 0,
            })
            .collect();
        Sim {
            now: Duration::ZERO,
            nodes,
            cut: BTreeSet::new(),
            trace: Vec::new(),
        }
    }

    fn start(&mut self, i: usize) {
        let now = self.now;
        let c = self.nodes[i].inst.config().clone();
        self.nodes[i].inst = Instance::new(c);
        self.nodes[i].running = true;
        self.nodes[i].stopping = false;
        self.nodes[i].inst.handle_startup(now);
        self.drain(i);
    }

    fn stop(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].inst.handle_shutdown(now);
        self.drain(i);
        self.nodes[i].running = false;
        self.nodes[i].stopping = self.nodes[i].vips;
    }

    /// kill -9 or a dead host: no more adverts, no goodbye.
    fn crash(&mut self, i: usize) {
        self.nodes[i].running = false;
        self.nodes[i].stopping = false;
        self.nodes[i].vips = false;
    }

    /// Runs the actions of node `i`, delivering adverts to every other running node.
    fn drain(&mut self, i: usize) {
        let mut work = vec![i];
        while let Some(n) = work.pop() {
            while let Some(a) = self.nodes[n].inst.poll_action() {
                self.record(n, &a);
                match a {
                    Action::SendAdvert { priority } => self.send(n, priority, None, &mut work),
                    Action::TakeVips { from } => {
                        self.nodes[n].vips = true;
                        self.nodes[n].moved = from;
                    }
                    Action::HoldVips => {}
                    Action::Adopt { from } => self.nodes[n].moved = Some(from),
                    Action::HandOver { to } => {
                        self.nodes[n].vips = false;
                        self.nodes[n].moved = Some(to);
                        self.nodes[n].stopping = false;
                    }
                    Action::ReleaseVips => {
                        self.nodes[n].vips = false;
                        self.nodes[n].stopping = false;
                    }
                    Action::Reannounce => self.nodes[n].reannounced += 1,
                    Action::Transition { from, to, reason } => {
                        self.nodes[n].transitions.push((self.now, from, to, reason))
                    }
                    Action::Ignored { .. } => self.nodes[n].ignored += 1,
                    Action::Fence => self.nodes[n].fences += 1,
                    Action::TellWinner { to, priority } => {
                        self.send(n, priority, Some(to), &mut work)
                    }
                }
            }
        }
    }

    /// Node `n` sends an advert with `priority` to `to` (None: to everyone), unless it is cut;
    /// the nodes that hear it go on `work`.
    fn send(&mut self, n: usize, priority: u8, to: Option<IpAddr>, work: &mut Vec<usize>) {
        self.nodes[n].sent.push((self.now, priority));
        if self.cut.contains(&n) {
            return;
        }
        let h = Heard {
            src: self.nodes[n].inst.config().primary,
            priority,
            interval: self.nodes[n].inst.config().advert_interval,
        };
        for j in 0..self.nodes.len() {
            let addressed = to.is_none_or(|a| self.nodes[j].inst.config().primary == a);
            let hears = self.nodes[j].running || self.nodes[j].stopping;
            if j != n && addressed && hears && !self.cut.contains(&j) {
                self.nodes[j].inst.handle_advert(self.now, h);
                work.push(j);
            }
        }
    }

    fn record(&mut self, n: usize, a: &Action) {
        let what = match a {
            Action::SendAdvert { priority: 0 } => "\"resign\": true".to_string(),
            Action::SendAdvert { .. } | Action::Ignored { .. } => return,
            Action::TakeVips { from: None } => "\"vips\": \"take\"".into(),
            Action::TakeVips { from: Some(f) } => {
                format!("\"vips\": \"take\", \"flows_at\": \"{f}\"")
            }
            Action::HoldVips => "\"vips\": \"hold\"".into(),
            Action::Adopt { from } => format!("\"flows_at\": \"{from}\""),
            Action::HandOver { to } => format!("\"vips\": \"hand_over\", \"to\": \"{to}\""),
            Action::ReleaseVips => "\"vips\": \"release\"".into(),
            Action::Reannounce => "\"vips\": \"reannounce\"".into(),
            Action::Fence => "\"fence\": true".into(),
            Action::TellWinner { to, priority } => {
                format!("\"tell_winner\": \"{to}\", \"priority\": {priority}")
            }
            Action::Transition { from, to, reason } => {
                format!("\"from\": \"{from}\", \"to\": \"{to}\", \"reason\": \"{reason}\"")
            }
        };
        let node = (b'A' + n as u8) as char;
        let t = self.now.as_micros();
        self.trace
            .push(format!("{{\"t_us\": {t}, \"node\": \"{node}\", {what}}}"));
    }

    /// Compares the trace with `golden/<name>.jsonl` (see [`check_golden`]). A test that builds
    /// several simulations collects them in [`Scenarios`] instead.
    fn golden(&self, name: &str) {
        check_golden(name, &self.trace);
    }

    /// Advances virtual time to `t`, firing every timer on the way.
    fn run_until(&mut self, t: Duration) {
        loop {
            let next = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].running)
                .filter_map(|i| self.nodes[i].inst.poll_timeout().map(|d| (d, i)))
                .min();
            match next {
                Some((d, i)) if d <= t => {
                    self.now = self.now.max(d);
                    let now = self.now;
                    self.nodes[i].inst.handle_timeout(now);
                    self.drain(i);
                }
                _ => break,
            }
        }
        self.now = t;
    }

    /// Advances to `t`, then applies `f` to node `i`'s engine at `t` and runs its actions.
    fn at(&mut self, t: Duration, i: usize, f: impl FnOnce(&mut Instance, Duration)) {
        self.run_until(t);
        f(&mut self.nodes[i].inst, t);
        self.drain(i);
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && self.nodes[i].inst.state() == State::Master)
            .collect()
    }

    fn vip_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vips)
            .collect()
    }

    /// When node `i` last became `to`.
    fn became(&self, i: usize, to: State) -> Option<(Duration, Reason)> {
        self.nodes[i]
            .transitions
            .iter()
            .rev()
            .find(|t| t.2 == to)
            .map(|t| (t.0, t.3))
    }
}

/// Compares `lines` with `golden/<name>.jsonl` beside this file; `HAPD_BLESS=1` rewrites the
/// file instead.
fn check_golden(name: &str, lines: &[String]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("src/vrrp/fsm/golden/{name}.jsonl"));
    let got = lines.join("\n") + "\n";
    if std::env::var_os("HAPD_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with HAPD_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        got,
        want,
        "{name}: trace differs from {} (HAPD_BLESS=1 accepts it)",
        path.display()
    );
}

/// The traces of every simulation a test builds, each under a header line
/// `{"scenario": "<title>"}`, compared with one golden file: no sub-scenario goes unchecked.
#[derive(Default)]
struct Scenarios {
    lines: Vec<String>,
}

impl Scenarios {
    /// Appends the trace of `s` under the header `title` (plain text: no quote or backslash).
    fn add(&mut self, title: &str, s: &Sim) {
        self.lines.push(format!("{{\"scenario\": \"{title}\"}}"));
        self.lines.extend_from_slice(&s.trace);
    }

    /// Compares every trace added with `golden/<name>.jsonl` (see [`check_golden`]).
    fn golden(&self, name: &str) {
        check_golden(name, &self.lines);
    }
}

fn pair(interval_cs: u16) -> Sim {
    let mut s = Sim::new(vec![cfg(0, 110, interval_cs), cfg(1, 100, interval_cs)]);
    s.start(0);
    s.start(1);
    s
}

#[test]
fn timers_follow_rfc_5798_section_6_1() {
    let i = Instance::new(cfg(1, 100, 100));
    // Skew_Time = (256 - 100) x 1 s / 256 = 609.375 ms; Master_Down = 3 s + skew.
    assert_eq!(i.skew_time(), Duration::from_micros(609_375));
    assert_eq!(i.master_down_interval(), Duration::from_micros(3_609_375));
    let fast = Instance::new(cfg(1, 100, 1));
    assert_eq!(
        fast.master_down_interval(),
        Duration::from_nanos(30_000_000 + 6_093_750)
    );
    let v2 = Instance::new(Config {
        version: 2,
        ..cfg(1, 200, 100)
    });
    assert_eq!(v2.skew_time(), Duration::from_micros(218_750));
}

#[test]
fn first_election_the_higher_priority_wins() {
    let mut s = pair(100);
    assert_eq!(s.masters(), Vec::<usize>::new(), "both start as backup");
    s.run_until(ms(10_000));
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.vip_holders(), vec![0]);
    // A's Master_Down_Interval: 3 s + (146/256) s.
    // 3 s + 146/256 s = 3.5703125 s.
    assert_eq!(
        s.became(0, State::Master),
        Some((Duration::from_nanos(3_570_312_500), Reason::MasterDown))
    );
    assert_eq!(s.nodes[1].inst.state(), State::Backup);
    // One advert a second from then on.
    let adverts = s.nodes[0].sent.len();
    assert!((7..=8).contains(&adverts), "{adverts}");
    s.golden("first_election_the_higher_priority_wins");
}

#[test]
fn host_crash_backup_takes_over_after_master_down_interval() {
    let mut s = pair(1); // 10 ms adverts
    s.run_until(ms(1_000));
    assert_eq!(s.masters(), vec![0]);
    let last = s.nodes[0].sent.last().unwrap().0;
    s.crash(0);
    s.run_until(ms(2_000));
    assert_eq!(s.masters(), vec![1]);
    let (t, why) = s.became(1, State::Master).unwrap();
    assert_eq!(why, Reason::MasterDown);
    // 3 x 10 ms + (156/256) x 10 ms after A's last advert: 36.09 ms (the RFC floor).
    assert_eq!(t - last, Duration::from_nanos(36_093_750));
    s.golden("host_crash_backup_takes_over_after_master_down_interval");
}

#[test]
fn graceful_stop_resigns_with_priority_0_and_the_backup_takes_over_after_skew() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    s.stop(0);
    assert_eq!(
        s.nodes[0].sent.last(),
        Some(&(ms(1_000), 0)),
        "priority 0 on stop"
    );
    assert!(
        s.nodes[0].vips,
        "A holds the addresses until a successor is heard"
    );
    s.run_until(ms(1_100));
    // A planned move: A hands its addresses to B, whose guard sends A's open flows back to A.
    assert!(!s.nodes[0].vips);
    assert_eq!(s.nodes[0].moved, Some(ip4(198, 18, 0, 2)));
    assert_eq!(s.nodes[1].moved, Some(ip4(198, 18, 0, 1)));
    let (t, why) = s.became(1, State::Master).unwrap();
    assert_eq!(why, Reason::MasterResigned);
    assert_eq!(
        t - ms(1_000),
        Duration::from_nanos(6_093_750),
        "Skew_Time of priority 100"
    );
    s.golden("graceful_stop_resigns_with_priority_0_and_the_backup_takes_over_after_skew");
}

#[test]
fn preempt_back_preempt_off_and_preempt_delay() {
    let mut scenarios = Scenarios::default();
    // Preempt on: A comes back and takes over at B's first advert.
    let mut s = pair(1);
    s.run_until(ms(1_000));
    s.crash(0);
    s.run_until(ms(2_000));
    assert_eq!(s.masters(), vec![1]);
    s.start(0);
    s.run_until(ms(2_011));
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.became(0, State::Master).unwrap().1, Reason::Preempt);
    assert_eq!(
        s.became(1, State::Backup).unwrap().1,
        Reason::HigherPriorityMaster
    );
    assert_eq!(s.vip_holders(), vec![0]);
    // Preempting a live master is a planned move: B's flows stay at B while they drain.
    assert_eq!(s.nodes[0].moved, Some(ip4(198, 18, 0, 2)));
    assert_eq!(s.nodes[1].moved, Some(ip4(198, 18, 0, 1)));
    scenarios.add("preempt on", &s);

    // Preempt off: A comes back and stays backup.
    let mut s = Sim::new(vec![
        Config {
            preempt: false,
            ..cfg(0, 110, 1)
        },
        cfg(1, 100, 1),
    ]);
    s.start(1);
    s.run_until(ms(500));
    s.start(0);
    s.run_until(ms(2_000));
    assert_eq!(s.masters(), vec![1]);
    scenarios.add("preempt off", &s);

    // Preempt delay 300 ms: A waits that long after its start-up, then takes over.
    let mut s = Sim::new(vec![
        Config {
            preempt_delay: ms(300),
            ..cfg(0, 110, 1)
        },
        cfg(1, 100, 1),
    ]);
    s.start(1);
    s.run_until(ms(500));
    s.start(0);
    s.run_until(ms(790));
    assert_eq!(s.masters(), vec![1], "still inside the delay");
    s.run_until(ms(900));
    assert_eq!(s.masters(), vec![0]);
    let t = s.became(0, State::Master).unwrap().0;
    assert!(t >= ms(800) && t <= ms(811), "{t:?}");
    scenarios.add("preempt delay 300 ms", &s);
    scenarios.golden("preempt_back_preempt_off_and_preempt_delay");
}

#[test]
fn equal_priority_masters_the_higher_address_wins() {
    // Three equal routers that cannot hear each other all become master; when the segment
    // heals, the tie is broken by the primary address (RFC 5798 section 6.4.3).
    let mut s = Sim::new(vec![cfg(0, 100, 1), cfg(1, 100, 1), cfg(2, 100, 1)]);
    s.cut.extend([0, 1, 2]);
    for i in 0..3 {
        s.start(i);
    }
    s.run_until(ms(500));
    assert_eq!(s.masters(), vec![0, 1, 2]);
    s.cut.clear();
    s.run_until(ms(520));
    assert_eq!(s.masters(), vec![2], "198.18.0.3 has the highest address");
    assert_eq!(s.vip_holders(), vec![2]);
    s.golden("equal_priority_masters_the_higher_address_wins");
}

#[test]
fn three_nodes_fail_over_in_priority_order() {
    let mut s = Sim::new(vec![cfg(0, 150, 1), cfg(1, 120, 1), cfg(2, 100, 1)]);
    for i in 0..3 {
        s.start(i);
    }
    s.run_until(ms(500));
    assert_eq!(s.masters(), vec![0]);
    s.crash(0);
    s.run_until(ms(1_000));
    assert_eq!(
        s.masters(),
        vec![1],
        "the next priority takes over, not the lowest"
    );
    s.crash(1);
    s.run_until(ms(1_500));
    assert_eq!(s.masters(), vec![2]);
    s.golden("three_nodes_fail_over_in_priority_order");
}

#[test]
fn the_owner_is_master_at_once() {
    let mut s = Sim::new(vec![cfg(0, 255, 100), cfg(1, 200, 100)]);
    s.start(1);
    s.run_until(ms(100));
    s.start(0);
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(
        s.became(0, State::Master).unwrap(),
        (ms(100), Reason::Startup)
    );
    assert_eq!(s.nodes[1].inst.state(), State::Backup);
    s.golden("the_owner_is_master_at_once");
}

#[test]
fn a_v3_backup_adopts_the_masters_interval() {
    // B is configured for 1 s but A advertises every 10 ms: B detects A's death in ~36 ms.
    let mut s = Sim::new(vec![cfg(0, 110, 1), cfg(1, 100, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(ms(5_000));
    assert_eq!(s.masters(), vec![0]);
    let last = s.nodes[0].sent.last().unwrap().0;
    s.crash(0);
    s.run_until(ms(6_000));
    let t = s.became(1, State::Master).unwrap().0;
    assert_eq!(t - last, Duration::from_nanos(36_093_750));
}

#[test]
fn a_v2_advert_with_another_interval_is_ignored() {
    let mut i = Instance::new(Config {
        version: 2,
        ..cfg(1, 100, 100)
    });
    i.handle_startup(ms(0));
    while i.poll_action().is_some() {}
    i.handle_advert(
        ms(10),
        Heard {
            src: ip4(198, 18, 0, 1),
            priority: 110,
            interval: Centisecs(200),
        },
    );
    assert!(matches!(i.poll_action(), Some(Action::Ignored { .. })));
    assert_eq!(
        i.master_down_deadline(),
        Some(Duration::from_micros(3_609_375)),
        "timer untouched"
    );
}

#[test]
fn a_lowered_priority_hands_over_within_one_advert() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    assert_eq!(s.masters(), vec![0]);
    // The proxy on A turns unhealthy: weight -50 makes A 60 < B 100. A has never heard B, so
    // it advertises 60 at once and B, with preemption, takes over on that advert.
    s.at(ms(1_000), 0, |i, t| i.set_priority_delta(t, -50));
    assert_eq!(s.masters(), vec![1]);
    assert_eq!(
        s.became(1, State::Master),
        Some((ms(1_000), Reason::Preempt))
    );
    assert_eq!(s.vip_holders(), vec![1]);
    // Healthy again: A (110) preempts B at B's next advert.
    s.at(ms(1_500), 0, |i, t| i.set_priority_delta(t, 0));
    s.run_until(ms(1_511));
    assert_eq!(s.masters(), vec![0]);
    // Unhealthy again 10 ms after A preempted B: A heard B's priority (100 > 60) within 4 x
    // B's interval, so it resigns with priority 0.
    s.at(ms(1_520), 0, |i, t| i.set_priority_delta(t, -50));
    assert_eq!(s.nodes[0].sent.last(), Some(&(ms(1_520), 0)));
    assert_eq!(
        s.became(0, State::Backup).unwrap(),
        (ms(1_520), Reason::Resigned)
    );
    s.run_until(ms(1_530));
    assert_eq!(s.masters(), vec![1], "B took over after Skew_Time");
    s.golden("a_lowered_priority_hands_over_within_one_advert");
}

/// A master remembers a peer it preempted only while the peer could still be alive as far as
/// VRRP can tell: a minute after the peer's host died, a lowered priority must not make the
/// master resign to it (the addresses would go unserved for a Master_Down_Interval, until the
/// master took them back).
#[test]
fn a_lowered_priority_does_not_resign_to_a_peer_that_died_long_ago() {
    // B is master when A (higher) starts: A preempts it at B's next advert and hears B's 100.
    let mut s = Sim::new(vec![cfg(0, 110, 1), cfg(1, 100, 1)]);
    s.start(1);
    s.run_until(ms(500));
    s.start(0);
    s.run_until(ms(1_000));
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.became(0, State::Master).unwrap().1, Reason::Preempt);
    // B's host dies; a minute later A's proxy turns unhealthy: A 60 < B's old 100.
    s.crash(1);
    let transitions = s.nodes[0].transitions.len();
    s.at(ms(61_000), 0, |i, t| i.set_priority_delta(t, -50));
    assert!(
        s.nodes[0].sent.contains(&(ms(61_000), 60)),
        "A advertises its new priority at once instead of resigning"
    );
    s.run_until(ms(62_000));
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.nodes[0].transitions.len(), transitions, "no transition");
    let release = r#""node": "A", "vips": "release""#;
    assert!(
        !s.trace.iter().any(|l| l.contains(release)),
        "the addresses were never released"
    );
    assert_eq!(s.vip_holders(), vec![0]);
    s.golden("a_lowered_priority_does_not_resign_to_a_peer_that_died_long_ago");
}

/// The bound chosen in `Peer::alive_at`: a peer counts for 4 x its own advert interval after
/// its last advert, and is dropped from the table once it no longer counts.
#[test]
fn a_peer_counts_for_four_of_its_advert_intervals() {
    let b = Heard {
        src: ip4(198, 18, 0, 2),
        priority: 100,
        interval: Centisecs(1),
    };
    for (lowered_at, resigns) in [(ms(139), true), (ms(140), false)] {
        let mut a = Instance::new(cfg(0, 110, 1));
        a.handle_startup(ms(0));
        // B (100, 10 ms adverts) is master: A preempts it at its advert.
        a.handle_advert(ms(100), b);
        assert_eq!(a.state(), State::Master);
        a.set_priority_delta(lowered_at, -50);
        assert_eq!(a.state() == State::Backup, resigns, "{lowered_at:?}");
        assert_eq!(a.peers.len(), usize::from(resigns), "{lowered_at:?}");
    }
}

/// RFC 5798 section 6.4.3: a master that sends priority 0 is leaving; it no longer counts as a
/// router to resign to, even while its last advert would still count.
#[test]
fn a_peer_that_resigned_is_not_resigned_to() {
    let b = |priority| Heard {
        src: ip4(198, 18, 0, 2),
        priority,
        interval: Centisecs(100),
    };
    let mut a = Instance::new(cfg(0, 110, 100));
    a.handle_startup(ms(0));
    a.handle_advert(ms(100), b(120));
    assert_eq!(a.state(), State::Backup);
    // B stops gracefully: A takes over after its Skew_Time.
    a.handle_advert(ms(200), b(0));
    a.handle_timeout(a.poll_timeout().unwrap());
    assert_eq!(a.state(), State::Master);
    while a.poll_action().is_some() {}
    // 800 ms after B's last advert at 120, well inside its 4 s: only its priority 0 removed it.
    a.set_priority_delta(ms(1_000), -50);
    let actions: Vec<Action> = std::iter::from_fn(|| a.poll_action()).collect();
    assert_eq!(actions, vec![Action::SendAdvert { priority: 60 }]);
    assert_eq!(a.state(), State::Master);
}

#[test]
fn link_down_is_fault_and_link_up_rejoins() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    s.cut.insert(0);
    s.at(ms(1_000), 0, |i, t| i.set_link(t, false));
    assert_eq!(s.nodes[0].inst.state(), State::Fault);
    assert!(!s.nodes[0].vips, "VIPs released on fault");
    assert!(
        s.nodes[0].sent.iter().all(|(t, _)| *t < ms(1_000)),
        "nothing sent on a dead link"
    );
    s.run_until(ms(1_100));
    assert_eq!(s.masters(), vec![1]);
    s.cut.remove(&0);
    s.at(ms(1_100), 0, |i, t| i.set_link(t, true));
    assert_eq!(
        s.became(0, State::Backup).unwrap(),
        (ms(1_100), Reason::Recovered)
    );
    s.run_until(ms(1_200));
    assert_eq!(s.masters(), vec![0], "and preempts back");
    s.golden("link_down_is_fault_and_link_up_rejoins");
}

#[test]
fn a_track_fault_resigns_and_recovers() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    s.at(ms(1_000), 0, |i, t| i.set_track_fault(t, true));
    assert_eq!(s.nodes[0].inst.state(), State::Fault);
    assert_eq!(
        s.nodes[0].sent.last(),
        Some(&(ms(1_000), 0)),
        "resigns: the link still works"
    );
    s.run_until(ms(1_010));
    assert_eq!(s.masters(), vec![1]);
    s.at(ms(1_500), 0, |i, t| i.set_track_fault(t, false));
    s.run_until(ms(1_600));
    assert_eq!(s.masters(), vec![0]);
    s.golden("a_track_fault_resigns_and_recovers");
}

#[test]
fn split_brain_heals_within_one_advert_interval() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    // Cut the segment between them: both become master.
    s.cut.insert(0);
    s.cut.insert(1);
    s.run_until(ms(2_000));
    assert_eq!(s.masters(), vec![0, 1]);
    // Heal.
    s.cut.clear();
    s.run_until(ms(2_010));
    assert_eq!(s.masters(), vec![0], "one master after one advert interval");
    assert_eq!(s.vip_holders(), vec![0]);
    assert!(
        s.nodes[0].reannounced >= 1,
        "the winner re-announced its VIPs"
    );
    assert_eq!(
        s.became(1, State::Backup).unwrap().1,
        Reason::HigherPriorityMaster
    );
    s.golden("split_brain_heals_within_one_advert_interval");
}

#[test]
fn shutdown_of_a_backup_sends_nothing() {
    let mut s = pair(100);
    s.run_until(ms(10_000));
    let sent = s.nodes[1].sent.len();
    s.stop(1);
    assert_eq!(s.nodes[1].sent.len(), sent);
    assert_eq!(s.became(1, State::Initialize).unwrap().1, Reason::Shutdown);
    assert_eq!(s.masters(), vec![0]);
}

#[test]
fn the_master_refreshes_its_arp_announcements() {
    let mut s = Sim::new(vec![
        Config {
            garp_refresh: Some(ms(1_000)),
            ..cfg(0, 110, 10)
        },
        cfg(1, 100, 10),
    ]);
    s.start(0);
    s.start(1);
    s.run_until(ms(500));
    assert_eq!(s.masters(), vec![0]);
    let became = s.became(0, State::Master).unwrap().0;
    s.run_until(became + ms(3_500));
    assert_eq!(
        s.nodes[0].reannounced, 3,
        "one re-announcement per second of mastership"
    );
    assert_eq!(s.nodes[1].reannounced, 0, "never from a backup");
}

#[test]
fn fencing_before_taking_over_from_a_silent_master() {
    let mut scenarios = Scenarios::default();
    let mut s = Sim::new(vec![
        cfg(0, 110, 1),
        Config {
            fence: true,
            ..cfg(1, 100, 1)
        },
    ]);
    s.start(0);
    s.start(1);
    s.run_until(ms(500));
    s.crash(0);
    s.run_until(ms(1_000));
    assert_eq!(s.nodes[1].fences, 1, "fence asked for once");
    assert_eq!(
        s.masters(),
        Vec::<usize>::new(),
        "no takeover before the fence answers"
    );
    // The fence fails: stay backup, ask again after another Master_Down_Interval.
    s.at(ms(1_000), 1, |i, t| i.handle_fence_result(t, false));
    assert_eq!(s.masters(), Vec::<usize>::new());
    s.run_until(ms(1_100));
    assert_eq!(s.nodes[1].fences, 2);
    s.at(ms(1_100), 1, |i, t| i.handle_fence_result(t, true));
    assert_eq!(s.masters(), vec![1]);
    assert_eq!(
        s.became(1, State::Master).unwrap(),
        (ms(1_100), Reason::MasterDown)
    );
    scenarios.add("a silent master: fenced, the fence fails, fenced again", &s);

    // A graceful stop needs no fence; an advert during fencing cancels it.
    let mut s = Sim::new(vec![
        cfg(0, 110, 1),
        Config {
            fence: true,
            ..cfg(1, 100, 1)
        },
    ]);
    s.start(0);
    s.start(1);
    s.run_until(ms(500));
    s.stop(0);
    s.run_until(ms(600));
    assert_eq!((s.masters(), s.nodes[1].fences), (vec![1], 0));
    s.start(0); // preempts back
    s.run_until(ms(700));
    assert_eq!(s.masters(), vec![0]);
    s.cut.insert(0);
    s.run_until(ms(800));
    assert_eq!(s.nodes[1].fences, 1);
    s.cut.clear();
    s.run_until(ms(820)); // A's adverts reach B again
    s.at(ms(820), 1, |i, t| i.handle_fence_result(t, true));
    assert_eq!(s.masters(), vec![0], "the late fence result is ignored");
    scenarios.add("a graceful stop needs no fence; an advert cancels one", &s);
    scenarios.golden("fencing_before_taking_over_from_a_silent_master");
}

#[test]
fn split_brain_the_winner_reannounces_even_when_its_advert_arrives_first() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    s.cut.extend([0, 1]);
    s.run_until(ms(2_000));
    assert_eq!(s.masters(), vec![0, 1]);
    // Heal, and let A's advert reach B before B advertises again.
    s.cut.clear();
    let before = s.nodes[0].reannounced;
    s.at(s.now, 0, |i, t| {
        i.handle_timeout(t + ms(10)); // force A's next advert now
    });
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(
        s.nodes[0].reannounced,
        before + 1,
        "B told A, and A re-announced"
    );
    assert_eq!(s.vip_holders(), vec![0]);
    s.golden("split_brain_the_winner_reannounces_even_when_its_advert_arrives_first");
}

#[test]
fn a_drill_steps_down_and_hands_back_and_a_dead_peer_only_costs_master_down() {
    let mut s = pair(1);
    s.run_until(ms(1_000));
    assert_eq!(s.masters(), vec![0]);
    s.at(ms(1_000), 0, |i, t| i.set_stepped_down(t, true));
    assert_eq!(s.nodes[0].sent.last(), Some(&(ms(1_000), 0)), "resigns");
    assert!(s.nodes[0].vips, "held until the successor is heard");
    s.run_until(ms(1_100));
    assert_eq!(s.masters(), vec![1]);
    assert_eq!(s.vip_holders(), vec![1]);
    assert_eq!(s.nodes[0].moved, Some(ip4(198, 18, 0, 2)), "handed over");
    assert_eq!(
        s.nodes[1].moved,
        Some(ip4(198, 18, 0, 1)),
        "flows of A stay at A"
    );
    assert_eq!(
        s.became(1, State::Master).unwrap(),
        (
            ms(1_000) + Duration::from_nanos(6_093_750),
            Reason::MasterResigned
        )
    );
    assert_eq!(s.became(0, State::Backup).unwrap().1, Reason::SteppedDown);
    assert_eq!(s.nodes[0].inst.effective_priority(), 1);
    // Stepped down, A does not preempt B for as long as the drill lasts.
    s.run_until(ms(3_000));
    assert_eq!(s.masters(), vec![1]);
    // Handed back: A (110, preempt) takes over at B's next advert.
    s.at(ms(3_000), 0, |i, t| i.set_stepped_down(t, false));
    s.run_until(ms(3_011));
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.became(0, State::Master).unwrap().1, Reason::Preempt);
    assert_eq!(s.vip_holders(), vec![0]);
    assert_eq!(
        s.nodes[0].moved,
        Some(ip4(198, 18, 0, 2)),
        "handed back: B's flows stay at B"
    );
    assert_eq!(s.nodes[1].moved, Some(ip4(198, 18, 0, 1)));

    // The peer is dead: the stepped-down master waits one Master_Down_Interval (3 x 10 ms +
    // Skew_Time of priority 1) and takes the addresses back.
    s.crash(1);
    s.at(ms(4_000), 0, |i, t| i.set_stepped_down(t, true));
    assert_eq!(s.vip_holders(), vec![0], "held: nobody takes over");
    s.run_until(ms(4_100));
    assert_eq!(s.masters(), vec![0]);
    let (t, why) = s.became(0, State::Master).unwrap();
    assert_eq!(why, Reason::MasterDown);
    assert_eq!(
        s.nodes[0].moved, None,
        "a master that fell silent keeps no flows"
    );
    assert_eq!(t - ms(4_000), Duration::from_nanos(39_960_937));
    s.golden("a_drill_steps_down_and_hands_back_and_a_dead_peer_only_costs_master_down");
}

/// RFC 5798 section 6.4.3, as the I/O layer meets it: a master whose timer is handled late
/// keeps its cadence (the next advert is due one interval after the last was due, not after
/// it was sent), and one handled more than an interval late starts afresh instead of sending
/// the missed adverts in a burst.
#[test]
fn adverts_keep_their_cadence_when_handled_late() {
    let mut i = Instance::new(cfg(0, 255, 1)); // owner: master at start-up, 10 ms adverts
    i.handle_startup(ms(0));
    assert_eq!(i.state(), State::Master);
    assert_eq!(i.advert_period(), Some(ms(10)));
    let sends = |i: &mut Instance| {
        std::iter::from_fn(|| i.poll_action())
            .filter(|a| matches!(a, Action::SendAdvert { .. }))
            .count()
    };
    let _ = sends(&mut i);
    let first = i.poll_timeout().unwrap();
    // Handled 3 ms late: one advert, and the next one stays on the grid.
    i.handle_timeout(first + ms(3));
    assert_eq!(sends(&mut i), 1);
    assert_eq!(i.poll_timeout(), Some(first + ms(10)));
    // Handled 25 ms late (two whole intervals missed): one advert, then a fresh interval.
    let due = first + ms(10);
    i.handle_timeout(due + ms(25));
    assert_eq!(sends(&mut i), 1, "no burst for the missed adverts");
    assert_eq!(i.poll_timeout(), Some(due + ms(25) + ms(10)));
}

/// A hitless upgrade: each engine is replaced by one resumed from its snapshot after a gap
/// (the handover between the two processes). No transition, no resignation, no election; the
/// master's adverts keep their cadence (the one due during the gap goes out at once), and a
/// peer heard before the upgrade still counts after it.
#[test]
fn an_engine_resumed_from_its_snapshot_carries_on_without_an_election() {
    let mut s = Sim::new(vec![cfg(0, 200, 1), cfg(1, 100, 1)]);
    s.start(0);
    s.start(1);
    s.run_until(ms(200));
    assert_eq!(s.masters(), vec![0]);
    let before: Vec<usize> = s.nodes.iter().map(|n| n.transitions.len()).collect();
    for (i, gap) in [(0usize, ms(4)), (1, ms(15))] {
        let t = s.now;
        let snap = s.nodes[i]
            .inst
            .snapshot()
            .expect("a settled engine hands over");
        // The old process stops here; the new one resumes after `gap`.
        s.nodes[i].running = false;
        s.run_until(t + gap);
        let c = s.nodes[i].inst.config().clone();
        let resumed = Instance::resume(c, &snap);
        assert_eq!(
            resumed.snapshot().unwrap(),
            snap,
            "the snapshot round-trips"
        );
        s.nodes[i].inst = resumed;
        s.nodes[i].running = true;
        s.run_until(t + ms(300));
    }
    let after: Vec<usize> = s.nodes.iter().map(|n| n.transitions.len()).collect();
    assert_eq!(before, after, "no state changed on either node");
    assert_eq!(s.masters(), vec![0]);
    assert!(
        s.nodes[0].sent.iter().all(|(_, p)| *p == 200),
        "never resigned"
    );
    // Adverts every 10 ms; the gap of 4 ms delays at most one by its length.
    let gaps: Vec<Duration> = s.nodes[0]
        .sent
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|d| *d > ms(10))
        .collect();
    assert!(gaps.iter().all(|d| *d <= ms(14)), "advert gaps {gaps:?}");
}

#[test]
fn an_engine_that_is_moving_or_fencing_is_not_handed_over() {
    let mut s = Sim::new(vec![cfg(0, 200, 1), cfg(1, 100, 1)]);
    assert!(s.nodes[0].inst.snapshot().is_err(), "not started");
    s.start(0);
    s.start(1);
    s.run_until(ms(200));
    s.at(ms(200), 0, |i, t| i.handle_shutdown(t));
    assert!(s.nodes[0].inst.snapshot().is_err(), "resigned");
}

/// The guard's master-down timer in the kernel (`proxy_common::master_down`) re-arms exactly
/// as the engine: for each version, local priority, advertised priority and interval, where
/// the kernel re-arms, the engine's deadline is the advert's time plus the kernel's duration,
/// to the nanosecond; where the kernel leaves its timer alone, the engine takes over at once
/// (a lower priority, preempting) or ignores the advert (a v2 interval that differs).
#[test]
fn the_kernel_timer_rearms_exactly_as_the_engine() {
    use proxy_common::{maps::TimerCfg, master_down::rearm_ns};
    let src = ip4(198, 18, 0, 9);
    let mut checked = 0;
    for version in [2u8, 3] {
        let owns: &[u16] = if version == 2 {
            &[100, 300]
        } else {
            &[1, 7, 100]
        };
        for &own in owns {
            for local in [1u8, 50, 100, 200, 254] {
                for theirs in [0u8, 1, 50, 100, 150, 254, 255] {
                    for interval in [1u16, 7, 100, 300] {
                        let mut i = Instance::new(Config {
                            version,
                            ..cfg(1, local, own)
                        });
                        i.handle_startup(ms(0));
                        while i.poll_action().is_some() {}
                        assert_eq!(i.state(), State::Backup);
                        let heard = |priority| Heard {
                            src,
                            priority,
                            interval: Centisecs(interval),
                        };
                        // A resigning master was heard as master first (its interval adopted).
                        if theirs == 0 {
                            i.handle_advert(ms(500), heard(255));
                        }
                        let before = i.master_down_deadline();
                        let at = ms(1000);
                        i.handle_advert(at, heard(theirs));
                        let kernel = rearm_ns(
                            &TimerCfg {
                                on: 1,
                                priority: i.effective_priority(),
                                version,
                                own_interval_cs: own,
                                ..TimerCfg::default()
                            },
                            theirs,
                            interval,
                        );
                        let case = format!(
                            "v{version} own {own} local {local} theirs {theirs} interval {interval}"
                        );
                        match kernel {
                            Some(ns) => {
                                assert_eq!(i.state(), State::Backup, "{case}");
                                assert_eq!(
                                    i.master_down_deadline(),
                                    Some(at + Duration::from_nanos(ns)),
                                    "{case}"
                                );
                            }
                            None => assert!(
                                i.state() == State::Master || i.master_down_deadline() == before,
                                "{case}: the kernel leaves its timer, the engine moved its own"
                            ),
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 7 * 4 * 5);
}
