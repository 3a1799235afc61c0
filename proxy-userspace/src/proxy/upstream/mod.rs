//! Upstream pools (`[[upstream]]`): server choice, HTTP/1.1 connections kept alive per server,
//! active health checks and passive ejection.
//!
//! Backup servers (`backup_servers`) are chosen only while no other server is up, and do not
//! count for [`Pool::available`] (the proxy's health).
//!
//! A server is *up* until `fall` health checks in a row fail, or a connection to it fails
//! (passive ejection); it is *up* again after `rise` checks in a row pass or, for a pool
//! without health checks, after [`PASSIVE_RETRY`].
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpStream, sync::watch};
use tracing::{info, warn};

mod conn;

pub use self::conn::{poll_data, read_response, Head, UpConn, UpError, HEAD_LIMIT};
pub use crate::config::proxy::MAX_SERVERS;
use crate::config::proxy::{Balance, HealthCheck, Upstream};
use crate::proxy::{
    codec::body::Decoder,
    worker::{mine, per_thread, Padded, Worker},
};

/// How long a server that refused a connection is left out when its pool has no health check.
pub const PASSIVE_RETRY: Duration = Duration::from_secs(10);

/// Idle connections kept per server and worker.
const MAX_IDLE: usize = 1024;

pub struct Server {
    /// `host:port` as configured.
    pub authority: String,
    host: String,
    port: u16,
    pool: String,
    /// Listed in `backup_servers`: chosen only while no other server is up.
    pub backup: bool,
    /// Requests in flight, counted by the thread that sent them (summed when read).
    outstanding: Box<[Padded<AtomicUsize>]>,
    up: AtomicBool,
    /// Consecutive passing checks while down.
    rises: AtomicU32,
    /// Idle connections, one list per thread: a connection is only used by the thread whose
    /// runtime it is registered with.
    idle: Box<[Padded<Mutex<Vec<UpConn>>>]>,
}

pub struct Pool {
    pub name: Arc<str>,
    /// What it was built from: a reload keeps a pool whose config did not change.
    config: Upstream,
    /// Replaced by a reload: its health checks stop.
    retired: AtomicBool,
    balance: Balance,
    /// `servers`, then `backup_servers`.
    pub servers: Vec<Arc<Server>>,
    /// How many of `servers` are not backups (they come first).
    primaries: usize,
    /// Round-robin: the next server, for the whole proxy.
    turn: AtomicUsize,
    /// Least-outstanding: where each thread's search starts, so ties rotate.
    next: Box<[Padded<AtomicUsize>]>,
    pub connect_timeout: Duration,
    check: Option<Check>,
    /// Bumped whenever a server goes up or down.
    changes: watch::Sender<u64>,
}

#[derive(Clone)]
struct Check {
    path: String,
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
}

impl From<&HealthCheck> for Check {
    fn from(h: &HealthCheck) -> Self {
        Check {
            path: h.path.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            fall: h.fall,
            rise: h.rise,
        }
    }
}

/// The servers a request has been tried on (a pool has at most [`MAX_SERVERS`]).
#[derive(Default, Clone, Copy)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, i: usize) {
        self.0 |= 1 << (i % MAX_SERVERS);
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0 & (1 << (i % MAX_SERVERS)) != 0
    }
    pub fn none(&self) -> bool {
        self.0 == 0
    }
}

/// Counts a request against its server (least-outstanding) until dropped.
pub struct Busy<'a> {
    server: &'a Server,
    slot: usize,
}

