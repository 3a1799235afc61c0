//! Layouts of the BPF maps the guard shares with userspace, and the map names.
//!
//! Rules for every type here: `#[repr(C)]`, fixed-width fields, padding spelled out as `_pad`
//! fields that are always zero (hash keys are compared byte for byte by the kernel), and a size
//! asserted at compile time. Changing any layout must bump [`LAYOUT_VERSION`]: userspace checks
//! pinned maps against these sizes before reusing them.

use crate::vrrp::Family;

/// Version of the map layouts below. Part of the pin sanity check and shown by `hapd status`.
pub const LAYOUT_VERSION: u32 = 6;

/// Map names, used both as the ELF symbol in the eBPF object and as the file name of the pin
/// under `pin_dir`. At most 15 bytes (the kernel's `BPF_OBJ_NAME_LEN - 1`).
pub const MAP_VRIDS: &str = "vrrp_vrids";
pub const MAP_ADVERTS: &str = "vrrp_adverts";
pub const MAP_STATS: &str = "guard_stats";
pub const MAP_EVENTS: &str = "vrrp_events";
/// The (virtual address, port) pairs hapd's proxy serves (key [`ServedPort`], value unused).
/// A connection request to one of them that no socket listens for is dropped instead of
/// refused, so the client retries (and reaches the new master) rather than failing. Other
/// ports of a VIP (IPVS, DNAT, other daemons) are left alone.
pub const MAP_VIPS: &str = "vip_served";
/// The virtual addresses in a planned move (key: the address as on the wire, read as a
/// native `u32`; value [`FlowEntry`]): their TCP segments go to the node that holds the flow,
/// and a node that released one answers no ARP request for it (see [`crate::flow`]).
pub const MAP_FLOWS: &str = "vip_flows";
/// One `u32`: how many entries `vip_flows` has, so that the guard looks there only during a
/// move.
pub const MAP_FLOW_COUNT: &str = "vip_flow_count";
/// The anycast prefixes this node serves (an LPM trie: key prefix length and the network as
/// on the wire, value the index of its group in `anycast_peers`). Their TCP segments that no
/// socket here holds go on along the group's peers (see [`crate::second_chance`]).
pub const MAP_ANYCAST_PREFIXES: &str = "anycast_prefixes";
/// Each anycast group's peers ([`AnycastPeers`]), by group index.
pub const MAP_ANYCAST_PEERS: &str = "anycast_peers";
/// `auth_hmac` of each instance that has it (key [`InstanceKey`], value [`AuthConfig`]). Never
/// pinned: its values are key material (HMAC midstates).
pub const MAP_AUTH: &str = "vrrp_auth";
/// The highest verified sequence number per sender (key [`ReplayKey`], value `u64`), an LRU
/// table written only after a MAC verified, so forged sources cannot churn it.
pub const MAP_REPLAY: &str = "vrrp_replay";
/// Per-instance `auth_hmac` outcomes (per-CPU, key [`InstanceKey`], value [`AuthCounters`]).
pub const MAP_AUTH_STATS: &str = "vrrp_auth_stats";
/// One `i64`: `CLOCK_REALTIME - CLOCK_MONOTONIC` in nanoseconds, written by userspace at start
/// and whenever the wall clock is set, so the guard can tell the time for the freshness window
/// from `bpf_ktime_get_ns`.
pub const MAP_CLOCK: &str = "vrrp_clock";
/// Per instance (key [`InstanceKey`], value [`TimerCfg`], written by userspace): whether the
/// guard runs the instance's master-down timer, and with what priority (see
/// [`crate::master_down`]).
pub const MAP_TIMER_CFG: &str = "vrrp_timer_cfg";
/// Per instance (key [`InstanceKey`], value [`TimerState`], created and written by the guard):
/// the master-down timer itself (a kernel `bpf_timer`) and when it runs out. Userspace only
/// reads it, and deletes an entry to stop its timer.
pub const MAP_TIMERS: &str = "vrrp_timers";
/// One [`Owners`]: the processes that serve the guard's connection requests. The guard's exit
/// program clears a process's slot as it dies (before the kernel closes its sockets); while
/// every slot is clear, connection requests to a served port are dropped.
pub const MAP_OWNERS: &str = "hapd_owners";
/// The program that watches for an owner's death (a raw tracepoint on `sched_process_exit`).
pub const EXIT_PROGRAM_NAME: &str = "hapd_exit";
/// Capacity of `vrrp_replay`.
pub const MAX_REPLAY: u32 = 4096;
/// Keys one instance can hold at once (for make-before-break rotation).
pub const MAX_AUTH_KEYS: usize = 8;
/// Capacity of `vip_served` and `vip_flows`.
pub const MAX_VIPS: u32 = 1024;
/// Capacity of `anycast_peers` (groups) and `anycast_prefixes`.
pub const MAX_ANYCAST_GROUPS: u32 = 16;
pub const MAX_ANYCAST_PREFIXES: u32 = 256;
/// Nodes one anycast group can have, this one included.
pub const MAX_ANYCAST_PEERS: usize = 8;

