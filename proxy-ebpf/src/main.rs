//! hapd's XDP VRRP guard.
//!
//! Attached to every interface that carries a VRRP instance. Non-VRRP traffic passes after a
//! few loads, except TCP connection requests to the (VIP, port) pairs the proxy serves, which
//! are looked up and may be dropped (see [`connection_request`]), and, during a planned move
//! of a VIP, its TCP segments and ARP requests (see [`proxy_common::flow`]); protocol-112 packets are
//! judged by [`proxy_common::guard::classify`] (the
//! same code the raw-socket fallback runs in userspace): invalid ones are dropped and counted by
//! reason, valid ones are recorded in `vrrp_adverts` and passed on, and userspace is woken through
//! `vrrp_events` only when it has to act.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_pidns_info, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        bpf_timer,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        BPF_F_CURRENT_NETNS, BPF_F_NO_PREALLOC, BPF_NOEXIST,
    },
    btf_maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap,
        ProgramArray, RingBuf,
    },
    helpers::bpf_ktime_get_ns,
    helpers::generated::{
        bpf_get_ns_current_pid_tgid, bpf_ktime_get_coarse_ns, bpf_sk_release, bpf_skc_lookup_tcp,
        bpf_timer_init, bpf_timer_set_callback, bpf_timer_start, bpf_xdp_load_bytes,
    },
    macros::{btf_map, raw_tracepoint, xdp},
    programs::{RawTracePointContext, XdpContext},
};
use aya_log_ebpf::warn;
use proxy_common::{
    auth::{MacInput, MAX_COPY},
    flow::{arp_request_target, forwarded_header, suppress_arp, tcp_step, Step},
    guard::{
        classify_ipv4, classify_ipv6, ipv6_next_might_be_vrrp, l3_offset, record_advert,
        record_seq, source, source_mac, tcp6_syn, tcp_segment, Frame, Mark, Syn6, Tables,
        TcpSegment, Verdict, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, MAX_OFFSET,
    },
    maps::{
        from_words, v4_addr, AddrWords, AdvertRecord, AnycastPeers, AuthConfig, AuthCounters,
        AuthKey, FlowEntry, GuardCounters, GuardEvent, InstanceKey, Owners, Reason, ReplayKey,
        ServedPort, TimerArm, TimerCfg, TimerState, VridEntry, EVENTS_BYTES, EV_MASTER_DOWN,
        JUMP_FLOW, JUMP_GUARD6, MAX_ANYCAST_GROUPS, MAX_ANYCAST_PREFIXES, MAX_INSTANCES,
        MAX_REPLAY, MAX_VIPS, VRIDS,
    },
    master_down::rearm_ns,
    second_chance::{next_hop, pinged_group, pong, sent_to_me, Hop, PING_ETHERTYPE},
    vrrp::Family,
};

/// Holds `LAYOUT_VERSION`, written by userspace after load, so a pin left by another build is
/// recognised. Not used by the program itself.
#[btf_map(name = "hapd_layout")]
static HAPD_LAYOUT: Array<u32, 1> = Array::new();
#[btf_map(name = "vrrp_vrids")]
static VRRP_VRIDS: Array<VridEntry, { VRIDS as usize }> = Array::new();
#[btf_map(name = "vrrp_adverts")]
static VRRP_ADVERTS: HashMap<InstanceKey, AdvertRecord, { MAX_INSTANCES as usize }> =
    HashMap::new();
/// Per instance: whether this program runs its master-down timer (see
/// [`proxy_common::master_down`]).
#[btf_map(name = "vrrp_timer_cfg")]
static VRRP_TIMER_CFG: HashMap<InstanceKey, TimerCfg, { MAX_INSTANCES as usize }> = HashMap::new();
/// Per instance: the master-down timer, created here on the first advert that arms it.
#[btf_map(name = "vrrp_timers")]
static VRRP_TIMERS: HashMap<InstanceKey, TimerSlot, { MAX_INSTANCES as usize }> = HashMap::new();

/// [`TimerState`] with the kernel's timer type in place of its first 16 bytes (the kernel
/// finds the timer by its BTF type name, `bpf_timer`).
#[repr(C)]
struct TimerSlot {
    timer: bpf_timer,
    deadline_ns: u64,
    armed: u64,
    fired: u64,
    priority: u8,
    version: u8,
    interval_cs: u16,
    ready: u32,
}
const _: () = assert!(core::mem::size_of::<TimerSlot>() == core::mem::size_of::<TimerState>());

/// `CLOCK_MONOTONIC`: the clock of `bpf_ktime_get_ns`, which the deadlines are in.
const CLOCK_MONOTONIC: u64 = 1;

