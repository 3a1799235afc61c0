//! `auth_hmac`: the VRRP advert authentication of keepalived 2.4 (draft-cassen-vrrp-auth-hmac),
//! for the guard (XDP and the raw-socket fallback) and for signing in userspace.
//!
//! A signed advert carries a 28-byte trailer after the VRRP message; the IP length covers it,
//! the VRRP checksum does not:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Ext Type    |    Key ID     |           Reserved            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Seconds (UTC, since the Unix epoch)             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Fraction (1/65536 s)      |            Counter            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        HMAC-SHA256, first 128 bits (16 bytes)                 |
//! ```
//!
//! The MAC is HMAC-SHA256 (RFC 2104) over a 20-byte pseudo-header (address family 4 or 6, VRRP
//! version, VRID, a zero byte, the source address zero padded to 16 bytes), the VRRP message
//! with its checksum read as zero, the first 12 bytes of the trailer and 16 zero bytes in place
//! of the MAC. The sequence number is the trailer's seconds, fraction and counter read as one
//! 64-bit number; receivers keep the highest one seen per sender and compare in serial number
//! arithmetic (RFC 1982).
//!
//! SHA-256 is written out here instead of taken from a crate because the same code must pass
//! the BPF verifier inside the XDP program (no allocation, bounded loops, a 512-byte stack, no
//! function pointers), where the RustCrypto `sha2` crate's generic machinery does not fit. Its
//! output is checked against `sha2`/`hmac` by the tests. Keys are turned into HMAC midstates
//! ([`AuthKey`]) once, in userspace, so the guard hashes only the advert: three compression
//! rounds for a v3 advert with one address.
use crate::guard::Frame;
use crate::maps::AuthKey;

/// Length of the trailer.
pub const TRAILER_LEN: usize = 28;
/// Ext Type of HMAC-SHA256 truncated to 128 bits, the only scheme defined.
pub const EXT_HMAC_SHA256: u8 = 1;
/// Length of the truncated MAC.
pub const MAC_LEN: usize = 16;
/// Length of the pseudo-header bound into the MAC.
pub const PSEUDO_LEN: usize = 20;
/// Shortest and longest key (keepalived's bounds: 32 bytes keep a 128-bit margin).
pub const KEY_MIN: usize = 32;
pub const KEY_MAX: usize = 64;
/// Bounds of the freshness window in seconds, and its floor when derived from the interval.
pub const WINDOW_MIN_S: u32 = 1;
pub const WINDOW_MAX_S: u32 = 300;
pub const WINDOW_FLOOR_S: u32 = 5;

/// Byte offsets in the trailer.
pub mod field {
    use core::ops::Range;
    pub const EXT_TYPE: usize = 0;
    pub const KEY_ID: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const SEC: Range<usize> = 4..8;
    pub const SUBSEC: Range<usize> = 8..10;
    pub const CTR: Range<usize> = 10..12;
    pub const MAC: Range<usize> = 12..28;
}

/// A zero-copy view of a trailer (smoltcp style): after [`Trailer::new_checked`] no accessor
/// panics.
#[derive(Clone, Copy, Debug)]
pub struct Trailer<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Trailer<T> {
    /// Wraps `buffer` without checking its length (for emitting into [`TRAILER_LEN`] bytes).
    pub const fn new_unchecked(buffer: T) -> Self {
        Trailer { buffer }
    }

