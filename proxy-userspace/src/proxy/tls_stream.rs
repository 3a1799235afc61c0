//! The listeners' TLS connections: rustls driven directly on the socket, so that what the
//! server sends goes out in as few writes (and TCP segments) as the exchange allows.
//!
//! - **Writes wait for a flush.** Plaintext is encrypted into rustls's queue and written when
//!   the proxy flushes a response; the session tickets rustls queues when the handshake ends
//!   (RFC 8446 section 4.6.1: any time after the client's Finished) go out with the first
//!   response instead of in a segment of their own, and a `close_notify` goes with the last
//!   response. A client then wakes once per answer, not three times.
//! - **Tickets as OpenSSL issues them**: two after a full handshake, one after a resumption
//!   (the client spent one ticket and gets one back). Whether the client offers a ticket is
//!   read from its ClientHello before rustls sees it ([`offers_psk`]).
//!
//! tokio-rustls writes each queue as soon as it fills, which is right for a general stream but
//! costs a proxy's clients a segment and a wake-up per handshake and per close.
use std::{
    io::{self, Read, Write},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use rustls::{ServerConfig, ServerConnection};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The two configurations of the listeners, the same in all but the tickets issued.
pub struct Configs {
    /// For a full handshake: two tickets.
    pub full: Arc<ServerConfig>,
    /// For a client that offers a ticket: one.
    pub resumed: Arc<ServerConfig>,
}

impl Configs {
    pub fn new(full: ServerConfig) -> Configs {
        let mut resumed = full.clone();
        resumed.send_tls13_tickets = 1;
        Configs {
            full: Arc::new(full),
            resumed: Arc::new(resumed),
        }
    }
}

/// A server-side TLS connection.
pub struct TlsStream {
    io: TcpStream,
    conn: ServerConnection,
    close_queued: bool,
    /// Decrypted bytes rustls holds for us: a read zeroes only that much of the caller's
    /// buffer (rustls reads into an initialized slice; zeroing all of a 16 KiB buffer for a
    /// 100-byte request was the largest single cost of a TLS keep-alive request).
    plaintext: usize,
}

/// Reads into rustls from the socket without blocking; not ready is WouldBlock, with the task
/// woken when it is. Through `poll_read`, not `try_read`: a read that does not fill rustls's
/// buffer drained the socket, and tokio then forgets the readiness, so the next read waits for
/// epoll instead of costing a `recvfrom` that fails with EAGAIN (0.7 of them a request).
struct SyncRead<'a, 'c>(&'a mut TcpStream, &'a mut Context<'c>);

impl Read for SyncRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.0).poll_read(self.1, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Writes rustls's queue to the socket without blocking, several records in one `writev`.
struct SyncWrite<'a>(&'a TcpStream);

impl Write for SyncWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Completes the server side of a TLS handshake on `io`. What rustls queues once a TLS 1.3
/// handshake is over (session tickets) stays queued until the first flush.
pub async fn accept(io: TcpStream, configs: &Configs) -> io::Result<TlsStream> {
    // The ClientHello decides the configuration; rustls reads it from here.
    let mut first = [0u8; 2048];
    let n = loop {
        io.readable().await?;
        match io.try_read(&mut first) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let config = match offers_psk(&first[..n]) {
        Some(true) => configs.resumed.clone(),
        _ => configs.full.clone(),
    };
    let mut conn = ServerConnection::new(config).map_err(tls_error)?;
    let mut hello = &first[..n];
    while !hello.is_empty() {
        conn.read_tls(&mut hello)?;
    }
    let mut s = TlsStream {
        io,
        conn,
        close_queued: false,
        plaintext: 0,
    };
    s.process()?;
    std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
    Ok(s)
}

impl TlsStream {
    pub fn get_ref(&self) -> (&TcpStream, &ServerConnection) {
        (&self.io, &self.conn)
    }

    /// Decrypts what was read; a fatal alert is queued for the peer and sent on a best-effort
    /// write before the error is returned.
    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.plaintext = state.plaintext_bytes_to_read();
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.write_tls(&mut SyncWrite(&self.io));
                Err(tls_error(e))
            }
        }
    }

    /// Decrypted bytes from rustls into `buf`; WouldBlock when it has none yet.
    fn read_plain(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        // With nothing decrypted, one byte is room enough to learn whether the stream ended or
        // more has to come from the socket.
        let want = self.plaintext.max(1).min(buf.remaining());
        let n = self.conn.reader().read(buf.initialize_unfilled_to(want))?;
        self.plaintext = self.plaintext.saturating_sub(n);
        buf.advance(n);
        Ok(())
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                ready!(self.poll_write_tls(cx))?;
                continue;
            }
            match self.conn.read_tls(&mut SyncRead(&mut self.io, cx)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => self.process()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // TLS 1.3: what is queued now is session tickets, which can wait for the first
        // response. TLS 1.2: the server's last flight (ticket, ChangeCipherSpec, Finished),
        // which the client waits for.
        if self.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            ready!(self.poll_write_tls(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes rustls's queue to the socket.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SyncWrite(&self.io)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether decrypted bytes wait to be read (or rustls needs no input to answer a read).
    pub fn buffered(&self) -> bool {
        !self.conn.wants_read()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.read_plain(buf) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the connection without close_notify: an end of stream for
                // HTTP, where every message is delimited.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.conn.read_tls(&mut SyncRead(&mut this.io, cx)) {
                Ok(0) => {
                    // End of the TCP stream: rustls reports it as such on the next read.
                    this.process()?;
                    match this.read_plain(buf) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => this.process()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(this.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // rustls takes what fits its queue (64 KiB by default): a large body goes out as it
        // fills, never queued whole.
        let n = this.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            ready!(this.poll_write_tls(cx))?;
            return Poll::Ready(this.conn.writer().write(buf));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_tls(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_queued {
            // With the last response, in the same write.
            this.conn.send_close_notify();
            this.close_queued = true;
        }
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Whether the TLS record at the start of `bytes` holds a whole ClientHello offering a
/// pre-shared key (RFC 8446 section 4.2.11: the `pre_shared_key` extension, type 41, comes
/// last). `None`: not a complete ClientHello in one record, so nothing can be said.
pub fn offers_psk(bytes: &[u8]) -> Option<bool> {
    let mut r = Reader(bytes);
    // TLSPlaintext: handshake(22), legacy version, length.
    if r.u8()? != 22 {
        return None;
    }
    r.take(2)?;
    let record = r.u16()? as usize;
    let mut r = Reader(r.take(record)?);
    // Handshake: client_hello(1), uint24 length.
    if r.u8()? != 1 {
        return None;
    }
    let len = (r.u8()? as usize) << 16 | r.u16()? as usize;
    let mut r = Reader(r.take(len)?);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(false);
    }
    let ext = r.u16()? as usize;
    let mut r = Reader(r.take(ext)?);
    while !r.0.is_empty() {
        let kind = r.u16()?;
        let len = r.u16()? as usize;
        r.take(len)?;
        if kind == 41 {
            return Some(true);
        }
    }
    Some(false)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests;
