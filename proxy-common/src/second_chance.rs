//! Second chance for anycast: a TCP segment that reaches a node which does not hold its flow
//! goes on to the nodes that might.
//!
//! Several nodes announce the same prefix and the router spreads flows over them by ECMP.
//! When the set of nodes changes (one withdraws, dies, or comes back), a hash-threshold router
//! remaps some flows of the nodes that did not change to another node, whose kernel has no
//! socket for them and would reset them. With second chance, a segment that is not a
//! connection request and that no socket of this node holds is sent on along the group's
//! peer list (in the order every node's config gives it) until a node holds it:
//!
//! - the node that got it from the router (the *origin*, at position `o`) sends it to the
//!   next usable node after it in the list, at distance 1, 2, ... from `o`;
//! - each node on the way that does not hold it sends it to the next usable node after
//!   itself, until the walk would come back to the origin: there the last node passes it to
//!   its kernel, which answers as without hapd (a reset: no node holds the flow).
//!
//! Where the walk is carried: in the Ethernet source of the frame, which second chance
//! rewrites anyway (the destination becomes the next node's address). The source becomes a
//! locally administered address `06:68:61:70:<o>:<d>` ("hap"), `d` the distance from the origin
//! of the node the frame is sent to. `d` grows with every hop and the walk ends before it
//! reaches the group's size (at most [`MAX_ANYCAST_PEERS`]), so a frame makes at most 7 hops
//! and cannot loop, whatever the nodes' tables say (a frame with a mark that does not fit
//! this node's table is passed, never sent on).
//!
//! Connection requests are served where they land: new flows need no second chance. The
//! socket lookup is the caller's (a BPF helper in XDP).
//!
//! Which nodes take part: each node's daemon pings the others every few tens of
//! milliseconds with a frame of its own ([`PING_ETHERTYPE`]), and a node's guard answers it
//! in XDP ([`pong`]) while second chance runs there. So a node counts while its guard can
//! send segments on: not when its host is gone or its hapd has stopped (the guard is
//! detached), but still when only its routing daemon has failed or its hapd was killed (the
//! guard stays attached and keeps its tables).
use crate::maps::{AnycastPeers, MAX_ANYCAST_PEERS};

/// The first four bytes of a second-chance mark: locally administered, unicast.
pub const MARK: [u8; 4] = [0x06, 0x68, 0x61, 0x70];

/// The Ethernet type of second chance's pings (IEEE 802 local experimental).
pub const PING_ETHERTYPE: u16 = 0x88b5;
/// After the Ethernet header: `hapd`, the kind, the group's index, and an 8-byte token the
/// answer carries back.
pub const PING_MAGIC: [u8; 4] = *b"hapd";
pub const PING: u8 = 1;
pub const PONG: u8 = 2;
/// Bytes of a ping: Ethernet header, magic, kind, group, token.
pub const PING_LEN: usize = 14 + 4 + 1 + 1 + 8;

/// A ping for group `group` (`to`, from `from`, with `token`).
pub fn ping(to: [u8; 6], from: [u8; 6], group: u8, token: u64) -> [u8; PING_LEN] {
    let mut f = [0u8; PING_LEN];
    f[..6].copy_from_slice(&to);
    f[6..12].copy_from_slice(&from);
    f[12..14].copy_from_slice(&PING_ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(&PING_MAGIC);
    f[18] = PING;
    f[19] = group;
    f[20..].copy_from_slice(&token.to_be_bytes());
    f
}

/// The group a frame whose first 20 bytes are `head` pings, if it is a ping.
#[inline(always)]
pub fn pinged_group(head: &[u8; 20]) -> Option<u8> {
    let ethertype = u16::from_be_bytes([head[12], head[13]]);
    (ethertype == PING_ETHERTYPE && head[14..18] == PING_MAGIC && head[18] == PING)
        .then_some(head[19])
}

/// The first 20 bytes of the answer to a ping whose first 20 bytes are `head`, from a node
/// whose group `p` is the one pinged: only when the ping was sent to this node's own address
/// in that group (a switch floods frames for an address it no longer knows, and a dead node's
/// pings must not be answered by another). Addresses swapped, kind [`PONG`]; the token after
/// them is left as it is.
#[inline(always)]
pub fn pong(head: [u8; 20], p: &AnycastPeers) -> Option<[u8; 20]> {
    pinged_group(&head)?;
    let me = p.macs.get(p.me as usize)?;
    if p.count < 2 || head[..6] != *me || head[0] & 1 != 0 {
        return None;
    }
    let mut out = head;
    let mut i = 0;
    while i < 6 {
        out[i] = head[6 + i];
        out[6 + i] = head[i];
        i += 1;
    }
    out[18] = PONG;
    Some(out)
}

/// The sender, group and token of an answer to a ping, from a received frame.
pub fn read_pong(f: &[u8]) -> Option<([u8; 6], u8, u64)> {
    if f.len() < PING_LEN
        || f[12..14] != PING_ETHERTYPE.to_be_bytes()
        || f[14..18] != PING_MAGIC
        || f[18] != PONG
    {
        return None;
    }
    let mut from = [0u8; 6];
    from.copy_from_slice(&f[6..12]);
    let mut token = [0u8; 8];
    token.copy_from_slice(&f[20..28]);
    Some((from, f[19], u64::from_be_bytes(token)))
}

/// Whether a segment sent to Ethernet address `dst` is this node's to walk, in a group with
/// peers `p`: only when it was sent to this node's own address (not flooded by a switch for
/// an address it no longer knows).
#[inline(always)]
pub fn sent_to_me(p: &AnycastPeers, dst: [u8; 6]) -> bool {
    p.macs.get(p.me as usize).is_some_and(|m| *m == dst)
}

/// What to do with a segment of a flow that no socket of this node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// To this node's kernel.
    Pass,
    /// To `to` (its Ethernet address), from `mark`.
    Forward { to: [u8; 6], mark: [u8; 6] },
}

