//! Ethernet MAC addresses.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address, printed (and parsed) as
/// `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// The OUI nubo allocates port MACs from (the same as OpenStack's default,
/// so operators recognise instance MACs at a glance).
pub const PORT_MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3e];

/// The prefix of router-leg MACs ([`MacAddr::router_mac`]): locally
/// administered, unicast, next to [`PORT_MAC_PREFIX`].
pub const ROUTER_MAC_PREFIX: [u8; 3] = [0xfa, 0x16, 0x3f];

impl MacAddr {
    /// The all-zeros address, used as the "flood" (head-end replication)
    /// entry in a VXLAN device's forwarding database.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// A port MAC with nubo's prefix ([`PORT_MAC_PREFIX`]) and the given 24
    /// low bits.
    pub fn port_mac(low: [u8; 3]) -> Self {
        let p = PORT_MAC_PREFIX;
        Self([p[0], p[1], p[2], low[0], low[1], low[2]])
    }

    /// The MAC of a router leg, the same on every node: nubo's router OUI
    /// ([`ROUTER_MAC_PREFIX`]) and 24 bits of [`crate::stable_hash`] of
    /// `parts` (e.g. the router and network ids). Never a port MAC (those
    /// use [`PORT_MAC_PREFIX`]).
    pub fn router_mac(parts: &[&str]) -> Self {
        let h = crate::stable_hash(parts).to_be_bytes();
        let p = ROUTER_MAC_PREFIX;
        Self([p[0], p[1], p[2], h[0], h[1], h[2]])
    }

    /// Builds a MAC from a link-layer address as the kernel reports it;
    /// `None` unless it is exactly 6 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// The raw bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this is the all-zeros address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether this is a group (multicast or broadcast) address: the
    /// lowest bit of the first octet set. A NIC's own address never is.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The IPv6 link-local address SLAAC derives from this MAC (EUI-64).
    pub fn ipv6_link_local(&self) -> Ipv6Addr {
        let b = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            b[0] ^ 0x02,
            b[1],
            b[2],
            0xff,
            0xfe,
            b[3],
            b[4],
            b[5],
        ])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// A string that is not a MAC address of the form `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacParseError {
    /// The rejected input, cut to its first 32 characters (it may come
    /// from a hostile or hand-edited source and ends up in logs).
    input: String,
}

impl MacParseError {
    /// The rejected input (its first 32 characters).
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a MAC address (expected six hex octets separated by ':', like fa:16:3e:01:02:03)",
            self.input
        )
    }
}

impl std::error::Error for MacParseError {}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts exactly six two-digit hex octets separated by `:` (either
    /// case); nothing else (no `-` separators, no signs, no short octets).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.chars().take(32).collect(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            // from_str_radix alone would accept a leading '+'.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let mac: MacAddr = "FA:16:3e:0a:0B:ff".parse().unwrap();
        assert_eq!(mac.0, [0xfa, 0x16, 0x3e, 0x0a, 0x0b, 0xff]);
        assert_eq!(mac.to_string(), "fa:16:3e:0a:0b:ff");
        let mac: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!(format!("{mac:?}"), "MacAddr(02:ab:cd:00:01:ff)");
        let mac: MacAddr = "02:AB:00:0c:ff:01".parse().unwrap();
        assert_eq!(mac.to_string(), "02:ab:00:0c:ff:01");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "fa:16:3e",
            "fa:16:3e:0a:0b",
            "fa:16:3e:0a:0b:ff:00",
            "fa:16:3e:0a:0b:f",
            "fa:16:3e:0a:0b:fff",
            "2:ab:cd:00:01:ff",
            "2:ab:00:0c:ff:011",
            "02:ab",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "02:ab:00:0c:ff:01:02",
            "zz:ab:cd:00:01:ff",
            "zz:ab:00:0c:ff:01",
            "fa-16-3e-0a-0b-ff",
            "zz:16:3e:0a:0b:ff",
            "+a:16:3e:0a:0b:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_error_names_the_input_cut_short() {
        let long = "x".repeat(100);
        let e = long.parse::<MacAddr>().unwrap_err();
        assert_eq!(e.input().len(), 32);
        assert!(e.to_string().contains("is not a MAC address"), "{e}");
        let e = "nope".parse::<MacAddr>().unwrap_err();
        assert_eq!(e.input(), "nope");
    }

    #[test]
    fn from_slice_needs_six_bytes() {
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3, 4, 5]), None);
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
        assert_eq!(MacAddr::from_slice(&[0; 20]), None);
    }

    #[test]
    fn zero() {
        assert!(MacAddr::ZERO.is_zero());
        assert!(MacAddr::default().is_zero());
        assert!(!MacAddr([0, 0, 0, 0, 0, 1]).is_zero());
    }

    #[test]
    fn port_macs_have_the_nubo_prefix() {
        let m = MacAddr::port_mac([1, 2, 3]);
        assert_eq!(m.octets(), [0xfa, 0x16, 0x3e, 1, 2, 3]);
        assert_eq!(m.to_string(), "fa:16:3e:01:02:03");
    }

    #[test]
    fn link_local_is_eui64() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.ipv6_link_local().to_string(), "fe80::5054:ff:fe12:3456");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_string_form() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:00:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        let m: MacAddr = "fa:16:3e:0a:0B:ff".parse().unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"fa:16:3e:0a:0b:ff\"");
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
        assert!(serde_json::from_str::<MacAddr>("42").is_err());
    }
}
