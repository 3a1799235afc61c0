//! Second chance's view of each group's nodes: where each one is on the segment (its Ethernet
//! address, from the kernel's neighbour table) and whether its guard takes part (it answers
//! the pings sent here: [`proxy_common::second_chance::pong`]), turned into the guard's
//! tables ([`Tables`]) whenever that changes.
//!
//! A node is sent segments only while it answers: a dead host, or a node whose hapd has
//! stopped (its guard detached), would swallow the flows of the living. Pings go every
//! [`POLL`]; a node silent for [`SILENT`] no longer counts, and counts again at its first
//! answer. A peer whose address the neighbour table lacks is sent a datagram (to the
//! discard port) once a second, so that the kernel resolves it; a peer's last known Ethernet
//! address is kept (and pinged) when its kernel entry fails while it is cut off.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use proxy_common::{
    maps::{AnycastPeers, MAX_ANYCAST_PEERS},
    second_chance::{ping, read_pong, PING_ETHERTYPE},
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::{config::anycast::Anycast, status::AnycastStatus};

/// Each group's prefixes and its nodes for the guard, in config order (the group's index is
/// its position).
pub type Tables = Vec<(Vec<ipnet::Ipv4Net>, AnycastPeers)>;

/// How often each peer is pinged.
pub const POLL: Duration = Duration::from_millis(50);

/// How long a peer may stay silent and still count (three pings).
pub const SILENT: Duration = Duration::from_millis(150);

/// What this node knows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub addr: Option<Ipv4Addr>,
    /// Its Ethernet address on the group's segment, if the neighbour table has it.
    pub mac: Option<[u8; 6]>,
    /// It answered a ping within [`SILENT`].
    pub answers: bool,
}

/// The guard's table for a group whose node `me` is this one: a peer takes segments when
/// its address is known and it answers.
pub fn table(me: usize, peers: &[Peer]) -> AnycastPeers {
    let mut t = AnycastPeers {
        me: me as u8,
        count: peers.len().min(MAX_ANYCAST_PEERS) as u8,
        ..AnycastPeers::default()
    };
    for (i, p) in peers.iter().enumerate().take(MAX_ANYCAST_PEERS) {
        if let Some(mac) = p.mac {
            t.macs[i] = mac;
            if i != me && p.answers {
                t.usable |= 1 << i;
            }
        }
    }
    t
}

/// Status text for a group's second chance.
pub fn describe(me: Option<usize>, peers: &[Peer], xdp: bool) -> String {
    let Some(me) = me else {
        return "off: none of this node's addresses on the interface is in peers".into();
    };
    if peers.len() < 2 {
        return "off: the group has one node".into();
    }
    if !xdp {
        return "off: the guard does not run in XDP on the group's interface".into();
    }
    let t = table(me, peers);
    let mut notes = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if i == me {
            continue;
        }
        let addr = p.addr.map_or("?".into(), |a| a.to_string());
        match (p.mac, p.answers) {
            (None, _) => notes.push(format!("{addr}: address unknown")),
            (Some(_), false) => notes.push(format!("{addr}: no answer")),
            (Some(_), true) => {}
        }
    }
    let usable = t.usable.count_ones();
    let mut s = format!(
        "on: {usable} of {} other node(s) take segments",
        peers.len() - 1
    );
    if !notes.is_empty() {
        s.push_str(&format!(" ({})", notes.join("; ")));
    }
    s
}

