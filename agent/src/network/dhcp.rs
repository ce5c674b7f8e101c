//! The DHCP subsystem: one nubo-dhcp server per bridge, each with its own
//! [`LeaseTable`] updated in place. [`leases`] maps the desired node to the
//! leases of every bridge (pure); a pass (re)starts servers whose bridge
//! appeared or was recreated, stops those whose bridge is gone, and replaces
//! a table only when its leases changed.
//!
//! A fresh agent binds fresh sockets; leases are fixed per port, so guests
//! renewing against the new process get the same answer (nothing to
//! migrate, nothing dropped).

use std::collections::BTreeMap;

use async_trait::async_trait;
use nubo_dhcp::{DhcpHandle, DhcpServer, Lease, LeaseTable, METADATA_IP};
use nubo_netid::MacAddr;
use nubo_overlay::bridge_name;
use tracing::{info, warn};

use super::{finish_server_pass, ifindex, running_ports, sanitize_hostname};
use crate::desired::DesiredNode;
use crate::reconciler::{Subsystem, SubsystemError};

/// Lease time handed out (one day; addresses are fixed anyway).
pub const LEASE_SECS: u32 = 86_400;

/// The leases of every bridge with running local ports, by bridge name and
/// MAC. Pure.
pub fn leases(desired: &DesiredNode) -> BTreeMap<String, BTreeMap<MacAddr, Lease>> {
    let mut out: BTreeMap<String, BTreeMap<MacAddr, Lease>> = BTreeMap::new();
    for lp in running_ports(desired) {
        let net = lp.network;
        let mac = lp.port.mac;
        let fallback = format!("host-{}", lp.instance.id().short_hex(8));
        let lease = Lease {
            router: net.gateway,
            dns: net.dns.clone(),
            mtu: Some(net.mtu.max(68)),
            hostname: Some(sanitize_hostname(&lp.instance.spec.name, &fallback)),
            lease_secs: LEASE_SECS,
            ..Lease::new(mac, lp.port.ip, net.cidr.prefix_len())
        };
        out.entry(bridge_name(net.vni))
            .or_default()
            .insert(mac, lease);
    }
    out
}

/// One running server.
struct Served {
    handle: DhcpHandle,
    table: LeaseTable,
    ifindex: u32,
    applied: BTreeMap<MacAddr, Lease>,
}

/// The DHCP reconciler.
#[derive(Default)]
pub struct Dhcp {
    servers: BTreeMap<String, Served>,
    first: bool,
}

impl Dhcp {
    /// No server runs until the first pass.
    pub fn new() -> Self {
        Self {
            servers: BTreeMap::new(),
            first: true,
        }
    }

    fn start(bridge: &str, idx: u32) -> Result<Served, SubsystemError> {
        let table = LeaseTable::new();
        let handle = DhcpServer::bind(bridge, METADATA_IP, table.clone())
            .and_then(DhcpServer::spawn)
            .map_err(|e| SubsystemError::Other(format!("DHCP server on {bridge}: {e}")))?;
        info!(bridge, "DHCP server started");
        Ok(Served {
            handle,
            table,
            ifindex: idx,
            applied: BTreeMap::new(),
        })
    }
}

#[async_trait]
impl Subsystem for Dhcp {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError> {
        let want = leases(desired);
        let mut changes = 0;
        let mut errors = Vec::new();
        // Stop servers of bridges that are gone or were recreated.
        let stale: Vec<String> = self
            .servers
            .iter()
            .filter(|(b, s)| {
                !want.contains_key(*b) || s.handle.is_finished() || ifindex(b) != Some(s.ifindex)
            })
            .map(|(b, _)| b.clone())
            .collect();
        for b in stale {
            if let Some(s) = self.servers.remove(&b) {
                if let Err(e) = s.handle.shutdown().await {
                    warn!(bridge = %b, error = %e, "DHCP server ended with an error");
                }
                info!(bridge = %b, "DHCP server stopped");
                if !want.contains_key(&b) {
                    changes += 1;
                }
            }
        }
        for (bridge, leases) in want {
            if !self.servers.contains_key(&bridge) {
                let Some(idx) = ifindex(&bridge) else {
                    errors.push(format!("bridge {bridge} does not exist yet"));
                    continue;
                };
                match Self::start(&bridge, idx) {
                    Ok(s) => {
                        self.servers.insert(bridge.clone(), s);
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                }
            }
            let Some(s) = self.servers.get_mut(&bridge) else {
                continue;
            };
            if s.applied != leases {
                let diff = leases
                    .iter()
                    .filter(|(m, l)| s.applied.get(*m) != Some(*l))
                    .count()
                    + s.applied
                        .keys()
                        .filter(|m| !leases.contains_key(*m))
                        .count();
                match s.table.replace_all(leases.values().cloned()) {
                    Ok(()) => {
                        s.applied = leases;
                        changes += diff;
                    }
                    Err(e) => errors.push(format!("leases of {bridge}: {e}")),
                }
            }
        }
        finish_server_pass("dhcp", &mut self.first, changes, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::build;
    use crate::testutil::*;

    #[test]
    fn one_lease_per_running_port_per_bridge() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let net2 = w.network(200, 1400);
        let (i1, p1) = w.instance_on(&n1, net, &[]);
        let (_i2, p2) = w.instance_on(&n1, net2, &[]);
        let d = build(&w.cache, &n1, 1500);
        let l = leases(&d);
        assert_eq!(
            l.keys().collect::<Vec<_>>(),
            vec![&"nb-100".to_string(), &"nb-200".to_string()]
        );
        let lease = &l["nb-100"][&p1.mac];
        assert_eq!(lease.ip, p1.ip);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some("192.168.0.1".parse().unwrap()));
        assert_eq!(lease.mtu, Some(1450));
        assert_eq!(lease.hostname.as_deref(), Some("vm"));
        assert!(lease.validate().is_ok());
        assert_eq!(l["nb-200"][&p2.mac].mtu, Some(1400));
        assert!(d.instances.contains_key(&i1));
    }
}
