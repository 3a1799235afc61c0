#![no_main]
//! See proxy_userspace::fuzz::import_apache.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| proxy_userspace::fuzz::import_apache(data));
