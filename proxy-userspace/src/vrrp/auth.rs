//! Signing adverts with `auth_hmac` (keepalived 2.4 compatible): the trailer, the time-based
//! sequence number and the MAC, computed by the same code the guard verifies with.
use std::net::IpAddr;

use proxy_common::{
    auth::{self, Trailer, TRAILER_LEN},
    guard::addr_of,
    maps::{to_words, AuthKey, AUTH_TIME},
};

use super::packet::family_of;

use crate::dataplane::AuthSpec;

/// The signing half of one instance's `auth_hmac`.
#[derive(Debug)]
pub struct Signer {
    key: AuthKey,
    time_mode: bool,
    window_s: u32,
    /// The last sequence number sent.
    last_seq: u64,
}

impl Signer {
    /// The signer of `auth`, or `None` when it signs nothing (receive-only mode).
    pub fn new(auth: &AuthSpec) -> Option<Signer> {
        let id = auth.sign_with?;
        let key = *auth.guard.key(id)?;
        Some(Signer {
            key,
            time_mode: auth.guard.flags & AUTH_TIME != 0,
            window_s: auth.guard.window_s,
            last_seq: 0,
        })
    }

    /// Takes the settings of `auth` (a reload), keeping the sequence: receivers remember it.
    pub fn replace(old: Option<Signer>, auth: Option<&AuthSpec>) -> Option<Signer> {
        let mut new = Signer::new(auth?)?;
        if let Some(old) = old {
            new.last_seq = old.last_seq;
        }
        Some(new)
    }

    /// The last sequence number sent (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Continues the sequence of another signer of the same instance (the process this one
    /// succeeds): the next number sent is above `seq`, as the receivers' replay marks require.
    pub fn continue_after(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// The key ID it signs with.
    pub fn key_id(&self) -> u8 {
        self.key.id
    }

    /// Appends a signed trailer to the VRRP message `msg`, sent from `src`; `now` is the wall
    /// clock (seconds and nanoseconds since the Unix epoch). The MAC does not cover the
    /// checksum, so one signed message serves every destination.
    pub fn sign(&mut self, msg: &mut Vec<u8>, src: IpAddr, now: (u64, u32)) {
        let mlen = msg.len();
        let (version, vrid) = (msg[0] >> 4, msg[1]);
        self.last_seq = auth::next_seq(
            self.last_seq,
            auth::clock_seq(now.0, now.1),
            self.time_mode,
            self.window_s,
        );
        msg.resize(mlen + TRAILER_LEN, 0);
        Trailer::new_unchecked(&mut msg[mlen..]).set_header(self.key.id, self.last_seq);
        let pseudo = auth::pseudo(family_of(src), version, vrid, &to_words(&addr_of(src)));
        // The buffer holds the whole message and trailer: the MAC is always computed.
        if let Some(mac) = auth::advert_mac_simple(msg.as_slice(), 0, mlen, &pseudo, &self.key) {
            Trailer::new_unchecked(&mut msg[mlen..]).set_mac(auth::mac_bytes(&mac));
        }
    }
}

/// The wall clock as `(seconds, nanoseconds)` since the Unix epoch.
pub fn wall_clock() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::config::auth::{AuthMode, ResolvedAuth};
    use crate::vrrp::{Advert, Auth, Centisecs, ChecksumMode};

    fn spec(mode: AuthMode) -> AuthSpec {
        AuthSpec::new(&ResolvedAuth {
            keys: vec![(1, (0u8..32).collect()), (2, vec![7; 40])],
            active_key: 1,
            time_mode: true,
            window_s: 5,
            mode,
        })
    }

    /// The draft's IPv4 image (keepalived's test vector) comes out of our signer byte for byte
    /// when given its sequence number.
    #[test]
    fn signing_reproduces_the_drafts_ipv4_vector() {
        let advert = Advert {
            version: 3,
            vrid: 51,
            priority: 200,
            interval: Centisecs(100),
            addrs: vec![Ipv4Addr::new(192, 0, 2, 100).into()],
            auth: Auth::None,
        };
        let src: IpAddr = Ipv4Addr::new(198, 51, 100, 10).into();
        let mcast = IpAddr::V4(super::super::packet::MCAST);
        let mut msg = advert.emit(ChecksumMode::MessageOnly, src, mcast);
        let mut s = Signer::new(&spec(AuthMode::Enforce)).unwrap();
        // seq 0x6800000080000000: second 0x68000000, half a second.
        s.sign(&mut msg, src, (0x6800_0000, 500_000_000));
        let want = "3133c80100644402c0000264010100006800000080000000\
                    1b84bc4e8e43892dc6d98448f8ee2265";
        let got: String = msg.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
        // The next advert in the same instant counts up.
        let mut msg2 = advert.emit(ChecksumMode::MessageOnly, src, mcast);
        s.sign(&mut msg2, src, (0x6800_0000, 500_000_000));
        assert_eq!(
            Trailer::new_checked(&msg2[12..]).unwrap().seq(),
            0x6800_0000_8000_0001
        );
    }

