//! Request counters and latency histograms for `/metrics`.
//!
//! Each proxy thread counts into a shard of its own (a mutex nobody else takes except a scrape),
//! so counting costs no shared cache line between threads. Series are keyed by the addresses
//! of the vhost's and upstream's name (`Arc<str>`) with the names kept in the entry: the entry
//! keeps the name alive, so an address cannot be reused by another name while it is counted.
//! A scrape adds the shards up by name, so two vhosts with the same first name (the https site
//! and its redirect site) are one series.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::worker::{mine, per_thread, Padded, Worker};

/// Upper bounds of the latency buckets, in seconds (`+Inf` follows).
pub const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

struct Requests {
    vhost: Arc<str>,
    upstream: Option<Arc<str>>,
    count: u64,
}

#[derive(Default)]
struct Shard {
    requests: HashMap<(usize, u16, usize), Requests, rustc_hash::FxBuildHasher>,
    latency: HashMap<usize, (Arc<str>, Histogram), rustc_hash::FxBuildHasher>,
}

fn addr(s: &Arc<str>) -> usize {
    Arc::as_ptr(s) as *const u8 as usize
}

/// The proxy's counters, one shard per thread.
pub struct Metrics {
    shards: Box<[Padded<Mutex<Shard>>]>,
}

/// The counters added up, by name.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// (vhost, status, upstream or "") → requests.
    pub requests: BTreeMap<(String, u16, String), u64>,
    /// vhost → latency from the request head to the end of the response.
    pub latency: BTreeMap<String, Histogram>,
}

impl Metrics {
    pub fn new(threads: usize) -> Metrics {
        Metrics {
            shards: per_thread(threads),
        }
    }

    /// Counts one finished request on the shard of `w`, the thread that served it.
    pub fn record(
        &self,
        w: Worker,
        vhost: &Arc<str>,
        status: u16,
        upstream: Option<&Arc<str>>,
        elapsed: Duration,
    ) {
        let shard = mine(&self.shards, w);
        let Ok(mut s) = shard.lock() else { return };
        let key = (addr(vhost), status, upstream.map_or(0, addr));
        s.requests
            .entry(key)
            .or_insert_with(|| Requests {
                vhost: vhost.clone(),
                upstream: upstream.cloned(),
                count: 0,
            })
            .count += 1;
        s.latency
            .entry(addr(vhost))
            .or_insert_with(|| (vhost.clone(), Histogram::default()))
            .1
            .observe(elapsed.as_secs_f64());
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::default();
        for shard in &self.shards {
            let Ok(s) = shard.lock() else { continue };
            for ((_, status, _), r) in &s.requests {
                let key = (
                    r.vhost.to_string(),
                    *status,
                    r.upstream.as_deref().unwrap_or("").to_string(),
                );
                *out.requests.entry(key).or_default() += r.count;
            }
            for (name, h) in s.latency.values() {
                out.latency.entry(name.to_string()).or_default().add(h);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_names_from_different_sites_are_one_series() {
        let m = Metrics::new(2);
        let a: Arc<str> = Arc::from("app.example.com");
        let b: Arc<str> = Arc::from("app.example.com");
        let up: Arc<str> = Arc::from("api");
        m.record(Worker(0), &a, 200, Some(&up), Duration::from_micros(300));
        m.record(Worker(1), &b, 200, Some(&up), Duration::from_millis(3));
        m.record(Worker(0), &b, 301, None, Duration::from_secs(9));
        let s = m.snapshot();
        assert_eq!(
            s.requests[&("app.example.com".into(), 200, "api".into())],
            2
        );
        assert_eq!(
            s.requests[&("app.example.com".into(), 301, String::new())],
            1
        );
        let h = &s.latency["app.example.com"];
        assert_eq!(h.count(), 3);
        assert_eq!(h.counts[0], 1, "0.3 ms is in the 0.5 ms bucket");
        assert_eq!(h.counts[3], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(h.counts[BUCKETS.len()], 1, "9 s is in +Inf");
        assert!((h.sum - 9.0033).abs() < 1e-9);
    }
}