/// The Ethernet source of a frame sent on: origin position `origin`, and `dist`, the distance
/// from the origin of the node it goes to.
#[inline(always)]
pub const fn mark(origin: u8, dist: u8) -> [u8; 6] {
    [MARK[0], MARK[1], MARK[2], MARK[3], origin, dist]
}

/// `(origin, dist)` of a frame from `src`, if another node sent it on.
#[inline(always)]
pub fn read_mark(src: [u8; 6]) -> Option<(u8, u8)> {
    (src[0] == MARK[0] && src[1] == MARK[1] && src[2] == MARK[2] && src[3] == MARK[3])
        .then_some((src[4], src[5]))
}

/// Where a segment that arrived from Ethernet source `src` goes when no socket of this node
/// holds its flow, for a group with peers `p`.
#[inline(always)]
pub fn next_hop(p: &AnycastPeers, src: [u8; 6]) -> Hop {
    let count = p.count as usize;
    if !(2..=MAX_ANYCAST_PEERS).contains(&count) || p.me as usize >= count {
        return Hop::Pass;
    }
    let (origin, dist) = match read_mark(src) {
        None => (p.me as usize, 0),
        Some((o, d)) => {
            let (o, d) = (o as usize, d as usize);
            // Sent on to this node: it must be where the mark says, else the tables differ
            // and the frame stops here.
            if o >= count || d == 0 || d >= count || (o + d) % count != p.me as usize {
                return Hop::Pass;
            }
            (o, d)
        }
    };
    let mut next = dist + 1;
    // At most MAX_ANYCAST_PEERS - 1 steps (a bound the verifier can see).
    let mut steps = 0;
    while next < count && steps < MAX_ANYCAST_PEERS {
        let at = (origin + next) % count;
        // (`get`: no bounds check that could panic, which XDP cannot.)
        if let Some(to) = p.macs.get(at) {
            if (p.usable >> at) & 1 != 0 {
                return Hop::Forward {
                    to: *to,
                    mark: mark(origin as u8, next as u8),
                };
            }
        }
        next += 1;
        steps += 1;
    }
    Hop::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn mac(i: usize) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, 0x10 + i as u8]
    }

    fn peers(count: usize, me: usize, usable: u8) -> AnycastPeers {
        let mut macs = [[0u8; 6]; MAX_ANYCAST_PEERS];
        for (i, m) in macs.iter_mut().enumerate().take(count) {
            *m = mac(i);
        }
        AnycastPeers {
            me: me as u8,
            count: count as u8,
            usable,
            _pad: 0,
            macs,
        }
    }

    /// Follows a segment from the router to node `origin` through every node that does not
    /// hold it; returns the nodes it visited after the origin, and where it stopped.
    fn walk(count: usize, usable: u8, origin: usize, holder: Option<usize>) -> (Vec<usize>, usize) {
        let mut at = origin;
        let mut src = [0x02, 0, 0, 0, 0, 0x99]; // the router
        let mut visited = Vec::new();
        for _ in 0..64 {
            if Some(at) == holder {
                return (visited, at);
            }
            match next_hop(&peers(count, at, usable), src) {
                Hop::Pass => return (visited, at),
                Hop::Forward { to, mark } => {
                    at = (to[5] - 0x10) as usize;
                    assert_eq!(to, mac(at));
                    src = mark;
                    visited.push(at);
                }
            }
        }
        panic!("no end after 64 hops: {visited:?}");
    }

    #[test]
    fn a_segment_visits_every_other_usable_node_once_in_list_order() {
        for count in 2..=MAX_ANYCAST_PEERS {
            let all = ((1u16 << count) - 1) as u8;
            for origin in 0..count {
                let (visited, stop) = walk(count, all, origin, None);
                let want: Vec<usize> = (1..count).map(|d| (origin + d) % count).collect();
                assert_eq!(visited, want, "{count} nodes from {origin}");
                assert_eq!(stop, *want.last().unwrap());
                // The holder anywhere along the walk: it gets the segment, no one after it.
                for holder in want.iter().copied() {
                    let (visited, stop) = walk(count, all, origin, Some(holder));
                    assert_eq!(stop, holder);
                    assert_eq!(visited.last(), Some(&holder));
                    assert!(!visited.contains(&origin));
                }
            }
        }
    }

    #[test]
    fn nodes_that_cannot_take_segments_are_skipped() {
        // 5 nodes, node 2 dead: from node 1 the walk goes 3, 4, 0 and never to 2.
        let usable = 0b11011;
        let (visited, _) = walk(5, usable, 1, None);
        assert_eq!(visited, [3, 4, 0]);
        let (visited, stop) = walk(5, usable, 1, Some(4));
        assert_eq!((visited.as_slice(), stop), (&[3, 4][..], 4));
        // Alone (every other node unusable): the segment stays.
        assert_eq!(walk(3, 0b001, 0, None), (Vec::new(), 0));
    }

    #[test]
    fn marks_that_do_not_fit_this_nodes_table_stop_the_walk() {
        let p = peers(3, 1, 0b111);
        // (origin 0, distance 1) is node 1: fits, goes on to node 2 at distance 2.
        assert_eq!(
            next_hop(&p, mark(0, 1)),
            Hop::Forward {
                to: mac(2),
                mark: mark(0, 2)
            }
        );
        // Distance 2 from origin 2 is node 1 too, and the last: passed.
        assert_eq!(next_hop(&p, mark(2, 2)), Hop::Pass);
        for bad in [
            mark(0, 2),
            mark(0, 0),
            mark(3, 1),
            mark(0, 3),
            mark(255, 255),
        ] {
            assert_eq!(next_hop(&p, bad), Hop::Pass, "{bad:02x?}");
        }
        // Tables that are not tables: no node to go to, or this node not in it.
        let router = [2, 0, 0, 0, 0, 1];
        for (count, me) in [(0u8, 0u8), (1, 0), (9, 0), (3, 3), (3, 200)] {
            let mut t = peers(3, 0, 0xff);
            (t.count, t.me) = (count, me);
            assert_eq!(next_hop(&t, router), Hop::Pass, "count {count}, me {me}");
        }
    }

    #[test]
    fn a_ping_is_answered_to_its_sender_with_its_token_only_by_its_addressee() {
        // This node is node 1 of three; a is node 0.
        let p = peers(3, 1, 0b101);
        let (a, b) = (mac(0), mac(1));
        let f = ping(b, a, 5, 0x0102_0304_0506_0708);
        let mut head = [0u8; 20];
        head.copy_from_slice(&f[..20]);
        assert_eq!(pinged_group(&head), Some(5));
        let mut answer = f;
        answer[..20].copy_from_slice(&pong(head, &p).unwrap());
        assert_eq!(&answer[..6], &a);
        assert_eq!(&answer[6..12], &b);
        assert_eq!(read_pong(&answer), Some((b, 5, 0x0102_0304_0506_0708)));
        // A ping is not an answer, an answer is not answered, nor is anything else.
        assert_eq!(read_pong(&f), None);
        let mut twice = [0u8; 20];
        twice.copy_from_slice(&answer[..20]);
        assert_eq!(pong(twice, &p), None);
        let mut other = head;
        other[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(pong(other, &p), None);
        let mut magic = head;
        magic[14] = b'x';
        assert_eq!(pong(magic, &p), None);
        // Sent to a group address, or flooded to us for another node: no answer.
        let mut group = head;
        group[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(pong(group, &p), None);
        let mut flooded = head;
        flooded[..6].copy_from_slice(&mac(2));
        assert_eq!(pong(flooded, &p), None);
        // A group with no second chance here does not answer.
        assert_eq!(pong(head, &AnycastPeers::default()), None);
        assert_eq!(read_pong(&answer[..PING_LEN - 1]), None, "short");
        assert!(sent_to_me(&p, b));
        assert!(!sent_to_me(&p, a));
    }

    #[test]
    fn marks_are_read_back_and_other_sources_are_not_marks() {
        assert_eq!(read_mark(mark(3, 5)), Some((3, 5)));
        assert_eq!(read_mark([0x02, 0, 0, 0, 0, 1]), None);
        assert_eq!(read_mark([0x06, 0x68, 0x61, 0x71, 0, 1]), None);
        // Locally administered and unicast: no vendor's address, never a group address.
        assert_eq!(MARK[0] & 0b11, 0b10);
    }
}
