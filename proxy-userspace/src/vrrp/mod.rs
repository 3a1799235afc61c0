//! VRRP (RFC 5798/9568 v3, RFC 3768 v2): the wire format and the I/O-free election engine.
pub mod auth;
pub mod fsm;
pub mod io;
pub mod notify;
pub mod packet;
pub mod track;
pub mod webhook;

pub use packet::{Advert, Auth, Centisecs, ChecksumMode};
