//! A client that behaves like a connection pool (a service's HTTP client, a browser): kept-alive
//! HTTP/1.1 connections that each send a request at a steady pace and idle in between, reopened
//! when the server closes one, plus new connections arriving at a steady pace whatever the
//! earlier ones are doing (an open loop: a connection that hangs does not delay the next). It counts what such a
//! client would report: requests that failed on an open connection, connections that could not
//! be opened, and the slowest new connection (connect to the end of its first response).
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::Lab;

/// How the pool behaves.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Where the requests go, and the `Host` they name.
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Kept-alive connections, and the pause between two requests on one of them.
    pub connections: usize,
    pub every: Duration,
    /// The pause between two new connections (one request each, `Connection: close`).
    pub new_every: Duration,
    /// How long a request may take before it counts as failed.
    pub timeout: Duration,
}

/// How long a new connection may take to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A new connection that waited longer than this for a worker is late.
const LATE: Duration = Duration::from_millis(100);

/// What the pool saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub new_connections: AtomicU64,
    /// The slowest new connection, in µs.
    pub slowest_new_us: AtomicU64,
    /// Answers by the body's first line (who answered, for the lab's backends).
    pub answered_by: Mutex<BTreeMap<String, u64>>,
    /// The first errors, with when they happened.
    pub errors: Mutex<Vec<String>>,
    /// Every failure by cause ([`cause`]).
    pub causes: Mutex<BTreeMap<&'static str, u64>>,
    /// Per kept-alive connection: who answered its last request.
    pub last_by: Mutex<Vec<String>>,
    /// Every new connection: when it started (since the pool started), how long its first
    /// answer took, and whether it came.
    pub new_log: Mutex<Vec<(Duration, Duration, bool)>>,
    /// New connections that waited more than [`LATE`] for a worker to open them (the pool
    /// fell behind its schedule; 0 when it kept up).
    pub late_new: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl Seen {
    pub fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.causes.lock() {
            *c.entry(cause(&what)).or_default() += 1;
        }
        let at = self
            .started
            .lock()
            .ok()
            .and_then(|s| *s)
            .map_or(0, |s| s.elapsed().as_millis());
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 20 {
                e.push(format!("{at} ms: {what}"));
            }
        }
    }

    /// A request answered with `body`.
    pub fn answered(&self, body: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let who = body.lines().next().unwrap_or_default().to_string();
        if let Ok(mut m) = self.answered_by.lock() {
            *m.entry(who).or_default() += 1;
        }
    }

    /// Kept-alive connection `i` was last answered with `body`.
    fn answered_on(&self, i: usize, body: &str) {
        if let Ok(mut l) = self.last_by.lock() {
            if let Some(slot) = l.get_mut(i) {
                *slot = body.lines().next().unwrap_or_default().to_string();
            }
        }
    }

    /// A new connection whose first answer took `took`.
    pub fn new_connection(&self, took: Duration) {
        self.slowest_new_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Time since the pool started.
    pub fn elapsed(&self) -> Duration {
        self.started
            .lock()
            .ok()
            .and_then(|s| *s)
            .map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Kept-alive connections whose last answer came from a body naming `who`.
    pub fn held_by(&self, who: &str) -> u64 {
        self.last_by
            .lock()
            .map(|v| v.iter().filter(|w| w.contains(who)).count() as u64)
            .unwrap_or(0)
    }

    /// New connections started at or after `since` (a time from [`Seen::elapsed`]): when
    /// they started, how long their first answer took, whether it came.
    pub fn new_connections_since(&self, since: Duration) -> Vec<(Duration, Duration, bool)> {
        self.new_log
            .lock()
            .map(|v| v.iter().copied().filter(|(at, ..)| *at >= since).collect())
            .unwrap_or_default()
    }

    pub fn slowest_new(&self) -> Duration {
        Duration::from_micros(self.slowest_new_us.load(Ordering::Relaxed))
    }

    /// Answers whose body's first line contains `who`.
    pub fn by(&self, who: &str) -> u64 {
        self.answered_by
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.contains(who))
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn report(&self) -> String {
        format!(
            "{} requests, {} failed, {} new connections ({} late), slowest new {} ms; errors: {:?}",
            self.requests.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.new_connections.load(Ordering::Relaxed),
            self.late_new.load(Ordering::Relaxed),
            self.slowest_new().as_millis(),
            self.errors.lock().map(|e| e.clone()).unwrap_or_default()
        )
    }
}

/// What a failure (as [`Seen::fail`] is told it) was, in a few words: a reset, a timeout, a
/// refused connection, a connection closed without an answer, an error status, or other.
pub fn cause(what: &str) -> &'static str {
    let w = what.to_ascii_lowercase();
    if w.contains("status:") {
        // An answer, not an I/O error (its reason phrase may say "temporarily").
        "error status"
    } else if w.contains("reset") {
        "reset"
    } else if w.contains("timed out") || w.contains("would block") || w.contains("temporarily") {
        "timeout"
    } else if w.contains("refused") {
        "refused"
    } else if w.contains("unreachable") {
        "unreachable"
    } else if w.contains("closed before") || w.contains("broken pipe") {
        "closed"
    } else {
        "other"
    }
}

/// A running pool; [`Pool::stop`] ends it.
pub struct Pool {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Seen>,
    threads: Vec<std::thread::JoinHandle<Option<()>>>,
}

