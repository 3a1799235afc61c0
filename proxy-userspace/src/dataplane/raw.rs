//! The guard without XDP (`xdp = "off"`, or `auto` where no XDP mode attaches): the same
//! [`classify`] and [`record_advert`] run in userspace on AF_PACKET sockets that classic BPF
//! filters limit to IPv4 protocol 112 and to IPv6 packets that may carry it (protocol 112
//! right after the header, or an extension header the guard walks). "Drop" here means hapd
//! ignores the packet; the kernel has no other use for protocol 112.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use proxy_common::{
    guard::{classify, record_advert, record_seq, source, source_mac, Mark, Tables, Verdict},
    maps::{
        from_words, AdvertRecord, AuthConfig, AuthCounters, GuardCounters, GuardEvent, InstanceKey,
        Reason, ReplayKey, VridEntry, MAX_REPLAY,
    },
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use super::{monotonic_ns, realtime_secs, InstanceSpec};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// What the raw path shares between its sockets and the daemon: the same tables, records and
/// counters the XDP guard keeps in maps.
#[derive(Default)]
pub struct RawState {
    tables: Mutex<RawTables>,
    adverts: Mutex<HashMap<InstanceKey, AdvertRecord>>,
    counters: Mutex<GuardCounters>,
    auth_counters: Mutex<HashMap<InstanceKey, AuthCounters>>,
}

/// `vrrp_vrids`, `vrrp_auth` and `vrrp_replay` in memory: the configured VRIDs only (absent =
/// no slot in use).
#[derive(Default)]
struct RawTables {
    vrids: std::collections::BTreeMap<u8, VridEntry>,
    auth: HashMap<InstanceKey, AuthConfig>,
    replay: HashMap<ReplayKey, u64>,
}

impl Tables for RawTables {
    fn vrid(&self, vrid: u8) -> Option<&VridEntry> {
        self.vrids.get(&vrid)
    }

    fn auth(&self, key: &InstanceKey) -> Option<&AuthConfig> {
        self.auth.get(key)
    }

    fn replay_mark(&self, key: &ReplayKey) -> Option<u64> {
        self.replay.get(key).copied()
    }

    fn now_secs(&self) -> u32 {
        realtime_secs()
    }
}

impl RawTables {
    /// Records a sender's mark, bounded like the XDP guard's LRU table (only verified senders
    /// get here, so the bound is never reached in practice).
    fn record_mark(&mut self, sender: ReplayKey, m: Mark) {
        if self.replay.len() >= MAX_REPLAY as usize && !self.replay.contains_key(&sender) {
            if let Some(k) = self.replay.keys().next().copied() {
                self.replay.remove(&k);
            }
        }
        let mark = self.replay.entry(sender).or_insert(m.seq);
        *mark = m.apply(*mark);
    }
}

impl RawState {
    /// Makes the tables hold exactly `specs` (records of kept instances survive, and so do
    /// the replay marks and counters of instances that keep `auth_hmac`).
    pub fn configure(&self, specs: &[&InstanceSpec]) -> anyhow::Result<()> {
        let vrids = super::vrid_entries(specs)?;
        let keys: Vec<InstanceKey> = specs.iter().map(|s| s.key()).collect();
        let auth: HashMap<InstanceKey, AuthConfig> = specs
            .iter()
            .filter_map(|s| s.auth.as_ref().map(|a| (s.key(), a.guard)))
            .collect();
        {
            let mut t = lock(&self.tables);
            t.vrids = vrids;
            t.replay.retain(|k, _| auth.contains_key(&k.instance()));
            let mut counters = lock(&self.auth_counters);
            counters.retain(|k, _| auth.contains_key(k));
            for k in auth.keys() {
                counters.entry(*k).or_default();
            }
            t.auth = auth;
        }
        let mut adverts = lock(&self.adverts);
        adverts.retain(|k, _| keys.contains(k));
        for k in keys {
            adverts.entry(k).or_default();
        }
        Ok(())
    }

    pub fn advert(&self, key: &InstanceKey) -> Option<AdvertRecord> {
        lock(&self.adverts).get(key).copied()
    }

    pub fn counters(&self) -> GuardCounters {
        *lock(&self.counters)
    }

    pub fn auth_counters(&self, key: &InstanceKey) -> Option<AuthCounters> {
        lock(&self.auth_counters).get(key).copied()
    }

