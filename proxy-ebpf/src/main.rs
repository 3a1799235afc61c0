//! hapd's XDP VRRP guard.
//!
//! Attached to every interface that carries a VRRP instance. Non-VRRP traffic passes untouched
//! after a few loads; protocol-112 packets are judged by [`proxy_common::guard::classify`] (the
//! same code the raw-socket fallback runs in userspace): invalid ones are dropped and counted by
//! reason, valid ones are recorded in `vrrp_adverts` and passed on, and userspace is woken through
//! `vrrp_events` only when it has to act.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        BPF_F_CURRENT_NETNS,
    },
    btf_maps::{Array, HashMap, PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_ns,
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use proxy_common::{
    guard::{
        classify_ipv4, ipv4_offset, record_advert, tcp_syn, Frame, Tables, TcpSyn, Verdict,
        MAX_OFFSET,
    },
    maps::{
        AdvertRecord, GuardCounters, GuardEvent, InstanceKey, Reason, ServedPort, VridEntry,
        EVENTS_BYTES, MAX_INSTANCES, MAX_VIPS, VRIDS,
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
    end: usize,
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + N > self.end {
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
        end: ctx.data_end(),
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
        Verdict::Advert(advert) => {
            count(Reason::Accepted);
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

/// Traffic generator for the `xdp` benchmark: run with BPF_F_TEST_XDP_LIVE_FRAMES, it transmits
/// the test frame out of the ingress interface, as fast as the kernel can. hapd never attaches
/// it to an interface.
#[xdp]
pub fn hapd_bench_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