/// Pings the groups' peers every [`POLL`] and sends the tables when they change. `xdp`:
/// whether the guard runs in XDP (set by the daemon; for status).
pub async fn run(
    groups: Vec<Anycast>,
    status: Vec<Arc<Mutex<AnycastStatus>>>,
    tx: mpsc::Sender<Tables>,
    xdp: Arc<std::sync::atomic::AtomicBool>,
) {
    let (conn, nl, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            warn!("anycast second chance: netlink: {e}; off");
            return;
        }
    };
    tokio::spawn(conn);
    // One socket per interface, for pings out and answers in.
    let mut sockets: BTreeMap<String, (u32, [u8; 6], AsyncFd<OwnedFd>)> = BTreeMap::new();
    let mut heard: BTreeMap<(u32, [u8; 6]), Instant> = BTreeMap::new();
    // The peers' addresses on each interface, from the last neighbour dump: answers from
    // anyone else are not recorded.
    let mut known: Vec<(u32, [u8; 6])> = Vec::new();
    // The peers' Ethernet addresses by (interface, address), from the neighbour table, read
    // once a second (not every round: this task shares its thread with VRRP). The last usable
    // one is kept when the kernel's entry fails: a peer cut off long enough for its entry to
    // fail must still be pinged, so that its return is noticed at its first answer, not a
    // resolution and a table read later (meanwhile this node would reset its flows).
    let mut neighbours: BTreeMap<(u32, Ipv4Addr), [u8; 6]> = BTreeMap::new();
    let peer_addrs: Vec<Ipv4Addr> = groups.iter().flat_map(|g| g.peers.clone()).collect();
    // Per interface: its index and this host's addresses on it.
    let mut local: BTreeMap<String, (Option<u32>, Vec<Ipv4Addr>)> = BTreeMap::new();
    let mut resolved_at: Option<Instant> = None;
    let mut failing: Option<String> = None;
    let mut last_round: Option<Instant> = None;
    let mut last: Option<Tables> = None;
    let mut token = 0u64;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 64];
    loop {
        // Answers until the next round.
        loop {
            // (select_all panics on no futures: none until a socket is open.)
            let readable = async {
                if sockets.is_empty() {
                    std::future::pending().await
                } else {
                    futures::future::select_all(
                        sockets.values().map(|(_, _, fd)| Box::pin(fd.readable())),
                    )
                    .await
                    .0
                }
            };
            let got = tokio::select! {
                _ = tick.tick() => None,
                r = readable => Some(r),
            };
            let Some(Ok(mut guard)) = got else {
                break;
            };
            let fd = guard.get_inner().as_raw_fd();
            // SAFETY: recv(2) into a buffer of the size given.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                guard.clear_ready();
                continue;
            }
            if let Some((from, _, _)) = read_pong(&buf[..n as usize]) {
                let ifindex = sockets
                    .values()
                    .find(|(_, _, s)| s.get_ref().as_raw_fd() == fd)
                    .map(|(i, ..)| *i);
                if let Some(i) = ifindex.filter(|i| known.contains(&(*i, from))) {
                    heard.insert((i, from), Instant::now());
                }
            }
        }
        let now = Instant::now();
        // A round that comes late (this thread was busy) must not find every peer silent:
        // the silence allowed grows by the delay.
        let late = last_round.map_or(Duration::ZERO, |t| {
            now.duration_since(t).saturating_sub(POLL)
        });
        let window = SILENT + late;
        last_round = Some(now);
        let resolve = resolved_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if resolve {
            match neighbours_of(&nl).await {
                Ok(n) => {
                    neighbours.extend(n.into_iter().filter(|((_, a), _)| peer_addrs.contains(a)))
                }
                Err(e) => {
                    let e = format!("reading the neighbour table: {e}");
                    if failing.as_ref() != Some(&e) {
                        warn!("anycast second chance: {e}");
                        failing = Some(e);
                    }
                }
            }
            local = groups
                .iter()
                .map(|g| {
                    let ifindex = nix::net::if_::if_nametoindex(g.interface.as_str()).ok();
                    (g.interface.clone(), (ifindex, local_addrs(&g.interface)))
                })
                .collect();
            known = local
                .values()
                .filter_map(|(i, _)| *i)
                .flat_map(|i| {
                    neighbours
                        .iter()
                        .filter(move |((j, _), _)| *j == i)
                        .map(move |(_, m)| (i, *m))
                })
                .collect();
            heard.retain(|k, _| known.contains(k));
        }
        let mut tables = Tables::new();
        for (gi, (g, st)) in groups.iter().zip(&status).enumerate() {
            let (ifindex, mine) = local.get(&g.interface).cloned().unwrap_or_default();
            let me = g.peers.iter().position(|p| mine.contains(p));
            if let (Some(i), false, true) = (ifindex, sockets.contains_key(&g.interface), resolve) {
                match open(i, &g.interface) {
                    Ok(s) => {
                        sockets.insert(g.interface.clone(), s);
                    }
                    Err(e) => {
                        let e = format!("anycast {}: second chance pings: {e:#}", g.name);
                        if failing.as_ref() != Some(&e) {
                            warn!("{e}");
                            failing = Some(e);
                        }
                    }
                }
            }
            let peers: Vec<Peer> = g
                .peers
                .iter()
                .enumerate()
                .map(|(k, a)| {
                    let mac = ifindex.and_then(|i| neighbours.get(&(i, *a)).copied());
                    let answers = match (ifindex, mac) {
                        (Some(i), Some(m)) if Some(k) != me => heard
                            .get(&(i, m))
                            .is_some_and(|t| now.duration_since(*t) <= window),
                        _ => false,
                    };
                    // Our own entry: our own address (for the table's completeness).
                    let mac = if Some(k) == me {
                        sockets.get(&g.interface).map(|s| s.1)
                    } else {
                        mac
                    };
                    Peer {
                        addr: Some(*a),
                        mac,
                        answers,
                    }
                })
                .collect();
            // Ping every other peer whose address is known; make the kernel resolve the rest.
            if let Some((_, my_mac, fd)) = sockets.get(&g.interface) {
                for (k, p) in peers.iter().enumerate() {
                    if Some(k) == me {
                        continue;
                    }
                    if let Some(m) = p.mac {
                        token = token.wrapping_add(1);
                        let f = ping(m, *my_mac, gi as u8, token);
                        // SAFETY: send(2) of a buffer of the size given.
                        unsafe {
                            libc::send(
                                fd.get_ref().as_raw_fd(),
                                f.as_ptr().cast(),
                                f.len(),
                                libc::MSG_DONTWAIT,
                            )
                        };
                    }
                    // Unknown, or known but silent (its address may have changed): a
                    // datagram makes the kernel resolve it (again).
                    if let (Some(a), false, true) = (p.addr, p.answers, resolve) {
                        if let Ok(u) = std::net::UdpSocket::bind("0.0.0.0:0") {
                            let _ = u.set_nonblocking(true);
                            let _ = u.send_to(&[], (a, 9));
                        }
                    }
                }
            }
            let text = describe(me, &peers, xdp.load(std::sync::atomic::Ordering::Relaxed));
            {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                s.second_chance = text;
            }
            let t = match me {
                Some(me) if peers.len() >= 2 => table(me, &peers),
                // No second chance: a table that never sends anything on nor answers (count
                // 1: the guard reads a count of 0 in the first entry as "no group at all").
                _ => AnycastPeers {
                    count: 1,
                    ..AnycastPeers::default()
                },
            };
            tables.push((g.prefixes.clone(), t));
        }
        if resolve {
            resolved_at = Some(now);
        }
        // On a change, and once a second (a write the daemon could not make is made again).
        if last.as_ref() != Some(&tables) || resolve {
            if tx.send(tables.clone()).await.is_err() {
                return;
            }
            last = Some(tables);
        }
    }
}