impl<'a> Busy<'a> {
    pub fn new(server: &'a Server, w: Worker) -> Busy<'a> {
        let slot = w.slot(server.outstanding.len());
        server.outstanding[slot].fetch_add(1, Ordering::Relaxed);
        Busy { server, slot }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.server.outstanding[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`Busy`] for a request whose end is met somewhere that cannot borrow (an HTTP/2 body).
pub struct OwnedBusy {
    server: Arc<Server>,
    slot: usize,
}

impl Busy<'_> {
    /// The same count, for a request whose end is met where this cannot borrow the server.
    pub fn keep(self, server: &Arc<Server>) -> OwnedBusy {
        let slot = self.slot;
        std::mem::forget(self);
        OwnedBusy {
            server: server.clone(),
            slot,
        }
    }
}

impl Drop for OwnedBusy {
    fn drop(&mut self) {
        self.server.outstanding[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// The pool of `u` for `threads` proxy threads (workers and the control thread).
    pub fn new(u: &Upstream, changes: watch::Sender<u64>, threads: usize) -> Pool {
        let servers = u
            .servers
            .iter()
            .map(|s| (s, false))
            .chain(u.backup_servers.iter().map(|s| (s, true)))
            .map(|(s, backup)| {
                // Checked by the config: "host:port" with a port 1..=65535.
                let (host, port) = s.rsplit_once(':').unwrap_or((s, "80"));
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Arc::new(Server {
                    authority: s.clone(),
                    host: host.to_string(),
                    port: port.parse().unwrap_or(80),
                    pool: u.name.clone(),
                    backup,
                    outstanding: per_thread(threads),
                    up: AtomicBool::new(true),
                    rises: AtomicU32::new(0),
                    idle: per_thread(threads),
                })
            })
            .collect();
        Pool {
            name: Arc::from(u.name.as_str()),
            config: u.clone(),
            retired: AtomicBool::new(false),
            balance: u.balance,
            servers,
            primaries: u.servers.len(),
            turn: AtomicUsize::new(0),
            next: per_thread(threads),
            connect_timeout: u.connect_timeout.0,
            check: u.health_check.as_ref().map(Check::from),
            changes,
        }
    }

    pub fn config(&self) -> &Upstream {
        &self.config
    }

    /// Stops the health checks (the pool was replaced by a reload).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether a server other than a backup is up: what the proxy's health follows.
    pub fn available(&self) -> bool {
        self.servers[..self.primaries].iter().any(|s| s.is_up())
    }

    /// Chooses an up server not in `tried` for a request on thread `w` (count the request
    /// against it with [`Busy`]): one of `servers` while one is up, else a backup.
    pub fn pick(&self, w: Worker, tried: Tried) -> Option<usize> {
        let start = match self.balance {
            Balance::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed),
            Balance::LeastOutstanding => mine(&self.next, w).fetch_add(1, Ordering::Relaxed),
        };
        let usable = |i: usize| !tried.contains(i) && self.servers[i].is_up();
        let tier = if (0..self.primaries).any(usable) {
            0..self.primaries
        } else {
            self.primaries..self.servers.len()
        };
        let n = tier.len();
        if n == 0 {
            return None;
        }
        let candidates = (0..n)
            .map(|k| tier.start + (start + k) % n)
            .filter(|&i| usable(i));
        match self.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            // Ties go to the first from a rotating start, so equal servers share the load.
            Balance::LeastOutstanding => candidates.min_by_key(|&i| self.servers[i].outstanding()),
        }
    }

    /// A connection to the server failed: take it out until it is seen working again.
    pub fn eject(self: &Arc<Self>, i: usize, why: &str) {
        let s = &self.servers[i];
        s.rises.store(0, Ordering::Relaxed);
        if !s.up.swap(false, Ordering::AcqRel) {
            return;
        }
        warn!(upstream = %self.name, server = %s.authority, "server ejected: {why}");
        self.changes.send_modify(|c| *c += 1);
        if self.check.is_none() {
            let pool = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(PASSIVE_RETRY).await;
                pool.set_up(i, true, "retry time passed");
            });
        }
    }

    fn set_up(&self, i: usize, up: bool, why: &str) {
        let s = &self.servers[i];
        if s.up.swap(up, Ordering::AcqRel) != up {
            info!(upstream = %self.name, server = %s.authority, "server {}: {why}", if up { "up" } else { "down" });
            self.changes.send_modify(|c| *c += 1);
        }
    }

    /// Starts the active health checks, one task per server, on the thread `w` (the control
    /// thread) whose runtime is current.
    pub fn spawn_checks(self: &Arc<Self>, w: Worker) {
        let Some(check) = self.check.clone() else {
            return;
        };
        for i in 0..self.servers.len() {
            let pool = self.clone();
            let check = check.clone();
            tokio::spawn(async move { pool.check_loop(w, i, check).await });
        }
    }

    async fn check_loop(self: Arc<Self>, w: Worker, i: usize, check: Check) {
        let s = self.servers[i].clone();
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fails = 0u32;
        loop {
            tick.tick().await;
            if self.retired.load(Ordering::Relaxed) {
                return;
            }
            let result =
                tokio::time::timeout(check.timeout, s.probe(w, &check.path, self.connect_timeout))
                    .await;
            let outcome = match result {
                Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("health check answered {status}")),
                Ok(Err(e)) => Err(format!("health check failed: {e}")),
                Err(_) => Err(format!("health check timed out after {:?}", check.timeout)),
            };
            match outcome {
                Ok(()) => {
                    fails = 0;
                    let rises = s.rises.fetch_add(1, Ordering::Relaxed) + 1;
                    if !s.is_up() && rises >= check.rise {
                        self.set_up(i, true, &format!("{rises} health check(s) passed"));
                    }
                }
                Err(why) => {
                    s.rises.store(0, Ordering::Relaxed);
                    fails += 1;
                    if s.is_up() && fails >= check.fall {
                        self.set_up(i, false, &why);
                    }
                }
            }
        }
    }
}

