//! VRRP adverts as values: parse from and emit into the [`Packet`] view of `proxy-common`.
use std::{net::Ipv4Addr, time::Duration};

use proxy_common::{
    guard::pseudo_header_sum,
    vrrp::{self, message_len, Packet, AUTH_NONE, AUTH_PASS, TYPE_ADVERTISEMENT},
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

/// How the v3 IPv4 checksum is computed (v2 is always message-only).
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
    pub addrs: Vec<Ipv4Addr>,
    /// v2 only; always `Auth::None` for v3.
    pub auth: Auth,
}

impl Advert {
    /// Parses the VRRP message `msg` received from `src` to `dst`.
    pub fn parse(
        msg: &[u8],
        mode: ChecksumMode,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Advert, ParseError> {
        let version = msg.first().map(|b| b >> 4).ok_or(ParseError::Truncated)?;
        if version != 2 && version != 3 {
            return Err(ParseError::Version(version));
        }
        let p = Packet::new_checked(msg).map_err(|_| ParseError::Truncated)?;
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
        if count == 0 || msg.len() != head.message_len() {
            return Err(ParseError::Length {
                len: msg.len(),
                count,
            });
        }
        let pseudo = if version == 3 && mode == ChecksumMode::PseudoHeader {
            pseudo_header_sum(src.octets(), dst.octets(), msg.len() as u16)
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
            addrs: (0..count as usize)
                .map(|i| Ipv4Addr::from(p.addr(i)))
                .collect(),
            auth,
        })
    }

    /// Length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        message_len(self.version, self.addrs.len() as u8)
    }

    /// The message sent from `src` to `dst`. Panics never: the engine only builds adverts
    /// from a validated config (1..=255 addresses, v2 intervals in whole seconds).
    pub fn emit(&self, mode: ChecksumMode, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let count = self.addrs.len().min(255) as u8;
        let mut buf = vec![0u8; message_len(self.version, count)];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_kind(self.version, TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_addr_count(count);
        for (i, a) in self.addrs.iter().take(255).enumerate() {
            p.set_addr(i, a.octets());
        }
        let pseudo = if self.version == 3 {
            p.set_max_adver_int(self.interval.0);
            if mode == ChecksumMode::PseudoHeader {
                pseudo_header_sum(src.octets(), dst.octets(), buf.len() as u16)
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
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(pseudo);
        buf
    }
}

/// The multicast destination of adverts.
pub const MCAST: Ipv4Addr = Ipv4Addr::new(
    vrrp::VRRP_MCAST_V4[0],
    vrrp::VRRP_MCAST_V4[1],
    vrrp::VRRP_MCAST_V4[2],
    vrrp::VRRP_MCAST_V4[3],
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The VRRP message inside a captured Ethernet frame (Ethernet + 20-byte IPv4 header).
    fn fixture(name: &str, line: usize) -> Vec<u8> {
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
        frame[34..].to_vec()
    }

    const KA: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    fn vips() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 0, 101),
        ]
    }

    #[test]
    fn deconstruct_keepalived_v3() {
        let m = fixture("keepalived-v3.hex", 0);
        let p = Packet::new_checked(&m[..]).unwrap();
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
        assert!(p.verify_checksum(pseudo_header_sum(
            KA.octets(),
            MCAST.octets(),
            m.len() as u16
        )));
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
                let a = Advert::parse(&m, ChecksumMode::PseudoHeader, KA, MCAST).unwrap();
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
                    a.emit(ChecksumMode::PseudoHeader, KA, MCAST),
                    m,
                    "{file} line {line}: emit"
                );
            }
        }
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
        let m = a.emit(ChecksumMode::MessageOnly, KA, MCAST);
        assert_eq!(
            Advert::parse(&m, ChecksumMode::MessageOnly, KA, MCAST).unwrap(),
            a
        );
        assert_eq!(
            Advert::parse(&m, ChecksumMode::PseudoHeader, KA, MCAST),
            Err(ParseError::Checksum)
        );
        // The pseudo-header binds the addresses: the same bytes from elsewhere do not verify.
        let m = a.emit(ChecksumMode::PseudoHeader, KA, MCAST);
        assert_eq!(
            Advert::parse(
                &m,
                ChecksumMode::PseudoHeader,
                Ipv4Addr::new(198, 18, 0, 9),
                MCAST
            ),
            Err(ParseError::Checksum)
        );
    }

    #[test]
    fn bad_messages() {
        let good = fixture("keepalived-v3.hex", 0);
        let parse = |m: &[u8]| Advert::parse(m, ChecksumMode::PseudoHeader, KA, MCAST);
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
            parse(&zero.emit(ChecksumMode::PseudoHeader, KA, MCAST)),
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
