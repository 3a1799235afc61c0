//! The VRRP loop's one timer: the engines' next deadline as a timerfd.
use std::time::Duration;

use tracing::warn;

/// The engines' next deadline as a timerfd on CLOCK_MONOTONIC, the engines' own clock. Its
/// expiry makes the fd readable. A master's steady cadence is one periodic arming: each advert
/// then costs the wake-up, one read and the send, with no system call to re-arm the timer. A
/// tokio timer moved to an earlier deadline from inside the runtime would make the runtime wake
/// itself once more.
pub(super) struct DeadlineTimer {
    fd: crate::timerfd::AsyncTimerFd,
    /// The next expiry the timer is armed for.
    armed: Option<Duration>,
    /// Its period, when periodic.
    period: Option<Duration>,
}

impl DeadlineTimer {
    pub(super) fn new() -> std::io::Result<DeadlineTimer> {
        Ok(DeadlineTimer {
            fd: crate::timerfd::AsyncTimerFd::new(nix::sys::timerfd::ClockId::CLOCK_MONOTONIC)?,
            armed: None,
            period: None,
        })
    }

    /// Fires at `deadline` (monotonic time), or never; then every `period` after it, if given.
    /// Nothing to do when it is armed so already.
    pub(super) fn arm(&mut self, deadline: Option<Duration>, period: Option<Duration>) {
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if deadline == self.armed && (deadline.is_none() || period == self.period) {
            return;
        }
        let r = match deadline {
            // An all-zero value would disarm the timer; a deadline is never at boot time.
            Some(d) => {
                let at = nix::sys::time::TimeSpec::from_duration(d.max(Duration::from_nanos(1)));
                let exp = match period {
                    Some(p) => {
                        Expiration::IntervalDelayed(at, nix::sys::time::TimeSpec::from_duration(p))
                    }
                    None => Expiration::OneShot(at),
                };
                self.fd
                    .timer()
                    .set(exp, TimerSetTimeFlags::TFD_TIMER_ABSTIME)
            }
            None => self.fd.timer().unset(),
        };
        match r {
            Ok(()) => {
                self.armed = deadline;
                self.period = period.filter(|_| deadline.is_some());
            }
            // Cannot happen with a valid fd; leave it unarmed so the next loop tries again.
            Err(e) => {
                warn!("arming the engines' timer: {e}");
                self.armed = None;
                self.period = None;
            }
        }
    }

    /// Waits for the timer's next expiry.
    pub(super) async fn expired(&mut self) {
        match self.fd.wait().await {
            Ok(Ok(n)) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.armed = match (self.armed, self.period) {
                    (Some(at), Some(p)) => Some(at + p * n.max(1)),
                    _ => None,
                };
            }
            Ok(Err(e)) => {
                warn!("reading the engines' timer: {e}");
                self.armed = None;
            }
            // The runtime lost the fd: nothing will wake us through it again.
            Err(_) => std::future::pending().await,
        }
    }
}
