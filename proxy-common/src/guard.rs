//! The VRRP guard's decision procedure, shared by the XDP program and the raw-socket fallback.
//!
//! [`classify`] looks at one Ethernet frame and returns a [`Verdict`]; [`record_advert`] folds a
//! valid advert into the per-instance [`AdvertRecord`] and says whether userspace must be woken.
//! Neither allocates, panics or loops without a bound, so both compile for the BPF target and
//! pass the verifier.

use crate::auth;
use crate::maps::{
    from_words, to_words, v4_addr, words_eq, Addr, AddrWords, AdvertRecord, AuthConfig,
    InstanceKey, Reason, ReplayKey, VridEntry, AUTH_MODE_ENFORCE, AUTH_TIME, CFG_AUTH_HMAC,
    CFG_PEER_FILTER, CFG_V3_PSEUDO_HEADER, EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_NEW_SOURCE,
    EV_PRIORITY_CHANGE, EV_PRIORITY_ZERO,
};
use crate::vrrp::{self, Family, IPPROTO_VRRP, VRRP_TTL};

const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// Bits of the IPv4 flags/fragment-offset word: More Fragments and the offset.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// Upper bound for any offset the guard reads at: two VLAN tags, a 60-byte IPv4 header and the
/// largest VRRP message fit well below it. Implementations of [`Frame`] for BPF refuse offsets
/// beyond it, which lets the verifier prove every packet access bounded.
pub const MAX_OFFSET: usize = 0x0fff;

/// Bounds-checked read access to one frame.
pub trait Frame {
    /// The `N` bytes at `off`, or `None` when the frame is shorter than `off + N`.
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]>;

    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        self.bytes::<1>(off).map(|b| b[0])
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.bytes::<2>(off).map(u16::from_be_bytes)
    }

    /// Copies the `len` bytes at `off` to `dst[at..at + len]`; `None` when the frame or `dst`
    /// is too short.
    fn copy_to(&self, off: usize, dst: &mut [u8], at: usize, len: usize) -> Option<()>;

    /// [`message_sum`] of the `len` bytes at `off`. The XDP program runs it as a BPF global
    /// function: verified once on its own instead of at every path that reaches it.
    #[inline(always)]
    fn sum_words(&self, off: usize, len: usize) -> Option<u32> {
        message_sum(self, off, len)
    }

    /// [`ipv6_walk`] of the packet at `l3`. The XDP program runs it as a BPF global function:
    /// the verifier then sees one offset, not one per length of the chain, each going on
    /// through the whole judgement (which took it past its million instructions).
    #[inline(always)]
    fn ipv6_chain(&self, l3: usize, first: u8) -> Result<Option<usize>, Reason> {
        ipv6_walk(self, l3, first)
    }

    /// The 16-byte address at `off`, as its words ([`AddrWords`]).
    #[inline(always)]
    fn addr_words(&self, off: usize) -> Option<AddrWords> {
        Some([
            u32::from_ne_bytes(self.bytes::<4>(off)?),
            u32::from_ne_bytes(self.bytes::<4>(off + 4)?),
            u32::from_ne_bytes(self.bytes::<4>(off + 8)?),
            u32::from_ne_bytes(self.bytes::<4>(off + 12)?),
        ])
    }
}

impl Frame for [u8] {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        let s = self.get(off..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Some(out)
    }

    fn copy_to(&self, off: usize, dst: &mut [u8], at: usize, len: usize) -> Option<()> {
        let src = self.get(off..off.checked_add(len)?)?;
        dst.get_mut(at..at.checked_add(len)?)?.copy_from_slice(src);
        Some(())
    }
}

/// What the guard consults: the configuration (`vrrp_vrids`, `vrrp_auth`), the replay marks
/// (`vrrp_replay`) and the wall clock.
pub trait Tables {
    /// The entry of `vrid` (all 256 exist; unconfigured ones have no slot in use).
    fn vrid(&self, vrid: u8) -> Option<&VridEntry>;
    /// The `auth_hmac` settings of an instance whose slot has [`CFG_AUTH_HMAC`].
    fn auth(&self, key: &InstanceKey) -> Option<&AuthConfig>;
    /// The highest verified sequence number of a sender, if one is recorded.
    fn replay_mark(&self, key: &ReplayKey) -> Option<u64>;
    /// Seconds since the Unix epoch (UTC, truncated to 32 bits as in the trailer). Asked only
    /// for an advert with a trailer in time mode.
    fn now_secs(&self) -> u32;
    /// The MAC of `blocks` prepared blocks ([`auth::mac_blocks`]); the XDP program runs it as
    /// a BPF global function, which the verifier checks once instead of on every path.
    #[inline(always)]
    fn mac_blocks(
        &self,
        input: &mut auth::MacInput,
        blocks: usize,
        key: &crate::maps::AuthKey,
    ) -> Option<[u32; 4]> {
        auth::mac_blocks(input, blocks, key, auth::compress_in)
    }
    /// Runs `f` with room for a MAC's input (a per-CPU map value in XDP: it does not fit the
    /// BPF stack).
    #[inline(always)]
    fn with_mac_input<R>(&self, f: impl FnOnce(&mut auth::MacInput) -> R) -> Option<R> {
        let mut input = auth::MacInput::ZERO;
        Some(f(&mut input))
    }
}

