//! Sending adverts: a raw IPv4 socket for protocol 112 bound to the instance's interface.
//! Receiving is the guard's job; this socket drops whatever it would receive (a classic BPF
//! filter returning 0), and its existence keeps the kernel from answering adverts with ICMP
//! protocol-unreachable.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd as _,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use super::packet::{Advert, ChecksumMode, MCAST};

pub struct AdvertSocket {
    sock: Socket,
    src: Ipv4Addr,
    /// 224.0.0.18, or each peer with `unicast = true`.
    dsts: Vec<Ipv4Addr>,
    mode: ChecksumMode,
    iface: String,
}

impl AdvertSocket {
    /// Opens the socket on `iface`, sending from `src` to `dsts` (empty: multicast).
    pub fn open(
        iface: &str,
        src: Ipv4Addr,
        dsts: &[Ipv4Addr],
        mode: ChecksumMode,
    ) -> anyhow::Result<Self> {
        let ctx = || format!("VRRP socket on {iface}");
        let sock =
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).with_context(ctx)?;
        sock.bind_device(Some(iface.as_bytes())).with_context(ctx)?;
        sock.bind(&SocketAddrV4::new(src, 0).into())
            .with_context(|| format!("binding the VRRP socket to {src}"))?;
        // RFC 5798 section 5.1.1.3: TTL 255. keepalived also marks adverts CS6 (TOS 0xc0).
        sock.set_ttl_v4(255).with_context(ctx)?;
        sock.set_multicast_ttl_v4(255).with_context(ctx)?;
        sock.set_tos_v4(0xc0).with_context(ctx)?;
        sock.set_multicast_if_v4(&src).with_context(ctx)?;
        sock.set_multicast_loop_v4(false).with_context(ctx)?;
        sock.set_nonblocking(true).with_context(ctx)?;
        drop_all(&sock).with_context(ctx)?;
        Ok(AdvertSocket {
            sock,
            src,
            dsts: if dsts.is_empty() {
                vec![MCAST]
            } else {
                dsts.to_vec()
            },
            mode,
            iface: iface.to_owned(),
        })
    }

    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    /// Sends `advert` to `dst` only.
    pub fn send_to(&self, advert: &Advert, dst: Ipv4Addr) -> anyhow::Result<()> {
        let msg = advert.emit(self.mode, self.src, dst);
        self.sock
            .send_to(&msg, &SocketAddrV4::new(dst, 0).into())
            .with_context(|| format!("sending an advert to {dst} on {}", self.iface))?;
        Ok(())
    }

    /// Sends `advert` to every destination.
    pub fn send(&self, advert: &Advert) -> anyhow::Result<()> {
        for d in &self.dsts {
            let msg = advert.emit(self.mode, self.src, *d);
            self.sock
                .send_to(&msg, &SocketAddrV4::new(*d, 0).into())
                .with_context(|| format!("sending an advert to {d} on {}", self.iface))?;
        }
        Ok(())
    }
}

/// Attaches a filter that accepts nothing.
fn drop_all(sock: &Socket) -> std::io::Result<()> {
    let mut reject = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    crate::dataplane::raw::attach_filter(sock.as_fd(), &mut reject)
}