#[btf_map(name = "guard_stats")]
static GUARD_STATS: PerCpuArray<GuardCounters, 1> = PerCpuArray::new();
#[btf_map(name = "vrrp_events")]
static VRRP_EVENTS: RingBuf<GuardEvent, { EVENTS_BYTES as usize }> = RingBuf::new();
/// The (VIP, port) pairs the proxy serves: connection requests to them are checked (see
/// [`connection_request`]).
#[btf_map(name = "vip_served")]
static VIP_SERVED: HashMap<ServedPort, u8, { MAX_VIPS as usize }> = HashMap::new();
/// The virtual addresses in a planned move (key: the address as a native `u32`).
#[btf_map(name = "vip_flows")]
static VIP_FLOWS: HashMap<u32, FlowEntry, { MAX_VIPS as usize }> = HashMap::new();
/// The anycast prefixes this node serves: the index of each one's group in `anycast_peers`.
#[btf_map(name = "anycast_prefixes")]
static ANYCAST_PREFIXES: LpmTrie<[u8; 4], u32, { MAX_ANYCAST_PREFIXES as usize }> = LpmTrie::new();
/// Each anycast group's nodes, for second chance ([`proxy_common::second_chance`]).
#[btf_map(name = "anycast_peers")]
static ANYCAST_PEERS: Array<AnycastPeers, { MAX_ANYCAST_GROUPS as usize }> = Array::new();
/// Element 0: the processes serving the guard's ports ([`Owners`]).
#[btf_map(name = "hapd_owners")]
static OWNERS: Array<Owners, 1> = Array::new();
/// Element 0: the number of entries in `vip_flows` (0: no jump, but for anycast prefixes).
#[btf_map(name = "vip_flow_count")]
static FLOW_COUNT: Array<u32, 1> = Array::new();
/// Element 0: [`hapd_flow`], which the guard jumps to during a move (a tail call: its own
/// stack and its own verification, so the advert path stays as it was).
#[btf_map(name = "hapd_jump")]
static JUMP: ProgramArray<2> = ProgramArray::new();
/// `auth_hmac` keys and settings of the instances that have it.
/// Not preallocated: an element replaced by userspace is freed after an RCU grace period, so a
/// run that holds it sees the old keys or the new ones, never a recycled element of another
/// instance.
#[btf_map(name = "vrrp_auth")]
static VRRP_AUTH: HashMap<
    InstanceKey,
    AuthConfig,
    { MAX_INSTANCES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();
/// The highest verified sequence number per sender.
#[btf_map(name = "vrrp_replay")]
static VRRP_REPLAY: LruHashMap<ReplayKey, u64, { MAX_REPLAY as usize }> = LruHashMap::new();
/// Per-instance `auth_hmac` outcomes; userspace creates an entry for each instance with it.
#[btf_map(name = "vrrp_auth_stats")]
static VRRP_AUTH_STATS: PerCpuHashMap<InstanceKey, AuthCounters, { MAX_INSTANCES as usize }> =
    PerCpuHashMap::new();
/// Per-CPU room for an `auth_hmac` MAC's input (larger than the BPF stack).
#[btf_map(name = "vrrp_mac_input")]
static MAC_INPUT: PerCpuArray<MacInput, 1> = PerCpuArray::new();
/// When this CPU last logged each drop reason (`Reason as u32`), for [`log_rarely`].
#[btf_map(name = "guard_log_at")]
static LOG_AT: PerCpuArray<u64, 32> = PerCpuArray::new();
/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in nanoseconds, kept by userspace.
#[btf_map(name = "vrrp_clock")]
static VRRP_CLOCK: Array<i64, 1> = Array::new();

const IPPROTO_TCP: u8 = 6;

/// `TCP_TIME_WAIT` and `TCP_LISTEN` of the kernel's socket states.
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;

/// The state of the socket of this node that a segment of `seg`'s flow would reach (an
/// established or closing one, a handshake in progress, or a listener), or `None`.
#[inline(always)]
fn socket_state(ctx: &XdpContext, seg: &TcpSegment) -> Option<u32> {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(seg.src),
                daddr: u32::from_ne_bytes(seg.dst),
                sport: u16::from_ne_bytes(seg.sport),
                dport: u16::from_ne_bytes(seg.dport),
            },
        },
    };
    // SAFETY: ctx.ctx is the xdp_md of this run; the tuple is a valid IPv4 tuple of the size
    // given; a socket returned is read (a sock_common field the verifier allows) and released
    // before returning.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return None;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        Some(state)
    }
}

/// Whether a socket of this node listens for (or holds) the IPv6 connection request `syn`.
#[inline(always)]
fn socket6_exists(ctx: &XdpContext, syn: &Syn6) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: syn.src,
                daddr: syn.dst,
                sport: u16::from_ne_bytes(syn.sport),
                dport: u16::from_ne_bytes(syn.dport),
            },
        },
    };
    // SAFETY: as in socket_state, with an IPv6 tuple of the size given.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut _);
        true
    }
}

/// A TCP connection request to a virtual address the proxy serves: dropped when no socket
/// listens for it (the daemon is gone: refusing it would fail the client, dropping it makes
/// the client retransmit, by when the new master has the address). The guard's program stays
/// attached after the daemon dies (its link is pinned).
#[inline(always)]
fn connection_request(ctx: &XdpContext, seg: &TcpSegment) -> u32 {
    let key = ServedPort::new(v4_addr(seg.dst), seg.dport, Family::V4);
    if !served_and_owned(&key) {
        return served_verdict(&key);
    }
    match socket_state(ctx, seg) {
        Some(_) => XDP_PASS,
        None => XDP_DROP,
    }
}