/// A valid advertisement, as far as the guard checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    pub key: InstanceKey,
    /// Where the source address is in the frame (the family is the key's): [`source`] reads
    /// it. Not carried as a value: in the XDP program its four words would be kept live, each
    /// in a stack slot, through everything the guard does with the advert.
    pub src_at: usize,
    pub version: u8,
    pub priority: u8,
    pub addr_count: u8,
    /// Advertisement interval in centiseconds (v2: seconds x 100).
    pub interval_cs: u16,
    /// The instance has `auth_hmac`: the advert counts as signed or unsigned in its
    /// `vrrp_auth_stats` (other instances have no entry there, and the XDP program does not
    /// look one up for them: a hash lookup costs about 20 ns per advert).
    pub hmac: bool,
    /// The sequence number of its verified `auth_hmac` trailer; `None` without a trailer.
    /// The caller records it with [`record_seq`].
    pub seq: Option<Mark>,
}

/// A verified sequence number and how it updates its sender's replay mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    /// The sender had no mark, or one outside the freshness window (its clock was stepped):
    /// `seq` replaces it. Otherwise it only raises the mark (never lowers it).
    pub replace: bool,
}

impl Mark {
    /// The mark to keep, given the one stored now.
    #[inline(always)]
    pub const fn apply(self, current: u64) -> u64 {
        if self.replace || auth::seq_after(self.seq, current) {
            self.seq
        } else {
            current
        }
    }
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not VRRP: pass untouched and uncounted.
    Pass,
    /// A valid advert: record it, count it as accepted, pass it to the stack.
    Advert(Advert),
    /// Protocol 112 that must not reach VRRP: drop and count by reason.
    Drop(Reason),
    /// An advert of instance `key` that `auth_hmac` rejects: drop, count by reason globally and
    /// for the instance.
    Unauthentic(InstanceKey, Reason),
}

/// Decides what to do with the Ethernet frame `f` that arrived on `ifindex`.
///
/// Parses up to two VLAN tags (802.1ad outer, 802.1Q inner) so that a tag is no way around the
/// filter, honours the IPv4 header length and walks IPv6 extension headers, so that options
/// are none either.
#[inline(always)]
pub fn classify<F: Frame + ?Sized, T: Tables + ?Sized>(f: &F, ifindex: u32, t: &T) -> Verdict {
    match l3_offset(f) {
        Some((ETH_P_IPV4, l3)) => classify_ipv4(f, l3, ifindex, t),
        Some((ETH_P_IPV6, l3)) => classify_ipv6(f, l3, ifindex, t),
        _ => Verdict::Pass,
    }
}

/// Where the IPv4 header of the Ethernet frame `f` starts, after up to two VLAN tags (one
/// 802.1Q tag, or an 802.1ad tag followed by an 802.1Q tag); `None` for IPv6, ARP, anything
/// else, and frames with more than two tags, which the kernel does not deliver to an IP stack
/// either.
#[inline(always)]
pub fn ipv4_offset<F: Frame + ?Sized>(f: &F) -> Option<usize> {
    match l3_offset(f)? {
        (ETH_P_IPV4, l3) => Some(l3),
        _ => None,
    }
}

/// The ethertype of the Ethernet frame `f` after up to two VLAN tags, and where its payload
/// starts.
#[inline(always)]
pub fn l3_offset<F: Frame + ?Sized>(f: &F) -> Option<(u16, usize)> {
    let mut ethertype = f.be16_at(12)?;
    let mut l3 = ETH_HLEN;
    let mut tags = 0;
    while tags < 2 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        ethertype = f.be16_at(l3 + 2)?;
        l3 += 4;
        tags += 1;
    }
    Some((ethertype, l3))
}

/// A TCP segment over IPv4 as the guard sees it; addresses and ports as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// The first packet of a connection: SYN set, ACK clear.
    pub syn: bool,
}

