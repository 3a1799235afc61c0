//! Interface link state from netlink: the current state, and a stream of changes.
use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{link::LinkFlags, RouteNetlinkMessage},
    Handle, MulticastGroup,
};
use tokio::sync::mpsc;

/// Whether a link with these flags can carry traffic: administratively up with a carrier.
fn is_up(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
}

/// The link state of `ifindex` now.
pub async fn state(nl: &Handle, ifindex: u32) -> anyhow::Result<bool> {
    let msg = nl
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_next()
        .await
        .context("reading the link state (netlink)")?
        .with_context(|| format!("no link with index {ifindex}"))?;
    Ok(is_up(msg.header.flags))
}

/// A change of a link's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkChange {
    pub ifindex: u32,
    pub up: bool,
}

/// Sends a [`LinkChange`] for every netlink link message (new, changed or deleted link) until
/// `tx` closes. Duplicates are fine: the engine ignores a state it already has.
pub fn watch(tx: mpsc::Sender<LinkChange>) -> anyhow::Result<()> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("subscribing to link changes")?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let change = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => LinkChange {
                    ifindex: l.header.index,
                    up: is_up(l.header.flags),
                },
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => LinkChange {
                    ifindex: l.header.index,
                    up: false,
                },
                _ => continue,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
