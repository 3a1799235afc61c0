//! Pinned workers and a busy CPU, with `server.steer_connections = true`: while another
//! process keeps one worker's CPU busy, new connections go to the worker whose CPU has time to
//! spare; a burst of new keep-alive connections still goes out evenly; with both CPUs free, the
//! split is the kernel's. Without it (the default) the busy CPU moves nothing.
//!
//! A test binary of its own: other tests' load would change the CPUs' idle times it reads.
mod proxy_kit;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proxy_kit::*;

fn pin_here(cpu: usize) {
    pin_set(&[cpu]);
}

/// Restricts the calling thread (and the threads it starts from now on) to `cpus`.
fn pin_set(cpus: &[usize]) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).unwrap();
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

/// A thread that keeps `cpu` busy until dropped (30 s at most).
struct Hog(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Hog {
    fn on(cpu: usize) -> Hog {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            pin_here(cpu);
            let end = Instant::now() + Duration::from_secs(30);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                std::hint::spin_loop();
            }
        });
        Hog(stop, Some(t))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// One request on a connection of its own, closed after the answer.
async fn one_request(addr: SocketAddr) {
    let got = raw(
        addr,
        b"GET /x HTTP/1.1\r\nhost: site\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
}

/// `n` short connections from 4 clients, each pausing 2 ms between two: a light load that
/// leaves a CPU mostly idle.
async fn paced(addr: SocketAddr, n: usize) {
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..n / 4 {
                    one_request(addr).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
}

/// One plain listener in front of `backend`; `server`: a `[server]` table, or nothing for the
/// defaults.
fn proxy_config(backend: &Backend, server: &str) -> String {
    format!(
        r#"
[node]
name = "n"
{server}
[[listener]]
name = "plain"
bind = ["127.0.0.1:0"]
[[upstream]]
name = "u"
servers = ["{}"]
[[vhost]]
server_names = ["site"]
listeners = ["plain"]
  [[vhost.route]]
  prefix = "/"
  upstream = "u"
"#,
        backend.authority()
    )
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn new_connections_go_to_the_worker_whose_cpu_has_time_to_spare() {
    let allowed = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    // The shares below are worked out for two workers: the proxy's workers follow the
    // affinity mask of the thread that starts them, so give it the first two CPUs.
    assert!(
        allowed.len() >= 2,
        "steering needs two CPUs to steer between; this process may use {allowed:?}"
    );
    let cpus = [allowed[0], allowed[1]];
    pin_set(&cpus);
    let backend = Backend::start("b1").await;
    let p = start_proxy(&proxy_config(
        &backend,
        "[server]\nsteer_connections = true",
    ));
    let addr = addr_of(&p, "plain");
    // The clients and the backend run on the second CPU, beside worker 1.
    pin_here(cpus[1]);

    // Both CPUs mostly idle: no steering, the kernel's hash splits the connections.
    let before = p.view.worker_connections_total();
    paced(addr, 400).await;
    let even = delta(&p.view.worker_connections_total(), &before);
    assert_eq!(even.iter().sum::<u64>(), 400);
    assert!(
        even.iter().all(|&n| n >= 120),
        "both CPUs free: connections per worker {even:?}"
    );
    assert_eq!(p.view.steered_connections(), 0);

    // Something else keeps worker 0's CPU busy.
    let hog = Hog::on(cpus[0]);
    // Steering builds up over a few 100 ms windows.
    paced(addr, 200).await;
    let before = p.view.worker_connections_total();
    let steered_before = p.view.steered_connections();
    paced(addr, 400).await;
    let busy = delta(&p.view.worker_connections_total(), &before);
    assert_eq!(busy.iter().sum::<u64>(), 400);
    assert!(
        busy[1] >= 340,
        "worker 0's CPU busy: connections per worker {busy:?}"
    );
    assert!(p.view.steered_connections() - steered_before >= 100);

    // Still busy, and steering: 64 clients open keep-alive connections at once. Steering
    // was learnt for short connections; these stay, and go out evenly.
    let conns = answered_and_kept_open(addr, "site", 64).await;
    let open = p.view.worker_connections();
    eprintln!(
        "per worker: both CPUs free {even:?}, CPU 0 busy {busy:?}, keep-alive burst {open:?}"
    );
    assert_eq!(open.iter().sum::<usize>(), 64, "{open:?}");
    assert!(
        open[0].abs_diff(open[1]) <= 4,
        "a burst of keep-alive connections: per worker {open:?}"
    );
    drop(conns);
    wait_until("every connection counted out", || {
        p.view.worker_connections().iter().all(|&n| n == 0)
    });

    // Without `steer_connections` (the default), the same busy CPU moves nothing. The proxy
    // starts on both CPUs (its workers follow this thread's mask), the clients stay on CPU 1.
    pin_set(&cpus);
    let plain = start_proxy(&proxy_config(&backend, ""));
    let addr = addr_of(&plain, "plain");
    pin_here(cpus[1]);
    let before = plain.view.worker_connections_total();
    paced(addr, 400).await;
    let split = delta(&plain.view.worker_connections_total(), &before);
    eprintln!("steering off, CPU 0 busy: per worker {split:?}");
    assert_eq!(split.len(), 2, "two workers: {split:?}");
    assert_eq!(split.iter().sum::<u64>(), 400);
    assert_eq!(plain.view.steered_connections(), 0);
    assert!(
        split.iter().all(|&n| n >= 120),
        "the kernel's split: {split:?}"
    );
    drop(hog);
}
