//! Fencing: the operator's command that makes sure a silent master is gone before a backup
//! takes its addresses (`fence` key).
use std::{process::Stdio, time::Duration};

use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long a fence command may run; past it the fence counts as failed.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `argv` for router `index` (`name` in logs) in the background; `(index, success)` comes
/// back on `tx`.
pub(super) fn spawn(
    index: usize,
    name: String,
    argv: Vec<String>,
    tx: mpsc::Sender<(usize, bool)>,
) {
    info!("{name}: the master fell silent; fencing it before taking over: {argv:?}");
    tokio::spawn(async move {
        let ok = match argv.split_first() {
            Some((prog, args)) => {
                let child = crate::config::scripts::command(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .spawn();
                match child {
                    Ok(mut c) => match tokio::time::timeout(FENCE_TIMEOUT, c.wait()).await {
                        Ok(Ok(st)) => st.success(),
                        Ok(Err(e)) => {
                            warn!("{name}: fence: {e}");
                            false
                        }
                        Err(_) => {
                            let _ = c.kill().await;
                            false
                        }
                    },
                    Err(e) => {
                        warn!("{name}: cannot run fence {prog:?}: {e}");
                        false
                    }
                }
            }
            None => false,
        };
        if !ok {
            warn!("{name}: fencing failed; staying backup and trying again");
        }
        let _ = tx.send((index, ok)).await;
    });
}