/// `f` as a TCP segment over IPv4 (not a fragment), or `None`. The guard keeps new connections
/// to a virtual address away from a node that cannot serve them (nothing listens: the daemon
/// was killed, so the client retransmits its SYN to the new master instead of being refused),
/// and sends the segments of a flow across a planned move to the node that holds it
/// ([`crate::flow`]).
///
/// `l3` is where the IPv4 header starts ([`ipv4_offset`]).
#[inline(always)]
pub fn tcp_segment<F: Frame + ?Sized>(f: &F, l3: usize) -> Option<TcpSegment> {
    let hdr = f.bytes::<IPV4_MIN_HLEN>(l3)?;
    if hdr[0] >> 4 != 4 || hdr[9] != IPPROTO_TCP {
        return None;
    }
    if u16::from_be_bytes([hdr[6], hdr[7]]) & IP_MF_OFFSET_MASK != 0 {
        return None;
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return None;
    }
    let tcp = f.bytes::<14>(l3 + ihl)?;
    let flags = tcp[13];
    Some(TcpSegment {
        src: [hdr[12], hdr[13], hdr[14], hdr[15]],
        dst: [hdr[16], hdr[17], hdr[18], hdr[19]],
        sport: [tcp[0], tcp[1]],
        dport: [tcp[2], tcp[3]],
        syn: flags & TCP_SYN != 0 && flags & TCP_ACK == 0,
    })
}

/// A TCP connection request over IPv6; addresses and ports as on the wire (the addresses as
/// their words, as `bpf_sock_tuple` has them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syn6 {
    pub src: AddrWords,
    pub dst: AddrWords,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// `f` as a TCP connection request (SYN without ACK) over IPv6 whose TCP header follows the
/// IPv6 header directly, or `None`: the IPv6 form of the rule for connection requests to a
/// node that cannot serve them (see [`tcp_segment`]). A request behind extension headers is
/// let through to the stack as it is (clients do not send SYNs with them).
///
/// `l3` is where the IPv6 header starts.
#[inline(always)]
pub fn tcp6_syn<F: Frame + ?Sized>(f: &F, l3: usize) -> Option<Syn6> {
    let head = f.bytes::<8>(l3)?;
    if head[0] >> 4 != 6 || head[6] != IPPROTO_TCP {
        return None;
    }
    let tcp = f.bytes::<14>(l3 + IPV6_HLEN)?;
    let flags = tcp[13];
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return None;
    }
    Some(Syn6 {
        src: f.addr_words(l3 + 8)?,
        dst: f.addr_words(l3 + 24)?,
        sport: [tcp[0], tcp[1]],
        dport: [tcp[2], tcp[3]],
    })
}

const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A protocol-112 packet's IP layer, as the VRRP checks need it.
#[derive(Clone, Copy)]
struct IpLayer {
    family: Family,
    /// Where the source address is in the frame: it is read where it is needed, not carried
    /// (four words live through the whole judgement cost the BPF stack a spill slot each,
    /// many times over).
    src_at: usize,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
    /// Where the VRRP message starts in the frame, and how long the IP packet says it is.
    vrrp: usize,
    vlen: usize,
}

/// The IPv4 part of [`classify`]: `l3` is the offset of the IPv4 header in `f`.
#[inline(always)]
pub fn classify_ipv4<F: Frame + ?Sized, T: Tables + ?Sized>(
    f: &F,
    l3: usize,
    ifindex: u32,
    t: &T,
) -> Verdict {
    match ipv4_layer(f, l3) {
        Ok(Some(ip)) => classify_vrrp(f, &ip, ifindex, t),
        Ok(None) => Verdict::Pass,
        Err(reason) => Verdict::Drop(reason),
    }
}

/// The IPv6 part of [`classify`]: `l3` is the offset of the IPv6 header in `f`.
#[inline(always)]
pub fn classify_ipv6<F: Frame + ?Sized, T: Tables + ?Sized>(
    f: &F,
    l3: usize,
    ifindex: u32,
    t: &T,
) -> Verdict {
    match ipv6_layer(f, l3) {
        Ok(Some(ip)) => classify_vrrp(f, &ip, ifindex, t),
        Ok(None) => Verdict::Pass,
        Err(reason) => Verdict::Drop(reason),
    }
}

