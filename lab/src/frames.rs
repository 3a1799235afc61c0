//! VRRP frames for tests: valid adverts of either version and family, and every way of getting
//! one wrong.
use proxy_common::{
    auth::{self, Trailer, TRAILER_LEN},
    guard::{checksum, ip_pseudo_sum},
    maps::{to_words, v4_addr},
    vrrp::{
        Family, AUTH_NONE, AUTH_PASS, IPPROTO_VRRP, TYPE_ADVERTISEMENT, VRRP_MCAST_V4,
        VRRP_MCAST_V6, VRRP_TTL,
    },
};

/// How to fill the VRRP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// v3 with the IPv4 pseudo-header (keepalived's default); v2 always covers the message only.
    PseudoHeader,
    /// The VRRP message only.
    MessageOnly,
    /// A wrong checksum.
    Bad,
}

/// A VRRP advert inside IPv4 inside Ethernet, field by field.
#[derive(Clone, Debug)]
pub struct Advert {
    pub version: u8,
    pub kind: u8,
    pub vrid: u8,
    pub priority: u8,
    /// v3: centiseconds; v2: seconds.
    pub interval: u16,
    pub addrs: Vec<[u8; 4]>,
    /// Overrides Count IPvX Addr (to make it disagree with the addresses).
    pub count: Option<u8>,
    /// v2: (auth type, password).
    pub auth: (u8, [u8; 8]),
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub csum: Csum,
    /// 802.1Q tags to put in front of IPv4 (outermost first).
    pub vlans: Vec<u16>,
    /// Bytes of IPv4 options (a multiple of 4, at most 40).
    pub ip_options: usize,
    /// IPv4 flags and fragment offset word.
    pub frag: u16,
    /// Bytes of Ethernet padding after the IP packet.
    pub padding: usize,
    /// An `auth_hmac` trailer after the message.
    pub hmac: Option<Hmac>,
    /// Sent over IPv6 instead: then `src`, `dst`, `addrs`, `ip_options` and `frag` are not
    /// used (`ttl` is the hop limit).
    pub v6: Option<V6>,
}

/// The IPv6 part of an [`Advert`].
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub addrs: Vec<[u8; 16]>,
    /// Extension headers between the IPv6 header and VRRP, by type (0 hop-by-hop, 43
    /// routing, 44 fragment, 51 AH, 60 destination options), each the smallest of its kind.
    pub ext: Vec<u8>,
}

/// An IPv6 address from its text (for tests).
pub fn v6(a: &str) -> [u8; 16] {
    a.parse::<std::net::Ipv6Addr>()
        .expect("an IPv6 address")
        .octets()
}

/// An `auth_hmac` trailer, right or wrong in any part.
#[derive(Clone, Debug)]
pub struct Hmac {
    pub key_id: u8,
    /// The key the MAC is computed with.
    pub key: Vec<u8>,
    /// Sequence number: seconds, fraction and counter.
    pub seq: u64,
    /// Ext Type (1 is HMAC-SHA256).
    pub ext_type: u8,
    pub reserved: u16,
    /// Flip a bit of the MAC after computing it.
    pub bad_mac: bool,
    /// Send only this many bytes of the trailer.
    pub truncate: Option<usize>,
}

impl Hmac {
    /// A correct trailer with `key` as key `key_id` and sequence number `seq`.
    pub fn new(key_id: u8, key: &[u8], seq: u64) -> Self {
        Hmac {
            key_id,
            key: key.to_vec(),
            seq,
            ext_type: auth::EXT_HMAC_SHA256,
            reserved: 0,
            bad_mac: false,
            truncate: None,
        }
    }

    /// The sequence number of the wall clock now, plus `counter`.
    pub fn now_seq(counter: u16) -> u64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        auth::clock_seq(d.as_secs(), d.subsec_nanos()) | counter as u64
    }
}