/// [`connection_request`] over IPv6.
#[inline(always)]
fn connection_request6(ctx: &XdpContext, syn: &Syn6) -> u32 {
    let key = ServedPort::new(from_words(&syn.dst), syn.dport, Family::V6);
    if !served_and_owned(&key) {
        return served_verdict(&key);
    }
    if socket6_exists(ctx, syn) {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// Whether `key` is served and a daemon serving it is alive: only then does a socket lookup
/// decide.
#[inline(always)]
fn served_and_owned(key: &ServedPort) -> bool {
    // SAFETY: lookups by value; the entries are not kept.
    unsafe { VIP_SERVED.get(key) }.is_some() && !OWNERS.get(0).is_some_and(|o| o.none_alive())
}

/// The verdict on a connection request when [`served_and_owned`] is false: pass one to a
/// port the proxy does not serve; drop one to a served port whose daemon died (its slot
/// cleared by `hapd_exit` before the kernel released its sockets: its listeners may still
/// take the request for a moment, then reset it).
#[inline(always)]
fn served_verdict(key: &ServedPort) -> u32 {
    // SAFETY: as in served_and_owned.
    if unsafe { VIP_SERVED.get(key) }.is_none() {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// Whether a VIP is in a planned move somewhere (one array read): only then does the guard
/// jump to [`hapd_flow`].
#[inline(always)]
fn moving() -> bool {
    FLOW_COUNT.get(0).is_some_and(|n| *n != 0)
}

/// During a move, TCP segments and ARP requests go on to [`hapd_flow`]; the call returns only
/// if the jump fails (no program in `hapd_jump`: the daemon is gone), and the guard carries on.
#[inline(always)]
fn jump_if_moving(ctx: &XdpContext) {
    if moving() {
        jump(ctx);
    }
}

/// A TCP segment goes on to [`hapd_flow`] during a move, and when it is for an anycast prefix
/// (second chance): one array read and one prefix lookup decide, so that other traffic on an
/// anycast node does not pay for the jump.
#[inline(always)]
fn jump_if_flow(ctx: &XdpContext, seg: &TcpSegment) {
    // `anycast_peers[0].count` is not 0 when any group is configured (one without second
    // chance has count 1): a node without groups pays one array read, not a trie lookup.
    let anycast = ANYCAST_PEERS.get(0).is_some_and(|p| p.count != 0)
        && ANYCAST_PREFIXES.get(&Key::new(32, seg.dst)).is_some();
    if moving() || anycast {
        jump(ctx);
    }
}

/// The tail call to [`hapd_flow`]; returns only if it fails (no program in `hapd_jump`).
#[inline(always)]
fn jump(ctx: &XdpContext) {
    jump_to(ctx, JUMP_FLOW);
}

/// The tail call to the program in slot `slot` of `hapd_jump`; returns only if it fails.
#[inline(always)]
fn jump_to(ctx: &XdpContext, slot: u32) {
    // SAFETY: ctx is this run's context; a successful tail call does not return.
    unsafe { JUMP.tail_call(ctx, slot) };
}

/// Runs as any task exits (`sched_process_exit`, before its descriptors are released): when
/// the main thread of a process serving the guard exits, its slot in `hapd_owners` is
/// cleared, so that connection requests are dropped from then on instead of reaching the
/// listening sockets the kernel is about to close ([`Owners`]).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn hapd_exit(_ctx: RawTracePointContext) -> i32 {
    let Some(o) = OWNERS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the map's element, valid while the program runs.
    let (dev, ino) = unsafe { ((*o).pidns_dev, (*o).pidns_ino) };
    if dev == 0 && ino == 0 {
        return 0;
    }
    // The exiting task's ids in the daemons' pid namespace; a task of another namespace is
    // none of ours (the helper fails for it).
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a writable bpf_pidns_info of the size given.
    let r = unsafe {
        bpf_get_ns_current_pid_tgid(
            dev,
            ino,
            &mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    // Failed, or a thread of a process that goes on.
    if r != 0 || ns.tgid != ns.pid {
        return 0;
    }
    // SAFETY: as above; one u32 written in place.
    unsafe {
        if let Some(i) = (*o).slot_of(ns.tgid) {
            if let Some(t) = (*o).tgid.get_mut(i) {
                *t = 0;
            }
        }
    }
    0
}

/// A TCP segment or an ARP request during a planned move of a VIP ([`proxy_common::flow`]):
/// reached from [`hapd_vrrp_guard`] by a tail call.
#[xdp]
pub fn hapd_flow(ctx: XdpContext) -> u32 {
    let frame = XdpFrame {
        start: ctx.data(),
        ctx: ctx.ctx,
    };
    let Some((ethertype, l3)) = l3_offset(&frame) else {
        return XDP_PASS;
    };
    if ethertype != ETH_P_IPV4 {
        return arp(&frame, ethertype, l3);
    }
    let Some(seg) = tcp_segment(&frame, l3) else {
        return XDP_PASS;
    };
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { VIP_FLOWS.get(&u32::from_ne_bytes(seg.dst)) }.copied() {
        match tcp_step(&e, source_mac(&frame), &seg) {
            Step::Forward => return forward(&ctx, &e),
            Step::ForwardUnlessLocal => {
                // A listener, or a TIME_WAIT left by an earlier flow on the same four
                // numbers, does not hold this flow.
                return match socket_state(&ctx, &seg) {
                    Some(state) if state != TCP_LISTEN && state != TCP_TIME_WAIT => XDP_PASS,
                    _ => forward(&ctx, &e),
                };
            }
            Step::Pass => {}
        }
    }
    if seg.syn {
        return connection_request(&ctx, &seg);
    }
    second_chance(&ctx, &frame, &seg)
}

/// A segment (not a connection request) to an anycast prefix that no socket of this node
/// holds goes on along its group's nodes ([`proxy_common::second_chance`]).
#[inline(always)]
fn second_chance(ctx: &XdpContext, frame: &XdpFrame, seg: &TcpSegment) -> u32 {
    let Some(group) = ANYCAST_PREFIXES.get(&Key::new(32, seg.dst)).copied() else {
        return XDP_PASS;
    };
    let Some(peers) = ANYCAST_PEERS.get(group) else {
        return XDP_PASS;
    };
    // A frame a switch flooded to us for another host is not ours to walk.
    if !sent_to_me(peers, frame.bytes::<6>(0).unwrap_or([0; 6])) {
        return XDP_PASS;
    }
    match socket_state(ctx, seg) {
        Some(state) if state != TCP_LISTEN && state != TCP_TIME_WAIT => return XDP_PASS,
        _ => {}
    }
    match next_hop(peers, source_mac(frame)) {
        Hop::Pass => XDP_PASS,
        Hop::Forward { to, mark } => {
            let mut h = [0u8; 12];
            h[..6].copy_from_slice(&to);
            h[6..].copy_from_slice(&mark);
            send_back(ctx, h)
        }
    }
}

/// Sends the frame to the peer of `e` out of the interface it came in on.
#[inline(always)]
fn forward(ctx: &XdpContext, e: &FlowEntry) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return XDP_PASS;
    }
    // SAFETY: [start, start + 6) lies inside the packet (checked just above); [u8; N] has
    // alignment 1.
    let dst_was = unsafe { core::ptr::read_unaligned(start as *const [u8; 6]) };
    send_back(ctx, forwarded_header(dst_was, e.peer_mac))
}

/// Rewrites the frame's Ethernet addresses to `header` (destination, source), counts it as
/// sent to the node that holds its flow, and sends it out of the interface it came in on.
#[inline(always)]
fn send_back(ctx: &XdpContext, header: [u8; 12]) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return XDP_PASS;
    }
    // SAFETY: [start, start + 12) lies inside the packet (checked just above); [u8; N] has
    // alignment 1; XDP may write the packet.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; 12], header) };
    if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
        // SAFETY: as in count().
        unsafe { (*c).flow_forwarded += 1 };
    }
    XDP_TX
}

