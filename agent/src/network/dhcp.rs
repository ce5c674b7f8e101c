//! The DHCP subsystem: one nubo-dhcp server per bridge, each with its own
//! [`LeaseTable`] updated in place. [`leases`] maps the desired node to the
//! leases of every bridge and [`plan`] compares them with the servers
//! running (both pure): a pass (re)starts servers whose bridge appeared or
//! was recreated, stops those whose bridge is gone, and replaces a table
//! only when its leases changed.
//!
//! A fresh agent binds fresh sockets; leases are fixed per port, so guests
//! renewing against the new process get the same answer (nothing to
//! migrate, nothing dropped).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use nubo_dhcp::{DhcpHandle, DhcpServer, Lease, LeaseTable, METADATA_IP};
use nubo_netid::MacAddr;
use tracing::{info, warn};

use super::{finish_server_pass, ifindex, running_ports, sanitize_hostname, LEASE_SECS};
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// The leases of every bridge with running local ports, by bridge name and
/// MAC (none for a subnet with DHCP off): a port's first address with the
/// mask, gateway, DNS servers and host routes (option 121) of its subnet.
/// Pure.
pub fn leases(desired: &DesiredNode) -> BTreeMap<String, Leases> {
    let mut out: BTreeMap<String, Leases> = BTreeMap::new();
    for lp in running_ports(desired) {
        let net = lp.network;
        // The port's first address, with the mask, gateway, DNS and routes
        // of the subnet holding it.
        let sn = net.subnet_for(lp.port.ip);
        if sn.dhcp_disabled {
            continue;
        }
        let mac = lp.port.mac;
        let fallback = format!("host-{}", lp.instance.id().short_hex(8));
        let lease = Lease {
            router: sn.gateway,
            dns: sn.dns,
            mtu: Some(net.mtu.max(68)),
            hostname: Some(sanitize_hostname(&lp.instance.spec.name, &fallback)),
            lease_secs: LEASE_SECS,
            routes: sn.host_routes,
            ..Lease::new(mac, lp.port.ip, sn.cidr.prefix_len())
        };
        out.entry(net.bridge()).or_default().insert(mac, lease);
    }
    out
}

/// The leases of one bridge, by MAC.
pub type Leases = BTreeMap<MacAddr, Lease>;

/// A DHCP server of this process, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Interface index of the bridge it is bound to.
    pub ifindex: u32,
    /// Whether its task ended (it is started again).
    pub finished: bool,
    /// The leases in its table.
    pub leases: Leases,
}

/// What a DHCP pass observes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpObserved {
    /// The servers running, by bridge.
    pub servers: BTreeMap<String, ServerState>,
    /// The interface index of every bridge served or wanted (`None`: it
    /// does not exist).
    pub bridges: BTreeMap<String, Option<u32>>,
}

/// One DHCP change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpAction {
    /// Stop the server of a bridge: gone (`wanted` false), or recreated
    /// or ended (started again afterwards).
    Stop {
        /// The bridge.
        bridge: String,
        /// The bridge still has local ports.
        wanted: bool,
    },
    /// Start a server on a bridge.
    Start {
        /// The bridge.
        bridge: String,
        /// Its interface index.
        ifindex: u32,
    },
    /// Replace the lease table of a bridge.
    Leases {
        /// The bridge.
        bridge: String,
        /// Every lease of the bridge.
        leases: Leases,
        /// How many of them were added, changed or removed.
        changed: usize,
    },
    /// The bridge does not exist yet (the overlay creates it): its server
    /// waits, and the pass is retried.
    WaitForBridge {
        /// The bridge.
        bridge: String,
    },
}