    /// Judges one frame received on `ifindex` at `now_ns`, exactly as the XDP guard does.
    /// Returns the event to deliver, if any.
    pub fn handle(&self, frame: &[u8], ifindex: u32, now_ns: u64) -> Option<GuardEvent> {
        let verdict = {
            let mut tables = lock(&self.tables);
            let v = classify(frame, ifindex, &*tables);
            if let Verdict::Advert(a) = &v {
                if let Some((sender, seq)) = record_seq(a, &source(frame, a)) {
                    tables.record_mark(sender, seq);
                }
            }
            v
        };
        match verdict {
            Verdict::Pass => None,
            Verdict::Drop(reason) => {
                *lock(&self.counters).slot(reason) += 1;
                None
            }
            Verdict::Unauthentic(key, reason) => {
                *lock(&self.counters).slot(reason) += 1;
                if let Some(n) = lock(&self.auth_counters)
                    .get_mut(&key)
                    .and_then(|c| c.slot(reason))
                {
                    *n += 1;
                }
                None
            }
            Verdict::Advert(a) => {
                *lock(&self.counters).slot(Reason::Accepted) += 1;
                if let Some(c) = lock(&self.auth_counters).get_mut(&a.key) {
                    if a.seq.is_some() {
                        c.signed += 1;
                    } else {
                        c.unsigned += 1;
                    }
                }
                let mut adverts = lock(&self.adverts);
                let rec = adverts.get_mut(&a.key)?;
                let prev_priority = rec.priority;
                let src = source(frame, &a);
                let flags = record_advert(rec, &a, &src, now_ns);
                if flags != 0 {
                    rec.mac = source_mac(frame);
                }
                (flags != 0).then_some(GuardEvent {
                    time_ns: now_ns,
                    ifindex,
                    vrid: a.key.vrid,
                    priority: a.priority,
                    version: a.version,
                    flags,
                    src: from_words(&src),
                    interval_cs: a.interval_cs,
                    addr_count: a.addr_count,
                    prev_priority,
                    family: a.key.family,
                    _pad: [0; 3],
                })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters (plain counters and records), so keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Attaches the classic BPF program `filter` to socket `fd` (SO_ATTACH_FILTER).
pub fn attach_filter(fd: BorrowedFd<'_>, filter: &mut [libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prog points at `filter`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the AF_PACKET sockets of `ifindex`: IPv4 protocol 112 ([`open_socket`]) and IPv6
/// that may carry it ([`open_socket6`]).
pub fn open_sockets(ifindex: u32) -> anyhow::Result<Vec<OwnedFd>> {
    Ok(vec![open_socket(ifindex)?, open_socket6(ifindex)?])
}

/// Opens an AF_PACKET socket on `ifindex` that only receives IPv6 frames whose first next
/// header is protocol 112 or an extension header the guard walks past
/// ([`proxy_common::guard::ipv6_next_might_be_vrrp`]): the guard judges the rest.
pub fn open_socket6(ifindex: u32) -> anyhow::Result<OwnedFd> {
    let fd = packet_socket(ETH_P_IPV6)?;
    let ldb = |k| libc::sock_filter {
        code: 0x30,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt| libc::sock_filter {
        code: 0x15,
        jt,
        jf: 0,
        k,
    };
    let ret = |k| libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k,
    };
    // ldb [20] (the IPv6 next header); one jeq per value to accept; reject; accept.
    let accept = [112u32, 0, 43, 44, 51, 60];
    let n = accept.len() as u8;
    let mut filter = vec![ldb(14 + 6)];
    for (i, k) in accept.iter().enumerate() {
        // Jump over the remaining tests and the reject to the accept.
        filter.push(jeq(*k, n - i as u8));
    }
    filter.push(ret(0));
    filter.push(ret(0x0004_0000));
    debug_assert!(accept
        .iter()
        .all(|k| proxy_common::guard::ipv6_next_might_be_vrrp(*k as u8)));
    attach_filter(fd.as_fd(), &mut filter).context("attaching the IPv6 protocol-112 filter")?;
    bind_packet(&fd, ifindex, ETH_P_IPV6)?;
    Ok(fd)
}

/// Opens an AF_PACKET socket on `ifindex` that only receives IPv4 protocol-112 frames.
pub fn open_socket(ifindex: u32) -> anyhow::Result<OwnedFd> {
    let fd = packet_socket(ETH_P_IP)?;
    // ldb [23] (IPv4 protocol); jeq #112, accept, reject.
    let mut filter = [
        libc::sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 14 + 9,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 112,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0004_0000,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    attach_filter(fd.as_fd(), &mut filter).context("attaching the protocol-112 filter")?;
    bind_packet(&fd, ifindex, ETH_P_IP)?;
    Ok(fd)
}

/// A non-blocking AF_PACKET socket for frames of `ethertype`, not bound yet (a filter goes
/// on before [`bind_packet`]: until then it would see every interface's frames).
pub fn packet_socket(ethertype: u16) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds a [`packet_socket`] to interface `ifindex` for frames of `ethertype`.
pub fn bind_packet(fd: &OwnedFd, ifindex: u32, ethertype: u16) -> anyhow::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zeroed is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    Ok(())
}

/// Receives on `fd` (from [`open_socket`]) until `tx` closes, judging every incoming frame.
pub fn spawn_receiver(
    iface: String,
    ifindex: u32,
    fd: OwnedFd,
    state: Arc<RawState>,
    tx: mpsc::Sender<GuardEvent>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // SAFETY: OwnedFd keeps the descriptor open and the same for the AsyncFd's lifetime.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .with_context(|| format!("polling the raw socket on {iface}"))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let mut ready = match fd.readable().await {
                Ok(r) => r,
                Err(e) => {
                    warn!("{iface}: raw guard socket: {e}");
                    return;
                }
            };
            loop {
                // SAFETY: sockaddr_ll is plain data; buf and sll outlive the call.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        ready.clear_ready();
                        break;
                    }
                    warn!("{iface}: receiving on the raw guard socket: {e}");
                    return;
                }
                if sll.sll_pkttype == libc::PACKET_OUTGOING {
                    continue; // our own adverts
                }
                // MSG_TRUNC returns the real length: a frame larger than the buffer is judged on
                // what fits, which the length checks then treat as truncated.
                let n = (n as usize).min(buf.len());
                if let Some(ev) = state.handle(&buf[..n], ifindex, monotonic_ns()) {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        }
    }))
}
