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

use proxy_common::{guard::pseudo_header_sum, vrrp::Packet};

use super::{
    auth::{wall_clock, Signer},
    packet::{Advert, ChecksumMode, MCAST},
};

pub struct AdvertSocket {
    sock: Socket,
    src: Ipv4Addr,
    /// 224.0.0.18, or each peer with `unicast = true`.
    dsts: Vec<Ipv4Addr>,
    mode: ChecksumMode,
    iface: String,
    /// `auth_hmac` signing, when the instance signs.
    signer: Option<Signer>,
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
            signer: None,
        })
    }

    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    /// Signs from now on with `signer` (`None`: sends adverts without a trailer).
    pub fn set_signer(&mut self, signer: Option<Signer>) {
        self.signer = signer;
    }

    /// Takes the signer out (to carry its sequence into a replacement).
    pub fn take_signer(&mut self) -> Option<Signer> {
        self.signer.take()
    }

    /// The sequence number of the last signed advert (0: none).
    pub fn last_seq(&self) -> u64 {
        self.signer.as_ref().map_or(0, Signer::last_seq)
    }

    /// Signs the next adverts above `seq` (see [`Signer::continue_after`]).
    pub fn continue_after(&mut self, seq: u64) {
        if let Some(s) = &mut self.signer {
            s.continue_after(seq);
        }
    }

    /// The key ID adverts are signed with, if they are.
    pub fn signing_key(&self) -> Option<u8> {
        self.signer.as_ref().map(Signer::key_id)
    }

    /// Sends `advert` to `dst` only.
    pub fn send_to(&mut self, advert: &Advert, dst: Ipv4Addr) -> anyhow::Result<()> {
        self.send_each(advert, &[dst])
    }

    /// Sends `advert` to every destination.
    pub fn send(&mut self, advert: &Advert) -> anyhow::Result<()> {
        let dsts = std::mem::take(&mut self.dsts);
        let r = self.send_each(advert, &dsts);
        self.dsts = dsts;
        r
    }

    /// One logical advert to each of `dsts`: built and signed once (one sequence number, as
    /// keepalived sends to unicast peers), with the checksum filled per destination.
    fn send_each(&mut self, advert: &Advert, dsts: &[Ipv4Addr]) -> anyhow::Result<()> {
        let Some(first) = dsts.first() else {
            return Ok(());
        };
        let mut msg = advert.emit(self.mode, self.src, *first);
        let mlen = msg.len();
        if let Some(s) = &mut self.signer {
            s.sign(&mut msg, self.src, wall_clock());
        }
        for (i, d) in dsts.iter().enumerate() {
            if i > 0 && self.mode == ChecksumMode::PseudoHeader && advert.version == 3 {
                let pseudo = pseudo_header_sum(self.src.octets(), d.octets(), mlen as u16);
                Packet::new_unchecked(&mut msg[..]).fill_checksum(pseudo);
            }
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
