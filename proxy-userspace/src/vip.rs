//! Owning the virtual addresses: netlink to add and remove them, gratuitous ARP (IPv4) and
//! unsolicited neighbour advertisements (IPv6) to announce them.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Context as _};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use pnet_packet::{
    arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket},
    ethernet::{EtherTypes, MutableEthernetPacket},
    MutablePacket as _,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::{AddressMessageBuilder, Handle};

/// The addresses on interface `ifindex`, of both families, with their prefix lengths.
pub async fn addresses(nl: &Handle, ifindex: u32) -> anyhow::Result<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut s = nl.address().get().set_link_index_filter(ifindex).execute();
    while let Some(msg) = s.try_next().await.context("listing addresses (netlink)")? {
        if let Some(a) = address(&msg) {
            out.push(a);
        }
    }
    Ok(out)
}

fn address(msg: &AddressMessage) -> Option<IpNet> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, msg.header.prefix_len).ok(),
        _ => None,
    })
}

/// Whether `a` is an IPv6 link-local unicast address (fe80::/10).
pub fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// The interface's primary address for an instance of `vips`' family: the source of its
/// adverts and the tie-breaker of the election. IPv4: the first address that is not one of
/// `vips`. IPv6: the first link-local address that is not one of them (RFC 9568 section
/// 5.1.2.1; keepalived's choice too).
pub async fn primary(
    nl: &Handle,
    ifindex: u32,
    iface: &str,
    vips: &[IpNet],
) -> anyhow::Result<IpAddr> {
    let v6 = vips.first().is_some_and(|v| v.addr().is_ipv6());
    addresses(nl, ifindex)
        .await?
        .into_iter()
        .map(|n| n.addr())
        .filter(|a| if v6 { is_link_local(*a) } else { a.is_ipv4() })
        .find(|a| !vips.iter().any(|v| v.addr() == *a))
        .with_context(|| {
            if v6 {
                format!("{iface} has no IPv6 link-local address to send VRRP adverts from")
            } else {
                format!("{iface} has no IPv4 address of its own to send VRRP adverts from")
            }
        })
}

/// Adds `vips` to `ifindex`; an address already there is fine. IPv6 addresses are added
/// without duplicate address detection (`nodad`, keepalived's default): the address moves
/// between nodes by design, and a tentative address could not be used for a second or more.
pub async fn add(nl: &Handle, ifindex: u32, vips: &[IpNet]) -> anyhow::Result<()> {
    for v in vips {
        let mut req = nl.address().add(ifindex, v.addr(), v.prefix_len());
        if v.addr().is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(e).with_context(|| format!("adding {v}")),
        }
    }
    Ok(())
}

/// Removes those of `vips` that are on `ifindex`; returns how many were.
pub async fn remove(nl: &Handle, ifindex: u32, vips: &[IpNet]) -> anyhow::Result<usize> {
    let present = addresses(nl, ifindex).await?;
    let mut removed = 0;
    for v in vips
        .iter()
        .filter(|v| present.iter().any(|p| p.addr() == v.addr()))
    {
        let msg = match v.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(ifindex)
                .address(a, v.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(ifindex)
                .address(a, v.prefix_len())
                .build(),
        };
        match nl.address().del(msg).execute().await {
            Ok(()) => removed += 1,
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(e) => return Err(e).with_context(|| format!("removing {v}")),
        }
    }
    Ok(removed)
}

/// An unsolicited neighbour advertisement for `ip` from `mac` (RFC 4861 section 7.2.6), as
/// keepalived sends them on takeover: to all nodes (ff02::1, Ethernet 33:33:00:00:00:01)
/// from the address itself, hop limit 255, Override set (Solicited and Router clear: a
/// proxy host is not a router), with the Target Link-Layer Address option.
pub fn na_frame(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = Vec::with_capacity(86);
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6: version 6, payload 32 bytes, next header ICMPv6 (58), hop limit 255.
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    let icmp_at = f.len();
    // ICMPv6 type 136 (neighbour advertisement), code 0, checksum, flags (R S O = 0 0 1).
    f.extend_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]);
    f.extend_from_slice(&ip.octets());
    // Option 2 (target link-layer address), 1 unit of 8 bytes.
    f.extend_from_slice(&[2, 1]);
    f.extend_from_slice(&mac);
    // RFC 4443 section 2.3: the checksum covers the IPv6 pseudo-header.
    let pseudo = proxy_common::guard::ip_pseudo_sum(
        &ip.octets(),
        &ALL_NODES.octets(),
        proxy_common::vrrp::Family::V6,
        58,
        32,
    );
    let c = proxy_common::guard::checksum(&f[icmp_at..], pseudo);
    f[icmp_at + 2..icmp_at + 4].copy_from_slice(&c.to_be_bytes());
    f
}

