//! VRRP frames for tests: valid adverts of either version and every way of getting one wrong.
use proxy_common::{
    auth::{self, Trailer, TRAILER_LEN},
    guard::{checksum, pseudo_header_sum},
    vrrp::{AUTH_NONE, AUTH_PASS, IPPROTO_VRRP, TYPE_ADVERTISEMENT, VRRP_MCAST_V4, VRRP_TTL},
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
        let mut m = vec![
            (self.version << 4) | (self.kind & 0x0f),
            self.vrid,
            self.priority,
            self.count.unwrap_or(self.addrs.len() as u8),
        ];
        if self.version == 2 {
            m.push(self.auth.0);
            m.push(self.interval as u8);
        } else {
            m.push(((self.interval >> 8) & 0x0f) as u8);
            m.push(self.interval as u8);
        }
        m.extend_from_slice(&[0, 0]);
        for a in &self.addrs {
            m.extend_from_slice(a);
        }
        if self.version == 2 {
            m.extend_from_slice(&self.auth.1);
        }
        let pseudo = if self.version == 3 && self.csum == Csum::PseudoHeader {
            pseudo_header_sum(self.src, self.dst, m.len() as u16)
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
            let pseudo = auth::pseudo_v4(self.version, self.vrid, self.src);
            let mac = auth::advert_mac_simple(m.as_slice(), 0, mlen, &pseudo, &key)
                .expect("the whole trailer is there");
            let mut mac = auth::mac_bytes(&mac);
            if h.bad_mac {
                mac[15] ^= 1;
            }
            Trailer::new_unchecked(&mut m[mlen..]).set_mac(mac);
            if let Some(n) = h.truncate {
                m.truncate(mlen + n);
            }
        }
        m
    }

    /// The IPv4 packet.
    pub fn packet(&self) -> Vec<u8> {
        let msg = self.message();
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

    /// The Ethernet frame (destination: the VRRP multicast MAC 01:00:5e:00:00:12).
    pub fn frame(&self) -> Vec<u8> {
        let mut f = vec![
            0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x00, 0x00, 0x5e, 0x00, 0x01, self.vrid,
        ];
        for v in &self.vlans {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
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