/// The DHCP changes that serve `want` (leases by bridge) given what runs:
/// servers of bridges that are gone, were recreated (another interface
/// index) or ended are stopped, servers of new bridges started, and a
/// table replaced only when its leases differ. Pure.
pub fn plan(want: &BTreeMap<String, Leases>, observed: &DhcpObserved) -> Vec<DhcpAction> {
    let mut out = Vec::new();
    let live = |b: &String, s: &ServerState| {
        !s.finished && observed.bridges.get(b) == Some(&Some(s.ifindex))
    };
    for (b, s) in &observed.servers {
        if !want.contains_key(b) || !live(b, s) {
            out.push(DhcpAction::Stop {
                bridge: b.clone(),
                wanted: want.contains_key(b),
            });
        }
    }
    let none = Leases::new();
    for (bridge, leases) in want {
        let applied = match observed.servers.get(bridge).filter(|s| live(bridge, s)) {
            Some(s) => &s.leases,
            None => {
                let Some(Some(ifindex)) = observed.bridges.get(bridge) else {
                    out.push(DhcpAction::WaitForBridge {
                        bridge: bridge.clone(),
                    });
                    continue;
                };
                out.push(DhcpAction::Start {
                    bridge: bridge.clone(),
                    ifindex: *ifindex,
                });
                &none
            }
        };
        if applied != leases {
            let changed = leases
                .iter()
                .filter(|(m, l)| applied.get(*m) != Some(*l))
                .count()
                + applied.keys().filter(|m| !leases.contains_key(*m)).count();
            out.push(DhcpAction::Leases {
                bridge: bridge.clone(),
                leases: leases.clone(),
                changed,
            });
        }
    }
    out
}

/// One running server.
struct Served {
    handle: DhcpHandle,
    table: LeaseTable,
    ifindex: u32,
    applied: Leases,
}

/// The DHCP reconciler.
#[derive(Default)]
pub struct Dhcp {
    servers: BTreeMap<String, Served>,
    first: bool,
    replies: Option<Arc<crate::telemetry::node::DhcpReplies>>,
    probe: Option<super::probe::ProbeIdentity>,
}

impl Dhcp {
    /// No server runs until the first pass.
    pub fn new() -> Self {
        Self {
            servers: BTreeMap::new(),
            first: true,
            replies: None,
            probe: None,
        }
    }

    /// Counts every server's replies in `replies`, by network.
    pub fn with_replies(mut self, replies: Arc<crate::telemetry::node::DhcpReplies>) -> Self {
        self.replies = Some(replies);
        self
    }

    /// Also answers this node's health probes (a fixed link-local lease
    /// for each probe's reserved MAC, see [`super::probe`]).
    pub fn with_probe(mut self, probe: Option<super::probe::ProbeIdentity>) -> Self {
        self.probe = probe;
        self
    }

    /// The leases to serve: the ports' and the probes'. Pure.
    fn wanted(&self, desired: &DesiredNode) -> BTreeMap<String, Leases> {
        let mut want = leases(desired);
        if let Some(ident) = &self.probe {
            for (bridge, t) in super::probe::targets(desired, ident) {
                if let Some(l) = want.get_mut(&bridge) {
                    l.insert(t.mac, super::probe::lease(&t));
                }
            }
        }
        want
    }