/// The frame that announces `ip` from `mac`: a gratuitous ARP for IPv4, an unsolicited
/// neighbour advertisement for IPv6.
pub fn announce_frame(mac: [u8; 6], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => garp_frame(mac, a),
        IpAddr::V6(a) => na_frame(mac, a),
    }
}

/// A gratuitous ARP request for `ip` from `mac` (sender and target address both `ip`), as
/// keepalived sends them.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; 42];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("42 bytes hold Ethernet + ARP");
        eth.set_destination([0xff; 6].into());
        eth.set_source(mac.into());
        eth.set_ethertype(EtherTypes::Arp);
        let mut arp = MutableArpPacket::new(eth.payload_mut()).expect("28 bytes hold ARP");
        arp.set_hardware_type(ArpHardwareTypes::Ethernet);
        arp.set_protocol_type(EtherTypes::Ipv4);
        arp.set_hw_addr_len(6);
        arp.set_proto_addr_len(4);
        arp.set_operation(ArpOperations::Request);
        arp.set_sender_hw_addr(mac.into());
        arp.set_sender_proto_addr(ip);
        arp.set_target_hw_addr([0; 6].into());
        arp.set_target_proto_addr(ip);
    }
    buf
}

/// Interface `iface` and its Ethernet address.
fn interface(iface: &str) -> anyhow::Result<(pnet_datalink::NetworkInterface, [u8; 6])> {
    let ni = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .with_context(|| format!("interface {iface} not found"))?;
    let mac = ni
        .mac
        .with_context(|| format!("{iface} has no MAC address"))?
        .octets();
    Ok((ni, mac))
}

/// The Ethernet address of interface `iface`.
pub fn interface_mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    interface(iface).map(|(_, mac)| mac)
}

/// Sends `repeat` announcements ([`announce_frame`]: gratuitous ARPs, neighbour
/// advertisements) for each of `vips` on `iface`, `interval` apart. Opens the packet socket for
/// the burst only: a pnet channel receives every frame while it is open.
pub async fn garp_burst(
    iface: String,
    vips: Vec<IpAddr>,
    repeat: u32,
    interval: Duration,
) -> anyhow::Result<()> {
    let (ni, mac) = interface(&iface).context("gratuitous ARP")?;
    let config = pnet_datalink::Config {
        read_buffer_size: 64,
        ..Default::default()
    };
    let mut tx = match pnet_datalink::channel(&ni, config)
        .with_context(|| format!("packet socket on {iface}"))?
    {
        pnet_datalink::Channel::Ethernet(tx, _rx) => tx,
        _ => bail!("{iface}: not an Ethernet channel"),
    };
    for n in 0..repeat {
        for ip in &vips {
            if let Some(Err(e)) = tx.send_to(&announce_frame(mac, *ip), None) {
                let what = if ip.is_ipv6() {
                    "a neighbour advertisement"
                } else {
                    "gratuitous ARP"
                };
                return Err(e).with_context(|| format!("sending {what} for {ip} on {iface}"));
            }
        }
        if n + 1 < repeat {
            tokio::time::sleep(interval).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_layout() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        // htype 1, ptype IPv4, hlen 6, plen 4, op request
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[28..32], &[198, 18, 0, 100], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC");
        assert_eq!(&f[38..42], &[198, 18, 0, 100], "target IP = sender IP");
    }

    /// The frame keepalived 2.2.7 sent for 2001:2::100 from 02:00:00:00:00:01 on takeover
    /// (captured with tcpdump on 2026-12-07), byte for byte.
    #[test]
    fn na_frame_matches_keepalived() {
        let keepalived =
            "33330000000102000000000186dd6000000000203aff20010002000000000000000000000100\
                          ff0200000000000000000000000000018800129920000000200100020000000000000000\
                          000001000201020000000001";
        let want: Vec<u8> = (0..keepalived.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&keepalived[i..i + 2], 16).unwrap())
            .collect();
        let ip: Ipv6Addr = "2001:2::100".parse().unwrap();
        assert_eq!(na_frame([2, 0, 0, 0, 0, 1], ip), want);
    }
}
