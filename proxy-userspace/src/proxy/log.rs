//! Access and error logs, one pair per vhost. Lines go over a bounded channel to one writer
//! thread per file, so a request never waits for the disk; the thread writes whatever has
//! queued in one call. When the disk stalls and the queue is full, lines are dropped and
//! counted (a stalled disk must not grow memory without limit), and the writer says how many
//! once it writes again. `reopen` (SIGUSR1, for logrotate) makes each writer close and reopen
//! its path.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::SystemTime,
};

use tracing::warn;

/// Lines a log file's queue holds before new ones are dropped: a few megabytes of access
/// lines, several seconds of the heaviest load the proxy suite puts on one vhost.
pub const QUEUE_LINES: usize = 16_384;

enum Msg {
    Line(String),
    Reopen,
}

/// A log file written by its own thread. Dropping every handle ends the thread after it has
/// written what was queued.
#[derive(Clone)]
pub struct LogFile {
    tx: mpsc::SyncSender<Msg>,
    /// Lines dropped because the queue was full, since the start.
    dropped: Arc<AtomicU64>,
}

impl LogFile {
    /// Opens (creates, appends to) `path` now, so a bad path is an error at start.
    pub fn open(path: &Path) -> anyhow::Result<LogFile> {
        Self::with_queue(path, QUEUE_LINES)
    }

    /// [`LogFile::open`] with a queue of `lines`.
    pub fn with_queue(path: &Path, lines: usize) -> anyhow::Result<LogFile> {
        let file = open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (tx, rx) = mpsc::sync_channel(lines);
        let dropped = Arc::new(AtomicU64::new(0));
        let (path, counter) = (path.to_path_buf(), dropped.clone());
        std::thread::Builder::new()
            .name("hapd-log".into())
            .spawn(move || writer(path, file, rx, counter))?;
        Ok(LogFile { tx, dropped })
    }

    /// Queues `line`; drops it (and counts it) when the queue is full.
    pub fn write(&self, line: String) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the writer to reopen the file (waits for room in the queue: a reopen is not
    /// dropped).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Lines dropped so far because the disk did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn writer(path: PathBuf, mut file: File, rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut batch = String::new();
    // Drops already reported.
    let mut told = 0;
    while let Ok(first) = rx.recv() {
        let now = dropped.load(Ordering::Relaxed);
        if now > told {
            warn!(
                "{}: {} log line(s) dropped: the disk did not keep up",
                path.display(),
                now - told
            );
            told = now;
        }
        let mut reopen = false;
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                Msg::Line(l) => {
                    batch.push_str(&l);
                    batch.push('\n');
                }
                Msg::Reopen => reopen = true,
            }
            if batch.len() > 1 << 20 {
                break;
            }
        }
        if !batch.is_empty() {
            if let Err(e) = file.write_all(batch.as_bytes()) {
                warn!("{}: writing the log: {e}", path.display());
            }
            batch.clear();
        }
        if reopen {
            match open(&path) {
                Ok(f) => file = f,
                Err(e) => warn!(
                    "{}: reopening the log: {e}; still writing the old file",
                    path.display()
                ),
            }
        }
    }
}

/// What an access-log line needs from the request; the status and size come at the end.
pub struct Access {
    pub client: IpAddr,
    pub time: SystemTime,
    /// `METHOD target VERSION`.
    pub request_line: String,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

impl Access {
    /// Apache's combined format:
    /// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`.
    pub fn line(&self, status: u16, bytes: u64) -> String {
        let size = if bytes == 0 {
            "-".to_string()
        } else {
            bytes.to_string()
        };
        format!(
            "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\"",
            self.client,
            clf_time(self.time),
            escape(&self.request_line),
            status,
            size,
            escape(self.referer.as_deref().unwrap_or("-")),
            escape(self.user_agent.as_deref().unwrap_or("-")),
        )
    }
}

/// Escapes `"`, `\` and control bytes the way Apache does (`\"`, `\\`, `\xhh`), so a line
/// is always one parseable line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
pub fn clf_time(t: SystemTime) -> String {
    const CLF: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(t)
        .format(CLF)
        .unwrap_or_else(|_| "01/Jan/1970:00:00:00 +0000".into())
}

/// An error-log line in Apache's shape: `[time] [proxy:error] [client ip] message`.
pub fn error_line(client: Option<IpAddr>, message: &str) -> String {
    let client = client.map_or(String::new(), |c| format!(" [client {c}]"));
    format!(
        "[{}] [proxy:error]{client} {}",
        clf_time(SystemTime::now()),
        escape(message)
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn combined_format_matches_apache() {
        let a = Access {
            client: "198.18.0.9".parse().unwrap(),
            // 2000-10-10T13:55:36Z, Apache's documentation example.
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            request_line: "GET /apache_pb.gif HTTP/1.0".into(),
            referer: Some("http://www.example.com/start.html".into()),
            user_agent: Some("Mozilla/4.08 [en] (Win98; I ;Nav)".into()),
        };
        assert_eq!(
            a.line(200, 2326),
            "198.18.0.9 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif HTTP/1.0\" 200 2326 \
             \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\""
        );
        let empty = Access {
            referer: None,
            user_agent: Some("a\"b\\c\n".into()),
            ..a
        };
        assert!(empty
            .line(304, 0)
            .ends_with(" 304 - \"-\" \"a\\\"b\\\\c\\x0a\""));
    }

    /// A writer stuck on a full pipe (a stalled disk) holds at most the queue: the rest is
    /// dropped and counted, and writing never blocks the caller.
    #[test]
    fn a_stalled_writer_drops_lines_instead_of_queueing_them_all() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = std::env::temp_dir().join(format!("hapd-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("stalled");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A reader that never reads: the writer's writes block once the pipe (64 KiB) is full.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let log = LogFile::with_queue(&fifo, 100).unwrap();
        // One line longer than the writer's batch: the writer takes it alone and blocks once
        // the pipe holds 64 KiB. Wait for that (the pipe full), so what follows meets a
        // stalled writer whatever the scheduling.
        log.write("s".repeat(2 << 20));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int through the pointer.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&_reader),
                    libc::FIONREAD,
                    &mut queued,
                )
            };
            assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
            if queued as usize >= 64 << 10 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "pipe never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let line = "x".repeat(200);
        // A blocking write would hang here rather than return.
        for _ in 0..2_000 {
            log.write(line.clone());
        }
        // The writer is stuck in its write: the queue of 100 takes the first lines, the other
        // 1900 are dropped and counted.
        assert_eq!(log.dropped(), 1_900);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_times_handle_the_epoch_and_leap_days() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // 2000-02-29T23:59:59Z
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(951_868_799)),
            "29/Feb/2000:23:59:59 +0000"
        );
    }
}
