//! Leaving nothing behind when a run is interrupted (Ctrl-C, SIGTERM, SIGHUP): the suites'
//! guards clean up on the normal path and on errors, but a signal ends the process without
//! running them. A thread waits for those signals; on one it kills the process groups the
//! suites registered (proxy peers run in their own groups) and every other child of the bench,
//! deletes the lab namespaces this process created, and exits.
use std::sync::Mutex;

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A process group to kill if the run is interrupted.
pub fn register(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push(pgid);
    }
}

pub fn unregister(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|&p| p != pgid);
    }
}

/// Starts the thread that waits for SIGINT, SIGTERM and SIGHUP. The signals are caught, not
/// blocked: a blocked signal mask would be inherited by every daemon the suites start.
pub fn install() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            let name = Signal::try_from(sig).map_or("a signal", |s| s.as_str());
            eprintln!("\nbench: {name}: stopping everything the suites started");
            if let Ok(groups) = GROUPS.lock() {
                for &g in groups.iter() {
                    let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
                }
            }
            kill_children();
            delete_namespaces();
            std::process::exit(130);
        })?;
    Ok(())
}

fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(str::trim);
        if parent == Some(me.as_str()) {
            // SIGTERM first: hapd and keepalived remove their VIPs and pins on it.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
}

/// The lab names its namespaces `hl<pid>x...`.
fn delete_namespaces() {
    let prefix = format!("hl{}x", std::process::id());
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}
