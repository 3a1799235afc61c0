//! After a 101: bytes flow both ways until either side closes, or until the window of a
//! handover of the connection's address ends. A WebSocket is then closed the way RFC 6455
//! wants (section 7.4.1, code 1001 "going away"): between two frames of the server's stream,
//! the proxy sends the client a close frame and the server a masked one, waits briefly for the
//! client's answer, and closes. Any other upgraded protocol is cut.
use std::{
    future::Future,
    pin::pin,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A close frame with status 1001 from the server's side (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];
/// How long a frame in progress may take to end once the window is over, and how long the
/// client has to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where the frames of one direction of a WebSocket end (RFC 6455 section 5.2).
#[derive(Debug, Default)]
pub(super) struct Frames {
    /// Bytes of the current frame's payload still to come.
    payload_left: u64,
    /// The current frame's header so far (at most 14 bytes).
    head: [u8; 14],
    head_len: usize,
}

impl Frames {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.payload_left == 0 && self.head_len == 0
    }

    /// Passes the bytes of `data` up to the end of the current frame (all of `data` if the
    /// frame goes on), and returns how many. At a boundary, that is a whole frame's worth or
    /// less: call again for the next one.
    pub fn take(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        loop {
            if self.payload_left > 0 {
                let n = (data.len() - used).min(self.payload_left as usize);
                self.payload_left -= n as u64;
                used += n;
                return used;
            }
            if used == data.len() {
                return used;
            }
            self.head[self.head_len] = data[used];
            self.head_len += 1;
            used += 1;
            if let Some((len, payload)) = header(&self.head[..self.head_len]) {
                if self.head_len == len {
                    self.head_len = 0;
                    self.payload_left = payload;
                    if payload == 0 {
                        return used;
                    }
                }
            }
        }
    }
}

/// The length of a frame header and the payload length it announces, once enough of it is
/// there to tell (`h` holds its first bytes).
fn header(h: &[u8]) -> Option<(usize, u64)> {
    let second = *h.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (ext, payload) = match second & 0x7f {
        126 => (2, u16::from_be_bytes(h.get(2..4)?.try_into().ok()?) as u64),
        127 => (8, u64::from_be_bytes(h.get(2..10)?.try_into().ok()?)),
        n => (0, n as u64),
    };
    Some((2 + ext + mask, payload))
}

/// A close frame with status 1001 from the client's side: masked (section 5.3), with a mask
/// from the clock (the server only unmasks it).
fn close_to_server() -> [u8; 8] {
    let m = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5a5a_5a5a, |d| d.subsec_nanos()))
    .to_be_bytes();
    [0x88, 0x82, m[0], m[1], m[2], m[3], 0x03 ^ m[0], 0xe9 ^ m[1]]
}

/// Copies both ways between `client` and `server` until both sides closed, or `cut` resolves
/// (then a WebSocket, `websocket`, is closed with 1001 between frames; anything else ends at
/// once). The two directions run concurrently: a side that stops reading holds up only its
/// own direction, as with `copy_bidirectional`.
pub(super) async fn pump<C, U>(
    client: &mut C,
    server: &mut U,
    cut: impl Future<Output = ()>,
    websocket: bool,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    let closing = AtomicBool::new(false);
    let wake = tokio::sync::Notify::new();
    let ended = {
        // Client to server, as it comes.
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match client_r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = server_w.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        if write(&mut server_w, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        // Server to client, frame by frame for a WebSocket: once closing, no byte past the
        // end of the frame in progress.
        let down = async {
            let mut frames = Frames::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if closing.load(Ordering::Relaxed) && frames.at_boundary() {
                    return Ended::Boundary;
                }
                let r = tokio::select! {
                    r = server_r.read(&mut buf) => r,
                    () = wake.notified() => continue,
                };
                let n = match r {
                    Ok(0) | Err(_) => {
                        let _ = client_w.shutdown().await;
                        return Ended::Closed;
                    }
                    Ok(n) => n,
                };
                let mut chunk = &buf[..n];
                if websocket {
                    let mut passed = 0;
                    while passed < chunk.len()
                        && !(closing.load(Ordering::Relaxed) && frames.at_boundary())
                    {
                        passed += frames.take(&chunk[passed..]);
                    }
                    chunk = &chunk[..passed];
                }
                if write(&mut client_w, chunk).await.is_err() {
                    return Ended::Closed;
                }
            }
        };
        let mut cut = pin!(cut);
        let (mut up, mut down) = (pin!(up), pin!(down));
        let (mut up_done, mut down_done) = (false, false);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let by = deadline.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                () = &mut up, if !up_done => {
                    up_done = true;
                    if down_done {
                        break Ended::Closed;
                    }
                }
                e = &mut down, if !down_done => match e {
                    Ended::Closed => {
                        down_done = true;
                        if up_done {
                            break Ended::Closed;
                        }
                    }
                    boundary => break boundary,
                },
                () = &mut cut, if deadline.is_none() => {
                    if !websocket {
                        break Ended::Cut;
                    }
                    closing.store(true, Ordering::Relaxed);
                    wake.notify_one();
                    deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                () = tokio::time::sleep_until(by), if deadline.is_some() => break Ended::Cut,
            }
        }
    };
    if ended == Ended::Boundary {
        close_websocket(&mut client_r, &mut client_w, &mut server_w).await;
    }
}

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Both sides closed (or a write failed).
    Closed,
    /// The handover window ended: cut.
    Cut,
    /// The window ended and the server's stream is between two WebSocket frames: close it.
    Boundary,
}

