//! Read buffers. A connection holds one only while it has bytes to keep: an idle keep-alive
//! connection gives its buffer back to its thread's pool and waits for readiness without one,
//! so ten thousand idle clients cost sockets, not buffers.
use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, ReadBuf};

/// Capacity of a pooled buffer: a request head, or a response with a small body, in one read.
pub const SIZE: usize = 16 * 1024;

/// Buffers kept per thread for reuse.
const POOLED: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes read and not yet used: `data[start..]`.
#[derive(Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    /// An empty buffer that owns no memory yet.
    pub const fn new() -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
        }
    }

    /// A buffer holding `bytes` (tests, and bytes read ahead by someone else).
    pub fn from_vec(data: Vec<u8>) -> Buf {
        Buf { data, start: 0 }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Takes the unread bytes out (the buffer keeps its memory).
    pub fn take_vec(&mut self) -> Vec<u8> {
        let v = self.as_slice().to_vec();
        self.consume(v.len());
        v
    }

    /// Reads once from `r` into free space, growing up to `limit` bytes held. Returns the
    /// number of bytes read (0 at end of stream, or when `limit` is reached).
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        limit: usize,
    ) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_from(r, cx, limit)).await
    }

    /// [`Buf::read_from`] as a poll function.
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        if !self.make_room(limit) {
            return Poll::Ready(Ok(0));
        }
        let len = self.data.len();
        let mut rb = ReadBuf::uninit(self.data.spare_capacity_mut());
        ready!(Pin::new(r).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        // SAFETY: poll_read initialised the first `n` bytes of the spare capacity.
        unsafe { self.data.set_len(len + n) };
        Poll::Ready(Ok(n))
    }

    /// Ensures free space to read into; false when `limit` bytes are held already.
    pub fn make_room(&mut self, limit: usize) -> bool {
        if self.data.capacity() == 0 {
            self.data = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
            if self.data.capacity() == 0 {
                self.data.reserve_exact(SIZE);
            }
        }
        if self.data.len() < self.data.capacity() {
            return true;
        }
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
            return true;
        }
        if self.data.len() >= limit {
            return false;
        }
        let grow = self.data.capacity().min(limit - self.data.len());
        self.data.reserve_exact(grow.max(1));
        true
    }

    /// Gives the memory back to the thread's pool if nothing unread is left; an idle
    /// connection then holds none.
    pub fn release(&mut self) {
        if !self.is_empty() || self.data.capacity() == 0 {
            return;
        }
        let mut v = std::mem::take(&mut self.data);
        self.start = 0;
        if v.capacity() == SIZE {
            v.clear();
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOLED {
                    p.push(v);
                }
            });
        }
    }
}

/// A write buffer from the thread's pool (empty, with room for a small response).
pub fn take() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(SIZE))
}

/// Gives a write buffer back to the thread's pool (one that grew past [`SIZE`] is freed).
pub fn give_back(mut v: Vec<u8>) {
    if v.capacity() != SIZE {
        return;
    }
    v.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOLED {
            p.push(v);
        }
    });
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.data.clear();
        self.start = 0;
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_consume_and_release() {
        let mut b = Buf::new();
        let mut src: &[u8] = b"hello world";
        assert_eq!(b.read_from(&mut src, 1 << 20).await.unwrap(), 11);
        assert_eq!(b.as_slice(), b"hello world");
        b.consume(6);
        assert_eq!(b.as_slice(), b"world");
        b.release();
        assert_eq!(b.as_slice(), b"world", "unread bytes are kept");
        b.consume(5);
        assert!(b.is_empty());
        b.release();
        assert_eq!(b.data.capacity(), 0, "an idle buffer owns nothing");
        // The next one comes from the pool.
        assert!(b.make_room(1 << 20));
        assert_eq!(b.data.capacity(), SIZE);
    }

    #[tokio::test]
    async fn growth_stops_at_the_limit() {
        let mut b = Buf::new();
        let big = vec![b'a'; SIZE * 3];
        let mut src: &[u8] = &big;
        let limit = SIZE * 2;
        let mut total = 0;
        loop {
            let n = b.read_from(&mut src, limit).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(total >= limit && total < SIZE * 3, "{total}");
        assert_eq!(b.len(), total);
    }
}
