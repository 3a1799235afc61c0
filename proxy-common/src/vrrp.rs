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

/// Length of a VRRP message carrying `count` IPv4 addresses.
#[inline(always)]
pub const fn message_len(version: u8, count: u8) -> usize {
    let base = HEADER_LEN + 4 * count as usize;
    if version == 2 {
        base + V2_AUTH_LEN
    } else {
        base
    }
}
