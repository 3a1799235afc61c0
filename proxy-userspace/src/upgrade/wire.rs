//! The channel between a running hapd and its successor: a `SOCK_SEQPACKET` socket pair (one
//! message per send, no framing to write), JSON messages, and listening sockets passed with
//! `SCM_RIGHTS`.
use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{bail, Context as _};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;

use super::Message;

/// The largest message (the JSON of an offer or of the engines' state is far smaller).
const MAX_MESSAGE: usize = 1 << 20;

/// Descriptors per message: below the kernel's `SCM_MAX_FD` (253).
const FDS_PER_MESSAGE: usize = 250;

/// One end of the channel.
pub struct Channel(AsyncFd<OwnedFd>);

impl Channel {
    /// A connected pair, both ends close-on-exec and non-blocking (the caller clears
    /// close-on-exec on the end it gives a child).
    pub fn pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .context("creating the upgrade channel (socketpair)")
    }

    /// Wraps one end (made non-blocking here); must run inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> anyhow::Result<Channel> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the OwnedFd is open and stays so until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| e.into_parts().1)
            .context("polling the upgrade channel")?;
        Ok(Channel(fd))
    }

    pub async fn send(&self, m: &Message) -> anyhow::Result<()> {
        let json = serde_json::to_vec(m)?;
        self.send_raw(&json, &[]).await
    }

    /// Sends `fds` in as many [`Message::Fds`] as needed.
    pub async fn send_fds(&self, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            let json = serde_json::to_vec(&Message::Fds { count: chunk.len() })?;
            let raw: Vec<RawFd> = chunk.iter().map(|f| f.as_raw_fd()).collect();
            self.send_raw(&json, &raw).await?;
        }
        Ok(())
    }

    async fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> anyhow::Result<()> {
        if bytes.len() > MAX_MESSAGE {
            bail!("upgrade message of {} bytes is too long", bytes.len());
        }
        loop {
            let mut ready = self.0.writable().await?;
            let sent = ready.try_io(|fd| {
                let iov = [IoSlice::new(bytes)];
                let rights = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
                sendmsg::<()>(
                    fd.get_ref().as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(r) => {
                    r.context("sending on the upgrade channel")?;
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and the descriptors that came with it. The other end closing is an
    /// error.
    pub async fn recv(&self) -> anyhow::Result<(Message, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut ready = self.0.readable().await?;
            let got = ready.try_io(|fd| {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
                let msg = recvmsg::<()>(
                    fd.get_ref().as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        // SAFETY: the kernel just installed these descriptors in this
                        // process for us; nothing else owns them.
                        fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                Ok((msg.bytes, truncated, fds))
            });
            let (n, truncated, fds) = match got {
                Ok(r) => r.context("receiving on the upgrade channel")?,
                Err(_would_block) => continue,
            };
            if n == 0 {
                bail!("the other process closed the upgrade channel");
            }
            if truncated {
                bail!("an upgrade message was truncated");
            }
            let m = serde_json::from_slice(&buf[..n]).context("an upgrade message")?;
            return Ok((m, fds));
        }
    }
}