impl Pool {
    /// Starts the pool in lab host `host` (one thread per kept-alive
    /// connection; for the new ones a scheduler and the workers that open them).
    pub fn start(lab: &Lab, host: usize, shape: Shape) -> anyhow::Result<Pool> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        if let Ok(mut s) = seen.started.lock() {
            *s = Some(Instant::now());
        }
        if let Ok(mut l) = seen.last_by.lock() {
            *l = vec![String::new(); shape.connections];
        }
        // Made first, so that a thread that cannot start stops (and joins) those started.
        let mut pool = Pool {
            stop: stop.clone(),
            seen: seen.clone(),
            threads: Vec::new(),
        };
        for i in 0..shape.connections {
            let (stop, seen, shape) = (stop.clone(), seen.clone(), shape.clone());
            pool.threads.push(lab.spawn_in_netns(host, move || {
                // Spread the requests over the interval.
                std::thread::sleep(shape.every * i as u32 / shape.connections as u32);
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    match conn.take() {
                        None => {
                            conn = fresh(&shape, &seen, false, Instant::now()).and_then(
                                |(s, closing, body)| {
                                    seen.answered_on(i, &body);
                                    (!closing).then_some(s)
                                },
                            );
                        }
                        Some(mut s) => match exchange(&mut s, &shape, false) {
                            Ok((body, closing)) => {
                                seen.answered(&body);
                                seen.answered_on(i, &body);
                                conn = (!closing).then_some(s);
                            }
                            Err(e) => seen.fail(format!("kept-alive connection: {e}")),
                        },
                    }
                    std::thread::sleep(shape.every);
                }
            })?);
        }
        // New connections arrive on a schedule of their own, as a client population's do: one
        // that hangs does not hold back the next. Each arrival is a ticket taken by one of
        // enough workers to cover every arrival within the longest a connection can take
        // (connect timeout + request timeout); a ticket that still waits is counted late.
        let (tickets, queue) = std::sync::mpsc::channel::<Instant>();
        let queue = Arc::new(Mutex::new(queue));
        let longest = CONNECT_TIMEOUT + shape.timeout + Duration::from_secs(1);
        let every = shape.new_every.max(Duration::from_millis(1));
        let workers = (longest.as_micros() / every.as_micros()).clamp(2, 512) as usize;
        for _ in 0..workers {
            let (queue, seen, shape, stop) =
                (queue.clone(), seen.clone(), shape.clone(), stop.clone());
            pool.threads.push(lab.spawn_in_netns(host, move || loop {
                let ticket = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok(arrived) = ticket else { return };
                if stop.load(Ordering::Relaxed) {
                    // Stopping: what is still queued is not opened.
                    continue;
                }
                if arrived.elapsed() > LATE {
                    seen.late_new.fetch_add(1, Ordering::Relaxed);
                }
                let _ = fresh(&shape, &seen, true, arrived);
            })?);
        }
        let stop2 = stop.clone();
        pool.threads.push(lab.spawn_in_netns(host, move || {
            let t0 = Instant::now();
            let mut next = Duration::ZERO;
            while !stop2.load(Ordering::Relaxed) {
                let at = t0 + next;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if tickets.send(at).is_err() {
                    break;
                }
                next += every;
            }
            // Dropping `tickets` ends the workers once they are idle.
        })?);
        Ok(pool)
    }

    /// Stops every thread and returns what the pool saw.
    pub fn stop(mut self) -> Arc<Seen> {
        self.halt();
        self.seen.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    /// A pool dropped without [`Pool::stop`] (a test that failed) stops its threads too.
    fn drop(&mut self) {
        self.halt();
    }
}

/// One request on `s`; the body and whether the server closes the connection after it.
pub fn exchange<S: Read + Write>(
    s: &mut S,
    shape: &Shape,
    close: bool,
) -> Result<(String, bool), String> {
    s.write_all(request(shape, close).as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = response(&buf)? {
            return Ok(done);
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before a whole response ({} bytes)",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request a pooled connection sends.
pub fn request(shape: &Shape, close: bool) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        shape.path,
        shape.host,
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// The response in `buf` once it is whole (a 200 with a `Content-Length` body): its body and
/// whether the server closes the connection after it; `None` while more is to come.
pub fn response(buf: &[u8]) -> Result<Option<(String, bool)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    if buf.len() < head_end + len {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    Ok(Some((body, head.contains("connection: close"))))
}

/// A new connection and its first request (the stream, whether the server closes it, the
/// body); its time goes into the slowest and the log.
/// A new connection that was wanted at `arrived` (logged at that place in the schedule; its
/// time counts from when it is opened).
fn fresh(
    shape: &Shape,
    seen: &Seen,
    close: bool,
    arrived: Instant,
) -> Option<(TcpStream, bool, String)> {
    // When it was wanted (its place in the schedule) and when it was opened: its time is
    // the server's (a worker that picked it late counts in `late_new`, not here).
    let at = seen.elapsed().saturating_sub(arrived.elapsed());
    let t0 = Instant::now();
    seen.new_connections.fetch_add(1, Ordering::Relaxed);
    let log = |ok: bool| {
        if let Ok(mut l) = seen.new_log.lock() {
            l.push((at, t0.elapsed(), ok));
        }
    };
    let s = TcpStream::connect_timeout(&shape.addr, CONNECT_TIMEOUT).and_then(|s| {
        s.set_read_timeout(Some(shape.timeout))?;
        s.set_nodelay(true)?;
        Ok(s)
    });
    let mut s = match s {
        Ok(s) => s,
        Err(e) => {
            log(false);
            seen.fail(format!("connect: {e}"));
            return None;
        }
    };
    match exchange(&mut s, shape, close) {
        Ok((body, closing)) => {
            log(true);
            seen.new_connection(t0.elapsed());
            seen.answered(&body);
            Some((s, closing, body))
        }
        Err(e) => {
            log(false);
            seen.fail(format!("new connection: {e}"));
            None
        }
    }
}
