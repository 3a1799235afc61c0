//! hapd: VRRP failover and a TLS reverse proxy in one daemon. This library holds everything the
//! `hapd` binary runs, so tests and benchmarks can drive the same code.
pub mod admin;
pub mod anycast;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod drill;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod health;
pub mod import;
pub mod link;
pub mod logs;
pub mod notify;
pub mod parity;
pub mod proxy;
pub mod status;
pub mod timerfd;
pub mod upgrade;
pub mod vip;
pub mod vrrp;
