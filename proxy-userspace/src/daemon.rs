//! `hapd run`: the daemon's main loop.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::Context as _;
use proxy_common::maps::{
    GuardEvent, InstanceKey, EV_AFTER_SILENCE, EV_INTERVAL_CHANGE, EV_NEW_SOURCE,
    EV_PRIORITY_CHANGE, EV_PRIORITY_ZERO,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::{
    config::Config,
    dataplane::{Dataplane, InstanceSpec},
};

/// Runs until SIGTERM or SIGINT, then detaches the guard and removes the pins.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let specs = config
        .vrrp
        .iter()
        .map(|v| InstanceSpec::from_config(v.get_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut dp = Dataplane::start(&specs, Some(&config.node.pin_dir))?;
    let names: HashMap<InstanceKey, String> =
        specs.iter().map(|s| (s.key(), s.name.clone())).collect();
    info!(
        node = %config.node.name,
        instances = config.vrrp.len(),
        "hapd ready"
    );
    loop {
        tokio::select! {
            ev = dp.next_event() => match ev {
                Some(ev) => {
                    let key = InstanceKey::new(ev.ifindex, ev.vrid);
                    let name = names.get(&key).map(String::as_str).unwrap_or("?");
                    info!("{}", describe(name, &ev));
                }
                None => break,
            },
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
        }
    }
    let counters = dp.counters().ok();
    dp.shutdown();
    if let Some(c) = counters {
        info!("guard counters at stop: {c:?}");
    }
    Ok(())
}

/// One line for the log: which instance, who sent what, and why it matters.
pub fn describe(instance: &str, ev: &GuardEvent) -> String {
    let mut why = Vec::new();
    for (bit, text) in [
        (EV_AFTER_SILENCE, "first advert after silence"),
        (EV_NEW_SOURCE, "new master source"),
        (EV_PRIORITY_CHANGE, "priority changed"),
        (EV_PRIORITY_ZERO, "master stepping down (priority 0)"),
        (EV_INTERVAL_CHANGE, "interval changed"),
    ] {
        if ev.flags & bit != 0 {
            why.push(text);
        }
    }
    format!(
        "instance {instance} vrid {}: VRRPv{} advert from {} priority {} (was {}) interval {}ms: {}",
        ev.vrid,
        ev.version,
        Ipv4Addr::from(ev.src),
        ev.priority,
        ev.prev_priority,
        u32::from(ev.interval_cs) * 10,
        why.join(", ")
    )
}
