//! Track scripts (keepalived's `vrrp_script`): a command run every `interval` without a shell,
//! failed when it exits non-zero or outlives `timeout`; `fall` failures in a row make it
//! failed, `rise` successes in a row make it healthy again. It starts healthy.
use std::{process::Stdio, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::TrackScript;

/// A script changed between healthy and failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptState {
    pub name: String,
    pub healthy: bool,
}

/// How a script's weight applies (keepalived semantics): a positive weight is added while the
/// script is healthy, a negative one while it has failed; weight 0 puts the instance in FAULT
/// while it has failed.
pub fn effect(weight: i32, healthy: bool) -> (i32, bool) {
    match (weight, healthy) {
        (0, false) => (0, true),
        (w, true) if w > 0 => (w, false),
        (w, false) if w < 0 => (w, false),
        _ => (0, false),
    }
}

/// Counts results into a state with hysteresis.
#[derive(Debug)]
pub struct Hysteresis {
    fall: u32,
    rise: u32,
    healthy: bool,
    run: u32,
}

impl Hysteresis {
    pub fn new(fall: u32, rise: u32) -> Self {
        Hysteresis {
            fall: fall.max(1),
            rise: rise.max(1),
            healthy: true,
            run: 0,
        }
    }

    /// Adds one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.run >= needed {
            self.healthy = ok;
            self.run = 0;
            return Some(ok);
        }
        None
    }
}

/// Runs `script` until `tx` closes, sending its state changes.
pub fn spawn(script: &TrackScript, tx: mpsc::Sender<ScriptState>) -> tokio::task::JoinHandle<()> {
    let name = script.name.clone();
    let argv = script.command.clone();
    let (interval, timeout) = (script.interval.0, script.timeout.0);
    let mut h = Hysteresis::new(script.fall, script.rise);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = run_once(&name, &argv, timeout).await;
            if let Some(healthy) = h.record(ok) {
                info!(
                    "track script {name}: {}",
                    if healthy { "healthy" } else { "failed" }
                );
                if tx
                    .send(ScriptState {
                        name: name.clone(),
                        healthy,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

async fn run_once(name: &str, argv: &[String], timeout: Duration) -> bool {
    let Some((prog, args)) = argv.split_first() else {
        return false;
    };
    let child = crate::config::scripts::command(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!("track script {name}: cannot run {prog:?}: {e}");
            return false;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(e)) => {
            warn!("track script {name}: {e}");
            false
        }
        Err(_) => {
            warn!("track script {name}: no answer within {timeout:?}, counted as failed");
            let _ = child.kill().await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(false), None, "one failure is not enough");
        assert_eq!(h.record(true), None, "and a success resets the count");
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(false), "two in a row");
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(true), "three successes to rise");
        assert_eq!(h.record(true), None);
    }

    #[test]
    fn weights_as_keepalived() {
        assert_eq!(effect(-20, true), (0, false));
        assert_eq!(effect(-20, false), (-20, false));
        assert_eq!(effect(10, true), (10, false));
        assert_eq!(effect(10, false), (0, false));
        assert_eq!(effect(0, false), (0, true), "weight 0: fault");
        assert_eq!(effect(0, true), (0, false));
    }

    #[tokio::test]
    async fn runs_without_a_shell_and_times_out() {
        assert!(run_once("t", &["/bin/true".into()], Duration::from_secs(5)).await);
        assert!(!run_once("t", &["/bin/false".into()], Duration::from_secs(5)).await);
        assert!(
            !run_once("t", &["/bin/echo hi".into()], Duration::from_secs(5)).await,
            "no shell parsing"
        );
        let t0 = std::time::Instant::now();
        assert!(
            !run_once(
                "t",
                &["/bin/sleep".into(), "5".into()],
                Duration::from_millis(100)
            )
            .await
        );
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