    fn start(
        bridge: &str,
        idx: u32,
        counters: Option<Arc<nubo_dhcp::DhcpCounters>>,
    ) -> Result<Served, SubsystemError> {
        let table = LeaseTable::new();
        let handle = DhcpServer::bind(bridge, METADATA_IP, table.clone())
            .map(|s| match counters {
                Some(c) => s.with_counters(c),
                None => s,
            })
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
    type Observed = DhcpObserved;
    type Plan = Vec<DhcpAction>;

    fn name(&self) -> &'static str {
        "dhcp"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<DhcpObserved, SubsystemError> {
        let servers: BTreeMap<String, ServerState> = self
            .servers
            .iter()
            .map(|(b, s)| {
                (
                    b.clone(),
                    ServerState {
                        ifindex: s.ifindex,
                        finished: s.handle.is_finished(),
                        leases: s.applied.clone(),
                    },
                )
            })
            .collect();
        let bridges = servers
            .keys()
            .cloned()
            .chain(self.wanted(desired).into_keys())
            .map(|b| {
                let idx = ifindex(&b);
                (b, idx)
            })
            .collect();
        Ok(DhcpObserved { servers, bridges })
    }

    fn plan(&self, desired: &DesiredNode, observed: &DhcpObserved) -> Vec<DhcpAction> {
        plan(&self.wanted(desired), observed)
    }

    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: Vec<DhcpAction>,
    ) -> Result<usize, SubsystemError> {
        let network_of = |bridge: &str| {
            desired
                .networks
                .values()
                .find(|n| n.bridge() == bridge)
                .map_or_else(|| bridge.to_string(), |n| n.id.to_string())
        };
        let mut changes = 0;
        let mut errors = Vec::new();
        for action in plan {
            match action {
                DhcpAction::Stop { bridge, wanted } => {
                    if let Some(s) = self.servers.remove(&bridge) {
                        if let Err(e) = s.handle.shutdown().await {
                            warn!(bridge = %bridge, error = %e, "DHCP server ended with an error");
                        }
                        info!(bridge = %bridge, "DHCP server stopped");
                        if !wanted {
                            changes += 1;
                        }
                    }
                }
                DhcpAction::Start { bridge, ifindex } => match Self::start(
                    &bridge,
                    ifindex,
                    self.replies
                        .as_ref()
                        .map(|r| r.counters(&network_of(&bridge))),
                ) {
                    Ok(s) => {
                        self.servers.insert(bridge, s);
                    }
                    Err(e) => errors.push(e.to_string()),
                },
                DhcpAction::Leases {
                    bridge,
                    leases,
                    changed,
                } => {
                    // No server: it could not be started (reported above).
                    let Some(s) = self.servers.get_mut(&bridge) else {
                        continue;
                    };
                    match s.table.replace_all(leases.values().cloned()) {
                        Ok(()) => {
                            s.applied = leases;
                            changes += changed;
                        }
                        Err(e) => errors.push(format!("leases of {bridge}: {e}")),
                    }
                }
                DhcpAction::WaitForBridge { bridge } => {
                    errors.push(format!("bridge {bridge} does not exist yet"));
                }
            }
        }
        finish_server_pass("dhcp", &mut self.first, changes, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
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
        assert_eq!(Some(lease.ip), p1.ip);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some("192.168.0.1".parse().unwrap()));
        assert_eq!(lease.mtu, Some(1450));
        assert_eq!(lease.hostname.as_deref(), Some("vm"));
        assert!(lease.validate().is_ok());
        assert_eq!(l["nb-200"][&p2.mac].mtu, Some(1400));
        assert!(d.instances.contains_key(&i1));
    }