/// Processes one guard can be served by at once: a daemon, and the successor it hands over to
/// in a hitless upgrade.
pub const OWNER_SLOTS: usize = 4;

/// The value of `hapd_owners`: the thread-group ids of the daemons serving the guard's ports
/// (0 is a free slot), as their pid namespace numbers them, and that namespace (the device and
/// inode of `/proc/self/ns/pid`; 0 and 0: not set, nothing is watched).
///
/// Why the guard cares: a killed daemon's descriptors are released after its threads stop,
/// and the kernel closes its client connections before its listening sockets (their final
/// releases run last in, first out); a client that reconnects at once would reach the
/// listener in that window and lose a second request when it closes. With the daemon's slot
/// cleared as its main thread exits, before any descriptor is released, its connection
/// requests are dropped instead: the client retries and reaches the new master.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub tgid: [u32; OWNER_SLOTS],
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}

impl Owners {
    /// Only `tgid`, of the pid namespace `(dev, ino)`, serves.
    pub const fn only(tgid: u32, pidns: (u64, u64)) -> Owners {
        let mut o = Owners {
            tgid: [0; OWNER_SLOTS],
            pidns_dev: pidns.0,
            pidns_ino: pidns.1,
        };
        o.tgid[0] = tgid;
        o
    }

    /// Whether no process serves (every slot clear).
    #[inline(always)]
    pub fn none_alive(&self) -> bool {
        let mut any = 0;
        let mut i = 0;
        while i < OWNER_SLOTS {
            any |= self.tgid[i];
            i += 1;
        }
        any == 0
    }

    /// `tgid` of the pid namespace `pidns` joins those that serve (a successor beside its
    /// predecessor): in a free slot, or, with none free, in slot 0 (userspace clears the
    /// slots of processes that no longer exist first, so that takes four live hapd
    /// processes serving one guard). From another pid namespace it serves alone (the others'
    /// numbers mean nothing there; they count as gone).
    pub fn with(&self, tgid: u32, pidns: (u64, u64)) -> Owners {
        if (self.pidns_dev, self.pidns_ino) != pidns {
            return Owners::only(tgid, pidns);
        }
        let mut o = *self;
        if o.tgid.contains(&tgid) {
            return o;
        }
        match o.tgid.iter().position(|t| *t == 0) {
            Some(i) => o.tgid[i] = tgid,
            None => {
                o.tgid.copy_within(1.., 0);
                o.tgid[OWNER_SLOTS - 1] = tgid;
            }
        }
        o
    }

