//! Owning the virtual addresses: netlink to add and remove them, gratuitous ARP to announce
//! them.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context as _};
use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use pnet_packet::{
    arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket},
    ethernet::{EtherTypes, MutableEthernetPacket},
    MutablePacket as _,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{AddressMessageBuilder, Handle};

/// The IPv4 addresses on interface `ifindex`, with their prefix lengths.
pub async fn addresses(nl: &Handle, ifindex: u32) -> anyhow::Result<Vec<Ipv4Net>> {
    let mut out = Vec::new();
    let mut s = nl.address().get().set_link_index_filter(ifindex).execute();
    while let Some(msg) = s.try_next().await.context("listing addresses (netlink)")? {
        if let Some(a) = v4(&msg) {
            out.push(a);
        }
    }
    Ok(out)
}

fn v4(msg: &AddressMessage) -> Option<Ipv4Net> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(std::net::IpAddr::V4(ip)) => {
            Ipv4Net::new(*ip, msg.header.prefix_len).ok()
        }
        _ => None,
    })
}

/// The interface's primary address: its first IPv4 address that is not one of `vips`. It is
/// the source of our adverts and the tie-breaker of the election.
pub async fn primary(
    nl: &Handle,
    ifindex: u32,
    iface: &str,
    vips: &[Ipv4Net],
) -> anyhow::Result<Ipv4Addr> {
    addresses(nl, ifindex)
        .await?
        .into_iter()
        .map(|n| n.addr())
        .find(|a| !vips.iter().any(|v| v.addr() == *a))
        .with_context(|| {
            format!("{iface} has no IPv4 address of its own to send VRRP adverts from")
        })
}

/// Adds `vips` to `ifindex`; an address already there is fine.
pub async fn add(nl: &Handle, ifindex: u32, vips: &[Ipv4Net]) -> anyhow::Result<()> {
    for v in vips {
        match nl
            .address()
            .add(ifindex, v.addr().into(), v.prefix_len())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(e).with_context(|| format!("adding {v}")),
        }
    }
    Ok(())
}

/// Removes those of `vips` that are on `ifindex`; returns how many were.
pub async fn remove(nl: &Handle, ifindex: u32, vips: &[Ipv4Net]) -> anyhow::Result<usize> {
    let present = addresses(nl, ifindex).await?;
    let mut removed = 0;
    for v in vips
        .iter()
        .filter(|v| present.iter().any(|p| p.addr() == v.addr()))
    {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(ifindex)
            .address(v.addr(), v.prefix_len())
            .build();
        match nl.address().del(msg).execute().await {
            Ok(()) => removed += 1,
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(e) => return Err(e).with_context(|| format!("removing {v}")),
        }
    }
    Ok(removed)
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

/// Sends `repeat` gratuitous ARPs for each of `vips` on `iface`, `interval` apart. Opens the
/// packet socket for the burst only: a pnet channel receives every frame while it is open.
pub async fn garp_burst(
    iface: String,
    vips: Vec<Ipv4Addr>,
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
            if let Some(Err(e)) = tx.send_to(&garp_frame(mac, *ip), None) {
                return Err(e)
                    .with_context(|| format!("sending gratuitous ARP for {ip} on {iface}"));
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
}
