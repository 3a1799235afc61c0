//! What the service manager hears, by systemd's notify protocol (the sd-notify crate):
//! `READY=1` once hapd serves (its VRRP instances started or resumed, the proxy listening, the
//! admin endpoint up), `STOPPING=1` when a stop begins, `WATCHDOG=1` from the loop that would
//! wedge (the VRRP loop, or the proxy-only wait) after the proxy's workers answered. Without
//! `NOTIFY_SOCKET` (not under systemd) nothing is sent.
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

fn send(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        warn!("telling the service manager: {e}");
    }
}

pub fn ready() {
    send(NotifyState::Ready);
}

pub fn stopping() {
    send(NotifyState::Stopping);
}

/// `WATCHDOG=1` once every thread of `proxy` (if any) has run a task within 1 s; a thread that
/// does not is logged and no ping goes out (the service manager restarts hapd).
pub async fn watchdog(proxy: Option<&crate::proxy::ProxyView>) {
    let alive = match proxy {
        Some(p) => p.threads_answer(Duration::from_secs(1)).await,
        None => true,
    };
    if alive {
        send(NotifyState::Watchdog);
    } else {
        warn!("a proxy thread did not answer within 1 s: no watchdog ping");
    }
}

/// How often to send `WATCHDOG=1`: half the service manager's `WatchdogSec`, when it has
/// one for this process. `predecessor`: the pid this process succeeds in an upgrade, which
/// the service manager's `WATCHDOG_PID` still names.
pub fn watchdog_period(predecessor: Option<u32>) -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let pid = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let ours = pid.is_none_or(|p| p == std::process::id() || Some(p) == predecessor);
    (ours && usec > 0).then(|| Duration::from_micros(usec) / 2)
}