    /// The slot of `tgid` cleared (it died), if it has one.
    #[inline(always)]
    pub fn slot_of(&self, tgid: u32) -> Option<usize> {
        let mut i = 0;
        while i < OWNER_SLOTS {
            if tgid != 0 && self.tgid[i] == tgid {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

const _: () = assert!(core::mem::size_of::<Owners>() == 32);

/// An address as the maps keep it: 16 bytes as on the wire, an IPv4 address in the first 4
/// and zero after them (the family is kept beside it where it matters).
pub type Addr = [u8; 16];

/// `a` as an [`Addr`].
#[inline(always)]
pub const fn v4_addr(a: [u8; 4]) -> Addr {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

/// An address as the guard handles it between reading it from a frame and storing it in a
/// map: the native-endian words of its 16 bytes (of an [`Addr`]). In bytes, LLVM's BPF backend
/// keeps every byte in a register of its own and spills them (16 stack slots of 8 bytes for
/// one address), which took the IPv6 guard past the 512-byte stack.
pub type AddrWords = [u32; 4];

/// The words of `a`.
#[inline(always)]
pub const fn to_words(a: &Addr) -> AddrWords {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The bytes of `w`.
#[inline(always)]
pub const fn from_words(w: &AddrWords) -> Addr {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Whether two address words are equal, word by word (a comparison of the arrays can become
/// a call to `bcmp`, which BPF does not have).
#[inline(always)]
pub const fn words_eq(a: &AddrWords, b: &AddrWords) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// Key of `vip_served`: an address and a TCP port as on the wire, and the address family
/// (4 or 6, [`crate::vrrp::Family`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServedPort {
    pub addr: Addr,
    pub port: [u8; 2],
    pub family: u8,
    pub _pad: u8,
}

impl ServedPort {
    #[inline(always)]
    pub const fn new(addr: Addr, port: [u8; 2], family: Family) -> Self {
        Self {
            addr,
            port,
            family: family as u8,
            _pad: 0,
        }
    }
}

/// Entries of `vrrp_vrids`: one per VRID value (index = VRID; 0 is never configured).
pub const VRIDS: u32 = 256;
/// Interfaces one VRID can be configured on at once (slots of a [`VridEntry`]).
pub const MAX_IFACES_PER_VRID: usize = 4;
/// Peers one instance can allow (inline in its [`InstanceSlot`]).
pub const MAX_PEERS_PER_INSTANCE: usize = 8;
/// Capacity of `vrrp_adverts`: VRRP instances one daemon can run.
pub const MAX_INSTANCES: u32 = VRIDS * MAX_IFACES_PER_VRID as u32;
/// Size of the event ring buffer in bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// The program name of the XDP guard in the object file.
pub const PROGRAM_NAME: &str = "hapd_vrrp_guard";
/// The program the guard jumps to during a planned move (`vip_flows`).
pub const FLOW_PROGRAM_NAME: &str = "hapd_flow";
/// The program the guard jumps to for IPv6 packets that may be VRRP.
pub const GUARD6_PROGRAM_NAME: &str = "hapd_guard6";
/// The guard's jump table: the flow program at [`JUMP_FLOW`], the IPv6 guard at
/// [`JUMP_GUARD6`]. Not pinned: it holds references to the programs that only the daemon's
/// process keeps (with the daemon gone, IPv6 adverts pass unjudged: nothing reads them).
pub const MAP_JUMP: &str = "hapd_jump";
pub const JUMP_FLOW: u32 = 0;
pub const JUMP_GUARD6: u32 = 1;

/// Key of `vrrp_adverts`: one VRRP instance on one interface. An IPv4 and an IPv6 instance
/// may have the same VRID on one interface (RFC 9568 section 5.2.3: each family has its own
/// VRID space); `family` tells them apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// Interface index the frame arrived on (`xdp_md.ingress_ifindex`).
    pub ifindex: u32,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// 4 or 6 ([`Family`]).
    pub family: u8,
    pub _pad: [u8; 2],
}

impl InstanceKey {
    #[inline(always)]
    pub const fn new(ifindex: u32, vrid: u8, family: Family) -> Self {
        // Two words, not a struct literal: LLVM's BPF backend zeroed `_pad` with a call to a
        // memset subprogram on every advert's path (about 9 ns per packet, `cargo xtask bench
        // xdp`). In memory the second word is [vrid, family, 0, 0] on any byte order.
        let words = [ifindex, u32::from_ne_bytes([vrid, family as u8, 0, 0])];
        // SAFETY: InstanceKey is repr(C), 8 bytes with alignment 4 like [u32; 2] (checked
        // below), and any bytes are a valid InstanceKey.
        unsafe { core::mem::transmute::<[u32; 2], InstanceKey>(words) }
    }

    /// The instance's address family (IPv4 for a value that is neither, which no key built by
    /// [`InstanceKey::new`] has).
    #[inline(always)]
    pub const fn family(&self) -> Family {
        match Family::from_u8(self.family) {
            Some(f) => f,
            None => Family::V4,
        }
    }

    /// The key as one scalar (for a BPF global function's argument): ifindex in the low half,
    /// then the VRID and the family.
    #[inline(always)]
    pub const fn to_u64(self) -> u64 {
        self.ifindex as u64 | (self.vrid as u64) << 32 | (self.family as u64) << 40
    }

    #[inline(always)]
    pub const fn from_u64(v: u64) -> Self {
        let words = [
            v as u32,
            u32::from_ne_bytes([(v >> 32) as u8, (v >> 40) as u8, 0, 0]),
        ];
        // SAFETY: as in `new`.
        unsafe { core::mem::transmute::<[u32; 2], InstanceKey>(words) }
    }
}

const _: () = assert!(core::mem::size_of::<InstanceKey>() == 8);
const _: () = assert!(core::mem::align_of::<InstanceKey>() == 4);

/// `InstanceSlot::flags`: only sources in `peers` may speak for this VRID.
pub const CFG_PEER_FILTER: u8 = 1 << 0;
/// `InstanceSlot::flags`: v3 IPv4 checksum includes the IPv4 pseudo-header (keepalived's
/// default); clear means the checksum covers the VRRP message only (RFC 9568 section 5.2.8).
pub const CFG_V3_PSEUDO_HEADER: u8 = 1 << 1;

/// `InstanceSlot::flags`: the instance has `auth_hmac`; its [`AuthConfig`] is in `vrrp_auth`.
pub const CFG_AUTH_HMAC: u8 = 1 << 2;

/// `AuthConfig::mode`: verify a trailer when there is one, accept adverts without; send none.
pub const AUTH_MODE_RECEIVE_ONLY: u8 = 0;
/// `AuthConfig::mode`: verify a trailer when there is one, accept adverts without; sign.
pub const AUTH_MODE_PERMISSIVE: u8 = 1;
/// `AuthConfig::mode`: every advert needs a valid trailer; sign.
pub const AUTH_MODE_ENFORCE: u8 = 2;
/// `AuthConfig::flags`: `anti_replay = "time"`: timestamps must lie within the window of now.
pub const AUTH_TIME: u8 = 1 << 0;

/// One HMAC key as the guard holds it: SHA-256 midstates after `key ^ ipad` and `key ^ opad`
/// (see `auth::midstates`). Key-equivalent: never logged, never pinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthKey {
    /// Key ID, 1..=255; 0 = unused.
    pub id: u8,
    pub _pad: [u8; 3],
    pub inner: [u32; 8],
    pub outer: [u32; 8],
}

/// Value of `vrrp_auth`: the `auth_hmac` settings of one instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `AUTH_MODE_*`.
    pub mode: u8,
    /// `AUTH_*` bits.
    pub flags: u8,
    /// How many of `keys` are in use.
    pub key_count: u8,
    pub _pad: u8,
    /// Freshness window in seconds (time mode).
    pub window_s: u32,
    pub keys: [AuthKey; MAX_AUTH_KEYS],
}

impl AuthConfig {
    /// The key with ID `id`.
    #[inline(always)]
    pub fn key(&self, id: u8) -> Option<&AuthKey> {
        let mut i = 0;
        while i < MAX_AUTH_KEYS {
            if i >= self.key_count as usize {
                return None;
            }
            if self.keys[i].id == id && id != 0 {
                return Some(&self.keys[i]);
            }
            i += 1;
        }
        None
    }
}

/// Key of `vrrp_replay`: one sender of one instance. All fields are words: the BPF target
/// turns zeroed byte arrays into calls to a byte-wise memset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplayKey {
    pub ifindex: u32,
    /// The VRID in the low byte, the family (4 or 6) in the next.
    pub vrid: u32,
    /// Source address as on the wire (native-endian words of its bytes); IPv4 in the first
    /// word, the others zero.
    pub src: [u32; 4],
}

impl ReplayKey {
    #[inline(always)]
    pub const fn new(key: InstanceKey, src: &AddrWords) -> Self {
        Self {
            ifindex: key.ifindex,
            vrid: key.vrid as u32 | (key.family as u32) << 8,
            src: *src,
        }
    }

    /// The instance of the sender.
    pub const fn instance(&self) -> InstanceKey {
        let family = match Family::from_u8((self.vrid >> 8) as u8) {
            Some(f) => f,
            None => Family::V4,
        };
        InstanceKey::new(self.ifindex, self.vrid as u8, family)
    }
}

/// Value of the per-CPU `vrrp_auth_stats`: what `auth_hmac` decided for one instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthCounters {
    /// Accepted with a valid trailer.
    pub signed: u64,
    /// Accepted without a trailer (receive-only and permissive modes).
    pub unsigned: u64,
    pub drop_no_trailer: u64,
    pub drop_trailer: u64,
    pub drop_unknown_key: u64,
    pub drop_stale: u64,
    pub drop_replay: u64,
    pub drop_hmac: u64,
}

impl AuthCounters {
    /// The counter of a drop reason, if it is an `auth_hmac` one.
    #[inline(always)]
    pub fn slot(&mut self, reason: Reason) -> Option<&mut u64> {
        match reason {
            Reason::NoTrailer => Some(&mut self.drop_no_trailer),
            Reason::Trailer => Some(&mut self.drop_trailer),
            Reason::UnknownKey => Some(&mut self.drop_unknown_key),
            Reason::Stale => Some(&mut self.drop_stale),
            Reason::Replay => Some(&mut self.drop_replay),
            Reason::Hmac => Some(&mut self.drop_hmac),
            _ => None,
        }
    }

    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, o: &AuthCounters) {
        self.signed += o.signed;
        self.unsigned += o.unsigned;
        self.drop_no_trailer += o.drop_no_trailer;
        self.drop_trailer += o.drop_trailer;
        self.drop_unknown_key += o.drop_unknown_key;
        self.drop_stale += o.drop_stale;
        self.drop_replay += o.drop_replay;
        self.drop_hmac += o.drop_hmac;
    }
}

/// One configured instance of a VRID: what the guard must know about it. Written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceSlot {
    /// Interface the instance runs on; 0 = unused slot.
    pub ifindex: u32,
    /// 2 or 3; adverts of the other version are dropped.
    pub version: u8,
    /// `CFG_*` bits.
    pub flags: u8,
    /// v2 only: expected Auth Type (0 none, 1 PASS).
    pub auth_type: u8,
    /// How many of `peers` are in use.
    pub peer_count: u8,
    /// 4 or 6 ([`Family`]): adverts of the other family are another instance.
    pub family: u8,
    pub _pad: [u8; 3],
    /// v2 PASS only: the password, zero padded to 8 bytes (RFC 2338 section 5.3.10).
    pub auth_pass: [u8; 8],
    /// Allowed source addresses (network byte order, as on the wire; [`Addr`]).
    pub peers: [Addr; MAX_PEERS_PER_INSTANCE],
}

