#![no_main]
//! See proxy_userspace::fuzz::http1_head.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy_userspace::fuzz::http1_head(data));