/// The IPv4 header at `l3`: `Ok(None)` when the packet is not protocol 112 (or not IPv4 after
/// all: the kernel drops it), an error when it is but its IP layer is broken.
#[inline(always)]
fn ipv4_layer<F: Frame + ?Sized>(f: &F, l3: usize) -> Result<Option<IpLayer>, Reason> {
    let Some(proto) = f.u8_at(l3 + 9) else {
        return Ok(None); // too short to be protocol 112
    };
    if proto != IPPROTO_VRRP {
        return Ok(None);
    }
    let Some(vihl) = f.u8_at(l3) else {
        return Err(Reason::Truncated);
    };
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Reason::Length);
    }
    let Some(hdr) = f.bytes::<IPV4_MIN_HLEN>(l3) else {
        return Err(Reason::Truncated);
    };
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    if frag & IP_MF_OFFSET_MASK != 0 {
        return Err(Reason::Fragment);
    }
    let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if total < ihl {
        return Err(Reason::Length);
    }
    Ok(Some(IpLayer {
        family: Family::V4,
        src_at: l3 + 12,
        ttl: hdr[8],
        vrrp: l3 + ihl,
        vlen: total - ihl,
    }))
}

/// Extension headers the guard walks before it gives up on a packet (RFC 8200 section 4.1
/// orders at most about six in a sane packet).
pub const MAX_EXT_HEADERS: usize = 8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// Whether an IPv6 packet whose header names `next` as the next header may carry VRRP: it is
/// protocol 112, or an extension header that [`classify`] walks. Everything else (TCP, UDP,
/// ICMPv6, ESP, ...) is not VRRP as far as the guard can see.
#[inline(always)]
pub const fn ipv6_next_might_be_vrrp(next: u8) -> bool {
    next == IPPROTO_VRRP || walkable(next)
}

/// Whether `next` names an IPv6 extension header the guard can walk past.
#[inline(always)]
const fn walkable(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DEST_OPTS
    )
}

/// The IPv6 header at `l3` and its extension headers: `Ok(None)` when the packet does not
/// carry protocol 112 (a header chain ending in TCP, UDP, ICMPv6, ESP, anything else), an
/// error when it does or might but cannot be judged: a fragment of it (RFC 9568 section
/// 5.1.2: never fragmented), a chain longer than [`MAX_EXT_HEADERS`] or reaching beyond the
/// frame, or lengths that do not add up.
#[inline(always)]
fn ipv6_layer<F: Frame + ?Sized>(f: &F, l3: usize) -> Result<Option<IpLayer>, Reason> {
    let Some(first) = f.u8_at(l3 + 6) else {
        return Ok(None); // too short to say
    };
    if !ipv6_next_might_be_vrrp(first) {
        return Ok(None); // the common case: TCP, UDP, ICMPv6 right after the header
    }
    // Read in pieces: the BPF stack has no room for copies of the whole header.
    let Some(head) = f.bytes::<8>(l3) else {
        return Err(Reason::Truncated);
    };
    if head[0] >> 4 != 6 {
        return Ok(None);
    }
    let end = l3 + IPV6_HLEN + u16::from_be_bytes([head[4], head[5]]) as usize;
    let Some(off) = f.ipv6_chain(l3, first)? else {
        return Ok(None);
    };
    if off > end {
        return Err(Reason::Length);
    }
    Ok(Some(IpLayer {
        family: Family::V6,
        src_at: l3 + 8,
        ttl: head[7],
        vrrp: off,
        vlen: end - off,
    }))
}

/// Walks the extension headers of the IPv6 packet at `l3`, whose header names `first` as the
/// next header: where protocol 112 starts (`Ok(Some)`), `Ok(None)` when the chain ends in
/// something else, an error when it is or may be a VRRP packet that cannot be judged (see
/// [`classify`]). [`Frame::ipv6_chain`] runs it.
#[inline(always)]
pub fn ipv6_walk<F: Frame + ?Sized>(f: &F, l3: usize, first: u8) -> Result<Option<usize>, Reason> {
    let mut next = first;
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if next == IPPROTO_VRRP || !walkable(next) {
            break;
        }
        let Some(e) = f.bytes::<2>(off) else {
            return Err(Reason::Truncated);
        };
        if next == IPV6_FRAGMENT {
            // A fragment after the first holds no headers to judge; without its first
            // fragment (dropped below when it is VRRP's) it is never reassembled. The first
            // fragment shows the rest of the chain: walked on, and a fragment of VRRP if it
            // ends in 112.
            let Some(offset) = f.bytes::<2>(off + 2) else {
                return Err(Reason::Truncated);
            };
            if u16::from_be_bytes(offset) & 0xfff8 != 0 {
                return Ok(None);
            }
            fragment = true;
        }
        // RFC 4302 section 2.2: AH's length is in 4-byte units minus 2; the others' in
        // 8-byte units not counting the first (RFC 8200 section 4.3).
        off += if next == IPV6_AH {
            (e[1] as usize + 2) * 4
        } else if next == IPV6_FRAGMENT {
            8 // its second byte is reserved, not a length
        } else {
            (e[1] as usize + 1) * 8
        };
        next = e[0];
        i += 1;
    }
    if next != IPPROTO_VRRP {
        if walkable(next) {
            // Still extension headers after the bound: it might be VRRP.
            return Err(Reason::ExtHeaders);
        }
        return Ok(None);
    }
    if fragment {
        // RFC 9568 section 5.1.2: VRRP is never fragmented.
        return Err(Reason::Fragment);
    }
    if off > MAX_OFFSET {
        return Err(Reason::ExtHeaders);
    }
    Ok(Some(off))
}

