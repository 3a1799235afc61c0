//! Which proxy thread a piece of work runs on, and state kept per thread.
//!
//! Each worker thread runs its own single-threaded runtime; the control thread (health checks)
//! comes after the workers. A connection, its upstream connections and its counters stay on
//! one thread, so per-thread state is indexed by [`Worker`] and never shared on a cache line.

/// A proxy thread: the workers are `0..workers`, the control thread is `workers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker(pub usize);

impl Worker {
    /// This thread's slot among `slots` (the count the state was built for).
    #[inline]
    pub fn slot(self, slots: usize) -> usize {
        self.0 % slots.max(1)
    }
}

/// A value on cache lines of its own: per-thread slots side by side would otherwise share a
/// line, and every write by one thread would evict it from the other's cache.
#[repr(align(128))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One padded slot per thread, for `threads` threads.
pub fn per_thread<T: Default>(threads: usize) -> Box<[Padded<T>]> {
    (0..threads.max(1)).map(|_| Padded::default()).collect()
}

/// `slots[w]`, for the thread `w`.
#[inline]
pub fn mine<T>(slots: &[Padded<T>], w: Worker) -> &T {
    &slots[w.slot(slots.len())]
}