/// Value of `vrrp_vrids[vrid]`: the instances of one VRID, one slot per interface. An array
/// indexed by VRID is what keeps the guard's hot path to one inlined map lookup: a forged
/// advert costs no hashing at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VridEntry {
    pub slots: [InstanceSlot; MAX_IFACES_PER_VRID],
}

impl VridEntry {
    /// The slot of this VRID's instance of `family` on `ifindex`, if it is configured there.
    #[inline(always)]
    pub fn slot(&self, ifindex: u32, family: Family) -> Option<&InstanceSlot> {
        let mut i = 0;
        while i < MAX_IFACES_PER_VRID {
            let s = &self.slots[i];
            if s.ifindex == ifindex && ifindex != 0 && s.family == family as u8 {
                return Some(s);
            }
            i += 1;
        }
        None
    }
}

impl InstanceSlot {
    /// Whether `src` is one of the allowed peers.
    #[inline(always)]
    pub fn is_peer(&self, src: &AddrWords) -> bool {
        let mut i = 0;
        while i < MAX_PEERS_PER_INSTANCE {
            if i >= self.peer_count as usize {
                return false;
            }
            if words_eq(&to_words(&self.peers[i]), src) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Value of `vrrp_adverts`: the last valid advert the guard saw for an instance. Entries are
/// created (zeroed) by userspace for every configured instance and updated in place by the guard.
///
/// The userspace master-down timer reads `last_seen_ns` (the kernel's `CLOCK_MONOTONIC`, the
/// same clock as `clock_gettime(CLOCK_MONOTONIC)`) when its deadline expires, instead of being
/// woken for every advert.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvertRecord {
    /// `bpf_ktime_get_ns()` of the last valid advert; 0 = never.
    pub last_seen_ns: u64,
    /// Valid adverts seen since the entry was created.
    pub adverts: u64,
    /// Source address of the last valid advert (the current master as seen from here).
    pub master: Addr,
    /// Priority in the last valid advert.
    pub priority: u8,
    /// VRRP version of the last valid advert.
    pub version: u8,
    /// Advertisement interval of the last valid advert in centiseconds (v2 seconds x 100).
    pub interval_cs: u16,
    /// Ethernet source address of the last valid advert: where a flow of the master's goes
    /// after a planned move ([`FlowEntry::peer_mac`]).
    pub mac: [u8; 6],
    pub _pad: [u8; 6],
}

/// This node holds the address; segments of flows it has no socket for go to `peer_mac`, the
/// address's previous owner, which still serves them.
pub const FLOW_HOLDER: u8 = 1;
/// This node handed the address over to `peer_mac` and drains the flows it still has: it
/// answers no ARP request for the address, and sends on new connections and segments of flows
/// it has no socket for.
pub const FLOW_RELEASED: u8 = 2;

/// Value of `vip_flows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The other node of the move, on the segment the address lives on.
    pub peer_mac: [u8; 6],
    /// [`FLOW_HOLDER`] or [`FLOW_RELEASED`].
    pub role: u8,
    pub _pad: u8,
}

/// Value of `anycast_peers`: one anycast group's nodes in the order of its `peers` list (the
/// same order on every node), for second chance ([`crate::second_chance`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnycastPeers {
    /// This node's position in the list.
    pub me: u8,
    /// How many nodes the list has (2..=[`MAX_ANYCAST_PEERS`]; anything else: no second
    /// chance). In entry 0, not 0 whenever any group is configured (a group without second
    /// chance has 1): the guard skips its prefix lookup when it is 0.
    pub count: u8,
    /// Bit i set: node i takes segments sent on (its Ethernet address known, and alive).
    pub usable: u8,
    pub _pad: u8,
    /// Each node's Ethernet address on the group's segment.
    pub macs: [[u8; 6]; MAX_ANYCAST_PEERS],
}