/// A second-chance ping from another node of an anycast group is answered from here while
/// second chance runs (this node's tables hold a group): the other nodes send this one
/// segments only while it answers ([`proxy_common::second_chance`]).
#[inline(always)]
fn answer_ping(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 20 > end {
        return XDP_PASS;
    }
    // SAFETY: [start, start + 20) lies inside the packet (checked just above); [u8; N] has
    // alignment 1; XDP may write the packet.
    unsafe {
        let head = core::ptr::read_unaligned(start as *const [u8; 20]);
        let Some(group) = pinged_group(&head) else {
            return XDP_PASS;
        };
        let Some(peers) = ANYCAST_PEERS.get(u32::from(group)) else {
            return XDP_PASS;
        };
        match pong(head, peers) {
            Some(out) => {
                core::ptr::write_unaligned(start as *mut [u8; 20], out);
                XDP_TX
            }
            None => XDP_PASS,
        }
    }
}

/// An ARP request for an address this node released in a planned move goes unanswered: the
/// new owner answers.
#[inline(always)]
fn arp(frame: &XdpFrame, ethertype: u16, l3: usize) -> u32 {
    let Some(target) = arp_request_target(frame, ethertype, l3) else {
        return XDP_PASS;
    };
    // SAFETY: copied out at once.
    match unsafe { VIP_FLOWS.get(&u32::from_ne_bytes(target)) } {
        Some(e) if suppress_arp(e) => {
            if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
                // SAFETY: as in count().
                unsafe { (*c).arp_suppressed += 1 };
            }
            XDP_DROP
        }
        _ => XDP_PASS,
    }
}

/// The packet between `data` and `data_end`.
struct XdpFrame {
    start: usize,
    ctx: *const aya_ebpf::bindings::xdp_md,
}

impl XdpFrame {
    /// `data_end`, read afresh for every access. With a plain field LLVM may prove an access
    /// in bounds from an earlier check on another offset and drop its own check, which the
    /// verifier cannot follow (it tracks the range per pointer it saw compared).
    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: ctx is the xdp_md of this run.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data_end) as usize }
    }
}

/// A 16-byte address as [`XdpFrame::addr_words`] copies it.
#[repr(C, align(4))]
struct AddrBuf([u8; 16]);

impl Frame for XdpFrame {
    #[inline(always)]
    fn sum_words(&self, off: usize, len: usize) -> Option<u32> {
        let s = hapd_sum(self.ctx as *mut _, off as u32, len as u32);
        (s <= u32::MAX as u64).then_some(s as u32)
    }

