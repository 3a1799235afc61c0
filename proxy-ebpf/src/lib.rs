#![no_std]
// This crate is built for the BPF target by proxy-userspace/build.rs (aya-build); the library
// target only exists so proxy-userspace can name it as a build-dependency and be rebuilt when
// it changes, as in aya's template.
