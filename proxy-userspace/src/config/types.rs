//! Bounded config values, checked when the file is parsed so that the error points at the key.
use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer};

/// A duration written with its unit: `"10ms"`, `"2s"`, `"1m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write a number with a unit, e.g. \"10ms\" or \"2s\""
            ))
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

macro_rules! bounded_u8 {
    ($(#[$m:meta])* $name:ident, $what:literal, $lo:literal ..= $hi:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u8);

        impl $name {
            pub const fn get(self) -> u8 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(v: i64) -> Result<Self, String> {
                if ($lo..=$hi).contains(&v) {
                    Ok(Self(v as u8))
                } else {
                    Err(format!(concat!($what, " must be ", $lo, "..=", $hi, ", got {}"), v))
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::try_from(i64::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

bounded_u8!(
    /// Virtual router id (RFC 5798 section 5.2.3).
    Vrid, "vrid", 1 ..= 255
);
bounded_u8!(
    /// Router priority; 255 is the address owner (RFC 5798 section 5.2.4).
    Priority, "priority", 1 ..= 255
);

/// VRRP protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VrrpVersion {
    /// RFC 3768.
    V2,
    /// RFC 5798 / RFC 9568.
    #[default]
    V3,
}

impl VrrpVersion {
    pub const fn number(self) -> u8 {
        match self {
            VrrpVersion::V2 => 2,
            VrrpVersion::V3 => 3,
        }
    }
}

impl<'de> Deserialize<'de> for VrrpVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match i64::deserialize(d)? {
            2 => Ok(VrrpVersion::V2),
            3 => Ok(VrrpVersion::V3),
            v => Err(serde::de::Error::custom(format!(
                "version must be 2 or 3, got {v}"
            ))),
        }
    }
}

/// How the v3 IPv4 checksum is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum V3Checksum {
    /// Include the IPv4 pseudo-header, as keepalived does by default.
    #[default]
    PseudoHeader,
    /// The VRRP message only (RFC 9568 section 5.2.8 for IPv4).
    MessageOnly,
}

/// Where the VRRP guard runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native XDP, else generic XDP, else the raw-socket path, saying so in the log.
    #[default]
    Auto,
    /// Native (driver) XDP or fail.
    Native,
    /// Generic (skb) XDP or fail.
    Generic,
    /// No XDP: the same decisions in userspace on a raw socket.
    Off,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Off => "off",
        })
    }
}

/// `virtual_ips`: IPv4 or IPv6 addresses with a prefix length, named in the error when one is
/// not (one family per instance is checked with the rest of the instance).
pub fn vips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "virtual_ips: {s:?} is not an address with prefix, e.g. \"10.0.1.100/24\" \
                     or \"2001:db8::100/64\""
                ))
            })
        })
        .collect()
}

/// `prefixes` (`[[anycast]]`): IPv4 prefixes, named in the error when one is not.
pub fn prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::Ipv4Net>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse::<ipnet::Ipv4Net>()
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "prefixes: {s:?} is not an IPv4 prefix, e.g. \"198.18.10.100/32\""
                    ))
                })
                .and_then(|n| {
                    if n.addr() == n.network() {
                        Ok(n)
                    } else {
                        Err(serde::de::Error::custom(format!(
                            "prefixes: {s:?} has host bits set (the prefix is {})",
                            n.trunc()
                        )))
                    }
                })
        })
        .collect()
}

/// `peers` of `[[anycast]]`: IPv4 addresses, named in the error when one is not.
pub fn peers_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<std::net::Ipv4Addr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!("peers: {s:?} is not an IPv4 address"))
            })
        })
        .collect()
}

/// `peers`: IPv4 or IPv6 addresses, named in the error when one is not.
pub fn peers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<std::net::IpAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse()
                .map_err(|_| serde::de::Error::custom(format!("peers: {s:?} is not an IP address")))
        })
        .collect()
}