    /// The draft's IPv6 image (keepalived 2.4.3's test/auth_hmac_test.c): source fe80::10,
    /// destination fe80::20, VIP fe80::100, and the checksum the kernel fills for keepalived
    /// (`IPV6_CHECKSUM`): over the whole payload, the trailer too. Ours, byte for byte.
    #[test]
    fn signing_reproduces_the_drafts_ipv6_vector() {
        let advert = Advert {
            version: 3,
            vrid: 51,
            priority: 200,
            interval: Centisecs(100),
            addrs: vec!["fe80::100".parse().unwrap()],
            auth: Auth::None,
        };
        let src: IpAddr = "fe80::10".parse().unwrap();
        let dst: IpAddr = "fe80::20".parse().unwrap();
        let mut msg = advert.emit(ChecksumMode::PseudoHeader, src, dst);
        let mut s = Signer::new(&spec(AuthMode::Enforce)).unwrap();
        s.sign(&mut msg, src, (0x6800_0000, 500_000_000));
        crate::vrrp::io::fill_whole_checksum(&mut msg, src, dst);
        let want = "3133c8010064a2e9fe800000000000000000000000000100\
                    010100006800000080000000c8c56146ebfd66ee10ec4d8186461b78";
        let got: String = msg.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    /// keepalived 2.4.3's captured adverts come out of our signer byte for byte when it is
    /// given their sequence numbers: the wire formats agree in both versions.
    #[test]
    fn signing_reproduces_keepalived_2_4_3s_captured_adverts() {
        for (file, version) in [
            ("keepalived-2.4.3-hmac-v3.hex", 3u8),
            ("keepalived-2.4.3-hmac-v2.hex", 2),
        ] {
            let text = std::fs::read_to_string(format!(
                "{}/tests/fixtures/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            for line in text.lines() {
                let frame: Vec<u8> = (0..line.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                    .collect();
                // Ethernet (14) + IPv4 (20), then the message and the trailer.
                let src: IpAddr = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]).into();
                let msg = &frame[34..];
                let mlen = msg.len() - TRAILER_LEN;
                assert_eq!(msg[0] >> 4, version);
                let t = Trailer::new_checked(&msg[mlen..]).unwrap();
                assert_eq!(
                    t.seq() & 0xffff,
                    0,
                    "keepalived's first advert of an instant"
                );
                let secs = auth::seq_secs(t.seq()) as u64;
                let frac = (t.seq() >> 16) & 0xffff;
                // The nanoseconds whose 1/65536 fraction is the captured one.
                let nanos = (frac * 1_000_000_000).div_ceil(65536) as u32;
                let mut ours = msg[..mlen].to_vec();
                let mut s = Signer::new(&spec(AuthMode::Enforce)).unwrap();
                s.sign(&mut ours, src, (secs, nanos));
                assert_eq!(ours, msg, "{file}: {line}");
            }
        }
    }

    #[test]
    fn receive_only_signs_nothing_and_a_reload_keeps_the_sequence() {
        assert!(Signer::new(&spec(AuthMode::ReceiveOnly)).is_none());
        assert!(Signer::new(&spec(AuthMode::Permissive)).is_some());
        let mut s = Signer::new(&spec(AuthMode::Enforce)).unwrap();
        let mut msg = vec![0x31, 1, 100, 1, 0, 100, 0, 0, 198, 18, 0, 100];
        s.sign(&mut msg, Ipv4Addr::new(198, 18, 0, 1).into(), (1000, 0));
        let mut other = spec(AuthMode::Enforce);
        other.sign_with = Some(2);
        let s = Signer::replace(Some(s), Some(&other)).unwrap();
        assert_eq!((s.key_id(), s.last_seq), (2, 1000u64 << 32));
    }
}
