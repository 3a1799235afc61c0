//! Deadlines of a connection's phases: [`Watchdog`], one timer for all of a connection's
//! deadlines, and [`Deadline`], an upstream answer's deadline that a request body still going
//! up pushes back. Both sides of a forwarded request use them.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// When an upstream's silence becomes a timeout; pushed back while a request body is still
/// going up (the upstream cannot be expected to answer before it has the body).
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    at: std::sync::atomic::AtomicU64,
}

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline {
            base: Instant::now(),
            at: std::sync::atomic::AtomicU64::new(d.as_nanos() as u64),
        }
    }

    /// From now on, `d` more.
    pub fn extend(&self, d: Duration) {
        let at = (Instant::now() + d).duration_since(self.base).as_nanos() as u64;
        self.at.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Instant {
        self.base + Duration::from_nanos(self.at.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One timer for every deadline of a connection, phase after phase. Starting a phase costs
/// nothing when its deadline is later than the timer's (the usual case: the timer fires
/// early, finds the phase's deadline ahead, and re-arms once), and an operation that completes
/// at its first poll never touches the timer. A timer per phase would be registered and
/// cancelled with the runtime's timer wheel several times per request.
pub struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
}

impl Watchdog {
    pub fn new(due: Instant) -> Watchdog {
        Watchdog {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
        }
    }

    /// `f`, unless `due` passes first (`None`).
    pub async fn run<F: Future>(&mut self, due: Instant, f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            self.due = due;
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
            }
            self.poll_expired(cx, || due).map(|()| None)
        })
        .await
    }

    /// `f`, unless it takes longer than `d` from its first poll that did not complete it.
    pub async fn run_for<F: Future>(&mut self, d: Duration, f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let mut due = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let due = *due.get_or_insert_with(|| Instant::now() + d);
            self.due = due;
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
            }
            self.poll_expired(cx, || due).map(|()| None)
        })
        .await
    }

    /// `f`, unless `deadline` passes first (`None`); the deadline may move later meanwhile.
    pub async fn run_moving<F: Future>(&mut self, deadline: &Deadline, f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let due = deadline.get();
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
            }
            self.poll_expired(cx, || deadline.get()).map(|()| None)
        })
        .await
    }

    /// Ready once the deadline `due()` has passed; a timer that fired early is re-armed.
    fn poll_expired(&mut self, cx: &mut Context<'_>, due: impl Fn() -> Instant) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            let d = due();
            if Instant::now() >= d {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(d);
        }
    }
}
