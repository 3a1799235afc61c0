//! A timerfd that tokio waits on: the engines' deadline timer (`daemon`) and the watch on the
//! wall clock (`dataplane::xdp`) share it.
use std::os::fd::{AsFd as _, AsRawFd, RawFd};

use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
use tokio::io::unix::AsyncFd;

/// `AsyncFd` wants `AsRawFd`; nix's `TimerFd` has `AsFd`.
struct Raw(TimerFd);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A non-blocking timerfd on `clock`, registered with the runtime for readability.
pub struct AsyncTimerFd {
    fd: AsyncFd<Raw>,
}

impl AsyncTimerFd {
    /// Must run inside a tokio runtime.
    pub fn new(clock: ClockId) -> std::io::Result<AsyncTimerFd> {
        let fd = TimerFd::new(clock, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: `Raw` owns the timerfd and always returns that same, open descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Raw(fd), tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncTimerFd { fd })
    }

    /// The timer, to arm or disarm.
    pub fn timer(&self) -> &TimerFd {
        &self.fd.get_ref().0
    }

    /// Waits until the timer expires and reads it: the number of expiries since the last read,
    /// or the error the read gave (`ECANCELED`: a `TFD_TIMER_CANCEL_ON_SET` timer saw its clock
    /// set). Reading is what re-arms a periodic timer (the kernel forwards it when it is read,
    /// not when it fires); after a read the readiness is cleared, so the next wait is for the
    /// next expiry's edge, not another read to learn that the fd is empty.
    pub async fn wait(&self) -> std::io::Result<Result<u64, nix::errno::Errno>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut ticks = [0u8; 8];
            match nix::unistd::read(&self.fd.get_ref().0, &mut ticks) {
                Ok(8) => {
                    guard.clear_ready();
                    return Ok(Ok(u64::from_ne_bytes(ticks)));
                }
                Err(nix::errno::Errno::EAGAIN) | Ok(_) => guard.clear_ready(),
                Err(e) => {
                    guard.clear_ready();
                    return Ok(Err(e));
                }
            }
        }
    }
}