/// Writes all of `data` and flushes it (a TLS stream holds written bytes until a flush).
async fn write<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Sends both sides a 1001 close, gives the client a moment to answer, and returns (the
/// caller drops both connections). Every step is bounded: a side that stopped reading holds
/// nothing up for long.
async fn close_websocket<R, W, S>(client_r: &mut R, client_w: &mut W, server_w: &mut S)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: AsyncWrite + Unpin,
{
    use tokio::time::timeout;
    let _ = timeout(CLOSE_GRACE, write(server_w, &close_to_server())).await;
    let _ = timeout(CLOSE_GRACE, server_w.shutdown()).await;
    if !matches!(
        timeout(CLOSE_GRACE, write(client_w, &CLOSE_TO_CLIENT)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // The client answers with its own close frame (and may have been sending meanwhile):
    // read until it closes or the grace ends, so its answer does not meet a reset.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(n) = client_r.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let _ = timeout(CLOSE_GRACE, client_w.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(masked: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x61, payload));
        f
    }

    /// Feeds `stream` to a tracker in pieces of `step` bytes; the offsets where it was at a
    /// boundary after a piece ended exactly at one.
    fn boundaries(stream: &[u8], step: usize) -> Vec<usize> {
        let mut f = Frames::default();
        let mut at = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let end = (pos + step).min(stream.len());
            let mut piece = &stream[pos..end];
            while !piece.is_empty() {
                let n = f.take(piece);
                pos += n;
                piece = &piece[n..];
                if f.at_boundary() {
                    at.push(pos);
                }
            }
        }
        at
    }

    #[test]
    fn frame_ends_are_found_whatever_the_pieces() {
        let sizes = [0usize, 5, 125, 126, 300, 65535, 70000];
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            stream.extend(frame(i % 2 == 1, n));
            ends.push(stream.len());
        }
        for step in [1, 2, 3, 7, 100, 4096, stream.len()] {
            assert_eq!(boundaries(&stream, step), ends, "pieces of {step}");
        }
    }

    #[test]
    fn the_close_frames_say_going_away() {
        assert_eq!(header(&CLOSE_TO_CLIENT), Some((2, 2)));
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
        let c = close_to_server();
        assert_eq!(header(&c), Some((6, 2)));
        let code = [c[6] ^ c[2], c[7] ^ c[3]];
        assert_eq!(u16::from_be_bytes(code), 1001);
    }

    #[tokio::test]
    async fn a_websocket_is_closed_with_1001_between_frames_when_the_window_ends() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1 << 16);
        let (mut proxy_server, mut server) = tokio::io::duplex(1 << 16);
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
        let pump = tokio::spawn(async move {
            pump(
                &mut proxy_client,
                &mut proxy_server,
                async {
                    let _ = cut_rx.await;
                },
                true,
            )
            .await;
        });
        // Half a frame from the server, then the window ends: the frame is finished first.
        let f = frame(false, 10);
        server.write_all(&f[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        cut_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.write_all(&f[5..]).await.unwrap();
        server.write_all(&frame(false, 3)).await.unwrap(); // never reaches the client
        let mut got = vec![0u8; f.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..f.len()], &f[..]);
        assert_eq!(&got[f.len()..], &CLOSE_TO_CLIENT);
        // The server got a masked 1001 close.
        let mut close = [0u8; 8];
        server.read_exact(&mut close).await.unwrap();
        assert_eq!(
            u16::from_be_bytes([close[6] ^ close[2], close[7] ^ close[3]]),
            1001
        );
        drop(client);
        pump.await.unwrap();
    }
}