    #[inline(always)]
    fn ipv6_chain(&self, l3: usize, first: u8) -> Result<Option<usize>, Reason> {
        let r = hapd_ipv6_chain(self.ctx as *mut _, l3 as u32, first as u32);
        // The verifier knows nothing of a global function's result: bounded here, the offset
        // can address the packet. Read back through a volatile copy: LLVM sees through the
        // call, knows the bound the function already applies and would drop this check.
        // SAFETY: a read of a local.
        let r = unsafe { core::ptr::read_volatile(&r) };
        if r > MAX_OFFSET as i64 {
            return Err(Reason::ExtHeaders);
        }
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        if r == -1 {
            return Ok(None);
        }
        Err(Reason::from_u32((-r - 2) as u32).unwrap_or(Reason::ExtHeaders))
    }

    /// One helper call into a buffer: with four bounds-checked packet reads, LLVM kept their
    /// pointers and bytes in stack slots through the whole IPv6 guard.
    #[inline(always)]
    fn addr_words(&self, off: usize) -> Option<AddrWords> {
        if off > MAX_OFFSET {
            return None;
        }
        let mut buf = AddrBuf([0; 16]);
        // SAFETY: buf is 16 writable bytes; the helper checks the packet side and fails
        // rather than read past it.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx as *mut _,
                off as u32,
                buf.0.as_mut_ptr().cast(),
                16,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: AddrBuf is 16 bytes aligned to 4, like [u32; 4], and any bytes are valid
        // words.
        Some(unsafe { core::mem::transmute::<AddrBuf, AddrWords>(buf) })
    }

    #[inline(always)]
    fn copy_to(&self, off: usize, dst: &mut [u8], at: usize, len: usize) -> Option<()> {
        if off > MAX_OFFSET || len == 0 || len > MAX_COPY || at > dst.len() - len {
            return None;
        }
        // SAFETY: [at, at + len) lies inside dst (checked above); the helper checks the packet
        // side and fails rather than read past it.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx as *mut _,
                off as u32,
                dst.as_mut_ptr().add(at).cast(),
                len as u32,
            )
        };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + N > self.end() {
            return None;
        }
        // SAFETY: [p, p + N) lies inside the packet (checked against data_end just above), and
        // [u8; N] has alignment 1.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}

struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn vrid(&self, vrid: u8) -> Option<&VridEntry> {
        // An array element lives as long as the map; userspace replaces whole entries.
        VRRP_VRIDS.get(vrid as u32)
    }

    #[inline(always)]
    fn auth(&self, key: &InstanceKey) -> Option<&AuthConfig> {
        // SAFETY: the value is read during this run only. The map is not preallocated:
        // userspace replaces an element by a new one and the old stays intact until the run
        // is over (RCU), so the run sees one whole key set.
        unsafe { VRRP_AUTH.get(key) }
    }

    #[inline(always)]
    fn replay_mark(&self, key: &ReplayKey) -> Option<u64> {
        // SAFETY: copied out at once.
        unsafe { VRRP_REPLAY.get(key) }.copied()
    }

    #[inline(always)]
    fn mac_blocks(&self, input: &mut MacInput, blocks: usize, key: &AuthKey) -> Option<[u32; 4]> {
        let mut out = [0u32; 4];
        (hapd_mac_blocks(input, blocks as u32, key, &mut out) == 0).then_some(out)
    }

    #[inline(always)]
    fn with_mac_input<R>(&self, f: impl FnOnce(&mut MacInput) -> R) -> Option<R> {
        let input = MAC_INPUT.get_ptr_mut(0)?;
        // SAFETY: this CPU's value, valid for the run. XDP runs in softirq context on this CPU,
        // so no other run of the program uses it meanwhile. (A BPF_PROG_TEST_RUN can be
        // interrupted by a softirq that runs the guard on the same CPU; it may then see the
        // other run's input and reach a wrong verdict, but touches nothing outside the value.)
        Some(f(unsafe { &mut *input }))
    }

    #[inline(always)]
    fn now_secs(&self) -> u32 {
        let offset = VRRP_CLOCK.get(0).copied().unwrap_or(0);
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let mono = unsafe { bpf_ktime_get_ns() } as i64;
        (mono.wrapping_add(offset) as u64 / 1_000_000_000) as u32
    }
}

/// The MAC of the prepared input ([`proxy_common::auth::mac_blocks`]) as a BPF global
/// function: the verifier checks its loop over the blocks once, on its own, instead of on every
/// path through the guard that reaches it (which took 340,000 instructions of verification and
/// 0.6 s at every start). Its pointers may be null as far as the verifier knows.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hapd_mac_blocks(
    input: *mut MacInput,
    blocks: u32,
    key: *const AuthKey,
    out: *mut [u32; 4],
) -> u32 {
    if input.is_null() || key.is_null() || out.is_null() {
        return 1;
    }
    // SAFETY: the three point to distinct objects of the caller's (checked non-null; the
    // verifier checks their sizes at the call): this CPU's MAC input, a key in `vrrp_auth`
    // and a stack array.
    let mac = unsafe {
        proxy_common::auth::mac_blocks(&mut *input, blocks as usize, &*key, |s, b, r| {
            hapd_sha256_compress(s, b, r);
        })
    };
    match mac {
        Some(m) => {
            // SAFETY: as above.
            unsafe { *out = m };
            0
        }
        None => 1,
    }
}

