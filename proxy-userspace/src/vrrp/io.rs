//! Sending adverts: a raw socket for protocol 112 (IPv4 or IPv6, the instance's family) bound
//! to the instance's interface. Receiving is the guard's job; this socket drops whatever it
//! would receive (a classic BPF filter returning 0), and its existence keeps the kernel from
//! answering adverts with ICMP protocol-unreachable. It joins the VRRP group on its interface,
//! so that a network card that filters multicast lets the group's frames in for the guard.
use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsFd as _,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use proxy_common::{
    guard::pseudo_header_sum,
    vrrp::{Family, Packet},
};

use super::{
    auth::{wall_clock, Signer},
    packet::{family_of, mcast, uses_pseudo_header, Advert, ChecksumMode, MCAST, MCAST6},
};

pub struct AdvertSocket {
    sock: Socket,
    src: IpAddr,
    /// The interface's index: the scope of IPv6 link-local addresses.
    ifindex: u32,
    /// The VRRP group, or each peer with `unicast = true`.
    dsts: Vec<IpAddr>,
    mode: ChecksumMode,
    iface: String,
    /// `auth_hmac` signing, when the instance signs.
    signer: Option<Signer>,
}

impl AdvertSocket {
    /// Opens the socket on `iface` (index `ifindex`), sending from `src` to `dsts` (empty:
    /// the group of `src`'s family).
    pub fn open(
        iface: &str,
        ifindex: u32,
        src: IpAddr,
        dsts: &[IpAddr],
        mode: ChecksumMode,
    ) -> anyhow::Result<Self> {
        let ctx = || format!("VRRP socket on {iface}");
        let domain = match src {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(112))).with_context(ctx)?;
        sock.bind_device(Some(iface.as_bytes())).with_context(ctx)?;
        if src.is_ipv6() {
            // A link-local address is tentative for a second or two after the link comes up
            // (duplicate address detection): bind to it anyway; adverts go out once it is
            // usable, rather than the instance failing to start.
            sock.set_freebind_v6(true).with_context(ctx)?;
        }
        sock.bind(&sockaddr(src, ifindex).into())
            .with_context(|| format!("binding the VRRP socket to {src} on {iface}"))?;
        match src {
            IpAddr::V4(src4) => {
                // RFC 5798 section 5.1.1.3: TTL 255. keepalived also marks adverts CS6 (TOS
                // 0xc0).
                sock.set_ttl_v4(255).with_context(ctx)?;
                sock.set_multicast_ttl_v4(255).with_context(ctx)?;
                sock.set_tos_v4(0xc0).with_context(ctx)?;
                sock.set_multicast_if_v4(&src4).with_context(ctx)?;
                sock.set_multicast_loop_v4(false).with_context(ctx)?;
                sock.join_multicast_v4(&MCAST, &src4)
                    .with_context(|| format!("joining {MCAST} on {iface}"))?;
            }
            IpAddr::V6(_) => {
                // RFC 9568 section 5.1.2.3: hop limit 255, to the group and to unicast peers
                // alike; traffic class CS6 as keepalived sends.
                sock.set_unicast_hops_v6(255).with_context(ctx)?;
                sock.set_multicast_hops_v6(255).with_context(ctx)?;
                sock.set_tclass_v6(0xc0).with_context(ctx)?;
                sock.set_multicast_if_v6(ifindex).with_context(ctx)?;
                sock.set_multicast_loop_v6(false).with_context(ctx)?;
                sock.join_multicast_v6(&MCAST6, ifindex)
                    .with_context(|| format!("joining {MCAST6} on {iface}"))?;
            }
        }
        sock.set_nonblocking(true).with_context(ctx)?;
        drop_all(&sock).with_context(ctx)?;
        Ok(AdvertSocket {
            sock,
            src,
            ifindex,
            dsts: if dsts.is_empty() {
                vec![mcast(family_of(src))]
            } else {
                dsts.to_vec()
            },
            mode,
            iface: iface.to_owned(),
            signer: None,
        })
    }

    pub fn src(&self) -> IpAddr {
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
    pub fn send_to(&mut self, advert: &Advert, dst: IpAddr) -> anyhow::Result<()> {
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
    fn send_each(&mut self, advert: &Advert, dsts: &[IpAddr]) -> anyhow::Result<()> {
        let Some(first) = dsts.first() else {
            return Ok(());
        };
        let mut msg = advert.emit(self.mode, self.src, *first);
        let mlen = msg.len();
        let family = family_of(self.src);
        if let Some(s) = &mut self.signer {
            s.sign(&mut msg, self.src, wall_clock());
            if family == Family::V6 {
                // The IPv6 checksum is a transport checksum: it covers the trailer too (the
                // MAC reads the checksum as zero, so it is filled after signing).
                fill_whole_checksum(&mut msg, self.src, *first);
            }
        }
        for (i, d) in dsts.iter().enumerate() {
            if i > 0 && family == Family::V6 {
                fill_whole_checksum(&mut msg, self.src, *d);
            } else if i > 0 && uses_pseudo_header(advert.version, self.mode, family) {
                let pseudo = pseudo_header_sum(self.src, *d, mlen as u16);
                Packet::new_unchecked(&mut msg[..], family).fill_checksum(pseudo);
            }
            self.sock
                .send_to(&msg, &sockaddr(*d, self.ifindex).into())
                .with_context(|| format!("sending an advert to {d} on {}", self.iface))?;
        }
        Ok(())
    }
}

/// Fills the checksum of the IPv6 payload `msg` (a message, and a trailer if signed) sent from
/// `src` to `dst`: the transport checksum over all of it, as the kernel computes it for
/// keepalived with `IPV6_CHECKSUM` (RFC 8200 section 8.1).
pub fn fill_whole_checksum(msg: &mut [u8], src: IpAddr, dst: IpAddr) {
    msg[6..8].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header_sum(src, dst, msg.len() as u16);
    let c = proxy_common::guard::checksum(msg, pseudo);
    msg[6..8].copy_from_slice(&c.to_be_bytes());
}

/// `a` as a socket address (port 0); an IPv6 link-local or multicast address is scoped to
/// `ifindex`.
fn sockaddr(a: IpAddr, ifindex: u32) -> SocketAddr {
    match a {
        IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, 0)),
        IpAddr::V6(a) => {
            let scoped = a.is_unicast_link_local() || a.is_multicast();
            SocketAddr::V6(SocketAddrV6::new(a, 0, 0, if scoped { ifindex } else { 0 }))
        }
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
