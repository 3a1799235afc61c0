//! VRRP wire constants (RFC 3768 for v2, RFC 5798/9568 for v3) shared by the guard and the engine.
//!
//! ```text
//!  v3 (RFC 9568 section 5.1)
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      IPvX Address(es)                         |
//!
//!  v2 (RFC 3768 section 5.1)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Adver Int   |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         IP Address(es)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Authentication Data (1)                   |
//! |                     Authentication Data (2)                   |
//! ```

/// IP protocol number of VRRP (RFC 5798 section 5.1.1.4).
pub const IPPROTO_VRRP: u8 = 112;
/// The TTL every VRRP packet is sent with and must arrive with (RFC 5798 section 5.1.1.3, 7.1).
pub const VRRP_TTL: u8 = 255;
/// IPv4 multicast group of VRRP (RFC 5798 section 5.1.1.2).
pub const VRRP_MCAST_V4: [u8; 4] = [224, 0, 0, 18];
/// IPv6 multicast group of VRRP, ff02::12 (RFC 9568 section 5.1.2.2).
pub const VRRP_MCAST_V6: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
/// The only packet type defined: ADVERTISEMENT (RFC 5798 section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed header length before the address list.
pub const HEADER_LEN: usize = 8;
/// v2 authentication data length after the address list (RFC 3768 section 5.3.10).
pub const V2_AUTH_LEN: usize = 8;
/// v2 Auth Type 0: no authentication.
pub const AUTH_NONE: u8 = 0;
/// v2 Auth Type 1: simple text password (RFC 2338 section 5.3.6.1; PASS in keepalived).
pub const AUTH_PASS: u8 = 1;
/// The largest VRRP message: 255 IPv4 addresses plus v2 authentication data.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 255 * 4 + V2_AUTH_LEN;
/// The most IPv6 addresses one advert carries: as many as keep the message within
/// [`MAX_MESSAGE_LEN`], so that the guard's bounds (its checksum loop, the `auth_hmac` input)
/// are those of IPv4. 64 addresses fit a 1500-byte MTU with room to spare (RFC 9568 section
/// 5.1.2: adverts are never fragmented).
pub const MAX_ADDRS_V6: u8 = ((MAX_MESSAGE_LEN - HEADER_LEN) / 16) as u8;

/// The address family of a VRRP instance, which decides the length of the addresses in its
/// adverts (the message itself does not say: the IP header it came in does).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Family {
    #[default]
    V4 = 4,
    V6 = 6,
}

impl Family {
    /// Bytes of one address.
    #[inline(always)]
    pub const fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The most addresses one advert of this family carries.
    #[inline(always)]
    pub const fn max_addrs(self) -> u8 {
        match self {
            Family::V4 => 255,
            Family::V6 => MAX_ADDRS_V6,
        }
    }

    /// The family with this number (4 or 6), as the maps and the events carry it.
    #[inline(always)]
    pub const fn from_u8(n: u8) -> Option<Family> {
        match n {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Offsets of the fields in the fixed header.
pub mod field {
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    /// v3: 4 reserved bits and the high 4 bits of Max Adver Int. v2: Auth Type.
    pub const B4: usize = 4;
    /// v3: low 8 bits of Max Adver Int. v2: Adver Int in seconds.
    pub const B5: usize = 5;
    pub const CHECKSUM: usize = 6;
    pub const ADDRS: usize = 8;
}

/// Length of a VRRP message carrying `count` addresses of `family`.
#[inline(always)]
pub const fn message_len(version: u8, count: u8, family: Family) -> usize {
    let base = HEADER_LEN + family.addr_len() * count as usize;
    if version == 2 {
        base + V2_AUTH_LEN
    } else {
        base
    }
}

/// The fixed header of an advert, decoded: what the guard (in XDP and in the raw-socket
/// fallback) and the daemon's parser read of it, through one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    /// Count IPvX Addr.
    pub count: u8,
    /// The advertisement interval in centiseconds: v3 Max Adver Int (RFC 5798 section 5.2.7),
    /// v2 Adver Int in seconds x 100 (RFC 3768 section 5.3.7).
    pub interval_cs: u16,
    /// v2 Auth Type (RFC 3768 section 5.3.6); [`AUTH_NONE`] for v3.
    pub auth_type: u8,
}

/// Why eight bytes are not an advert's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// RFC 5798 section 7.1: the version MUST be 3 (2 for RFC 3768).
    Version(u8),
    /// Not an ADVERTISEMENT (the only type defined).
    Type(u8),
}

impl Header {
    /// Decodes the 8 header bytes `h`, checking what needs no configuration: the version and
    /// the type.
    #[inline(always)]
    pub fn parse(h: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        // The fixed header reads alike in both families.
        let p = Packet::new_unchecked(h, Family::V4);
        let version = p.version();
        if version != 2 && version != 3 {
            return Err(HeaderError::Version(version));
        }
        if p.kind() != TYPE_ADVERTISEMENT {
            return Err(HeaderError::Type(p.kind()));
        }
        let (interval_cs, auth_type) = if version == 3 {
            (p.max_adver_int(), AUTH_NONE)
        } else {
            (p.adver_int_secs() as u16 * 100, p.auth_type())
        };
        Ok(Header {
            version,
            vrid: p.vrid(),
            priority: p.priority(),
            count: p.addr_count(),
            interval_cs,
            auth_type,
        })
    }

