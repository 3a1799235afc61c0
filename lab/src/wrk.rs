//! Reading wrk's summary: how many requests it made and how many failed, split by where.
//!
//! wrk counts a request whose connection was reset, timed out or answered non-2xx/3xx; it also
//! counts connection attempts that failed (`connect`) and connections refused before they took
//! a request (`write`: the connect was non-blocking and the refusal shows at the first write).

/// wrk's counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wrk {
    pub requests: u64,
    /// Connections that could not be made or took no request (connect and write errors).
    pub refused: u64,
    /// Requests that failed on open connections: read errors, timeouts, non-2xx/3xx answers.
    pub failed: u64,
}

/// Parses wrk's output (`Socket errors:` is absent when there were none).
pub fn parse(text: &str) -> Wrk {
    let mut w = Wrk::default();
    for l in text.lines().map(str::trim) {
        if let Some((n, _)) = l.split_once(" requests in ") {
            w.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut it = part.split_whitespace();
                let (Some(kind), Some(n)) = (it.next(), it.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                if kind == "connect" || kind == "write" {
                    w.refused += n;
                } else {
                    w.failed += n;
                }
            }
        } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.failed += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_is_read() {
        let w = super::parse(
            "Running 4s test @ http://x\n  1 threads and 32 connections\n  123456 requests in 4.00s, 1.2MB read\n  Socket errors: connect 7, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 5\nRequests/sec: 30864.00\n",
        );
        assert_eq!((w.requests, w.refused, w.failed), (123456, 8, 10));
        assert_eq!(super::parse("  10 requests in 1.00s, 1kB read\n").failed, 0);
    }
}
