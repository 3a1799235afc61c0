//! Second chance's view of each group's nodes: where each one is on the segment (its Ethernet
//! address, from the kernel's neighbour table) and whether it is alive (its BFD session in
//! this node's BIRD), turned into the guard's tables ([`Tables`]) whenever that changes.
//!
//! A node is sent segments only while its address is known and BFD does not say it is down,
//! so that a dead node does not swallow the flows of the living: BFD finds it dead within its
//! detection time (3 x 50 ms in the tested config), which is also when the router moves its
//! flows. A peer with no BFD session in BIRD counts as alive while the neighbour table knows
//! it (status says so: the operator's BIRD config should have one, see docs/anycast.md).
//!
//! One task polls every [`POLL`]: BIRD's `show bfd sessions` per group and the neighbour
//! table once. The daemon writes the tables to the guard.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt as _;
use proxy_common::maps::{AnycastPeers, MAX_ANYCAST_PEERS};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use tokio::sync::mpsc;
use tracing::warn;

use super::bird::{Bird, Reply};
use crate::{config::anycast::Anycast, status::AnycastStatus};

/// Each group's prefixes and its nodes for the guard, in config order (the group's index is
/// its position).
pub type Tables = Vec<(Vec<ipnet::Ipv4Net>, AnycastPeers)>;

/// How often BFD and the neighbour table are read.
pub const POLL: Duration = Duration::from_millis(100);

/// What this node knows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub addr: Option<Ipv4Addr>,
    /// Its Ethernet address on the group's segment, if the neighbour table has it.
    pub mac: Option<[u8; 6]>,
    /// Its BFD session: up, down, or none in BIRD (None).
    pub bfd: Option<bool>,
}

/// The guard's table for a group whose node `me` is this one: a peer takes segments when
/// its address is known and BFD does not say it is down.
pub fn table(me: usize, peers: &[Peer]) -> AnycastPeers {
    let mut t = AnycastPeers {
        me: me as u8,
        count: peers.len().min(MAX_ANYCAST_PEERS) as u8,
        ..AnycastPeers::default()
    };
    for (i, p) in peers.iter().enumerate().take(MAX_ANYCAST_PEERS) {
        if let Some(mac) = p.mac {
            t.macs[i] = mac;
            if i != me && p.bfd != Some(false) {
                t.usable |= 1 << i;
            }
        }
    }
    t
}

/// The state of each BFD session in a `show bfd sessions` reply: address, up.
pub fn bfd_sessions(reply: &Reply) -> BTreeMap<Ipv4Addr, bool> {
    reply
        .lines
        .iter()
        .filter_map(|l| {
            let mut w = l.text.split_whitespace();
            let addr: Ipv4Addr = w.next()?.parse().ok()?;
            let _iface = w.next()?;
            Some((addr, w.next()? == "Up"))
        })
        .collect()
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
        match (p.mac, p.bfd) {
            (None, _) => notes.push(format!("{addr}: address unknown")),
            (Some(_), Some(false)) => notes.push(format!("{addr}: BFD down")),
            (Some(_), None) => notes.push(format!("{addr}: no BFD session in BIRD")),
            (Some(_), Some(true)) => {}
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

/// Reads the groups' peers every [`POLL`] and sends the tables when they change. `xdp`:
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
    let mut birds: Vec<Option<Bird>> = groups.iter().map(|_| None).collect();
    let mut last: Option<Tables> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let neighbours = match neighbours(&nl).await {
            Ok(n) => n,
            Err(e) => {
                warn!("anycast second chance: reading the neighbour table: {e}");
                continue;
            }
        };
        let mut tables = Tables::new();
        for ((g, bird), st) in groups.iter().zip(&mut birds).zip(&status) {
            let ifindex = nix::net::if_::if_nametoindex(g.interface.as_str()).ok();
            let mine = local_addrs(&g.interface);
            let me = g.peers.iter().position(|p| mine.contains(p));
            let bfd = match bfd(bird, g).await {
                Ok(b) => b,
                Err(e) => {
                    // BIRD unreachable: what BFD says is unknown (the group is withdrawn
                    // meanwhile; its own task says why).
                    *bird = None;
                    tracing::debug!("anycast {}: BFD sessions: {e}", g.name);
                    BTreeMap::new()
                }
            };
            let peers: Vec<Peer> = g
                .peers
                .iter()
                .map(|a| Peer {
                    addr: Some(*a),
                    mac: ifindex.and_then(|i| neighbours.get(&(i, *a)).copied()),
                    bfd: bfd.get(a).copied(),
                })
                .collect();
            let text = describe(me, &peers, xdp.load(std::sync::atomic::Ordering::Relaxed));
            {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                s.second_chance = text;
            }
            let t = match me {
                Some(me) if peers.len() >= 2 => table(me, &peers),
                // No second chance: a table that never sends anything on.
                _ => AnycastPeers::default(),
            };
            tables.push((g.prefixes.clone(), t));
        }
        if last.as_ref() != Some(&tables) {
            if tx.send(tables.clone()).await.is_err() {
                return;
            }
            last = Some(tables);
        }
    }
}