/// Value of `vrrp_timer_cfg`. Userspace writes it whenever what it holds changes; the guard
/// reads it for every valid advert of the instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerCfg {
    /// 1: the guard runs the master-down timer (the instance is a backup and its daemon
    /// sleeps until the timer's event); 0: it leaves it alone.
    pub on: u8,
    /// This node's effective priority (the one its adverts carry), for Skew_Time.
    pub priority: u8,
    /// 2 or 3.
    pub version: u8,
    pub _pad: u8,
    /// This node's advert interval in centiseconds (what a v2 backup counts with).
    pub own_interval_cs: u16,
    pub _pad2: [u8; 2],
}

/// What the guard passes to its master-down function about a valid advert (packed into one
/// scalar: a BPF global function takes no structure by value). The advert's source is not
/// passed: when the timer runs out, the event takes it from the instance's `vrrp_adverts`
/// record, which the same advert wrote (this keeps the function's stack small enough for the
/// IPv6 path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerArm {
    pub priority: u8,
    pub version: u8,
    pub interval_cs: u16,
}

impl TimerArm {
    #[inline(always)]
    pub fn pack(&self) -> u32 {
        self.priority as u32 | (self.version as u32) << 8 | (self.interval_cs as u32) << 16
    }

    #[inline(always)]
    pub fn unpack(meta: u32) -> TimerArm {
        TimerArm {
            priority: meta as u8,
            version: (meta >> 8) as u8,
            interval_cs: (meta >> 16) as u16,
        }
    }
}

