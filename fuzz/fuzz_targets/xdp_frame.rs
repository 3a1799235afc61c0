#![no_main]
//! See proxy_userspace::fuzz::xdp_frame (needs root: it loads the XDP program).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy_userspace::fuzz::xdp_frame(data));
