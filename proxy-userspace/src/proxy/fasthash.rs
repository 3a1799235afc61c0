//! A fast hasher for the proxy's lookup tables on the request path: the vhosts by name and the
//! metrics by vhost, status and upstream. SipHash (the standard library's) defends a table
//! that grows with untrusted keys against collisions crafted to slow it; these tables hold only
//! configured names and the proxy's own addresses, and a request never adds to them, so a
//! crafted host name can at worst be compared with the few names of its group.
use std::hash::{BuildHasher, Hasher};

#[derive(Default, Clone, Copy, Debug)]
pub struct Fast;

impl BuildHasher for Fast {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// FxHash's mixing step (rotate, xor, multiply), a word at a time.
pub struct FastHasher(u64);

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_table_finds_what_it_holds() {
        let mut m: HashMap<String, usize, Fast> = HashMap::default();
        for (i, n) in ["app.example.com", "a", "api.example.net", "x.y"]
            .iter()
            .enumerate()
        {
            m.insert(n.to_string(), i);
        }
        assert_eq!(m.get("api.example.net"), Some(&2));
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.get("app.example.co"), None);
        assert_ne!(Fast.hash_one("ab"), Fast.hash_one("ba"));
    }
}