/// A global function's argument as the verifier sees it: any number. LLVM sees the callers
/// (the program is linked whole) and may drop the bound checks on an argument that the
/// callers' values satisfy; read back through a volatile copy, it cannot.
#[inline(always)]
fn opaque(v: u32) -> usize {
    let v = v as usize;
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&v) }
}

/// [`proxy_common::guard::message_sum`] of the `len` bytes at `off` of the packet of `ctx`, as
/// a BPF global function (verified once, not at every path that sums): the sum, or
/// `u64::MAX` when the packet is shorter.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hapd_sum(ctx: *mut aya_ebpf::bindings::xdp_md, off: u32, len: u32) -> u64 {
    let (off, len) = (opaque(off), opaque(len));
    if ctx.is_null() || off > MAX_OFFSET || len > MAX_OFFSET {
        return u64::MAX;
    }
    // SAFETY: ctx is the xdp_md of this run (the verifier checks the argument's type).
    let frame = XdpFrame {
        start: unsafe { (*ctx).data } as usize,
        ctx,
    };
    match proxy_common::guard::message_sum(&frame, off, len) {
        Some(s) => s as u64,
        None => u64::MAX,
    }
}

/// [`proxy_common::guard::ipv6_walk`] of the IPv6 packet at `l3` of `ctx` as a BPF global
/// function: where protocol 112 starts (>= 0), -1 when the chain ends in something else, or
/// -2 - the drop reason. Its result is one unknown number to the verifier, whatever the
/// chain: the judgement after it is verified once, not once per chain length.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hapd_ipv6_chain(
    ctx: *mut aya_ebpf::bindings::xdp_md,
    l3: u32,
    first: u32,
) -> i64 {
    let l3 = opaque(l3);
    if ctx.is_null() || l3 > MAX_OFFSET {
        return -1;
    }
    // SAFETY: as in hapd_sum.
    let frame = XdpFrame {
        start: unsafe { (*ctx).data } as usize,
        ctx,
    };
    match proxy_common::guard::ipv6_walk(&frame, l3, first as u8) {
        Ok(Some(off)) => off as i64,
        Ok(None) => -1,
        Err(r) => -2 - r as i64,
    }
}

/// One SHA-256 compression as a BPF global function: checked once by the verifier, called by
/// [`hapd_mac_blocks`] for each block. Its pointers may be null as far as the verifier knows.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hapd_sha256_compress(
    state: *mut [u32; 8],
    block: *const [u32; 16],
    ring: *mut [u32; 16],
) -> u32 {
    if state.is_null() || block.is_null() || ring.is_null() {
        return 1;
    }
    // SAFETY: all three point to distinct arrays of the caller's (checked non-null; the
    // verifier checks the sizes at the call).
    unsafe { proxy_common::auth::compress_in(&mut *state, &*block, &mut *ring) };
    0
}

/// Updates the replay mark of `sender` in place with [`Mark::apply`] on the value read just
/// before: a mark that another CPU raised meanwhile (a copy of a genuine advert sent to a
/// second address can be judged on two CPUs at once) is not lowered. Between the re-read and
/// the store a few instructions remain unguarded; BPF has no 64-bit compare-and-swap for the
/// generic CPU target this is built for.
#[inline(always)]
fn update_mark(sender: &ReplayKey, m: Mark) {
    match VRRP_REPLAY.get_ptr_mut(sender) {
        Some(mark) => {
            // SAFETY: a pointer into the map value, valid for this run; a u64 store is atomic.
            unsafe { core::ptr::write_volatile(mark, m.apply(core::ptr::read_volatile(mark))) };
        }
        None => {
            // Fails only if the LRU table cannot evict (never with preallocation); the
            // advert is good either way.
            let _ = VRRP_REPLAY.insert(sender, &m.seq, 0);
        }
    }
}

/// Whether to log a drop for `reason` now: at most once a second per CPU and reason, so that
/// rare events are seen and a flood costs one line a second. The coarse clock (a tick's
/// resolution) is enough for that and cheaper to read: with `bpf_ktime_get_ns` a dropped
/// replay cost 30 ns more (`cargo xtask bench xdp`).
#[inline(always)]
fn log_rarely(reason: Reason) -> bool {
    let Some(at) = LOG_AT.get_ptr_mut(reason as u32) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions; `at` is this CPU's slot.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        if *at != 0 && now.wrapping_sub(*at) < 1_000_000_000 {
            return false;
        }
        *at = now;
    }
    true
}

/// Counts an `auth_hmac` outcome of instance `key` (signed/unsigned acceptance or a drop).
#[inline(always)]
fn count_auth(key: &InstanceKey, f: impl FnOnce(&mut AuthCounters)) {
    if let Some(c) = VRRP_AUTH_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; XDP runs with preemption disabled.
        unsafe { f(&mut *c) };
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU; XDP runs with preemption disabled.
        unsafe { *(*c).slot(reason) += 1 };
    }
}