/// An AF_PACKET socket on `ifindex` for second-chance pings, and the interface's address.
fn open(ifindex: u32, iface: &str) -> anyhow::Result<(u32, [u8; 6], AsyncFd<OwnedFd>)> {
    let mac = crate::vip::interface_mac(iface)?;
    let fd = crate::dataplane::raw::packet_socket(PING_ETHERTYPE)?;
    crate::dataplane::raw::bind_packet(&fd, ifindex, PING_ETHERTYPE)?;
    // SAFETY: the descriptor is owned by the AsyncFd, which deregisters it before closing it.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
    Ok((ifindex, mac, fd))
}

/// This host's IPv4 addresses on `iface`.
fn local_addrs(iface: &str) -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

/// The kernel's IPv4 neighbours with a usable Ethernet address: (interface, address) to MAC.
async fn neighbours_of(
    nl: &rtnetlink::Handle,
) -> Result<BTreeMap<(u32, Ipv4Addr), [u8; 6]>, rtnetlink::Error> {
    let mut out = BTreeMap::new();
    let mut dump = nl
        .neighbours()
        .get()
        .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
        .execute();
    while let Some(msg) = dump.try_next().await? {
        if let Some((addr, mac)) = usable_neighbour(&msg) {
            out.insert((msg.header.ifindex, addr), mac);
        }
    }
    Ok(out)
}

fn usable_neighbour(msg: &NeighbourMessage) -> Option<(Ipv4Addr, [u8; 6])> {
    if matches!(
        msg.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
    ) {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some((addr?, mac?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8, mac: bool, answers: bool) -> Peer {
        Peer {
            addr: Some(Ipv4Addr::new(198, 18, 0, i)),
            mac: mac.then_some([2, 0, 0, 0, 0, i]),
            answers,
        }
    }

    #[test]
    fn peers_take_segments_when_known_and_answering() {
        let peers = [
            peer(1, true, false), // this node
            peer(2, true, true),  // answers
            peer(3, true, false), // silent: dead, or its hapd stopped
            peer(4, false, true), // address unknown (cannot have answered: not counted)
            peer(5, true, true),
        ];
        let t = table(0, &peers);
        assert_eq!((t.me, t.count), (0, 5));
        assert_eq!(t.usable, 0b10010);
        assert_eq!(t.macs[1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(t.macs[3], [0; 6]);
        let d = describe(Some(0), &peers, true);
        assert_eq!(
            d,
            "on: 2 of 4 other node(s) take segments (198.18.0.3: no answer; 198.18.0.4: address \
             unknown)"
        );
        assert!(describe(None, &peers, true).starts_with("off: none of this node's"));
        assert!(describe(Some(0), &peers[..1], true).starts_with("off: the group has one"));
        assert!(describe(Some(0), &peers, false).contains("XDP"));
    }
}
