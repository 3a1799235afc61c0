//! Client connections spread evenly over the worker threads.
//!
//! Every worker accepts on its own SO_REUSEPORT socket, and the kernel picks the socket by a
//! hash of the connection's addresses: at random, as far as load goes. With a few dozen busy
//! keep-alive clients one worker often holds a third more connections than the other, and its
//! clients wait longer for every answer (the p99 of such a run is well above an even one's).
//! HAProxy avoids that by giving a new connection to its least loaded thread; so do we: a
//! worker that holds two or more connections more than the least loaded one hands the new
//! connection to that one, which serves it as if it had accepted it.
//!
//! The counts are kept here, not derived from the tasks: a connection counts for its worker
//! from the moment it is placed (also while it waits in the inbox) until [`Balance::release`].
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::worker::Padded;

/// A connection handed from the worker that accepted it to another one.
pub struct Handed<T> {
    pub stream: std::net::TcpStream,
    /// What the accepting worker knew of the connection (peer address, listener, vhosts).
    pub with: T,
}

pub struct Balance<T> {
    open: Box<[Padded<AtomicUsize>]>,
    /// Connections placed on each worker since the start.
    placed: Box<[Padded<AtomicU64>]>,
    inbox: Box<[mpsc::UnboundedSender<Handed<T>>]>,
}

/// How many more connections than the least loaded worker a worker may hold before it hands
/// new ones over. One would move a connection for every other accept under steady churn;
/// two keeps the workers within two connections of each other at a fraction of the moves.
const SLACK: usize = 2;

impl<T> Balance<T> {
    /// A balance for `workers` workers, with the inbox each worker reads.
    pub fn new(workers: usize) -> (Balance<T>, Vec<mpsc::UnboundedReceiver<Handed<T>>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..workers.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let open = (0..tx.len()).map(|_| Padded(AtomicUsize::new(0))).collect();
        let placed = (0..tx.len()).map(|_| Padded(AtomicU64::new(0))).collect();
        (
            Balance {
                open,
                placed,
                inbox: tx.into(),
            },
            rx,
        )
    }

    /// The worker that serves a connection `me` just accepted, counted for it already.
    pub fn place(&self, me: usize) -> usize {
        let me = me.min(self.open.len() - 1);
        let mine = self.open[me].load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, n)| n)
            .unwrap_or((me, mine));
        let to = if mine >= fewest + SLACK { least } else { me };
        self.place_on(to)
    }

    /// Counts a connection for worker `to`, chosen by other means (see [`super::steer`]).
    pub fn place_on(&self, to: usize) -> usize {
        let to = to.min(self.open.len() - 1);
        self.open[to].fetch_add(1, Ordering::Relaxed);
        self.placed[to].fetch_add(1, Ordering::Relaxed);
        to
    }

    /// Gives a placed connection to worker `to`; the connection comes back when that worker no
    /// longer reads its inbox (it is stopping), still counted for `to`.
    pub fn hand(&self, to: usize, h: Handed<T>) -> Result<(), Handed<T>> {
        self.inbox[to].send(h).map_err(|e| e.0)
    }

    /// Moves a connection's count from one worker to another (a hand-over that failed).
    pub fn recount(&self, from: usize, to: usize) {
        self.open[from].fetch_sub(1, Ordering::Relaxed);
        self.open[to].fetch_add(1, Ordering::Relaxed);
        self.placed[from].fetch_sub(1, Ordering::Relaxed);
        self.placed[to].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection placed on `worker` ended.
    pub fn release(&self, worker: usize) {
        self.open[worker].fetch_sub(1, Ordering::Relaxed);
    }

    /// The connections all workers hold now.
    pub fn total(&self) -> usize {
        self.open.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The connections placed on each worker since the start.
    pub fn placed(&self) -> Vec<u64> {
        self.placed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The connections each worker holds now.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_ahead_by_the_slack_hands_over_to_the_least_loaded() {
        let (b, _rx) = Balance::<()>::new(3);
        // Worker 0 accepts everything, as an unlucky hash would have it.
        let placed: Vec<usize> = (0..9).map(|_| b.place(0)).collect();
        assert_eq!(placed, [0, 0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(b.open(), [4, 3, 2]);
        b.release(0);
        b.release(0);
        assert_eq!(b.open(), [2, 3, 2]);
        // Within the slack: the acceptor keeps it.
        assert_eq!(b.place(1), 1);
        assert_eq!(b.place(1), 0);
        b.recount(0, 2);
        assert_eq!(b.open(), [2, 4, 3]);
        assert_eq!(
            b.placed(),
            [4, 4, 3],
            "placed counts only grow, except by a recount"
        );
    }

    #[test]
    fn one_worker_keeps_everything() {
        let (b, _rx) = Balance::<()>::new(1);
        assert!((0..10).all(|_| b.place(0) == 0));
        assert_eq!(b.open(), [10]);
    }

    #[test]
    fn a_hand_over_to_a_stopped_worker_comes_back() {
        let (b, mut rx) = Balance::<u8>::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        drop(rx.pop());
        let back = b.hand(1, Handed { stream, with: 7 }).unwrap_err();
        assert_eq!(back.with, 7);
    }
}
