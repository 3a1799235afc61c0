//! Notify commands and webhooks: on every transition of an instance, the configured argv runs
//! with STATE, the instance name and the previous state appended, and the webhook (if any) gets
//! a JSON POST. Transitions of one instance are handled in order, one at a time, by a task of
//! its own: a slow or failing command or webhook never delays the election, and never runs
//! concurrently with the next one.
use std::{process::Stdio, time::Duration};

use tokio::sync::mpsc;
use tracing::warn;
use url::Url;

use super::{fsm::State, webhook};

/// How long a notify command may run before it is killed.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// The STATE word notify commands get (keepalived's names; STOP on shutdown).
pub fn state_word(s: State) -> &'static str {
    match s {
        State::Initialize => "STOP",
        State::Backup => "BACKUP",
        State::Master => "MASTER",
        State::Fault => "FAULT",
    }
}

/// The queue of one instance's notifications.
pub struct Notifier {
    tx: mpsc::UnboundedSender<(State, State)>,
}

impl Notifier {
    /// Starts the task that runs `argv` and posts to `hook` for `instance` of node `host`;
    /// None when neither is configured.
    pub fn start(
        host: &str,
        instance: &str,
        argv: &[String],
        hook: Option<Url>,
        timeout: Duration,
    ) -> Option<(Notifier, tokio::task::JoinHandle<()>)> {
        if argv.is_empty() && hook.is_none() {
            return None;
        }
        let (argv, host, instance) = (argv.to_vec(), host.to_owned(), instance.to_owned());
        let (tx, mut rx) = mpsc::unbounded_channel::<(State, State)>();
        let task = tokio::spawn(async move {
            while let Some((from, to)) = rx.recv().await {
                if let Some((prog, args)) = argv.split_first() {
                    run_command(&instance, prog, args, from, to, timeout).await;
                }
                if let Some(url) = &hook {
                    let body = webhook::body(
                        &host,
                        &instance,
                        state_word(to),
                        std::time::SystemTime::now(),
                    );
                    if let Err(e) = webhook::post(url, body, webhook::WEBHOOK_TIMEOUT).await {
                        warn!("{instance}: notify_webhook for {}: {e:#}", state_word(to));
                    }
                }
            }
        });
        Some((Notifier { tx }, task))
    }

    /// Queues a transition; returns at once.
    pub fn send(&self, from: State, to: State) {
        let _ = self.tx.send((from, to));
    }
}

async fn run_command(
    instance: &str,
    prog: &str,
    args: &[String],
    from: State,
    to: State,
    timeout: Duration,
) {
    let mut cmd = crate::config::scripts::command(prog);
    cmd.args(args)
        .args([state_word(to), instance, state_word(from)])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match cmd.spawn() {
        Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(st)) if st.success() => {}
            Ok(Ok(st)) => warn!("{instance}: notify {prog:?} for {}: {st}", state_word(to)),
            Ok(Err(e)) => warn!("{instance}: notify {prog:?}: {e}"),
            Err(_) => {
                warn!("{instance}: notify {prog:?} still running after {timeout:?}, killed");
                let _ = child.kill().await;
            }
        },
        Err(e) => warn!("{instance}: cannot run notify {prog:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_order_one_at_a_time_without_blocking() {
        let dir = std::env::temp_dir().join(format!("hapd-notify-{}", std::process::id()));
        // A run interrupted before its cleanup may have left a log under a reused pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // Each call sleeps a little, then appends its arguments: if two ran at once, or out of
        // order, the lines would interleave or swap.
        let script = dir.join("notify.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nsleep 0.05\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        // Run by /bin/sh, not executed itself: another test's fork may hold the file open for
        // writing a moment longer, and exec would fail with ETXTBSY.
        let (n, task) = Notifier::start(
            "n",
            "VI_1",
            &[
                "/bin/sh".into(),
                script.display().to_string(),
                "--flag".into(),
            ],
            None,
            NOTIFY_TIMEOUT,
        )
        .unwrap();
        n.send(State::Initialize, State::Backup);
        n.send(State::Backup, State::Master);
        n.send(State::Master, State::Fault);
        n.send(State::Fault, State::Initialize);
        // The notify task has had no chance to run yet (this runtime has one thread and we
        // have not yielded): sending returned without waiting for any command.
        assert!(!log.exists(), "queuing never waits for the command");
        drop(n);
        task.await.unwrap();
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got,
            "--flag BACKUP VI_1 STOP\n--flag MASTER VI_1 BACKUP\n--flag FAULT VI_1 MASTER\n--flag STOP VI_1 FAULT\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_and_the_queue_goes_on() {
        let (n, task) = Notifier::start(
            "n",
            "VI_1",
            &["/bin/sleep".into(), "60".into()],
            None,
            Duration::from_millis(100),
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        n.send(State::Initialize, State::Backup);
        n.send(State::Backup, State::Master);
        drop(n);
        task.await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
}
