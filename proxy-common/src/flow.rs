//! Flows across a planned move of a virtual address: which node a TCP segment belongs to.
//!
//! When a VIP moves on purpose (a drill, a graceful stop, a preemption), both nodes stay up for
//! a while. The previous owner keeps the address for its sockets but no longer announces it
//! ([`FLOW_RELEASED`]): it answers no ARP request for it and sends connection requests, and
//! segments of flows it has no socket for, to the new owner. The new owner ([`FLOW_HOLDER`])
//! sends segments of flows it has no socket for to the previous owner, which serves them until
//! they end. Both rewrite only the Ethernet header and send the frame back out of the
//! interface it came in on (`XDP_TX`): the peer is on the same segment.
//!
//! A segment that the peer sent on is never sent back (the Ethernet source is the peer's), so
//! a flow that neither node holds is answered by the kernel of the node it reached second,
//! as without hapd, and never loops.
//!
//! The socket lookup is the caller's (a BPF helper in XDP): [`tcp_step`] says when one decides.

use crate::guard::{Frame, TcpSegment, ETH_P_ARP};
use crate::maps::{FlowEntry, FLOW_HOLDER, FLOW_RELEASED};

/// What to do with a TCP segment to an address in a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Deliver it here (then the guard's connection-request rule applies to a SYN).
    Pass,
    /// Send it to the peer.
    Forward,
    /// Deliver it here if a socket of this node holds the flow (established, closing, or a
    /// handshake in progress; a listener does not count), otherwise send it to the peer.
    ForwardUnlessLocal,
}

/// The step for segment `seg`, which arrived from Ethernet address `from`, to an address with
/// the entry `e`.
#[inline(always)]
pub fn tcp_step(e: &FlowEntry, from: [u8; 6], seg: &TcpSegment) -> Step {
    if from == e.peer_mac {
        return Step::Pass; // the peer sent it on: never back
    }
    match (e.role, seg.syn) {
        // New connections belong to the address's owner.
        (FLOW_RELEASED, true) => Step::Forward,
        (FLOW_HOLDER, true) => Step::Pass,
        (FLOW_RELEASED | FLOW_HOLDER, false) => Step::ForwardUnlessLocal,
        _ => Step::Pass,
    }
}

/// The address an ARP request (over Ethernet, for IPv4) asks for, or `None` for anything else
/// (replies included). `l3` and `ethertype` are from [`crate::guard::l3_offset`].
#[inline(always)]
pub fn arp_request_target<F: Frame + ?Sized>(f: &F, ethertype: u16, l3: usize) -> Option<[u8; 4]> {
    if ethertype != ETH_P_ARP {
        return None;
    }
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request); the target protocol
    // address follows the sender's two addresses and the target hardware address.
    let head = f.bytes::<8>(l3)?;
    if head != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return None;
    }
    f.bytes::<4>(l3 + 24)
}

/// Whether an ARP request for an address with entry `e` goes unanswered: the node released it.
#[inline(always)]
pub const fn suppress_arp(e: &FlowEntry) -> bool {
    e.role == FLOW_RELEASED
}

/// The Ethernet header of a segment sent on to `peer`: to the peer, from the address the frame
/// was sent to (this node's own, for a unicast TCP segment).
#[inline(always)]
pub fn forwarded_header(dst_was: [u8; 6], peer: [u8; 6]) -> [u8; 12] {
    let mut h = [0u8; 12];
    let mut i = 0;
    while i < 6 {
        h[i] = peer[i];
        h[6 + i] = dst_was[i];
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::l3_offset;
    use std::vec::Vec;

    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn seg(syn: bool) -> TcpSegment {
        TcpSegment {
            src: [198, 18, 0, 9],
            dst: [198, 18, 0, 100],
            sport: [0xc3, 0x50],
            dport: [0, 80],
            syn,
        }
    }

    fn entry(role: u8) -> FlowEntry {
        FlowEntry {
            peer_mac: PEER,
            role,
            _pad: 0,
        }
    }

    #[test]
    fn new_connections_belong_to_the_owner_and_open_flows_to_their_socket() {
        let holder = entry(FLOW_HOLDER);
        let released = entry(FLOW_RELEASED);
        assert_eq!(tcp_step(&holder, CLIENT, &seg(true)), Step::Pass);
        assert_eq!(tcp_step(&released, CLIENT, &seg(true)), Step::Forward);
        for e in [holder, released] {
            assert_eq!(tcp_step(&e, CLIENT, &seg(false)), Step::ForwardUnlessLocal);
        }
    }

    #[test]
    fn what_the_peer_sent_on_is_never_sent_back() {
        for role in [FLOW_HOLDER, FLOW_RELEASED] {
            for syn in [true, false] {
                assert_eq!(tcp_step(&entry(role), PEER, &seg(syn)), Step::Pass);
            }
        }
    }

    #[test]
    fn an_entry_of_no_known_role_changes_nothing() {
        assert_eq!(tcp_step(&entry(0), CLIENT, &seg(false)), Step::Pass);
        assert_eq!(tcp_step(&entry(7), CLIENT, &seg(true)), Step::Pass);
        assert!(!suppress_arp(&entry(FLOW_HOLDER)));
        assert!(suppress_arp(&entry(FLOW_RELEASED)));
    }

    fn arp(op: u8, tags: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&CLIENT);
        for _ in 0..tags {
            f.extend_from_slice(&[0x81, 0x00, 0, 7]);
        }
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op]);
        f.extend_from_slice(&CLIENT);
        f.extend_from_slice(&[198, 18, 0, 9]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[198, 18, 0, 100]);
        f
    }

    #[test]
    fn arp_requests_are_read_for_their_target_and_nothing_else_is() {
        for tags in [0, 1, 2] {
            let f = arp(1, tags);
            let (t, l3) = l3_offset(f.as_slice()).unwrap();
            assert_eq!(
                arp_request_target(f.as_slice(), t, l3),
                Some([198, 18, 0, 100])
            );
        }
        let reply = arp(2, 0);
        assert_eq!(arp_request_target(reply.as_slice(), ETH_P_ARP, 14), None);
        let f = arp(1, 0);
        assert_eq!(arp_request_target(&f[..41], ETH_P_ARP, 14), None, "short");
        assert_eq!(arp_request_target(f.as_slice(), 0x0800, 14), None);
    }

    #[test]
    fn a_forwarded_frame_goes_to_the_peer_from_this_node() {
        let me = [2, 0, 0, 0, 0, 1];
        let h = forwarded_header(me, PEER);
        assert_eq!(&h[..6], &PEER);
        assert_eq!(&h[6..], &me);
    }
}
