//! VRRP adverts as values: parse from and emit into the [`Packet`] view of `proxy-common`.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use proxy_common::{
    guard::pseudo_header_sum,
    vrrp::{self, message_len, Family, Packet, AUTH_NONE, AUTH_PASS, TYPE_ADVERTISEMENT},
};

/// A duration in centiseconds: the unit of the v3 Max Adver Int (RFC 5798 section 5.2.7).
/// v2 intervals are whole seconds and are carried here as multiples of 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centisecs(pub u16);

impl Centisecs {
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0 as u64 * 10)
    }

    /// The duration in centiseconds, if it is a whole number of them and fits 12 bits.
    pub fn from_duration(d: Duration) -> Option<Centisecs> {
        let ms = d.as_millis();
        (d.subsec_nanos().is_multiple_of(10_000_000) && ms.is_multiple_of(10) && ms / 10 <= 0x0fff)
            .then_some(Centisecs((ms / 10) as u16))
    }
}

/// v2 authentication (RFC 3768 section 5.3.6; type 2, IP AH, was removed and is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    /// Simple text password, zero padded to 8 bytes.
    Pass([u8; 8]),
}

/// How the v3 IPv4 checksum is computed (v2 is always message-only; IPv6 always has the
/// pseudo-header, RFC 9568 section 5.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    PseudoHeader,
    MessageOnly,
}

/// Why a message is not a usable advert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header or than what the header announces.
    #[error("truncated")]
    Truncated,
    /// Version other than 2 or 3.
    #[error("version {0} is not 2 or 3")]
    Version(u8),
    /// Type other than ADVERTISEMENT.
    #[error("type {0} is not an advertisement")]
    Type(u8),
    /// No address, or a length other than what Count IPvX Addr implies.
    #[error("length {len} does not match {count} addresses")]
    Length { len: usize, count: u8 },
    /// Checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// v2 Auth Type other than 0 or 1.
    #[error("authentication type {0} is not supported")]
    AuthType(u8),
    /// Advertisement interval of zero.
    #[error("advertisement interval 0")]
    Interval,
}

/// One advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// 2 or 3.
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    pub interval: Centisecs,
    /// The virtual addresses, all of the instance's family.
    pub addrs: Vec<IpAddr>,
    /// v2 only; always `Auth::None` for v3.
    pub auth: Auth,
}

impl Advert {
    /// Parses the VRRP message `msg` received from `src` to `dst` (both of the instance's
    /// family, which decides the length of the addresses in it).
    pub fn parse(
        msg: &[u8],
        mode: ChecksumMode,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<Advert, ParseError> {
        let family = family_of(src);
        let version = msg.first().map(|b| b >> 4).ok_or(ParseError::Truncated)?;
        if version != 2 && version != 3 {
            return Err(ParseError::Version(version));
        }
        let p = Packet::new_checked(msg, family).map_err(|_| ParseError::Truncated)?;
        // The guard's decoding of the fixed header (one view of the wire for both).
        let h: &[u8; vrrp::HEADER_LEN] = msg[..vrrp::HEADER_LEN]
            .try_into()
            .map_err(|_| ParseError::Truncated)?;
        let head = vrrp::Header::parse(h).map_err(|e| match e {
            vrrp::HeaderError::Version(v) => ParseError::Version(v),
            vrrp::HeaderError::Type(t) => ParseError::Type(t),
        })?;
        let count = head.count;
        // RFC 5798 section 7.1: the length must match the address count (trailing bytes are a
        // different message, not padding: the IP length delimits the message).
        if count == 0 || count > family.max_addrs() || msg.len() != head.message_len(family) {
            return Err(ParseError::Length {
                len: msg.len(),
                count,
            });
        }
        let pseudo = if uses_pseudo_header(version, mode, family) {
            pseudo_header_sum(src, dst, msg.len() as u16)
        } else {
            0
        };
        if !p.verify_checksum(pseudo) {
            return Err(ParseError::Checksum);
        }
        let auth = match head.auth_type {
            AUTH_NONE => Auth::None,
            AUTH_PASS => Auth::Pass(p.auth_data()),
            t => return Err(ParseError::AuthType(t)),
        };
        let interval = Centisecs(head.interval_cs);
        if interval.0 == 0 {
            return Err(ParseError::Interval);
        }
        Ok(Advert {
            version,
            vrid: head.vrid,
            priority: head.priority,
            interval,
            addrs: (0..count as usize).map(|i| ip_from(p.addr(i))).collect(),
            auth,
        })
    }

    /// Length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        let family = self.addrs.first().map_or(Family::V4, |a| family_of(*a));
        message_len(self.version, self.addrs.len() as u8, family)
    }