    /// Wraps `buffer`, checking that it holds a whole trailer.
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= TRAILER_LEN).then_some(Trailer { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn ext_type(&self) -> u8 {
        self.b()[field::EXT_TYPE]
    }
    pub fn key_id(&self) -> u8 {
        self.b()[field::KEY_ID]
    }
    pub fn reserved(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// The 64-bit sequence number: seconds, fraction and counter.
    pub fn seq(&self) -> u64 {
        let b = self.b();
        u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]])
    }
    pub fn mac(&self) -> [u8; MAC_LEN] {
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(&self.b()[field::MAC]);
        m
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Trailer<T> {
    /// Writes the first 12 bytes (type, key id, zero reserved, `seq`) and zeroes the MAC.
    pub fn set_header(&mut self, key_id: u8, seq: u64) {
        let b = self.buffer.as_mut();
        b[field::EXT_TYPE] = EXT_HMAC_SHA256;
        b[field::KEY_ID] = key_id;
        b[field::RESERVED].copy_from_slice(&[0, 0]);
        b[4..12].copy_from_slice(&seq.to_be_bytes());
        b[field::MAC].copy_from_slice(&[0; MAC_LEN]);
    }
    pub fn set_mac(&mut self, mac: [u8; MAC_LEN]) {
        self.buffer.as_mut()[field::MAC].copy_from_slice(&mac);
    }
}

/// `a` comes after `b` in serial number arithmetic over 64 bits (RFC 1982).
#[inline(always)]
pub const fn seq_after(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

/// The seconds of a sequence number.
#[inline(always)]
pub const fn seq_secs(seq: u64) -> u32 {
    (seq >> 32) as u32
}

/// The sequence number of a clock reading with the counter clear: seconds in the high 32 bits,
/// the fraction in 1/65536 s in the next 16.
pub const fn clock_seq(secs: u64, nanos: u32) -> u64 {
    let frac = ((nanos as u64) << 16) / 1_000_000_000;
    ((secs as u32 as u64) << 32) | (frac << 16)
}

/// Whether `secs` lies within `window` seconds of `now` (either side).
#[inline(always)]
pub const fn fresh(secs: u32, now: u32, window: u32) -> bool {
    let delta = now.wrapping_sub(secs) as i32;
    delta <= window as i32 && delta >= -(window as i32)
}

/// The sender's sequence: the larger of the clock and the last value plus one, so it grows
/// even when the clock does not. In time mode a value stranded more than the window ahead of
/// the clock (the clock was stepped back) restarts from the clock, or receivers would reject
/// every advert as stale; in monotonic mode strict growth is the only guarantee and is kept.
pub fn next_seq(last: u64, clock: u64, time_mode: bool, window_s: u32) -> u64 {
    if seq_after(clock, last) {
        return clock;
    }
    let ahead = seq_secs(last).wrapping_sub(seq_secs(clock)) as i32;
    if time_mode && ahead > window_s as i32 {
        clock
    } else {
        last.wrapping_add(1)
    }
}

/// The pseudo-header: the family (4 or 6), version, VRID, zero, then the source zero padded
/// to 16 bytes (an [`crate::maps::Addr`] is already), given as its words.
#[inline(always)]
pub const fn pseudo(
    family: crate::vrrp::Family,
    version: u8,
    vrid: u8,
    src: &crate::maps::AddrWords,
) -> [u8; PSEUDO_LEN] {
    let mut p = [0u8; PSEUDO_LEN];
    p[0] = family as u8;
    p[1] = version;
    p[2] = vrid;
    let mut i = 0;
    while i < 4 {
        let b = src[i].to_ne_bytes();
        p[4 + 4 * i] = b[0];
        p[5 + 4 * i] = b[1];
        p[6 + 4 * i] = b[2];
        p[7 + 4 * i] = b[3];
        i += 1;
    }
    p
}

/// [`pseudo`] of an IPv4 source.
#[inline(always)]
pub const fn pseudo_v4(version: u8, vrid: u8, src: [u8; 4]) -> [u8; PSEUDO_LEN] {
    pseudo(
        crate::vrrp::Family::V4,
        version,
        vrid,
        &[u32::from_ne_bytes(src), 0, 0, 0],
    )
}

/// SHA-256 blocks of the longest MAC input: 255 IPv4 addresses and v2 auth data (1036 bytes),
/// the pseudo-header, the trailer and SHA-256's padding.
pub const MAX_BLOCKS: usize =
    (PSEUDO_LEN + crate::vrrp::MAX_MESSAGE_LEN + TRAILER_LEN + 8) / 64 + 1;
/// Bytes copied from the frame at most: the longest message and the trailer's head.
pub const MAX_COPY: usize = crate::vrrp::MAX_MESSAGE_LEN + field::MAC.start;
/// Bytes zeroed after the copied part: the MAC and every padding byte up to the length.
const TAIL_ZERO: usize = MAC_LEN + 1 + 63 + 8;
/// Room for the longest input and its zeroed tail.
pub const INPUT_MAX: usize = (PSEUDO_LEN + MAX_COPY + TAIL_ZERO).next_multiple_of(64);

/// The MAC's input laid out for hashing (the XDP program keeps one per CPU in a map: it does
/// not fit on the BPF stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MacInput {
    /// The input's bytes in order, held as words so that each block is read a word at a time.
    pub words: [u32; INPUT_MAX / 4],
    /// The hash state while the blocks are compressed (kept here, off the BPF stack too).
    pub state: [u32; 8],
    /// The message schedule's ring of [`compress_in`] (the XDP program's compression uses it).
    pub ring: [u32; 16],
}

impl MacInput {
    pub const ZERO: MacInput = MacInput {
        words: [0; INPUT_MAX / 4],
        state: [0; 8],
        ring: [0; 16],
    };

    /// The input as bytes.
    #[inline(always)]
    pub fn bytes(&mut self) -> &mut [u8; INPUT_MAX] {
        // SAFETY: [u32; N / 4] and [u8; N] have the same size, any bytes are valid u32s and
        // u8s, and u8 needs no alignment.
        unsafe { &mut *(self.words.as_mut_ptr().cast::<[u8; INPUT_MAX]>()) }
    }
}

/// Lays out in `input` the MAC's input for a VRRP message of `mlen` bytes: the pseudo-header,
/// the message and the trailer's head (`copy(input, at, len)` puts `len` bytes of the frame
/// there), the checksum and the MAC read as zero, and SHA-256's padding. Returns the number of
/// 64-byte blocks. No loops: the verifier walks it once per path.
#[inline(always)]
pub fn prepare(
    input: &mut MacInput,
    pseudo: &[u8; PSEUDO_LEN],
    mlen: usize,
    copy: impl FnOnce(&mut MacInput, usize, usize) -> Option<()>,
) -> Option<usize> {
    if !(crate::vrrp::HEADER_LEN..=crate::vrrp::MAX_MESSAGE_LEN).contains(&mlen) {
        return None;
    }
    let n = mlen + field::MAC.start;
    let total = PSEUDO_LEN + n + MAC_LEN;
    let blocks = (total + 8) / 64 + 1;
    input.bytes().get_mut(..PSEUDO_LEN)?.copy_from_slice(pseudo);
    copy(input, PSEUDO_LEN, n)?;
    let bytes = input.bytes();
    // The checksum, bytes 6 and 7 of the message.
    *bytes.get_mut(PSEUDO_LEN + 6)? = 0;
    *bytes.get_mut(PSEUDO_LEN + 7)? = 0;
    bytes
        .get_mut(PSEUDO_LEN + n..PSEUDO_LEN + n + TAIL_ZERO)?
        .fill(0);
    *bytes.get_mut(total)? = 0x80;
    // The key's block comes first (it is in the midstate).
    let bits = ((64 + total) as u64 * 8).to_be_bytes();
    bytes
        .get_mut(blocks * 64 - 8..blocks * 64)?
        .copy_from_slice(&bits);
    Some(blocks)
}

/// HMAC-SHA256, truncated to 128 bits, of the `blocks` prepared blocks of `input` with `key`.
/// The outer block is built in `input` too, over the blocks already hashed. `compress` is
/// [`compress_in`] or a stand-in for it (the XDP program's global function).
#[inline(always)]
pub fn mac_blocks(
    input: &mut MacInput,
    blocks: usize,
    key: &AuthKey,
    compress: impl Fn(&mut [u32; 8], &[u32; 16], &mut [u32; 16]),
) -> Option<[u32; 4]> {
    let MacInput { words, state, ring } = input;
    *state = key.inner;
    let mut b = 0;
    while b < MAX_BLOCKS {
        if b >= blocks {
            break;
        }
        let block: &[u32; 16] = words.get(b * 16..b * 16 + 16)?.try_into().ok()?;
        compress(state, block, ring);
        b += 1;
    }
    // The inner digest after the opad block, then its padding: 96 bytes in all.
    let mut i = 0;
    while i < 8 {
        words[i] = state[i].to_be();
        words[8 + i] = 0;
        i += 1;
    }
    words[8] = 0x8000_0000u32.to_be();
    words[15] = ((64u32 + 32) * 8).to_be();
    *state = key.outer;
    let block: &[u32; 16] = words.get(..16)?.try_into().ok()?;
    compress(state, block, ring);
    Some([state[0], state[1], state[2], state[3]])
}

/// The truncated HMAC of the advert whose VRRP message (`mlen` bytes, the checksum at offset
/// 6) starts at `msg` in `f` and is followed by its trailer, laid out in `input` by
/// [`prepare`] and hashed by `mac_blocks` ([`mac_blocks`], or the XDP program's global
/// function that runs it). `None` when the frame is shorter than that. The guard verifies with
/// it and userspace signs with it.
#[inline(always)]
pub fn advert_mac<F: Frame + ?Sized>(
    f: &F,
    msg: usize,
    mlen: usize,
    pseudo: &[u8; PSEUDO_LEN],
    key: &AuthKey,
    input: &mut MacInput,
    mac_blocks: impl FnOnce(&mut MacInput, usize, &AuthKey) -> Option<[u32; 4]>,
) -> Option<[u32; 4]> {
    let blocks = prepare(input, pseudo, mlen, |buf, at, n| {
        f.copy_to(msg, buf.bytes(), at, n)
    })?;
    mac_blocks(input, blocks, key)
}

/// [`advert_mac`] with a buffer on the stack and the plain compression (userspace).
pub fn advert_mac_simple<F: Frame + ?Sized>(
    f: &F,
    msg: usize,
    mlen: usize,
    pseudo: &[u8; PSEUDO_LEN],
    key: &AuthKey,
) -> Option<[u32; 4]> {
    let mut input = MacInput::ZERO;
    advert_mac(f, msg, mlen, pseudo, key, &mut input, |i, b, k| {
        mac_blocks(i, b, k, compress_in)
    })
}

/// Whether the 16 MAC bytes in `f` at `at` equal `mac`, in time independent of where they
/// differ. `None` when the frame is too short.
#[inline(always)]
pub fn mac_matches<F: Frame + ?Sized>(f: &F, at: usize, mac: &[u32; 4]) -> Option<bool> {
    // Word by word: a 16-byte array would be assembled on the BPF stack.
    let diff = (u32::from_be_bytes(f.bytes::<4>(at)?) ^ mac[0])
        | (u32::from_be_bytes(f.bytes::<4>(at + 4)?) ^ mac[1])
        | (u32::from_be_bytes(f.bytes::<4>(at + 8)?) ^ mac[2])
        | (u32::from_be_bytes(f.bytes::<4>(at + 12)?) ^ mac[3]);
    Some(diff == 0)
}

/// The MAC as bytes, for writing into a trailer.
pub fn mac_bytes(mac: &[u32; 4]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    for (i, w) in mac.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The HMAC midstates of `key` (1..=64 bytes; longer keys are refused by the config): SHA-256
/// after the block `key ^ ipad`, and after `key ^ opad`.
pub fn midstates(id: u8, key: &[u8]) -> AuthKey {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, byte) in key.iter().take(64).enumerate() {
        ipad[i] ^= byte;
        opad[i] ^= byte;
    }
    let mut inner = IV;
    compress(&mut inner, &words(&ipad));
    let mut outer = IV;
    compress(&mut outer, &words(&opad));
    AuthKey {
        id,
        _pad: [0; 3],
        inner,
        outer,
    }
}

/// 64 bytes as the 16 words [`compress`] takes (each word holds four bytes in memory order).
pub fn words(block: &[u8; 64]) -> [u32; 16] {
    let mut w = [0u32; 16];
    for (i, c) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// SHA-256's initial hash value (FIPS 180-4 section 5.3.3).
pub const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256's round constants (FIPS 180-4 section 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// One SHA-256 compression of `block` into `state` (FIPS 180-4 section 6.2.2). The block is 16
/// words as they lie in memory: each holds four bytes of the message in order (big-endian
/// read), so a caller can pass its bytes reinterpreted, aligned, without a copy. One round per
/// turn with the message schedule in a 16-word ring: unrolled further, LLVM keeps more values
/// alive than the BPF stack left beside the guard holds (measured: 424 bytes for eight rounds
/// a turn, against 512 for the whole call chain).
#[inline(always)]
pub fn compress(state: &mut [u32; 8], block: &[u32; 16]) {
    let mut ring = [0u32; 16];
    compress_in(state, block, &mut ring);
}

/// [`compress`] with the message schedule's ring given (in XDP a map value: the stack left
/// beside the guard is too small for it).
#[inline(always)]
pub fn compress_in(state: &mut [u32; 8], block: &[u32; 16], w: &mut [u32; 16]) {
    let mut j = 0;
    while j < 16 {
        w[j] = u32::from_be(block[j]);
        j += 1;
    }
    // The working variables a..h in an array that rotates instead of shifting: at round i,
    // variable k lives at `v[(k - i) & 7]`, so a round writes two slots (the new a over the old
    // h's, the new e over the old d's) and the next round's names fall into place. Indexed by
    // the round, the array stays in memory: with eight named variables LLVM's BPF backend kept
    // each in a register and spilled most (168 bytes of stack), which the guard's deepest
    // call chain (the IPv6 guard, `auth_hmac`) could not spare.
    let mut v = *state;
    let mut i = 0;
    while i < 64 {
        let r = 8 - (i & 7);
        let at = |k: usize| (k + r) & 7;
        let wi = if i < 16 {
            w[i & 15]
        } else {
            let w15 = w[(i + 1) & 15];
            let w2 = w[(i + 14) & 15];
            let x = w[i & 15]
                .wrapping_add(w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3))
                .wrapping_add(w[(i + 9) & 15])
                .wrapping_add(w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10));
            w[i & 15] = x;
            x
        };
        let (a, b, c) = (v[at(0)], v[at(1)], v[at(2)]);
        let (e, f, g) = (v[at(4)], v[at(5)], v[at(6)]);
        let t1 = v[at(7)]
            .wrapping_add(e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25))
            .wrapping_add(g ^ (e & (f ^ g)))
            .wrapping_add(K[i & 63])
            .wrapping_add(wi);
        let t2 = (a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22))
            .wrapping_add((a & b) | (c & (a | b)));
        v[at(3)] = v[at(3)].wrapping_add(t1);
        v[at(7)] = t1.wrapping_add(t2);
        i += 1;
    }
    // 64 rounds: the rotation is back where it started.
    let mut k = 0;
    while k < 8 {
        state[k] = state[k].wrapping_add(v[k]);
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    use std::vec::Vec;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key00_1f() -> Vec<u8> {
        (0u8..32).collect()
    }

    /// The reference: HMAC-SHA256 of the draft's input, built byte by byte.
    fn reference(key: &[u8], pseudo: &[u8], msg_and_trailer: &[u8], msg_len: usize) -> [u8; 16] {
        let mut input = Vec::new();
        input.extend_from_slice(pseudo);
        input.extend_from_slice(&msg_and_trailer[..msg_len + 12]);
        input[PSEUDO_LEN + 6] = 0;
        input[PSEUDO_LEN + 7] = 0;
        input.extend_from_slice(&[0; 16]);
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(&input);
        let out = m.finalize().into_bytes();
        out[..16].try_into().unwrap()
    }

    #[test]
    fn compress_matches_sha256_of_one_block() {
        // SHA-256("abc"), padded to one block by hand.
        let mut block = [0u8; 64];
        block[..4].copy_from_slice(&[0x61, 0x62, 0x63, 0x80]);
        block[63] = 24;
        let mut st = IV;
        compress(&mut st, &words(&block));
        let want: [u8; 32] = Sha256::digest(b"abc").into();
        let got: Vec<u8> = st.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(got, want);
    }

    /// The IPv4 image of the draft's appendix (keepalived's test/auth_hmac_test.c): key 00..1f,
    /// VRID 51, priority 200, source 198.51.100.10, sequence 0x6800000080000000.
    #[test]
    fn the_drafts_ipv4_vector_verifies() {
        let img = unhex(
            "3133c80100644402c0000264010100006800000080000000\
             1b84bc4e8e43892dc6d98448f8ee2265",
        );
        let key = midstates(1, &key00_1f());
        let pseudo = pseudo_v4(3, 51, [198, 51, 100, 10]);
        let mac = advert_mac_simple(img.as_slice(), 0, 12, &pseudo, &key).unwrap();
        assert_eq!(mac_matches(img.as_slice(), 12 + 12, &mac), Some(true));
        let t = Trailer::new_checked(&img[12..]).unwrap();
        assert_eq!((t.ext_type(), t.key_id(), t.reserved()), (1, 1, 0));
        assert_eq!(t.seq(), 0x6800_0000_8000_0000);
        // The checksum is not covered; everything else is.
        let mut other = img.clone();
        other[7] ^= 1;
        let mac2 = advert_mac_simple(other.as_slice(), 0, 12, &pseudo, &key).unwrap();
        assert_eq!(mac2, mac);
        for at in [2usize, 5, 11, 13, 16, 22] {
            let mut bad = img.clone();
            bad[at] ^= 1;
            let m = advert_mac_simple(bad.as_slice(), 0, 12, &pseudo, &key).unwrap();
            assert_eq!(
                mac_matches(bad.as_slice(), 24, &m),
                Some(false),
                "byte {at}"
            );
        }
        let wrong_src = pseudo_v4(3, 51, [198, 51, 100, 11]);
        let m = advert_mac_simple(img.as_slice(), 0, 12, &wrong_src, &key).unwrap();
        assert_eq!(mac_matches(img.as_slice(), 24, &m), Some(false));
    }

    #[test]
    fn advert_mac_equals_rustcrypto_for_every_message_length() {
        let key_bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for key_len in [32usize, 47, 64] {
            let key = midstates(9, &key_bytes[..key_len]);
            for count in [1usize, 2, 3, 4, 5, 12, 13, 16, 30, 255] {
                for version in [2u8, 3] {
                    let msg_len =
                        crate::vrrp::message_len(version, count as u8, crate::vrrp::Family::V4);
                    let mut buf: Vec<u8> = (0..msg_len + TRAILER_LEN)
                        .map(|i| (i * 7 + count) as u8)
                        .collect();
                    let pseudo = pseudo_v4(version, 42, [198, 18, 0, 1]);
                    let want = reference(&key_bytes[..key_len], &pseudo, &buf, msg_len);
                    let got = advert_mac_simple(buf.as_slice(), 0, msg_len, &pseudo, &key).unwrap();
                    assert_eq!(mac_bytes(&got), want, "{key_len} {count} v{version}");
                    // Too short a frame: no MAC, no panic.
                    buf.truncate(msg_len + 11);
                    assert_eq!(
                        advert_mac_simple(buf.as_slice(), 0, msg_len, &pseudo, &key),
                        None
                    );
                }
            }
        }
    }

    #[test]
    fn the_sequence_grows_and_restarts_from_the_clock_after_a_step_back() {
        let t = clock_seq(1000, 500_000_000);
        assert_eq!(t, (1000u64 << 32) | (0x8000 << 16));
        assert_eq!(next_seq(0, t, true, 5), t);
        assert_eq!(next_seq(t, t, true, 5), t + 1);
        // Clock 1 h behind the last value: time mode restarts, monotonic keeps growing.
        let ahead = clock_seq(4600, 0);
        assert_eq!(next_seq(ahead, t, true, 5), t);
        assert_eq!(next_seq(ahead, t, false, 5), ahead + 1);
        assert!(seq_after(1, u64::MAX));
        assert!(!seq_after(5, 5));
        assert!(fresh(100, 105, 5) && fresh(105, 100, 5) && !fresh(100, 106, 5));
        assert!(!fresh(106, 100, 5));
    }
}