impl Advert {
    /// A valid v3 advert: VRID 51, priority 100, 1 s, one address, from `src`.
    pub fn v3(src: [u8; 4]) -> Self {
        Advert {
            version: 3,
            kind: TYPE_ADVERTISEMENT,
            vrid: 51,
            priority: 100,
            interval: 100,
            addrs: vec![[198, 18, 0, 100]],
            count: None,
            auth: (AUTH_NONE, [0; 8]),
            src,
            dst: VRRP_MCAST_V4,
            ttl: VRRP_TTL,
            csum: Csum::PseudoHeader,
            vlans: Vec::new(),
            ip_options: 0,
            frag: 0,
            padding: 0,
            hmac: None,
            v6: None,
        }
    }

    /// A valid IPv6 advert: VRID 51, priority 100, 1 s, one address (2001:2::100), from
    /// `src` (a link-local address, as keepalived sends) to ff02::12.
    pub fn v3_ipv6(src: [u8; 16]) -> Self {
        Advert {
            v6: Some(V6 {
                src,
                dst: VRRP_MCAST_V6,
                addrs: vec![v6("2001:2::100")],
                ext: Vec::new(),
            }),
            ..Self::v3([0; 4])
        }
    }

    /// The family of the advert.
    pub fn family(&self) -> Family {
        if self.v6.is_some() {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// The source address as the guard's maps keep it.
    pub fn src_addr(&self) -> [u8; 16] {
        match &self.v6 {
            Some(v) => v.src,
            None => v4_addr(self.src),
        }
    }

    /// A valid v2 advert with PASS authentication `pass` (at most 8 bytes).
    pub fn v2(src: [u8; 4], pass: &str) -> Self {
        let mut p = [0u8; 8];
        p[..pass.len().min(8)].copy_from_slice(&pass.as_bytes()[..pass.len().min(8)]);
        Advert {
            version: 2,
            interval: 1,
            auth: (AUTH_PASS, p),
            csum: Csum::MessageOnly,
            ..Self::v3(src)
        }
    }

    /// The VRRP message.
    pub fn message(&self) -> Vec<u8> {
        let n = self.v6.as_ref().map_or(self.addrs.len(), |v| v.addrs.len());
        let mut m = vec![
            (self.version << 4) | (self.kind & 0x0f),
            self.vrid,
            self.priority,
            self.count.unwrap_or(n as u8),
        ];
        if self.version == 2 {
            m.push(self.auth.0);
            m.push(self.interval as u8);
        } else {
            m.push(((self.interval >> 8) & 0x0f) as u8);
            m.push(self.interval as u8);
        }
        m.extend_from_slice(&[0, 0]);
        match &self.v6 {
            Some(v) => v.addrs.iter().for_each(|a| m.extend_from_slice(a)),
            None => self.addrs.iter().for_each(|a| m.extend_from_slice(a)),
        }
        if self.version == 2 {
            m.extend_from_slice(&self.auth.1);
        }
        let pseudo = if self.version == 3 && self.csum == Csum::PseudoHeader {
            let (src, dst) = match &self.v6 {
                Some(v) => (v.src, v.dst),
                None => (v4_addr(self.src), v4_addr(self.dst)),
            };
            ip_pseudo_sum(&src, &dst, self.family(), IPPROTO_VRRP, m.len())
        } else {
            0
        };
        let mut c = checksum(&m, pseudo);
        if self.csum == Csum::Bad {
            c ^= 0x5a5a;
        }
        m[6..8].copy_from_slice(&c.to_be_bytes());
        if let Some(h) = &self.hmac {
            let mlen = m.len();
            m.resize(mlen + TRAILER_LEN, 0);
            let mut t = Trailer::new_unchecked(&mut m[mlen..]);
            t.set_header(h.key_id, h.seq);
            m[mlen] = h.ext_type;
            m[mlen + 2..mlen + 4].copy_from_slice(&h.reserved.to_be_bytes());
            let key = auth::midstates(h.key_id, &h.key);
            let pseudo = auth::pseudo(
                self.family(),
                self.version,
                self.vrid,
                &to_words(&self.src_addr()),
            );
            let mac = auth::advert_mac_simple(m.as_slice(), 0, mlen, &pseudo, &key)
                .expect("the whole trailer is there");
            let mut mac = auth::mac_bytes(&mac);
            if h.bad_mac {
                mac[15] ^= 1;
            }
            Trailer::new_unchecked(&mut m[mlen..]).set_mac(mac);
            if let Some(v) = &self.v6 {
                // Over IPv6 the checksum covers the trailer too (the kernel's transport
                // checksum, as keepalived has it computed).
                m[6..8].copy_from_slice(&[0, 0]);
                let pseudo = if self.csum == Csum::MessageOnly {
                    0
                } else {
                    ip_pseudo_sum(&v.src, &v.dst, Family::V6, IPPROTO_VRRP, m.len())
                };
                let mut c = checksum(&m, pseudo);
                if self.csum == Csum::Bad {
                    c ^= 0x5a5a;
                }
                m[6..8].copy_from_slice(&c.to_be_bytes());
            }
            if let Some(n) = h.truncate {
                m.truncate(mlen + n);
            }
        }
        m
    }

    /// The IP packet (IPv4, or IPv6 with its extension headers).
    pub fn packet(&self) -> Vec<u8> {
        let msg = self.message();
        if let Some(v) = &self.v6 {
            return ipv6_with(&v.ext, IPPROTO_VRRP, self.ttl, v.src, v.dst, &msg);
        }
        let ihl = 20 + self.ip_options;
        let total = (ihl + msg.len()) as u16;
        let mut p = vec![0x40 | (ihl / 4) as u8, 0xc0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0]); // id
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.extend_from_slice(&[self.ttl, IPPROTO_VRRP, 0, 0]);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        // Router Alert options (type 148, length 4) and NOPs fill the option space.
        let mut opts = Vec::new();
        while opts.len() < self.ip_options {
            if self.ip_options - opts.len() >= 4 {
                opts.extend_from_slice(&[148, 4, 0, 0]);
            } else {
                opts.push(1);
            }
        }
        p.extend_from_slice(&opts);
        let c = checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&msg);
        p
    }

