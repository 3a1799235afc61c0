//! Types and logic shared by the XDP guard (`proxy-ebpf`, no_std, bpfel) and the `hapd` daemon.
//!
//! Everything that crosses the kernel/userspace boundary through a BPF map is defined in
//! [`maps`] as `#[repr(C)]` with explicit widths and explicit padding fields, so both sides agree
//! on the layout byte for byte. The guard's decision procedure lives in [`guard`] and is generic
//! over the packet access ([`guard::Frame`]) and the configuration lookups ([`guard::Tables`]):
//! the XDP program and the raw-socket fallback (`xdp = "off"`) run the very same code.
#![no_std]

pub mod auth;
pub mod flow;
pub mod guard;
pub mod maps;
pub mod master_down;
pub mod second_chance;
pub mod vrrp;

#[cfg(test)]
extern crate std;