/// The source address of the advert `a` in the frame `f` it was judged in.
#[inline(always)]
pub fn source<F: Frame + ?Sized>(f: &F, a: &Advert) -> AddrWords {
    read_src(f, a.key.family(), a.src_at).unwrap_or([0; 4])
}

/// The source address of `ip`, as its words (IPv4: the first, the others zero).
#[inline(always)]
fn src_words<F: Frame + ?Sized>(f: &F, ip: &IpLayer) -> Option<AddrWords> {
    read_src(f, ip.family, ip.src_at)
}

/// The source address of `family` at `at` in `f`, as its words (IPv4: the first, the others
/// zero).
#[inline(always)]
fn read_src<F: Frame + ?Sized>(f: &F, family: Family, at: usize) -> Option<AddrWords> {
    if family == Family::V6 {
        f.addr_words(at)
    } else {
        Some([u32::from_ne_bytes(f.bytes::<4>(at)?), 0, 0, 0])
    }
}

/// The checks of RFC 5798 section 7.1 (and keepalived's) on the VRRP message of `ip`, the same
/// for both families but for the address length and the checksum's pseudo-header.
#[inline(always)]
fn classify_vrrp<F: Frame + ?Sized, T: Tables + ?Sized>(
    f: &F,
    ip: &IpLayer,
    ifindex: u32,
    t: &T,
) -> Verdict {
    let (vrrp, vlen) = (ip.vrrp, ip.vlen);
    if vlen > vrrp::MAX_MESSAGE_LEN + auth::TRAILER_LEN {
        return Verdict::Drop(Reason::Length);
    }
    // The frame must hold the whole IP packet (it may hold Ethernet padding beyond it).
    if vlen > 0 && f.u8_at(vrrp + vlen - 1).is_none() {
        return Verdict::Drop(Reason::Truncated);
    }
    let Some(h) = f.bytes::<{ vrrp::HEADER_LEN }>(vrrp) else {
        return Verdict::Drop(Reason::Truncated);
    };
    if vlen < vrrp::HEADER_LEN {
        return Verdict::Drop(Reason::Truncated);
    }
    // RFC 5798 section 7.1: the TTL (IPv6: hop limit) MUST be 255.
    if ip.ttl != VRRP_TTL {
        return Verdict::Drop(Reason::Ttl);
    }
    // RFC 5798 section 7.1: the version MUST be 3 (2 for RFC 3768 instances); the type is an
    // ADVERTISEMENT.
    let head = match vrrp::Header::parse(&h) {
        Ok(head) => head,
        Err(vrrp::HeaderError::Version(_)) => return Verdict::Drop(Reason::Version),
        Err(vrrp::HeaderError::Type(_)) => return Verdict::Drop(Reason::Type),
    };
    let version = head.version;
    // RFC 5798 section 7.1: the VRID MUST be configured on the receiving interface (for the
    // family the advert came in).
    let vrid = head.vrid;
    let family = ip.family;
    let key = InstanceKey::new(ifindex, vrid, family);
    let Some(cfg) = t.vrid(vrid).and_then(|e| e.slot(ifindex, family)) else {
        return Verdict::Drop(Reason::UnknownVrid);
    };
    if version != cfg.version {
        return Verdict::Drop(Reason::Version);
    }
    if cfg.flags & CFG_PEER_FILTER != 0 {
        match src_words(f, ip) {
            Some(src) if cfg.is_peer(&src) => {}
            Some(_) => return Verdict::Drop(Reason::NotPeer),
            None => return Verdict::Drop(Reason::Truncated),
        }
    }
    // RFC 5798 section 7.1: the length MUST be consistent with Count IPvX Addr (at least one).
    // With auth_hmac, an advert may carry the 28-byte trailer after the message; nothing else
    // can make it exactly that much longer.
    let count = head.count;
    let mlen = head.message_len(family);
    let hmac = cfg.flags & CFG_AUTH_HMAC != 0;
    let trailer = hmac && vlen == mlen + auth::TRAILER_LEN;
    if count == 0 || count > family.max_addrs() || (vlen != mlen && !trailer) {
        return Verdict::Drop(Reason::Length);
    }
    // RFC 9568 section 5.2.8: the pseudo-header of IPv6 always, of IPv4 where configured
    // (keepalived's default; RFC 5798 left it ambiguous).
    let pseudo = family == Family::V6 || (version == 3 && cfg.flags & CFG_V3_PSEUDO_HEADER != 0);
    // Over IPv6 the checksum is the kernel's transport checksum (keepalived has it computed
    // with IPV6_CHECKSUM): it covers the whole payload, an auth_hmac trailer too. Over IPv4
    // it covers the message only.
    let csum_len = if family == Family::V6 { vlen } else { mlen };
    let mut sum: u32 = 0;
    if pseudo {
        // The source and destination addresses follow each other in both headers: IPv4's 8
        // bytes are summed here, IPv6's 32 by the (XDP: global) sum function.
        let addrs = if family == Family::V6 {
            f.sum_words(ip.src_at, 2 * family.addr_len())
        } else {
            f.bytes::<8>(ip.src_at).map(|b| be_sum(&b))
        };
        match addrs {
            Some(s) => sum = s + IPPROTO_VRRP as u32 + csum_len as u32,
            None => return Verdict::Drop(Reason::Truncated),
        }
    }
    match f.sum_words(vrrp, csum_len) {
        Some(s) => sum += s,
        None => return Verdict::Drop(Reason::Truncated),
    }
    if fold(sum) != 0xffff {
        return Verdict::Drop(Reason::Checksum);
    }
    let interval_cs = head.interval_cs;
    if interval_cs == 0 {
        return Verdict::Drop(Reason::Interval);
    }
    if version == 2 {
        // RFC 3768 section 5.3.6 / RFC 2338 section 5.3.6.1: Auth Type and simple password.
        if head.auth_type != cfg.auth_type {
            return Verdict::Drop(Reason::Auth);
        }
        if cfg.auth_type == vrrp::AUTH_PASS {
            let at = vrrp + vrrp::HEADER_LEN + family.addr_len() * count as usize;
            match f.bytes::<{ vrrp::V2_AUTH_LEN }>(at) {
                Some(pass) if pass == cfg.auth_pass => {}
                Some(_) => return Verdict::Drop(Reason::Auth),
                None => return Verdict::Drop(Reason::Truncated),
            }
        }
    }
    let mut seq = None;
    if hmac {
        let Some(auth) = t.auth(&key) else {
            // The slot says auth_hmac but its keys are not there (being reconfigured right
            // now): nothing can be verified, so nothing is accepted.
            return Verdict::Unauthentic(key, Reason::UnknownKey);
        };
        if trailer {
            let Some(src) = src_words(f, ip) else {
                return Verdict::Drop(Reason::Truncated);
            };
            let pseudo = auth::pseudo(family, version, vrid, &src);
            match check_trailer(f, vrrp, mlen, &pseudo, ReplayKey::new(key, &src), auth, t) {
                Ok(s) => seq = Some(s),
                Err(reason) => return Verdict::Unauthentic(key, reason),
            }
        } else if auth.mode == AUTH_MODE_ENFORCE {
            return Verdict::Unauthentic(key, Reason::NoTrailer);
        }
    }
    Verdict::Advert(Advert {
        key,
        src_at: ip.src_at,
        version,
        priority: head.priority,
        addr_count: count,
        interval_cs,
        hmac,
        seq,
    })
}