    #[test]
    fn host_routes_ride_in_the_lease_and_dhcp_off_serves_nothing() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let routed = w.network(100, 0);
        let quiet = w.network(200, 0);
        let (_, p1) = w.instance_on(&n1, routed, &[]);
        let (_, p2) = w.instance_on(&n1, quiet, &[]);
        let dest: ipnet::Ipv4Net = "10.9.0.0/16".parse().unwrap();
        let hop: std::net::Ipv4Addr = "192.168.0.5".parse().unwrap();
        if let Some(n) = w.cache.networks.get_mut(&routed) {
            n.host_routes = vec![nubo_common::model::HostRoute {
                destination: dest,
                nexthop: hop,
            }];
        }
        let before = leases(&build(&w.cache, &n1, 1500));
        assert!(before["nb-200"].contains_key(&p2.mac), "DHCP on: a lease");
        if let Some(n) = w.cache.networks.get_mut(&quiet) {
            n.dhcp_disabled = true;
        }
        let l = leases(&build(&w.cache, &n1, 1500));
        assert!(!l.contains_key("nb-200"), "DHCP off: no lease, no server");
        let lease = &l["nb-100"][&p1.mac];
        assert_eq!(lease.routes, vec![(dest, hop)]);
        assert_eq!(lease.classless_routes()[0], (dest, hop));
        assert!(lease.validate().is_ok());
    }

    fn table(entries: &[(u8, u8)]) -> Leases {
        entries
            .iter()
            .map(|(m, ip)| {
                let mac = MacAddr::from([2, 0, 0, 0, 0, *m]);
                (
                    mac,
                    Lease::new(mac, std::net::Ipv4Addr::new(10, 0, 0, *ip), 24),
                )
            })
            .collect()
    }

    fn server(ifindex: u32, leases: Leases) -> ServerState {
        ServerState {
            ifindex,
            finished: false,
            leases,
        }
    }

    #[test]
    fn a_converged_node_has_an_empty_plan() {
        let want = BTreeMap::from([("nb-1".to_string(), table(&[(1, 5), (2, 6)]))]);
        let observed = DhcpObserved {
            servers: BTreeMap::from([("nb-1".to_string(), server(7, table(&[(1, 5), (2, 6)])))]),
            bridges: BTreeMap::from([("nb-1".to_string(), Some(7))]),
        };
        assert_eq!(plan(&want, &observed), vec![]);
    }

    #[test]
    fn new_bridges_start_servers_missing_ones_wait_and_changed_leases_are_counted() {
        let want = BTreeMap::from([
            ("nb-1".to_string(), table(&[(1, 5), (3, 9)])),
            ("nb-2".to_string(), table(&[(2, 6)])),
            ("nb-3".to_string(), table(&[(4, 7)])),
        ]);
        let observed = DhcpObserved {
            // nb-1: lease 1 changed its address, lease 2 gone, lease 3 new.
            servers: BTreeMap::from([("nb-1".to_string(), server(7, table(&[(1, 4), (2, 6)])))]),
            bridges: BTreeMap::from([
                ("nb-1".to_string(), Some(7)),
                ("nb-2".to_string(), Some(8)),
                ("nb-3".to_string(), None),
            ]),
        };
        assert_eq!(
            plan(&want, &observed),
            vec![
                DhcpAction::Leases {
                    bridge: "nb-1".into(),
                    leases: table(&[(1, 5), (3, 9)]),
                    changed: 3,
                },
                DhcpAction::Start {
                    bridge: "nb-2".into(),
                    ifindex: 8
                },
                DhcpAction::Leases {
                    bridge: "nb-2".into(),
                    leases: table(&[(2, 6)]),
                    changed: 1,
                },
                DhcpAction::WaitForBridge {
                    bridge: "nb-3".into()
                },
            ]
        );
    }

    #[test]
    fn servers_of_gone_recreated_or_ended_bridges_are_stopped_and_restarted() {
        let want = BTreeMap::from([
            ("nb-1".to_string(), table(&[(1, 5)])),
            ("nb-2".to_string(), table(&[(2, 6)])),
        ]);
        let mut ended = server(8, table(&[(2, 6)]));
        ended.finished = true;
        let observed = DhcpObserved {
            servers: BTreeMap::from([
                // Recreated: another interface index.
                ("nb-1".to_string(), server(7, table(&[(1, 5)]))),
                ("nb-2".to_string(), ended),
                // No local port left.
                ("nb-9".to_string(), server(9, table(&[(9, 9)]))),
            ]),
            bridges: BTreeMap::from([
                ("nb-1".to_string(), Some(17)),
                ("nb-2".to_string(), Some(8)),
                ("nb-9".to_string(), Some(9)),
            ]),
        };
        let p = plan(&want, &observed);
        assert_eq!(
            p[..3],
            [
                DhcpAction::Stop {
                    bridge: "nb-1".into(),
                    wanted: true
                },
                DhcpAction::Stop {
                    bridge: "nb-2".into(),
                    wanted: true
                },
                DhcpAction::Stop {
                    bridge: "nb-9".into(),
                    wanted: false
                },
            ]
        );
        // Both wanted bridges get a fresh server with every lease.
        assert!(p.contains(&DhcpAction::Start {
            bridge: "nb-1".into(),
            ifindex: 17
        }));
        assert!(p.contains(&DhcpAction::Start {
            bridge: "nb-2".into(),
            ifindex: 8
        }));
        assert_eq!(
            p.iter()
                .filter(|a| matches!(a, DhcpAction::Leases { changed: 1, .. }))
                .count(),
            2
        );
        assert_eq!(p.len(), 7);
    }
}