#[xdp]
pub fn hapd_vrrp_guard(ctx: XdpContext) -> u32 {
    let frame = XdpFrame {
        start: ctx.data(),
        ctx: ctx.ctx,
    };
    // SAFETY: ctx.ctx points to the xdp_md the kernel passed in.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some((ethertype, l3)) = l3_offset(&frame) else {
        return XDP_PASS;
    };
    if ethertype == ETH_P_IPV6 {
        let next = frame.u8_at(l3 + 6).unwrap_or(0);
        if next == IPPROTO_TCP {
            return match tcp6_syn(&frame, l3) {
                Some(syn) => connection_request6(&ctx, &syn),
                None => XDP_PASS,
            };
        }
        if ipv6_next_might_be_vrrp(next) {
            // The IPv6 guard (`hapd_guard6`); if the jump fails (no daemon: its process holds
            // the jump table), nobody reads adverts anyway.
            jump_to(&ctx, JUMP_GUARD6);
        }
        return XDP_PASS;
    }
    // Neither IP: only an ARP request may matter (during a move), or a second-chance ping.
    if ethertype != ETH_P_IPV4 {
        if ethertype == ETH_P_ARP {
            jump_if_moving(&ctx);
        } else if ethertype == PING_ETHERTYPE {
            return answer_ping(&ctx);
        }
        return XDP_PASS;
    }
    // `classify` with the Ethernet part done once for both checks.
    match classify_ipv4(&frame, l3, ifindex, &Maps) {
        Verdict::Pass => match tcp_segment(&frame, l3) {
            Some(seg) => {
                jump_if_flow(&ctx, &seg);
                if seg.syn {
                    connection_request(&ctx, &seg)
                } else {
                    XDP_PASS
                }
            }
            None => XDP_PASS,
        },
        v => judged(&ctx, &frame, v, ifindex, l3 + 12, Family::V4),
    }
}

/// The guard's part for IPv6 packets that may be VRRP, reached from [`hapd_vrrp_guard`] by a
/// tail call: a program of its own, for a stack of its own (the IPv4 part's and this one's
/// variables together exceed the 512 bytes one program has) and its own verification.
#[xdp]
pub fn hapd_guard6(ctx: XdpContext) -> u32 {
    let frame = XdpFrame {
        start: ctx.data(),
        ctx: ctx.ctx,
    };
    // SAFETY: ctx.ctx points to the xdp_md the kernel passed in.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some((ETH_P_IPV6, l3)) = l3_offset(&frame) else {
        return XDP_PASS;
    };
    match classify_ipv6(&frame, l3, ifindex, &Maps) {
        Verdict::Pass => XDP_PASS,
        v => judged(&ctx, &frame, v, ifindex, l3 + 8, Family::V6),
    }
}

/// What the guard does with a protocol-112 packet's verdict (anything but `Pass`); `src_at`
/// is where the IP header has the source address, for a log line.
#[inline(always)]
fn judged(
    ctx: &XdpContext,
    frame: &XdpFrame,
    verdict: Verdict,
    ifindex: u32,
    src_at: usize,
    family: Family,
) -> u32 {
    match verdict {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop(reason) => {
            count(reason);
            XDP_DROP
        }
        Verdict::Unauthentic(key, reason) => {
            count(reason);
            count_auth(&key, |c| {
                if let Some(n) = c.slot(reason) {
                    *n += 1;
                }
            });
            if log_rarely(reason) {
                // A peer signing with a key we lack, with a skewed clock, or not signing at
                // all is an operator's problem to see; a flood of forgeries logs once a second.
                if family == Family::V6 {
                    let src = from_words(&frame.addr_words(src_at).unwrap_or([0; 4]));
                    warn!(
                        ctx,
                        "auth_hmac: IPv6 vrid {} advert from {:i} dropped: {} (at most one such                          line a second per CPU and reason)",
                        key.vrid,
                        src,
                        reason.name()
                    );
                } else {
                    let src = frame.bytes::<4>(src_at).unwrap_or([0; 4]);
                    warn!(
                        ctx,
                        "auth_hmac: vrid {} advert from {:i} dropped: {} (at most one such line a                          second per CPU and reason)",
                        key.vrid,
                        src,
                        reason.name()
                    );
                }
            }
            XDP_DROP
        }
        Verdict::Advert(advert) => {
            count(Reason::Accepted);
            if advert.hmac {
                if let Some((sender, seq)) = record_seq(&advert, &source(frame, &advert)) {
                    update_mark(&sender, seq);
                    count_auth(&advert.key, |c| c.signed += 1);
                } else {
                    count_auth(&advert.key, |c| c.unsigned += 1);
                }
            }
            let Some(rec) = VRRP_ADVERTS.get_ptr_mut(advert.key) else {
                // Userspace creates a record with every instance; a missing one means the
                // instance is being removed right now. Nothing to record.
                return XDP_PASS;
            };
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            // SAFETY: rec points into the map value, valid for this program run. Two CPUs
            // updating the same VRID at once may interleave fields; the next advert repairs it.
            let (prev_priority, ev) = unsafe {
                let prev = (*rec).priority;
                let ev = record_advert(&mut *rec, &advert, &source(frame, &advert), now);
                if ev != 0 {
                    // A new master (or the first advert after silence): its Ethernet address,
                    // for a planned move's flows. Copied by the helper (a direct read here
                    // doubled the verifier's states on this path), and only then: a steady
                    // advert costs nothing more.
                    bpf_xdp_load_bytes(ctx.ctx as *mut _, 6, (*rec).mac.as_mut_ptr().cast(), 6);
                }
                (prev, ev)
            };
            let arm = TimerArm {
                priority: advert.priority,
                version: advert.version,
                interval_cs: advert.interval_cs,
            };
            hapd_master_down(advert.key.to_u64(), arm.pack(), now);
            if ev != 0 {
                let event = GuardEvent {
                    time_ns: now,
                    ifindex,
                    vrid: advert.key.vrid,
                    priority: advert.priority,
                    version: advert.version,
                    flags: ev,
                    src: from_words(&source(frame, &advert)),
                    interval_cs: advert.interval_cs,
                    addr_count: advert.addr_count,
                    prev_priority,
                    family: advert.key.family,
                    _pad: [0; 3],
                };
                if VRRP_EVENTS.output(&event, 0).is_err() {
                    if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
                        // SAFETY: as in count().
                        unsafe { (*c).events_lost += 1 };
                    }
                    // Rare by construction: events are few; a full ring means userspace hangs.
                    warn!(
                        ctx,
                        "hapd guard: event ring full, vrid {} event lost", advert.key.vrid
                    );
                }
            }
            XDP_PASS
        }
    }
}