impl Server {
    fn idle_list(&self, w: Worker) -> &Mutex<Vec<UpConn>> {
        mine(&self.idle, w)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Requests in progress on this server.
    pub fn outstanding(&self) -> usize {
        self.outstanding
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// A kept-alive connection of this thread. `checked`: only one that nothing arrived on
    /// since its last response (a request that cannot be sent again needs that; one that can
    /// is sent again on a new connection if the server had closed this one).
    pub fn idle_connection(&self, w: Worker, checked: bool) -> Option<UpConn> {
        let mut idle = self.idle_list(w).lock().ok()?;
        while let Some(mut c) = idle.pop() {
            if !checked || c.usable() {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// An idle connection, or a new one; the error says why none could be made.
    pub async fn connection(&self, w: Worker, connect_timeout: Duration) -> Result<UpConn, String> {
        if let Some(c) = self.idle_connection(w, true) {
            return Ok(c);
        }
        self.connect(connect_timeout).await.map(UpConn::new)
    }

    /// Keeps a connection whose last response was read completely for the next request.
    pub fn put_back(&self, w: Worker, mut conn: UpConn) {
        if !conn.buf.is_empty() {
            // Bytes past the end of the response: the connection is out of step.
            return;
        }
        conn.buf.release();
        conn.reused = false;
        if let Ok(mut idle) = self.idle_list(w).lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, String> {
        let attempt = async {
            let addrs: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, self.port)],
                Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| format!("resolving {}: {e}", self.host))?
                    .collect(),
            };
            let mut last = format!("{} has no address", self.host);
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => last = format!("connecting to {a}: {e}"),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connecting to {} timed out after {timeout:?}",
                self.authority
            )),
        }
    }

    /// One health check: GET `path`, the status it answers (the body is read and dropped,
    /// so the connection serves the next check). The caller bounds its time.
    async fn probe(&self, w: Worker, path: &str, connect_timeout: Duration) -> Result<u16, String> {
        let head = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: hapd-health-check\r\n\r\n",
            self.authority
        );
        let mut retried = false;
        loop {
            let mut c = self.connection(w, connect_timeout).await?;
            let result = async {
                c.io.write_all(head.as_bytes()).await.map_err(UpError::Io)?;
                let h = c.response(false, |_| ()).await?;
                let mut dec = Decoder::new(h.body);
                while std::future::poll_fn(|cx| c.poll_data(cx, &mut dec))
                    .await?
                    .is_some()
                {}
                Ok::<_, UpError>(h)
            }
            .await;
            match result {
                Ok(h) => {
                    if !h.close {
                        self.put_back(w, c);
                    }
                    return Ok(h.code);
                }
                Err(e) if !retried && e.stale(c.reused) => retried = true,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub fn pool_name(&self) -> &str {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(servers: &[&str], backups: &[&str], balance: &str) -> Pool {
        let toml = format!(
            "name = \"app\"\nservers = {servers:?}\nbackup_servers = {backups:?}\nbalance = \"{balance}\"\n"
        );
        let u: Upstream = toml::from_str(&toml).unwrap();
        Pool::new(&u, watch::channel(0).0, 2)
    }

    fn picks(p: &Pool, tried: Tried, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).filter_map(|_| p.pick(Worker(0), tried)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn backups_serve_only_while_no_other_server_is_up_and_do_not_count_for_health() {
        for balance in ["round-robin", "least-outstanding"] {
            let p = pool(&["a:1", "b:1"], &["c:1", "d:1"], balance);
            assert!(p.servers[2].backup && !p.servers[1].backup);
            assert_eq!(picks(&p, Tried::default(), 8), [0, 1], "{balance}");
            assert!(p.available());
            // One server down: the other takes every request, the backups none.
            p.set_up(0, false, "test");
            assert_eq!(picks(&p, Tried::default(), 8), [1], "{balance}");
            // A request that failed on the last server up goes to a backup.
            let mut tried = Tried::default();
            tried.add(1);
            assert_eq!(picks(&p, tried, 8), [2, 3], "{balance}");
            // Every server down: the backups share the requests; the pool is unavailable.
            p.set_up(1, false, "test");
            assert_eq!(picks(&p, Tried::default(), 8), [2, 3], "{balance}");
            assert!(!p.available());
            tried = Tried::default();
            tried.add(2);
            tried.add(3);
            assert_eq!(p.pick(Worker(0), tried), None);
            p.set_up(1, true, "test");
            assert_eq!(picks(&p, Tried::default(), 8), [1], "{balance}");
            assert!(p.available());
        }
        // Without backups, nothing changes: every server down is no server at all.
        let p = pool(&["a:1"], &[], "round-robin");
        p.set_up(0, false, "test");
        assert_eq!(p.pick(Worker(0), Tried::default()), None);
        assert!(!p.available());
    }
}
