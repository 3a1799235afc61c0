//! A daemon started in a lab host: its output lines collected as they come, waited on by
//! pattern, stopped with a signal.
use std::{
    io::{BufRead, BufReader},
    process::{Child, ExitStatus},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// A running process with its stdout and stderr lines collected in the background.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    /// Takes over `child` (spawned with piped stdout and stderr).
    pub fn new(name: &str, mut child: Child) -> Proc {
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, lines.clone());
        }
        Proc {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lines containing `needle`.
    pub fn grep(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until `count` lines contain `needle`; fails (with the output) after `timeout` or
    /// when the process exits first.
    pub fn wait_for(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if self.grep(needle).len() >= count {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50)); // let the readers finish
                bail!(
                    "{} exited ({st}) before printing {needle:?}:\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            if Instant::now() > end {
                bail!(
                    "{} did not print {needle:?} {count}x within {timeout:?}:\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Waits up to `timeout` for the process to exit by itself (then kills it and fails).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50)); // let the readers finish
                return Ok(st);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                bail!(
                    "{} still running after {timeout:?}:\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn stop(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> anyhow::Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // `ip netns exec` execs the command, so the child is the daemon itself.
        nix::sys::signal::kill(pid, signal).with_context(|| format!("signalling {}", self.name))?;
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                return Ok(st);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                bail!(
                    "{} still running {timeout:?} after {signal}:\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}