/// The master-down timer's part of a valid advert (see [`proxy_common::master_down`]) as a
/// BPF global function: the verifier checks it once, on its own, instead of on every path
/// through the guard that reaches it (inlined, it took the guard past the verifier's million
/// instructions). Scalars only: `key` is [`InstanceKey::to_u64`], `meta` the advert's
/// priority, version and interval ([`TimerArm`]), `now` when it came.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn hapd_master_down(key: u64, meta: u32, now: u64) -> u32 {
    let key = InstanceKey::from_u64(key);
    let arm = TimerArm::unpack(meta);
    let Some(cfg) = VRRP_TIMER_CFG.get_ptr(key) else {
        return 0;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let cfg = unsafe { *cfg };
    if let Some(ns) = rearm_ns(&cfg, arm.priority, arm.interval_cs) {
        arm_master_down(key, &arm, ns, now);
    }
    0
}

/// (Re)arms the master-down timer of `key` after the advert `a` to run out `ns` from `now`,
/// creating and initialising it on first use.
#[inline(always)]
fn arm_master_down(key: InstanceKey, a: &TimerArm, ns: u64, now: u64) {
    let mut slot = VRRP_TIMERS.get_ptr_mut(key);
    if slot.is_none() {
        // SAFETY: TimerSlot is integers and the kernel's opaque timer, all zero at rest.
        let zero: TimerSlot = unsafe { core::mem::zeroed() };
        // Another CPU may create it first (BPF_NOEXIST fails then): either way it exists.
        let _ = VRRP_TIMERS.insert(key, zero, BPF_NOEXIST as u64);
        slot = VRRP_TIMERS.get_ptr_mut(key);
    }
    let Some(t) = slot else {
        return;
    };
    // SAFETY: t points into the map value, valid for this program run; the helpers take the
    // timer inside it and the map it lives in, as the kernel requires.
    unsafe {
        if (*t).ready == 0 {
            let map = core::ptr::addr_of!(VRRP_TIMERS) as *mut core::ffi::c_void;
            // -EBUSY: another CPU initialised it just now; the callback is set alike.
            bpf_timer_init(&mut (*t).timer, map, CLOCK_MONOTONIC);
            bpf_timer_set_callback(&mut (*t).timer, master_down as *mut core::ffi::c_void);
            (*t).ready = 1;
        }
        (*t).deadline_ns = now + ns;
        (*t).armed += 1;
        (*t).priority = a.priority;
        (*t).version = a.version;
        (*t).interval_cs = a.interval_cs;
        bpf_timer_start(&mut (*t).timer, ns, 0);
    }
}

/// The master-down timer of the instance `key` ran out: one event for userspace, which hands
/// it to the engine.
#[inline(never)]
unsafe extern "C" fn master_down(
    _map: *mut core::ffi::c_void,
    key: *mut InstanceKey,
    t: *mut TimerSlot,
) -> i32 {
    // SAFETY: the kernel calls this with the key and value of the map element whose timer ran
    // out; both stay valid for the call. The advert record is copied out at once.
    let event = unsafe {
        let key = *key;
        (*t).fired += 1;
        let master = match VRRP_ADVERTS.get(&key) {
            Some(r) => r.master,
            None => [0; 16],
        };
        GuardEvent {
            time_ns: bpf_ktime_get_ns(),
            ifindex: key.ifindex,
            vrid: key.vrid,
            priority: (*t).priority,
            version: (*t).version,
            flags: EV_MASTER_DOWN,
            src: master,
            interval_cs: (*t).interval_cs,
            addr_count: 0,
            prev_priority: (*t).priority,
            family: key.family,
            _pad: [0; 3],
        }
    };
    if VRRP_EVENTS.output(&event, 0).is_err() {
        if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
            // SAFETY: as in count().
            unsafe { (*c).events_lost += 1 };
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