/// Value of `vrrp_timers`, as userspace reads it. The guard's own definition (in the eBPF
/// program) has the kernel's `struct bpf_timer` where this has `timer`: the same 16 bytes,
/// which the kernel never copies to or from userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerState {
    pub timer: [u64; 2],
    /// `bpf_ktime_get_ns()` when the timer runs out if nothing re-arms it; 0 = never armed.
    pub deadline_ns: u64,
    /// Times the guard armed it (valid adverts that re-armed it).
    pub armed: u64,
    /// Times it ran out (each posted one [`EV_MASTER_DOWN`] event).
    pub fired: u64,
    /// The last advert that armed it: its priority, version and interval (its source is the
    /// instance's `vrrp_adverts` record's `master`).
    pub priority: u8,
    pub version: u8,
    pub interval_cs: u16,
    /// 1 once the guard has initialised `timer`.
    pub ready: u32,
}

/// Why the guard woke userspace (`GuardEvent::flags`).
pub const EV_NEW_SOURCE: u8 = 1 << 0;
pub const EV_PRIORITY_CHANGE: u8 = 1 << 1;
pub const EV_PRIORITY_ZERO: u8 = 1 << 2;
pub const EV_INTERVAL_CHANGE: u8 = 1 << 3;
/// First advert ever, or the first after more than three advert intervals of silence.
pub const EV_AFTER_SILENCE: u8 = 1 << 4;
/// Not an advert: the instance's master-down timer ran out in the kernel (the event's
/// `priority` and `interval_cs` are those of the last advert that armed it, its `src` the
/// instance's last valid advert's).
pub const EV_MASTER_DOWN: u8 = 1 << 5;

/// One record of the `vrrp_events` ring buffer: an advert userspace must act on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardEvent {
    /// Kernel `CLOCK_MONOTONIC` time of the advert.
    pub time_ns: u64,
    pub ifindex: u32,
    pub vrid: u8,
    pub priority: u8,
    pub version: u8,
    /// `EV_*` bits.
    pub flags: u8,
    /// The advert's source ([`Addr`]).
    pub src: Addr,
    pub interval_cs: u16,
    /// Count IPvX Addr of the advert.
    pub addr_count: u8,
    /// Priority of the previous advert, for logging a change.
    pub prev_priority: u8,
    /// 4 or 6: the instance's family ([`InstanceKey::family`]).
    pub family: u8,
    pub _pad: [u8; 3],
}

impl GuardEvent {
    /// The instance the event is about.
    pub const fn key(&self) -> InstanceKey {
        let family = match Family::from_u8(self.family) {
            Some(f) => f,
            None => Family::V4,
        };
        InstanceKey::new(self.ifindex, self.vrid, family)
    }
}

