//! hapd's XDP VRRP guard.
//!
//! Attached to every interface that carries a VRRP instance. Non-VRRP traffic passes after a
//! few loads, except TCP connection requests to the (VIP, port) pairs the proxy serves, which
//! are looked up and may be dropped (see [`connection_request`]); protocol-112 packets are
//! judged by [`proxy_common::guard::classify`] (the
//! same code the raw-socket fallback runs in userspace): invalid ones are dropped and counted by
//! reason, valid ones are recorded in `vrrp_adverts` and passed on, and userspace is woken through
//! `vrrp_events` only when it has to act.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        xdp_action::{XDP_DROP, XDP_PASS},
        BPF_F_CURRENT_NETNS, BPF_F_NO_PREALLOC,
    },
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::bpf_ktime_get_ns,
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_load_bytes,
    },
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use proxy_common::{
    auth::{MacInput, MAX_COPY},
    guard::{
        classify_ipv4, ipv4_offset, record_advert, record_seq, tcp_syn, Frame, Mark, Tables,
        TcpSyn, Verdict, MAX_OFFSET,
    },
    maps::{
        AdvertRecord, AuthConfig, AuthCounters, AuthKey, GuardCounters, GuardEvent, InstanceKey,
        Reason, ReplayKey, ServedPort, VridEntry, EVENTS_BYTES, MAX_INSTANCES, MAX_REPLAY,
        MAX_VIPS, VRIDS,
    },
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
#[btf_map(name = "guard_stats")]
static GUARD_STATS: PerCpuArray<GuardCounters, 1> = PerCpuArray::new();
#[btf_map(name = "vrrp_events")]
static VRRP_EVENTS: RingBuf<GuardEvent, { EVENTS_BYTES as usize }> = RingBuf::new();
/// The (VIP, port) pairs the proxy serves: connection requests to them are checked (see
/// [`connection_request`]).
#[btf_map(name = "vip_served")]
static VIP_SERVED: HashMap<ServedPort, u8, { MAX_VIPS as usize }> = HashMap::new();
/// The pairs this node is handing over: connection requests to them are dropped (the client's
/// SYN is retransmitted and reaches the new master). Element 0 of `DRAINING` is the number of
/// entries.
#[btf_map(name = "vip_drain")]
static VIP_DRAIN: HashMap<ServedPort, u8, { MAX_VIPS as usize }> = HashMap::new();
#[btf_map(name = "vip_draining")]
static DRAINING: Array<u32, 1> = Array::new();
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

/// A TCP connection request to a virtual address: dropped while this node hands the address
/// over, and when no socket listens for it (the daemon is gone: refusing it would fail the
/// client, dropping it makes the client retransmit, by when the new master has the address).
/// The guard's program stays attached after the daemon dies (its link is pinned).
#[inline(always)]
fn connection_request(ctx: &XdpContext, syn: &TcpSyn) -> u32 {
    let key = ServedPort::new(syn.dst, syn.dport);
    // SAFETY: lookups by value; the entries are not kept.
    if unsafe { VIP_SERVED.get(&key) }.is_none() {
        return XDP_PASS;
    }
    if DRAINING.get(0).is_some_and(|n| *n != 0) && unsafe { VIP_DRAIN.get(&key) }.is_some() {
        return XDP_DROP;
    }
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(syn.src),
                daddr: u32::from_ne_bytes(syn.dst),
                sport: u16::from_ne_bytes(syn.sport),
                dport: u16::from_ne_bytes(syn.dport),
            },
        },
    };
    // SAFETY: ctx.ctx is the xdp_md of this run; the tuple is a valid IPv4 tuple of the size
    // given; a socket returned is released before returning.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return XDP_DROP;
        }
        bpf_sk_release(sk as *mut _);
    }
    XDP_PASS
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

impl Frame for XdpFrame {
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
    // Not IPv4 (ARP, IPv6, ...): nothing to look at.
    let Some(l3) = ipv4_offset(&frame) else {
        return XDP_PASS;
    };
    // `classify` with the Ethernet part done once for both checks.
    match classify_ipv4(&frame, l3, ifindex, &Maps) {
        Verdict::Pass => match tcp_syn(&frame, l3) {
            Some(syn) => connection_request(&ctx, &syn),
            None => XDP_PASS,
        },
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
                let src = frame.bytes::<4>(l3 + 12).unwrap_or([0; 4]);
                warn!(
                    &ctx,
                    "auth_hmac: vrid {} advert from {:i} dropped: {} (at most one such line a                      second per CPU and reason)",
                    key.vrid,
                    src,
                    reason.name()
                );
            }
            XDP_DROP
        }
        Verdict::Advert(advert) => {
            count(Reason::Accepted);
            if advert.hmac {
                if let Some((sender, seq)) = record_seq(&advert) {
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
                (prev, record_advert(&mut *rec, &advert, now))
            };
            if ev != 0 {
                let event = GuardEvent {
                    time_ns: now,
                    ifindex,
                    src: advert.src,
                    vrid: advert.key.vrid,
                    priority: advert.priority,
                    version: advert.version,
                    flags: ev,
                    interval_cs: advert.interval_cs,
                    addr_count: advert.addr_count,
                    prev_priority,
                };
                if VRRP_EVENTS.output(&event, 0).is_err() {
                    if let Some(c) = GUARD_STATS.get_ptr_mut(0) {
                        // SAFETY: as in count().
                        unsafe { (*c).events_lost += 1 };
                    }
                    // Rare by construction: events are few; a full ring means userspace hangs.
                    warn!(
                        &ctx,
                        "hapd guard: event ring full, vrid {} event lost", advert.key.vrid
                    );
                }
            }
            XDP_PASS
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