    /// The length of the message this header announces for an instance of `family` (RFC
    /// 5798 section 7.1: it MUST match).
    #[inline(always)]
    pub const fn message_len(&self, family: Family) -> usize {
        message_len(self.version, self.count, family)
    }
}

/// What is wrong with a buffer given to [`Packet::new_checked`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed header, or than the addresses (and v2 auth data) it announces.
    Truncated,
}

/// A zero-copy view of a VRRP message (the IP payload) of an instance of one address family,
/// smoltcp style: after [`Packet::new_checked`] no accessor can panic.
#[derive(Clone, Copy, Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: Family,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking its length (for emitting into a buffer sized with
    /// `message_len`).
    pub const fn new_unchecked(buffer: T, family: Family) -> Self {
        Packet { buffer, family }
    }

    /// Wraps `buffer`, checking that it holds the header and everything the header announces.
    pub fn new_checked(buffer: T, family: Family) -> Result<Self, Error> {
        let p = Packet { buffer, family };
        p.check_len()?;
        Ok(p)
    }

    /// Whether the buffer is long enough for the header and the announced addresses.
    pub fn check_len(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || b.len() < self.len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The address family the message is read as.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The length of the message as its header announces it.
    fn len(&self) -> usize {
        message_len(self.version(), self.addr_count(), self.family)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self, i: usize) -> u8 {
        self.buffer.as_ref()[i]
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref().first().map_or(0, |b| b >> 4)
    }
    pub fn kind(&self) -> u8 {
        self.b(field::VER_TYPE) & 0x0f
    }
    pub fn vrid(&self) -> u8 {
        self.b(field::VRID)
    }
    pub fn priority(&self) -> u8 {
        self.b(field::PRIORITY)
    }
    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref().get(field::COUNT).copied().unwrap_or(0)
    }
    /// v3: Max Adver Int in centiseconds (RFC 5798 section 5.2.7).
    pub fn max_adver_int(&self) -> u16 {
        (((self.b(field::B4) & 0x0f) as u16) << 8) | self.b(field::B5) as u16
    }
    /// v3: the 4 reserved bits, which must be sent as zero.
    pub fn reserved(&self) -> u8 {
        self.b(field::B4) >> 4
    }
    /// v2: Auth Type (RFC 3768 section 5.3.6).
    pub fn auth_type(&self) -> u8 {
        self.b(field::B4)
    }
    /// v2: Adver Int in seconds (RFC 3768 section 5.3.7).
    pub fn adver_int_secs(&self) -> u8 {
        self.b(field::B5)
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b(field::CHECKSUM), self.b(field::CHECKSUM + 1)])
    }
    /// Address `i` (`i < addr_count()`): its bytes, as many as the family's addresses have.
    pub fn addr(&self, i: usize) -> &[u8] {
        let n = self.family.addr_len();
        let o = field::ADDRS + n * i;
        &self.buffer.as_ref()[o..o + n]
    }
    /// v2: the 8 bytes of authentication data after the addresses.
    pub fn auth_data(&self) -> [u8; 8] {
        let o = field::ADDRS + self.family.addr_len() * self.addr_count() as usize;
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.buffer.as_ref()[o..o + 8]);
        out
    }
    /// The message as announced (without trailing bytes beyond it).
    pub fn message(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.len()]
    }
    /// Whether the checksum is right; `pseudo` is the pseudo-header sum (see
    /// [`crate::guard::pseudo_header_sum`]), 0 for a message-only checksum (v2, and v3 IPv4
    /// without the pseudo-header).
    pub fn verify_checksum(&self, pseudo: u32) -> bool {
        crate::guard::checksum(self.message(), pseudo) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self, i: usize) -> &mut u8 {
        &mut self.buffer.as_mut()[i]
    }
    pub fn set_version_kind(&mut self, version: u8, kind: u8) {
        *self.bm(field::VER_TYPE) = (version << 4) | (kind & 0x0f);
    }
    pub fn set_vrid(&mut self, v: u8) {
        *self.bm(field::VRID) = v;
    }
    pub fn set_priority(&mut self, v: u8) {
        *self.bm(field::PRIORITY) = v;
    }
    pub fn set_addr_count(&mut self, v: u8) {
        *self.bm(field::COUNT) = v;
    }
    /// v3: Max Adver Int (12 bits) with the reserved bits zero.
    pub fn set_max_adver_int(&mut self, cs: u16) {
        *self.bm(field::B4) = ((cs >> 8) & 0x0f) as u8;
        *self.bm(field::B5) = cs as u8;
    }
    pub fn set_auth_type(&mut self, v: u8) {
        *self.bm(field::B4) = v;
    }
    pub fn set_adver_int_secs(&mut self, v: u8) {
        *self.bm(field::B5) = v;
    }
    /// Sets address `i` to `a`, which has the family's length.
    pub fn set_addr(&mut self, i: usize, a: &[u8]) {
        let n = self.family.addr_len();
        let o = field::ADDRS + n * i;
        self.buffer.as_mut()[o..o + n].copy_from_slice(a);
    }
    pub fn set_auth_data(&mut self, d: [u8; 8]) {
        let o = field::ADDRS + self.family.addr_len() * self.addr_count() as usize;
        self.buffer.as_mut()[o..o + 8].copy_from_slice(&d);
    }
    /// Computes and stores the checksum (`pseudo` as for [`Packet::verify_checksum`]).
    pub fn fill_checksum(&mut self, pseudo: u32) {
        self.buffer.as_mut()[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&[0, 0]);
        let c = crate::guard::checksum(self.message(), pseudo);
        self.buffer.as_mut()[field::CHECKSUM..field::CHECKSUM + 2]
            .copy_from_slice(&c.to_be_bytes());
    }
}