/// Why the guard decided what it did. One counter each in [`GuardCounters`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A valid advert, recorded and passed on.
    Accepted = 0,
    /// Source is not an allowed peer of that VRID on that interface.
    NotPeer,
    /// TTL is not 255 (RFC 5798 section 7.1): sent from behind a router.
    Ttl,
    /// Version is not 2 or 3, or not the version configured for the VRID.
    Version,
    /// Type is not ADVERTISEMENT.
    Type,
    /// No instance with that VRID on that interface.
    UnknownVrid,
    /// IP or VRRP length inconsistent with the address count (or no address at all).
    Length,
    /// VRRP checksum wrong.
    Checksum,
    /// Frame ends before the headers it claims.
    Truncated,
    /// A fragment of a protocol-112 packet (VRRP is never fragmented).
    Fragment,
    /// v2 authentication type or password does not match.
    Auth,
    /// Advertisement interval of zero.
    Interval,
    /// `auth_hmac` enforced and the advert has no trailer.
    NoTrailer,
    /// A trailer of an unknown scheme or with reserved bits set.
    Trailer,
    /// A trailer naming a key ID this instance does not have.
    UnknownKey,
    /// A trailer timestamp outside the freshness window.
    Stale,
    /// A sequence number not above the last verified one of that sender.
    Replay,
    /// A MAC that does not verify: forged, altered, or signed with another key.
    Hmac,
    /// An IPv6 packet whose chain of extension headers the guard cannot walk to its end
    /// (longer than [`crate::guard::MAX_EXT_HEADERS`] headers, or beyond the part of the
    /// frame it reads): it might be VRRP, so it is not let through unjudged.
    ExtHeaders,
}

impl Reason {
    /// The reason numbered `n` (`reason as u32`).
    #[inline(always)]
    pub fn from_u32(n: u32) -> Option<Reason> {
        let mut i = 0;
        while i < Reason::ALL.len() {
            if Reason::ALL[i] as u32 == n {
                return Some(Reason::ALL[i]);
            }
            i += 1;
        }
        None
    }

    pub const ALL: [Reason; 19] = [
        Reason::Accepted,
        Reason::NotPeer,
        Reason::Ttl,
        Reason::Version,
        Reason::Type,
        Reason::UnknownVrid,
        Reason::Length,
        Reason::Checksum,
        Reason::Truncated,
        Reason::Fragment,
        Reason::Auth,
        Reason::Interval,
        Reason::NoTrailer,
        Reason::Trailer,
        Reason::UnknownKey,
        Reason::Stale,
        Reason::Replay,
        Reason::Hmac,
        Reason::ExtHeaders,
    ];

    /// The counter's name as it appears in `bpftool map dump` and in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::NotPeer => "drop_not_peer",
            Reason::Ttl => "drop_ttl",
            Reason::Version => "drop_version",
            Reason::Type => "drop_type",
            Reason::UnknownVrid => "drop_unknown_vrid",
            Reason::Length => "drop_length",
            Reason::Checksum => "drop_checksum",
            Reason::Truncated => "drop_truncated",
            Reason::Fragment => "drop_fragment",
            Reason::Auth => "drop_auth",
            Reason::Interval => "drop_interval",
            Reason::NoTrailer => "drop_no_trailer",
            Reason::Trailer => "drop_trailer",
            Reason::UnknownKey => "drop_unknown_key",
            Reason::Stale => "drop_stale",
            Reason::Replay => "drop_replay",
            Reason::Hmac => "drop_hmac",
            Reason::ExtHeaders => "drop_ext_headers",
        }
    }
}

/// Value of the per-CPU `guard_stats` array (one entry): packet counts by decision. The field
/// names are what `bpftool map dump pinned <pin_dir>/guard_stats` prints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters {
    pub accepted: u64,
    pub drop_not_peer: u64,
    pub drop_ttl: u64,
    pub drop_version: u64,
    pub drop_type: u64,
    pub drop_unknown_vrid: u64,
    pub drop_length: u64,
    pub drop_checksum: u64,
    pub drop_truncated: u64,
    pub drop_fragment: u64,
    pub drop_auth: u64,
    pub drop_interval: u64,
    pub drop_no_trailer: u64,
    pub drop_trailer: u64,
    pub drop_unknown_key: u64,
    pub drop_stale: u64,
    pub drop_replay: u64,
    pub drop_hmac: u64,
    pub drop_ext_headers: u64,
    /// Events that did not fit in the ring buffer (userspace too slow).
    pub events_lost: u64,
    /// TCP segments sent on to the other node of a planned move (`vip_flows`).
    pub flow_forwarded: u64,
    /// ARP requests for a released address, not answered.
    pub arp_suppressed: u64,
}

impl GuardCounters {
    #[inline(always)]
    pub fn slot(&mut self, reason: Reason) -> &mut u64 {
        match reason {
            Reason::Accepted => &mut self.accepted,
            Reason::NotPeer => &mut self.drop_not_peer,
            Reason::Ttl => &mut self.drop_ttl,
            Reason::Version => &mut self.drop_version,
            Reason::Type => &mut self.drop_type,
            Reason::UnknownVrid => &mut self.drop_unknown_vrid,
            Reason::Length => &mut self.drop_length,
            Reason::Checksum => &mut self.drop_checksum,
            Reason::Truncated => &mut self.drop_truncated,
            Reason::Fragment => &mut self.drop_fragment,
            Reason::Auth => &mut self.drop_auth,
            Reason::Interval => &mut self.drop_interval,
            Reason::NoTrailer => &mut self.drop_no_trailer,
            Reason::Trailer => &mut self.drop_trailer,
            Reason::UnknownKey => &mut self.drop_unknown_key,
            Reason::Stale => &mut self.drop_stale,
            Reason::Replay => &mut self.drop_replay,
            Reason::Hmac => &mut self.drop_hmac,
            Reason::ExtHeaders => &mut self.drop_ext_headers,
        }
    }