    /// The message sent from `src` to `dst` (of one family). Panics never: the engine only
    /// builds adverts from a validated config (1..=255 addresses of the instance's family, at
    /// most 64 of IPv6, v2 intervals in whole seconds, v2 only on IPv4); an address of the
    /// other family would be written as zeros.
    pub fn emit(&self, mode: ChecksumMode, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let family = family_of(src);
        let count = self.addrs.len().min(family.max_addrs() as usize) as u8;
        let mut buf = vec![0u8; message_len(self.version, count, family)];
        let mut p = Packet::new_unchecked(&mut buf[..], family);
        p.set_version_kind(self.version, TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_addr_count(count);
        for (i, a) in self.addrs.iter().take(count as usize).enumerate() {
            match (a, family) {
                (IpAddr::V4(a), Family::V4) => p.set_addr(i, &a.octets()),
                (IpAddr::V6(a), Family::V6) => p.set_addr(i, &a.octets()),
                _ => {}
            }
        }
        let pseudo = if self.version == 3 {
            p.set_max_adver_int(self.interval.0);
            if uses_pseudo_header(3, mode, family) {
                pseudo_header_sum(src, dst, buf.len() as u16)
            } else {
                0
            }
        } else {
            p.set_adver_int_secs((self.interval.0 / 100).min(255) as u8);
            match self.auth {
                Auth::None => p.set_auth_type(AUTH_NONE),
                Auth::Pass(pass) => {
                    p.set_auth_type(AUTH_PASS);
                    p.set_auth_data(pass);
                }
            }
            0
        };
        let mut p = Packet::new_unchecked(&mut buf[..], family);
        p.fill_checksum(pseudo);
        buf
    }
}

/// Whether a message's checksum covers the pseudo-header: always over IPv6 (RFC 9568 section
/// 5.2.8), for v3 over IPv4 as configured, never for v2.
pub fn uses_pseudo_header(version: u8, mode: ChecksumMode, family: Family) -> bool {
    version == 3 && (family == Family::V6 || mode == ChecksumMode::PseudoHeader)
}

/// The family of an address.
pub fn family_of(a: IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// An address from its 4 or 16 bytes.
fn ip_from(b: &[u8]) -> IpAddr {
    match b.len() {
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
    }
}

/// The IPv4 multicast destination of adverts.
pub const MCAST: Ipv4Addr = Ipv4Addr::new(
    vrrp::VRRP_MCAST_V4[0],
    vrrp::VRRP_MCAST_V4[1],
    vrrp::VRRP_MCAST_V4[2],
    vrrp::VRRP_MCAST_V4[3],
);

/// The IPv6 multicast destination of adverts, ff02::12.
pub const MCAST6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The multicast destination of adverts of `family`.
pub fn mcast(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(MCAST),
        Family::V6 => IpAddr::V6(MCAST6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VRRP message inside a captured Ethernet frame (Ethernet + 20-byte IPv4 header).
    fn fixture(name: &str, line: usize) -> Vec<u8> {
        fixture_frame(name, line)[34..].to_vec()
    }

    /// A captured Ethernet frame.
    fn fixture_frame(name: &str, line: usize) -> Vec<u8> {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let l = text.lines().nth(line).unwrap();
        let frame: Vec<u8> = (0..l.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
            .collect();
        frame
    }

    const KA4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const KA: IpAddr = IpAddr::V4(KA4);
    const MC: IpAddr = IpAddr::V4(MCAST);
    fn vips() -> Vec<IpAddr> {
        vec![
            Ipv4Addr::new(198, 18, 0, 100).into(),
            Ipv4Addr::new(198, 18, 0, 101).into(),
        ]
    }

    #[test]
    fn deconstruct_keepalived_v3() {
        let m = fixture("keepalived-v3.hex", 0);
        let p = Packet::new_checked(&m[..], Family::V4).unwrap();
        assert_eq!(
            (
                p.version(),
                p.kind(),
                p.vrid(),
                p.priority(),
                p.addr_count()
            ),
            (3, 1, 51, 110, 2)
        );
        assert_eq!(
            (p.reserved(), p.max_adver_int(), p.checksum()),
            (0, 100, 0x2cd1)
        );
        assert_eq!(p.addr(1), [198, 18, 0, 101]);
        assert!(p.verify_checksum(pseudo_header_sum(KA, MC, m.len() as u16)));
        assert!(
            !p.verify_checksum(0),
            "keepalived's default v3 checksum covers the pseudo-header"
        );
    }

    #[test]
    fn parse_and_emit_match_keepalived_byte_for_byte() {
        for (file, version, auth) in [
            ("keepalived-v3.hex", 3, Auth::None),
            ("keepalived-v2.hex", 2, Auth::Pass(*b"ChangeTh")),
        ] {
            for (line, priority) in [(0, 110), (1, 0)] {
                let m = fixture(file, line);
                let a = Advert::parse(&m, ChecksumMode::PseudoHeader, KA, MC).unwrap();
                let want = Advert {
                    version,
                    vrid: 51,
                    priority,
                    interval: Centisecs(100),
                    addrs: vips(),
                    auth,
                };
                assert_eq!(a, want, "{file} line {line}");
                assert_eq!(a.buffer_len(), m.len());
                assert_eq!(
                    a.emit(ChecksumMode::PseudoHeader, KA, MC),
                    m,
                    "{file} line {line}: emit"
                );
            }
        }
    }

    /// keepalived's IPv6 source (the link-local address of its interface) and the group.
    fn ka6() -> (IpAddr, IpAddr) {
        ("fe80::ff:fe00:1".parse().unwrap(), IpAddr::V6(MCAST6))
    }

    #[test]
    fn deconstruct_keepalived_ipv6() {
        let f = fixture_frame("keepalived-v3-ipv6.hex", 0);
        // Ethernet, then the IPv6 header: hop limit 255, next header 112, to ff02::12.
        assert_eq!(
            (f[12], f[13], f[14] >> 4, f[20], f[21]),
            (0x86, 0xdd, 6, 112, 255)
        );
        let m = &f[54..];
        let p = Packet::new_checked(m, Family::V6).unwrap();
        assert_eq!(
            (
                p.version(),
                p.vrid(),
                p.priority(),
                p.addr_count(),
                p.max_adver_int()
            ),
            (3, 51, 110, 2, 100)
        );
        assert_eq!(
            p.addr(1),
            "2001:2::101".parse::<Ipv6Addr>().unwrap().octets()
        );
        let (src, dst) = ka6();
        assert!(p.verify_checksum(pseudo_header_sum(src, dst, m.len() as u16)));
        assert!(
            !p.verify_checksum(0),
            "IPv6 always covers the pseudo-header"
        );
        assert!(
            Packet::new_checked(&m[..m.len() - 1], Family::V6).is_err(),
            "16 bytes per address"
        );
    }

    #[test]
    fn parse_and_emit_match_keepalived_ipv6_byte_for_byte() {
        let (src, dst) = ka6();
        let vips6: Vec<IpAddr> = vec![
            "2001:2::100".parse().unwrap(),
            "2001:2::101".parse().unwrap(),
        ];
        for (line, priority) in [(0, 110), (1, 0)] {
            let m = fixture_frame("keepalived-v3-ipv6.hex", line)[54..].to_vec();
            // The checksum mode is an IPv4 setting: IPv6 has the pseudo-header either way.
            for mode in [ChecksumMode::PseudoHeader, ChecksumMode::MessageOnly] {
                let a = Advert::parse(&m, mode, src, dst).unwrap();
                let want = Advert {
                    version: 3,
                    vrid: 51,
                    priority,
                    interval: Centisecs(100),
                    addrs: vips6.clone(),
                    auth: Auth::None,
                };
                assert_eq!(a, want, "line {line}");
                assert_eq!(a.buffer_len(), m.len());
                assert_eq!(a.emit(mode, src, dst), m, "line {line}: emit");
            }
            // The same bytes from another sender do not verify.
            let other: IpAddr = "fe80::ff:fe00:9".parse().unwrap();
            assert_eq!(
                Advert::parse(&m, ChecksumMode::PseudoHeader, other, dst),
                Err(ParseError::Checksum)
            );
            // Read as IPv4 the length does not add up.
            assert!(Advert::parse(&m, ChecksumMode::PseudoHeader, KA, MC).is_err());
        }
    }

    #[test]
    fn ipv6_adverts_carry_at_most_64_addresses() {
        let (src, dst) = ka6();
        let a = |n: u16| Advert {
            version: 3,
            vrid: 1,
            priority: 100,
            interval: Centisecs(100),
            addrs: (0..n)
                .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 1, i)))
                .collect(),
            auth: Auth::None,
        };
        assert_eq!(Family::V6.max_addrs(), 64);
        let m = a(64).emit(ChecksumMode::PseudoHeader, src, dst);
        assert_eq!(m.len(), 8 + 64 * 16);
        assert_eq!(
            Advert::parse(&m, ChecksumMode::PseudoHeader, src, dst),
            Ok(a(64))
        );
        // A 65th address does not fit: a peer's advert with more is refused.
        let mut big = a(64).emit(ChecksumMode::PseudoHeader, src, dst);
        big[3] = 65;
        big.extend_from_slice(&[0; 16]);
        assert!(matches!(
            Advert::parse(&big, ChecksumMode::PseudoHeader, src, dst),
            Err(ParseError::Length { .. })
        ));
    }

    #[test]
    fn message_only_checksum_roundtrip_and_mismatch() {
        let a = Advert {
            version: 3,
            vrid: 7,
            priority: 200,
            interval: Centisecs(1),
            addrs: vips(),
            auth: Auth::None,
        };
        let m = a.emit(ChecksumMode::MessageOnly, KA, MC);
        assert_eq!(
            Advert::parse(&m, ChecksumMode::MessageOnly, KA, MC).unwrap(),
            a
        );
        assert_eq!(
            Advert::parse(&m, ChecksumMode::PseudoHeader, KA, MC),
            Err(ParseError::Checksum)
        );
        // The pseudo-header binds the addresses: the same bytes from elsewhere do not verify.
        let m = a.emit(ChecksumMode::PseudoHeader, KA, MC);
        assert_eq!(
            Advert::parse(
                &m,
                ChecksumMode::PseudoHeader,
                Ipv4Addr::new(198, 18, 0, 9).into(),
                MC
            ),
            Err(ParseError::Checksum)
        );
    }

    #[test]
    fn bad_messages() {
        let good = fixture("keepalived-v3.hex", 0);
        let parse = |m: &[u8]| Advert::parse(m, ChecksumMode::PseudoHeader, KA, MC);
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "cut at {n}");
        }
        let mut m = good.clone();
        m[0] = 0x41;
        assert_eq!(parse(&m), Err(ParseError::Version(4)));
        let mut m = good.clone();
        m[0] = 0x32;
        assert_eq!(parse(&m), Err(ParseError::Type(2)));
        let mut m = good.clone();
        m.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse(&m), Err(ParseError::Length { len: 20, count: 2 }));
        let mut m = good.clone();
        m[9] ^= 1;
        assert_eq!(parse(&m), Err(ParseError::Checksum));
        let zero = Advert {
            version: 3,
            vrid: 1,
            priority: 1,
            interval: Centisecs(0),
            addrs: vips(),
            auth: Auth::None,
        };
        assert_eq!(
            parse(&zero.emit(ChecksumMode::PseudoHeader, KA, MC)),
            Err(ParseError::Interval)
        );
    }

    #[test]
    fn centisecs() {
        assert_eq!(
            Centisecs::from_duration(Duration::from_millis(10)),
            Some(Centisecs(1))
        );
        assert_eq!(
            Centisecs::from_duration(Duration::from_millis(40_950)),
            Some(Centisecs(4095))
        );
        assert_eq!(
            Centisecs::from_duration(Duration::from_millis(40_960)),
            None
        );
        assert_eq!(Centisecs::from_duration(Duration::from_millis(15)), None);
        assert_eq!(Centisecs(100).as_duration(), Duration::from_secs(1));
    }
}
