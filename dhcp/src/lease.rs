//! Leases (one fixed address per port) and the shared, live-updatable table.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use ipnet::Ipv4Net;
use nubo_netid::MacAddr;

use crate::error::DhcpError;

/// The link-local address every nubo bridge owns (as /32): DHCP server
/// identifier and metadata service address.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Everything the server tells one port (identified by its MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The port's MAC address; only this MAC is answered.
    pub mac: MacAddr,
    /// The fixed address of the port.
    pub ip: Ipv4Addr,
    /// Prefix length of the port's subnet (0..=32).
    pub prefix_len: u8,
    /// Default gateway (option 3, and 0.0.0.0/0 in option 121).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6); not sent when empty.
    pub dns: Vec<Ipv4Addr>,
    /// Interface MTU (option 26), at least 68.
    pub mtu: Option<u16>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Lease time in seconds (option 51); `u32::MAX` means infinite.
    pub lease_secs: u32,
    /// Extra classless static routes (option 121), `(destination, gateway)`;
    /// gateway 0.0.0.0 means on-link. The default route via `router` and the
    /// on-link route to [`METADATA_IP`] are added automatically.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl Lease {
    /// A lease with only the mandatory fields set and a one-day lease time.
    pub fn new(mac: MacAddr, ip: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            mac,
            ip,
            prefix_len,
            router: None,
            dns: Vec::new(),
            mtu: None,
            hostname: None,
            domain: None,
            lease_secs: 86_400,
            routes: Vec::new(),
        }
    }

    /// Checks that the lease can be encoded into a sensible DHCP reply.
    pub fn validate(&self) -> Result<(), DhcpError> {
        let fail = |reason: String| {
            Err(DhcpError::InvalidLease {
                mac: self.mac.to_string(),
                reason,
            })
        };
        if self.prefix_len > 32 {
            return fail(format!("prefix length {} exceeds 32", self.prefix_len));
        }
        if self.ip.is_unspecified() || self.ip.is_broadcast() || self.ip.is_multicast() {
            return fail(format!("{} cannot be a host address", self.ip));
        }
        if self.mac.0[0] & 1 == 1 {
            return fail("a multicast MAC cannot own a port".to_string());
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return fail(format!("MTU {mtu} is below the IPv4 minimum of 68"));
            }
        }
        for (what, name) in [("hostname", &self.hostname), ("domain", &self.domain)] {
            if let Some(name) = name {
                if name.is_empty() || name.len() > 253 || name.contains('\0') {
                    return fail(format!("{what} must be 1-253 bytes without NUL"));
                }
            }
        }
        if self.lease_secs == 0 {
            return fail("lease time must be at least one second".to_string());
        }
        if self.dns.len() > 16 || self.routes.len() > 32 {
            return fail("too many DNS servers (max 16) or routes (max 32)".to_string());
        }
        Ok(())
    }

    /// The subnet mask matching `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// The subnet broadcast address, if the subnet has one (prefix < 31).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix_len < 31)
            .then(|| Ipv4Addr::from(u32::from(self.ip) | !u32::from(self.netmask())))
    }

    /// The routes sent in option 121: the caller's routes (destinations
    /// normalised to their network address), then [`METADATA_IP`]/32 on-link
    /// and 0.0.0.0/0 via `router` unless the caller already covers them.
    /// RFC 3442 makes clients ignore option 3 when option 121 is present,
    /// hence the explicit default route.
    pub fn classless_routes(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let mut routes: Vec<(Ipv4Net, Ipv4Addr)> = Vec::with_capacity(self.routes.len() + 2);
        for (dest, gw) in &self.routes {
            let dest = dest.trunc();
            if !routes.iter().any(|(d, _)| *d == dest) {
                routes.push((dest, *gw));
            }
        }
        let metadata = Ipv4Net::from(METADATA_IP);
        if !routes.iter().any(|(d, _)| *d == metadata) {
            routes.push((metadata, Ipv4Addr::UNSPECIFIED));
        }
        if let Some(router) = self.router {
            let default = Ipv4Net::default();
            if !routes.iter().any(|(d, _)| *d == default) {
                routes.push((default, router));
            }
        }
        routes
    }
}