    pub fn get(&self, reason: Reason) -> u64 {
        let mut copy = *self;
        *copy.slot(reason)
    }

    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &GuardCounters) {
        for r in Reason::ALL {
            *self.slot(r) += other.get(r);
        }
        self.events_lost += other.events_lost;
        self.flow_forwarded += other.flow_forwarded;
        self.arp_suppressed += other.arp_suppressed;
    }
}

const _: () = {
    assert!(core::mem::size_of::<InstanceKey>() == 8);
    assert!(core::mem::size_of::<InstanceSlot>() == 20 + 16 * MAX_PEERS_PER_INSTANCE);
    assert!(core::mem::size_of::<VridEntry>() == 148 * MAX_IFACES_PER_VRID);
    assert!(core::mem::size_of::<AdvertRecord>() == 48);
    assert!(core::mem::size_of::<FlowEntry>() == 8);
    assert!(core::mem::size_of::<AnycastPeers>() == 4 + 6 * MAX_ANYCAST_PEERS);
    assert!(core::mem::size_of::<GuardEvent>() == 40);
    assert!(core::mem::size_of::<GuardCounters>() == 22 * 8);
    assert!(core::mem::size_of::<AuthKey>() == 68);
    assert!(core::mem::size_of::<AuthConfig>() == 8 + 68 * MAX_AUTH_KEYS);
    assert!(core::mem::size_of::<ReplayKey>() == 24);
    assert!(core::mem::size_of::<AuthCounters>() == 8 * 8);
    assert!(core::mem::size_of::<ServedPort>() == 20);
    assert!(core::mem::size_of::<TimerCfg>() == 8);
    assert!(core::mem::size_of::<TimerState>() == 48);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, with every
    // padding byte an explicit field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for InstanceKey {}
    unsafe impl aya::Pod for InstanceSlot {}
    unsafe impl aya::Pod for VridEntry {}
    unsafe impl aya::Pod for AdvertRecord {}
    unsafe impl aya::Pod for GuardEvent {}
    unsafe impl aya::Pod for GuardCounters {}
    unsafe impl aya::Pod for ServedPort {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for AnycastPeers {}
    unsafe impl aya::Pod for AuthKey {}
    unsafe impl aya::Pod for AuthConfig {}
    unsafe impl aya::Pod for ReplayKey {}
    unsafe impl aya::Pod for AuthCounters {}
    unsafe impl aya::Pod for TimerCfg {}
    unsafe impl aya::Pod for TimerState {}
    unsafe impl aya::Pod for Owners {}
}

#[cfg(test)]
mod owners_tests {
    use super::*;

    #[test]
    fn owners_join_leave_and_none_alive_only_when_every_slot_is_clear() {
        let ns = (7, 4026531836);
        let mut o = Owners::only(100, ns);
        assert!(!o.none_alive());
        // A successor joins beside its predecessor; joining twice changes nothing.
        o = o.with(200, ns).with(200, ns);
        assert_eq!(o.tgid, [100, 200, 0, 0]);
        // The predecessor dies: its slot is cleared, the successor still serves.
        let i = o.slot_of(100).unwrap();
        o.tgid[i] = 0;
        assert!(!o.none_alive());
        assert_eq!(o.slot_of(100), None);
        assert_eq!(o.slot_of(0), None, "a free slot belongs to nobody");
        // The next successor takes the free slot.
        o = o.with(300, ns);
        assert_eq!(o.tgid, [300, 200, 0, 0]);
        // Full: the oldest makes room.
        let full = Owners::only(1, ns)
            .with(2, ns)
            .with(3, ns)
            .with(4, ns)
            .with(5, ns);
        assert_eq!(full.tgid, [2, 3, 4, 5]);
        // A successor in another pid namespace serves alone.
        let other = o.with(9, (7, 1));
        assert_eq!(other.tgid, [9, 0, 0, 0]);
        assert_eq!((other.pidns_dev, other.pidns_ino), (7, 1));
        // Every owner gone: nobody serves.
        for t in [300, 200] {
            let i = o.slot_of(t).unwrap();
            o.tgid[i] = 0;
        }
        assert!(o.none_alive());
        assert!(Owners::default().none_alive());
    }
}