/// Verifies the `auth_hmac` trailer after the `mlen`-byte VRRP message at `msg`; returns its
/// sequence number. The cheap checks come first (keepalived's order, with the replay check
/// moved before the MAC: a sequence number at or below the sender's mark is rejected either
/// way, so a flood of replayed captures costs no hashing).
#[inline(always)]
fn check_trailer<F: Frame + ?Sized, T: Tables + ?Sized>(
    f: &F,
    msg: usize,
    mlen: usize,
    pseudo: &[u8; auth::PSEUDO_LEN],
    sender: ReplayKey,
    auth: &AuthConfig,
    t: &T,
) -> Result<Mark, Reason> {
    let at = msg + mlen;
    // In words: byte arrays would be assembled on the BPF stack, which the MAC needs; and
    // the sequence number read as one value, the key ID as another (kept as the trailer's
    // bytes, each took a stack slot of its own through the key search).
    let (Some(head), Some(seq)) = (f.bytes::<4>(at), trailer_seq(f, at)) else {
        return Err(Reason::Truncated);
    };
    if head[auth::field::EXT_TYPE] != auth::EXT_HMAC_SHA256 || head[2] != 0 || head[3] != 0 {
        return Err(Reason::Trailer);
    }
    let time_mode = auth.flags & AUTH_TIME != 0;
    let now = if time_mode { t.now_secs() } else { 0 };
    if time_mode && !auth::fresh(auth::seq_secs(seq), now, auth.window_s) {
        return Err(Reason::Stale);
    }
    let Some(key) = auth.key(head[auth::field::KEY_ID]) else {
        return Err(Reason::UnknownKey);
    };
    let mut replace = true;
    if let Some(mark) = t.replay_mark(&sender) {
        // A mark outside the window only orders adverts the window rejects anyway; letting it
        // expire lets a sender whose clock was stepped back in again (keepalived does the same).
        let expired = time_mode && !auth::fresh(auth::seq_secs(mark), now, auth.window_s);
        if !expired && !auth::seq_after(seq, mark) {
            return Err(Reason::Replay);
        }
        replace = expired;
    }
    let mac = t.with_mac_input(|input| {
        auth::advert_mac(f, msg, mlen, pseudo, key, input, |i, b, k| {
            t.mac_blocks(i, b, k)
        })
    });
    let Some(Some(mac)) = mac else {
        return Err(Reason::Truncated);
    };
    match auth::mac_matches(f, at + auth::field::MAC.start, &mac) {
        Some(true) => Ok(Mark { seq, replace }),
        Some(false) => Err(Reason::Hmac),
        None => Err(Reason::Truncated),
    }
}