    /// The Ethernet frame (destination: the VRRP multicast MAC, 01:00:5e:00:00:12 or
    /// 33:33:00:00:00:12).
    pub fn frame(&self) -> Vec<u8> {
        let (dst, ethertype): ([u8; 6], u16) = match self.v6 {
            Some(_) => ([0x33, 0x33, 0, 0, 0, 0x12], 0x86dd),
            None => ([0x01, 0x00, 0x5e, 0x00, 0x00, 0x12], 0x0800),
        };
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x00, 0x00, 0x5e, 0x00, 0x01, self.vrid]);
        for v in &self.vlans {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.packet());
        f.extend(std::iter::repeat_n(0u8, self.padding));
        f
    }
}

/// An Ethernet frame carrying something other than VRRP: `ethertype` and `payload`.
pub fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet of protocol `proto` with a 20-byte header and `payload`.
pub fn ipv4(proto: u8, ttl: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, ttl, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = checksum(&p, 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet of protocol `proto` right after a 40-byte header, with `payload`.
pub fn ipv6(proto: u8, hop_limit: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    ipv6_with(&[], proto, hop_limit, src, dst, payload)
}

/// An IPv6 packet with the extension headers `ext` (by type, see [`V6::ext`]) in front of
/// `payload` of protocol `proto`.
pub fn ipv6_with(
    ext: &[u8],
    proto: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
    payload: &[u8],
) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, kind) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        match kind {
            // Fragment: offset 0, more fragments set, identification 1.
            44 => chain.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 1]),
            // AH with an empty ICV: 12 bytes, length (12 / 4) - 2.
            51 => chain.extend_from_slice(&[next, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
            // Routing type 4 (segment routing) with no segments left.
            43 => chain.extend_from_slice(&[next, 0, 4, 0, 0, 0, 0, 0]),
            // Hop-by-hop and destination options: one PadN option filling 8 bytes.
            _ => chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
        }
    }
    let first = ext.first().copied().unwrap_or(proto);
    let len = (chain.len() + payload.len()) as u16;
    // Version 6, traffic class 0xc0 (as keepalived sends), no flow label.
    let mut p = vec![0x6c, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[first, hop_limit]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&chain);
    p.extend_from_slice(payload);
    p
}