/// The leases of one bridge, shared between the agent (writer) and the
/// server task (reader). Cloning is cheap and yields a handle to the same
/// table: updates are visible to the running server immediately.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    inner: Arc<RwLock<HashMap<MacAddr, Lease>>>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the lease of `lease.mac`; returns the previous one.
    pub fn upsert(&self, lease: Lease) -> Result<Option<Lease>, DhcpError> {
        lease.validate()?;
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        Ok(map.insert(lease.mac, lease))
    }

    /// Removes the lease of `mac`; returns it if there was one.
    pub fn remove(&self, mac: &MacAddr) -> Option<Lease> {
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(mac)
    }

    /// Replaces the whole table atomically (e.g. after a resync from etcd).
    /// Nothing is changed if any lease is invalid.
    pub fn replace_all(&self, leases: impl IntoIterator<Item = Lease>) -> Result<(), DhcpError> {
        let mut fresh = HashMap::new();
        for lease in leases {
            lease.validate()?;
            fresh.insert(lease.mac, lease);
        }
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// A copy of the lease of `mac`.
    pub fn get(&self, mac: &MacAddr) -> Option<Lease> {
        self.read().get(mac).cloned()
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A copy of the whole table.
    pub fn snapshot(&self) -> HashMap<MacAddr, Lease> {
        self.read().clone()
    }

    /// Read access for the server; never held across an await point.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<MacAddr, Lease>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

    #[test]
    fn netmask_and_broadcast() {
        let mut l = Lease::new(MAC, Ipv4Addr::new(10, 1, 2, 3), 24);
        assert_eq!(l.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(l.broadcast(), Some(Ipv4Addr::new(10, 1, 2, 255)));
        l.prefix_len = 0;
        assert_eq!(l.netmask(), Ipv4Addr::UNSPECIFIED);
        l.prefix_len = 32;
        assert_eq!(l.netmask(), Ipv4Addr::BROADCAST);
        assert_eq!(l.broadcast(), None);
        l.prefix_len = 20;
        assert_eq!(l.netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(l.broadcast(), Some(Ipv4Addr::new(10, 1, 15, 255)));
    }

    #[test]
    fn classless_routes_add_default_and_metadata() {
        let mut l = Lease::new(MAC, Ipv4Addr::new(10, 1, 2, 3), 24);
        let meta: Ipv4Net = "169.254.169.254/32".parse().unwrap();
        assert_eq!(l.classless_routes(), vec![(meta, Ipv4Addr::UNSPECIFIED)]);

        l.router = Some(Ipv4Addr::new(10, 1, 2, 1));
        l.routes = vec![(
            "192.168.7.9/16".parse().unwrap(),
            Ipv4Addr::new(10, 1, 2, 7),
        )];
        assert_eq!(
            l.classless_routes(),
            vec![
                (
                    "192.168.0.0/16".parse().unwrap(),
                    Ipv4Addr::new(10, 1, 2, 7)
                ),
                (meta, Ipv4Addr::UNSPECIFIED),
                ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 1, 2, 1)),
            ]
        );
    }

    #[test]
    fn caller_default_route_wins() {
        let mut l = Lease::new(MAC, Ipv4Addr::new(10, 1, 2, 3), 24);
        l.router = Some(Ipv4Addr::new(10, 1, 2, 1));
        l.routes = vec![("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 1, 2, 254))];
        let routes = l.classless_routes();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].1, Ipv4Addr::new(10, 1, 2, 254));
    }

    #[test]
    fn validation_rejects_nonsense() {
        let good = Lease::new(MAC, Ipv4Addr::new(10, 1, 2, 3), 24);
        assert!(good.validate().is_ok());
        let cases: [fn(&mut Lease); 7] = [
            |l| l.prefix_len = 33,
            |l| l.ip = Ipv4Addr::UNSPECIFIED,
            |l| l.mtu = Some(40),
            |l| l.hostname = Some(String::new()),
            |l| l.domain = Some("a\0b".into()),
            |l| l.lease_secs = 0,
            |l| l.mac = MacAddr([0x01, 0, 0, 0, 0, 1]),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut l = good.clone();
            mutate(&mut l);
            let err = l.validate().expect_err(&format!("case {i} accepted"));
            assert!(
                err.to_string().contains("02:00:00:00:00:01") || i == 6,
                "{err}"
            );
        }
    }

    #[test]
    fn table_updates_are_shared_between_clones() {
        let table = LeaseTable::new();
        let server_view = table.clone();
        let lease = Lease::new(MAC, Ipv4Addr::new(10, 1, 2, 3), 24);
        assert_eq!(table.upsert(lease.clone()).unwrap(), None);
        assert_eq!(server_view.get(&MAC), Some(lease.clone()));
        assert!(table
            .upsert(Lease {
                prefix_len: 40,
                ..lease.clone()
            })
            .is_err());
        assert_eq!(
            server_view.get(&MAC),
            Some(lease.clone()),
            "invalid lease must not replace"
        );
        assert_eq!(table.remove(&MAC), Some(lease.clone()));
        assert!(server_view.is_empty());
        table.replace_all([lease.clone()]).unwrap();
        assert_eq!(server_view.len(), 1);
        assert!(table
            .replace_all([Lease {
                lease_secs: 0,
                ..lease
            }])
            .is_err());
        assert_eq!(
            server_view.len(),
            1,
            "failed replace_all must change nothing"
        );
    }
}
