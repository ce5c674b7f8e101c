//! Small network value types shared by both daemons.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address, rendered as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// The OUI nubo allocates port MACs from (the same as OpenStack's default,
/// so operators recognise instance MACs at a glance).
pub const PORT_MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];

impl MacAddr {
    /// A port MAC with nubo's prefix and the given 24 low bits.
    pub fn port_mac(low: [u8; 3]) -> Self {
        let p = PORT_MAC_PREFIX;
        Self([p[0], p[1], p[2], low[0], low[1], low[2]])
    }

    /// The raw bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// The string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets like fa:16:3e:01:02:03)")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.chars().take(32).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips() {
        let m: MacAddr = "fa:16:3e:0a:0B:ff".parse().unwrap();
        assert_eq!(m.to_string(), "fa:16:3e:0a:0b:ff");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"fa:16:3e:0a:0b:ff\"");
    }

    #[test]
    fn bad_macs_are_rejected() {
        for bad in [
            "",
            "fa:16:3e",
            "fa:16:3e:0a:0b:ff:00",
            "zz:16:3e:0a:0b:ff",
            "fa:16:3e:0a:0b:f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
