//! The backup's master-down timer in the kernel: what the XDP guard does with a valid advert
//! of an instance whose daemon sleeps ([`TimerCfg::on`]).
//!
//! The engine (`vrrp/fsm.rs` in hapd) decides; this is the part of its rule that the guard
//! can apply without it, so that steady adverts from the master never wake the daemon: an
//! advert from a master at least as good as this node re-arms the timer for the
//! Master_Down_Interval the engine computes (RFC 5798 section 6.1: 3 x the master's interval
//! plus Skew_Time from this node's priority; RFC 3768 for v2: this node's interval and a
//! skew in 1/256 s), a resigning master's (priority 0) arms it for Skew_Time, and anything
//! else leaves it alone (a lower-priority master wakes the daemon through the guard's change
//! events, and the engine decides). When the timer expires, the guard posts one event and the
//! engine takes it as input. Tests in hapd prove that [`rearm_ns`] equals the engine's
//! timers for every priority, interval and version.
use crate::maps::TimerCfg;

const NS_PER_CS: u64 = 10_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// How long from now the master-down timer must run after a valid advert with `priority` and
/// `interval_cs` (centiseconds; v2 seconds x 100), or `None` to leave it as it is.
#[inline(always)]
pub fn rearm_ns(cfg: &TimerCfg, priority: u8, interval_cs: u16) -> Option<u64> {
    if cfg.on == 0 || cfg.priority == 0 {
        return None;
    }
    // v2 adverts with another interval are ignored by the engine (RFC 3768 section 7.1), and
    // a v2 backup keeps its own interval; a v3 backup adopts the master's.
    let interval_cs = if cfg.version == 2 {
        if interval_cs != cfg.own_interval_cs {
            return None;
        }
        cfg.own_interval_cs
    } else {
        interval_cs
    };
    let interval_ns = interval_cs as u64 * NS_PER_CS;
    let p = 256 - cfg.priority as u64;
    let skew_ns = if cfg.version == 2 {
        NS_PER_S * p / 256
    } else {
        interval_ns * p / 256
    };
    if priority == 0 {
        return Some(skew_ns);
    }
    if priority < cfg.priority {
        return None;
    }
    Some(3 * interval_ns + skew_ns)
}
