//! Who is calling: identity as observed by the kernel, and its resolution
//! to an instance.
//!
//! The identity is built only from facts the guest cannot choose freely on
//! its own: the bridge the connection arrived on, the TCP peer address and
//! the MAC the host's neighbour (ARP) table holds for that address on that
//! bridge. Request headers are never consulted. Anti-spoofing rules on the
//! tap devices (only the port's MAC and IP may leave it) are what make the
//! IP and neighbour entry trustworthy.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use nubo_netid::MacAddr;

use crate::instance::{InstanceLookup, InstanceMeta};

/// The caller of one HTTP request, as seen by the host.
///
/// The server inserts it as a request extension; unit tests of the router
/// insert it by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// Bridge the connection arrived on.
    pub bridge: String,
    /// TCP peer (source) address.
    pub ip: Ipv4Addr,
    /// MAC from the neighbour table for `ip` on `bridge`; `None` if there is
    /// no usable entry.
    pub mac: Option<MacAddr>,
}

/// Why a caller is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The neighbour table has no valid entry for the caller's IP.
    NoNeighbourEntry,
    /// No instance owns this IP on this bridge.
    UnknownInstance,
    /// An instance owns the IP, but the neighbour entry shows another MAC.
    MacMismatch {
        /// The instance's port MAC.
        expected: MacAddr,
        /// The MAC in the neighbour table.
        seen: MacAddr,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoNeighbourEntry => write!(f, "no neighbour entry for the source address"),
            Rejection::UnknownInstance => write!(f, "no instance has this address on this bridge"),
            Rejection::MacMismatch { expected, seen } => {
                write!(f, "neighbour MAC {seen} is not the port MAC {expected}")
            }
        }
    }
}

/// Resolves a caller to its instance: the (bridge, IP) must be known and the
/// neighbour MAC must be the port's MAC.
pub fn resolve(
    lookup: &dyn InstanceLookup,
    caller: &CallerIdentity,
) -> Result<Arc<InstanceMeta>, Rejection> {
    let meta = lookup
        .lookup(&caller.bridge, caller.ip)
        .ok_or(Rejection::UnknownInstance)?;
    let seen = caller.mac.ok_or(Rejection::NoNeighbourEntry)?;
    if seen != meta.mac {
        return Err(Rejection::MacMismatch {
            expected: meta.mac,
            seen,
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::InstanceTable;

    const MAC_A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const MAC_B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    fn table() -> InstanceTable {
        let table = InstanceTable::new();
        table.insert(
            "nb-1",
            InstanceMeta::new("uuid-a", Ipv4Addr::new(10, 0, 0, 5), MAC_A),
        );
        table
    }

    fn caller(bridge: &str, ip: [u8; 4], mac: Option<MacAddr>) -> CallerIdentity {
        CallerIdentity {
            bridge: bridge.into(),
            ip: ip.into(),
            mac,
        }
    }

    #[test]
    fn known_caller_with_matching_mac_resolves() {
        let meta = resolve(&table(), &caller("nb-1", [10, 0, 0, 5], Some(MAC_A))).unwrap();
        assert_eq!(meta.uuid, "uuid-a");
    }

    #[test]
    fn mac_mismatch_is_rejected() {
        let err = resolve(&table(), &caller("nb-1", [10, 0, 0, 5], Some(MAC_B))).unwrap_err();
        assert_eq!(
            err,
            Rejection::MacMismatch {
                expected: MAC_A,
                seen: MAC_B
            }
        );
    }

    #[test]
    fn missing_neighbour_entry_is_rejected() {
        let err = resolve(&table(), &caller("nb-1", [10, 0, 0, 5], None)).unwrap_err();
        assert_eq!(err, Rejection::NoNeighbourEntry);
    }

    #[test]
    fn unknown_ip_or_bridge_is_rejected() {
        let t = table();
        assert_eq!(
            resolve(&t, &caller("nb-1", [10, 0, 0, 6], Some(MAC_A))).unwrap_err(),
            Rejection::UnknownInstance
        );
        assert_eq!(
            resolve(&t, &caller("nb-2", [10, 0, 0, 5], Some(MAC_A))).unwrap_err(),
            Rejection::UnknownInstance
        );
    }
}