/// `show bfd sessions` from the group's BIRD (connecting first if needed).
async fn bfd(
    bird: &mut Option<Bird>,
    g: &Anycast,
) -> Result<BTreeMap<Ipv4Addr, bool>, super::bird::BirdError> {
    if bird.is_none() {
        *bird = Some(Bird::connect(&g.bird_socket).await?);
    }
    let b = bird.as_mut().ok_or(super::bird::BirdError::Closed)?;
    let reply = b.command("show bfd sessions").await?;
    Ok(bfd_sessions(&reply))
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
async fn neighbours(
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
    use crate::anycast::bird::{Line, ReplyParser};

    fn peer(i: u8, mac: bool, bfd: Option<bool>) -> Peer {
        Peer {
            addr: Some(Ipv4Addr::new(198, 18, 0, i)),
            mac: mac.then_some([2, 0, 0, 0, 0, i]),
            bfd,
        }
    }

    #[test]
    fn peers_take_segments_when_known_and_not_down() {
        let peers = [
            peer(1, true, None),        // this node
            peer(2, true, Some(true)),  // alive
            peer(3, true, Some(false)), // BFD says down
            peer(4, false, Some(true)), // address unknown
            peer(5, true, None),        // no BFD session: counts while known
        ];
        let t = table(0, &peers);
        assert_eq!((t.me, t.count), (0, 5));
        assert_eq!(t.usable, 0b10010);
        assert_eq!(t.macs[1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(t.macs[3], [0; 6]);
        let d = describe(Some(0), &peers, true);
        assert_eq!(
            d,
            "on: 2 of 4 other node(s) take segments (198.18.0.3: BFD down; 198.18.0.4: address \
             unknown; 198.18.0.5: no BFD session in BIRD)"
        );
        assert!(describe(None, &peers, true).starts_with("off: none of this node's"));
        assert!(describe(Some(0), &peers[..1], true).starts_with("off: the group has one"));
        assert!(describe(Some(0), &peers, false).contains("XDP"));
    }

    /// `birdc show bfd sessions` from BIRD 2.0.12 (two sessions, one down), as the control
    /// socket frames it.
    #[test]
    fn bfd_sessions_are_read_from_birds_table() {
        let mut p = ReplyParser::default();
        let mut reply = None;
        for l in [
            "1020-hapd_peers:",
            " IP address                Interface  State      Since         Interval  Timeout",
            " 198.18.50.2               eth0       Up         15:13:16.407    0.050    0.150",
            " 198.18.50.3               eth0       Down       15:13:19.549    1.000    0.000",
            "0000 ",
        ] {
            if let Some(r) = p.push(l).unwrap() {
                reply = Some(r);
            }
        }
        let s = bfd_sessions(&reply.unwrap());
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            [
                (Ipv4Addr::new(198, 18, 50, 2), true),
                (Ipv4Addr::new(198, 18, 50, 3), false)
            ]
        );
        let empty = Reply {
            lines: vec![Line {
                code: 0,
                text: String::new(),
            }],
        };
        assert!(bfd_sessions(&empty).is_empty());
    }
}
