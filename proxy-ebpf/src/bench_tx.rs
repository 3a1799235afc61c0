//! The `xdp` benchmark's traffic generator, an object of its own so that the guard's object,
//! which `hapd` embeds, carries no benchmark code. Run under BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES, it transmits the test frame out of the ingress interface as fast
//! as the kernel can. Nothing attaches it to an interface.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action::XDP_TX, macros::xdp, programs::XdpContext};

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