/// The sequence number of the trailer at `at`.
#[inline(always)]
fn trailer_seq<F: Frame + ?Sized>(f: &F, at: usize) -> Option<u64> {
    let hi = u32::from_be_bytes(f.bytes::<4>(at + auth::field::SEC.start)?);
    let lo = u32::from_be_bytes(f.bytes::<4>(at + auth::field::SUBSEC.start)?);
    Some(((hi as u64) << 32) | lo as u64)
}

/// The replay mark to update for a sender after its advert `a` was accepted: `Some` when the
/// advert carried a verified sequence number. The caller stores `mark.apply(current)`.
#[inline(always)]
pub fn record_seq(a: &Advert, src: &AddrWords) -> Option<(ReplayKey, Mark)> {
    a.seq.map(|m| (ReplayKey::new(a.key, src), m))
}

/// Sum of big-endian 16-bit words of an even-length byte slice (a few words only).
#[inline(always)]
fn be_sum(b: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < b.len() {
        s += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    s
}

/// One's complement sum (unfolded) of the `len` bytes at `off`, in 4-byte words. VRRP
/// messages (and the `auth_hmac` trailer) are always a multiple of 4 bytes long (checked by
/// the caller). The loop is bounded by the largest possible VRRP message and its trailer so
/// the verifier can prove termination.
///
/// In the XDP program it runs as a global function of its own ([`Frame::sum_words`]), whose
/// loop's pointers do not take stack slots in the guard's frame (inlined, the unrolled loop's
/// spills took the IPv6 guard past the 512-byte stack).
#[inline(always)]
pub fn message_sum<F: Frame + ?Sized>(f: &F, off: usize, len: usize) -> Option<u32> {
    const MAX_WORDS: usize = (vrrp::MAX_MESSAGE_LEN + auth::TRAILER_LEN) / 4;
    let words = len / 4;
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < MAX_WORDS {
        if i >= words {
            break;
        }
        let w = f.bytes::<4>(off + 4 * i)?;
        sum += u16::from_be_bytes([w[0], w[1]]) as u64 + u16::from_be_bytes([w[2], w[3]]) as u64;
        i += 1;
    }
    // At most 266 words of two 16-bit halves: the sum stays far below 2^32.
    Some(sum as u32)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Internet checksum of `data` (RFC 1071), with an optional pseudo-header sum. Used by userspace
/// to build adverts and test frames; the guard verifies with the same arithmetic.
pub fn checksum(data: &[u8], pseudo: u32) -> u16 {
    let mut sum: u64 = pseudo as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header part of a checksum of protocol `proto` over `len` bytes (RFC 768 for
/// IPv4, RFC 8200 section 8.1 for IPv6), for addresses of either family: the IPv4 one (12
/// bytes: source, destination, zero, protocol, length) and the IPv6 one (40 bytes: source,
/// destination, 32-bit length, zeros, next header) add up to the same sum of their addresses,
/// the protocol and the length.
pub fn ip_pseudo_sum(src: &Addr, dst: &Addr, family: Family, proto: u8, len: usize) -> u32 {
    let n = family.addr_len();
    be_sum(&src[..n]) + be_sum(&dst[..n]) + proto as u32 + len as u32
}

/// The pseudo-header part of a v3 checksum (RFC 9568 section 5.2.8): [`ip_pseudo_sum`] of
/// protocol 112.
pub fn pseudo_sum(src: &Addr, dst: &Addr, family: Family, vrrp_len: usize) -> u32 {
    ip_pseudo_sum(src, dst, family, IPPROTO_VRRP, vrrp_len)
}

/// [`pseudo_sum`] of two IP addresses of one family (a message from userspace).
pub fn pseudo_header_sum(src: core::net::IpAddr, dst: core::net::IpAddr, vrrp_len: u16) -> u32 {
    let family = if src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    pseudo_sum(&addr_of(src), &addr_of(dst), family, vrrp_len as usize)
}

/// An address of either family as an [`Addr`] (IPv4 in the first four bytes).
pub fn addr_of(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(a) => v4_addr(a.octets()),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// Silence after which the next advert is reported as [`EV_AFTER_SILENCE`]: three advert
/// intervals, i.e. Master_Down_Interval without the skew (RFC 5798 section 6.1).
#[inline(always)]
pub const fn silence_ns(interval_cs: u16) -> u64 {
    3 * interval_cs as u64 * 10_000_000
}

/// Folds the valid advert `a`, seen at `now_ns`, into `rec` and returns the `EV_*` reasons to
/// wake userspace (0: steady state, nothing to do). When that is not 0 (a new master, or the
/// first advert after silence) the caller stores the frame's Ethernet source in `rec.mac`
/// ([`source_mac`]; the XDP program copies it with a helper, which keeps the verifier's work on
/// the advert path as it was).
#[inline(always)]
pub fn record_advert(rec: &mut AdvertRecord, a: &Advert, src: &AddrWords, now_ns: u64) -> u8 {
    let mut ev = 0;
    if rec.adverts == 0 || now_ns.saturating_sub(rec.last_seen_ns) > silence_ns(rec.interval_cs) {
        ev |= EV_AFTER_SILENCE;
    } else {
        if !words_eq(&to_words(&rec.master), src) {
            ev |= EV_NEW_SOURCE;
        }
        if rec.priority != a.priority {
            ev |= EV_PRIORITY_CHANGE;
        }
        if rec.interval_cs != a.interval_cs {
            ev |= EV_INTERVAL_CHANGE;
        }
    }
    // RFC 5798 section 6.4.2: priority 0 means the master stepped down; act at once.
    if a.priority == 0 {
        ev |= EV_PRIORITY_ZERO;
    }
    rec.last_seen_ns = now_ns;
    rec.adverts += 1;
    rec.master = from_words(src);
    rec.priority = a.priority;
    rec.version = a.version;
    rec.interval_cs = a.interval_cs;
    ev
}

/// The Ethernet source address of the frame `f`.
#[inline(always)]
pub fn source_mac<F: Frame + ?Sized>(f: &F) -> [u8; 6] {
    f.bytes::<6>(6).unwrap_or([0; 6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Ethernet (with `tags` VLAN tags) + IPv4 (`proto`, fragment word) + 20 bytes of TCP
    /// with `flags`.
    fn frame(tags: usize, proto: u8, frag: u16, flags: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0; 12]);
        for _ in 0..tags {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[198, 18, 0, 3]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 100]);
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&50000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[13] = flags;
        f.extend_from_slice(&tcp);
        f
    }

    #[test]
    fn only_the_first_packet_of_a_tcp_connection_is_a_syn() {
        let dst = |f: Vec<u8>| {
            let l3 = ipv4_offset(f.as_slice())?;
            tcp_segment(f.as_slice(), l3)
                .filter(|s| s.syn)
                .map(|s| (s.dst, s.dport))
        };
        let vip = Some(([198, 18, 0, 100], [0x1f, 0x90]));
        assert_eq!(dst(frame(0, 6, 0, 0x02)), vip);
        assert_eq!(dst(frame(1, 6, 0, 0x02)), vip);
        assert_eq!(dst(frame(0, 6, 0, 0x12)), None, "SYN-ACK");
        assert_eq!(dst(frame(0, 6, 0, 0x10)), None, "ACK");
        assert_eq!(dst(frame(0, 17, 0, 0x02)), None, "UDP");
        assert_eq!(dst(frame(0, 6, 0x2000, 0x02)), None, "fragment");
        let f = frame(0, 6, 0, 0x02);
        assert_eq!(tcp_segment(&f[..47], 14), None, "no TCP flags byte");
        let s = tcp_segment(f.as_slice(), 14).unwrap();
        assert_eq!((s.src, s.sport), ([198, 18, 0, 3], [0xc3, 0x50]));
        let ack = frame(0, 6, 0, 0x10);
        let s = tcp_segment(ack.as_slice(), 14).unwrap();
        assert!(!s.syn, "an ACK is a segment of an open flow");
        assert_eq!(
            tcp_segment(frame(0, 17, 0, 0x10).as_slice(), 14),
            None,
            "UDP"
        );
    }
}
