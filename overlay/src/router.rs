//! Router namespaces: the desired and observed state of the distributed
//! routers on one node, and the pure [`plan_routers`] between them.
//!
//! One network namespace per router that has work on this node (see
//! docs/routing.md): a veth leg on each of the router's network bridges
//! (the host end is attached to the bridge by the overlay or provider
//! subsystem like a tap; the inner end carries the gateway address and the
//! gateway MAC, the same on every node), a leg on the external network
//! with this node's SNAT address and the floating IPs of the ports here,
//! a default route to the external network's gateway, and a permanent
//! neighbour entry for every port of the router's networks (the copies of
//! a gateway on other nodes never ARP across the overlay: their ARP is
//! dropped at the VXLAN device, see nubo-firewall's routed gateways).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nubo_netid::MacAddr;

/// Every router namespace this node should have. Namespaces whose name
/// starts with `prefix` and that are not listed are removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutersSpec {
    /// The name prefix of this node's router namespaces.
    pub prefix: String,
    /// The routers.
    pub routers: Vec<RouterSpec>,
}

/// One router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// Namespace name (starts with [`RoutersSpec::prefix`]).
    pub netns: String,
    /// Its legs.
    pub legs: Vec<RouterLeg>,
    /// The default route: inner leg name and next hop.
    pub default_route: Option<(String, Ipv4Addr)>,
    /// Permanent neighbour entries.
    pub neighbours: Vec<Neighbour>,
}

/// A veth leg of a router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLeg {
    /// The end in the node's namespace (attached to the network's bridge
    /// by the overlay or provider subsystem).
    pub host: String,
    /// The end inside the router namespace.
    pub inner: String,
    /// The inner end's MAC.
    pub mac: MacAddr,
    /// MTU of both ends.
    pub mtu: u32,
    /// The inner end's addresses.
    pub addresses: BTreeSet<Ipv4Net>,
    /// Announce each address added to this leg with gratuitous ARP (the
    /// external leg: a floating IP arriving on this node).
    pub announce: bool,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    /// Address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// A neighbour entry on a leg (the leg's inner name).
pub type LegNeighbour = (String, Neighbour);

/// What the node has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRouters {
    /// Namespaces starting with the prefix, by name.
    pub namespaces: BTreeMap<String, ObservedRouterNs>,
}

/// One router namespace as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRouterNs {
    /// Links other than `lo`, by name.
    pub links: BTreeMap<String, ObservedLeg>,
    /// The main table's default route (leg name, next hop).
    pub default_route: Option<(String, Ipv4Addr)>,
    /// Permanent neighbour entries, per leg name.
    pub neighbours: BTreeSet<LegNeighbour>,
    /// `net.ipv4.ip_forward` is on.
    pub forwarding: bool,
}

/// A link inside a router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLeg {
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses.
    pub addresses: BTreeSet<Ipv4Net>,
}

/// One step of a router plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterAction {
    /// Create the namespace and configure it (forwarding on, IPv6 off,
    /// ARP answered only on the leg holding the address, `lo` up).
    CreateNetns {
        /// Namespace.
        netns: String,
    },
    /// Turn forwarding (and the namespace settings) on again.
    ConfigureNetns {
        /// Namespace.
        netns: String,
    },
    /// Delete the namespace (its legs go with it).
    DeleteNetns {
        /// Namespace.
        netns: String,
    },
    /// Create a veth leg: `host` here, `inner` in the namespace with `mac`;
    /// both ends up.
    CreateLeg {
        /// Namespace.
        netns: String,
        /// Host end.
        host: String,
        /// Inner end.
        inner: String,
        /// Inner MAC.
        mac: MacAddr,
        /// MTU.
        mtu: u32,
    },
    /// Delete a leg (by its inner end; the host end goes with it).
    DeleteLeg {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
    },
    /// Set a leg's inner end up.
    SetUp {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
    },
    /// Add an address to a leg.
    AddAddress {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// Address.
        addr: Ipv4Net,
    },
    /// Remove an address from a leg.
    DelAddress {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// Address.
        addr: Ipv4Net,
    },
    /// Send gratuitous ARP for `ip` from a leg.
    Announce {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// Address.
        ip: Ipv4Addr,
        /// The leg's MAC.
        mac: MacAddr,
    },
    /// Set (replace) the default route.
    SetDefaultRoute {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// Next hop.
        via: Ipv4Addr,
    },
    /// Remove the default route.
    DelDefaultRoute {
        /// Namespace.
        netns: String,
    },
    /// Set (replace) a permanent neighbour entry.
    SetNeighbour {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// The entry.
        neighbour: Neighbour,
    },
    /// Remove a neighbour entry.
    DelNeighbour {
        /// Namespace.
        netns: String,
        /// Inner end.
        inner: String,
        /// Address.
        ip: Ipv4Addr,
    },
}

/// The actions turning `observed` into `spec`. Pure. Namespaces are
/// created before their legs, legs before addresses, addresses before
/// routes and neighbours; removals of whole namespaces come first.
pub fn plan_routers(spec: &RoutersSpec, observed: &ObservedRouters) -> Vec<RouterAction> {
    let mut out = Vec::new();
    let wanted: BTreeSet<&str> = spec.routers.iter().map(|r| r.netns.as_str()).collect();
    for name in observed.namespaces.keys() {
        if name.starts_with(&spec.prefix) && !wanted.contains(name.as_str()) {
            out.push(RouterAction::DeleteNetns {
                netns: name.clone(),
            });
        }
    }
    let empty = ObservedRouterNs::default();
    for r in &spec.routers {
        let netns = &r.netns;
        let seen = match observed.namespaces.get(netns) {
            Some(ns) => {
                if !ns.forwarding {
                    out.push(RouterAction::ConfigureNetns {
                        netns: netns.clone(),
                    });
                }
                ns
            }
            None => {
                out.push(RouterAction::CreateNetns {
                    netns: netns.clone(),
                });
                &empty
            }
        };
        plan_legs(r, seen, &mut out);
        plan_route(r, seen, &mut out);
        plan_neighbours(r, seen, &mut out);
    }
    out
}

fn plan_legs(r: &RouterSpec, seen: &ObservedRouterNs, out: &mut Vec<RouterAction>) {
    let netns = &r.netns;
    let wanted: BTreeSet<&str> = r.legs.iter().map(|l| l.inner.as_str()).collect();
    for inner in seen.links.keys() {
        if !wanted.contains(inner.as_str()) {
            out.push(RouterAction::DeleteLeg {
                netns: netns.clone(),
                inner: inner.clone(),
            });
        }
    }
    for leg in &r.legs {
        let current = seen.links.get(&leg.inner);
        let fresh = match current {
            Some(l) if l.mac == Some(leg.mac) && l.mtu == leg.mtu => {
                if !l.up {
                    out.push(RouterAction::SetUp {
                        netns: netns.clone(),
                        inner: leg.inner.clone(),
                    });
                }
                false
            }
            Some(_) => {
                // A MAC or MTU from elsewhere: rebuild the leg.
                out.push(RouterAction::DeleteLeg {
                    netns: netns.clone(),
                    inner: leg.inner.clone(),
                });
                true
            }
            None => true,
        };
        if fresh {
            out.push(RouterAction::CreateLeg {
                netns: netns.clone(),
                host: leg.host.clone(),
                inner: leg.inner.clone(),
                mac: leg.mac,
                mtu: leg.mtu,
            });
        }
        let have: BTreeSet<Ipv4Net> = match current {
            Some(l) if !fresh => l.addresses.clone(),
            _ => BTreeSet::new(),
        };
        for addr in have.difference(&leg.addresses) {
            out.push(RouterAction::DelAddress {
                netns: netns.clone(),
                inner: leg.inner.clone(),
                addr: *addr,
            });
        }
        for addr in leg.addresses.difference(&have) {
            out.push(RouterAction::AddAddress {
                netns: netns.clone(),
                inner: leg.inner.clone(),
                addr: *addr,
            });
            if leg.announce {
                out.push(RouterAction::Announce {
                    netns: netns.clone(),
                    inner: leg.inner.clone(),
                    ip: addr.addr(),
                    mac: leg.mac,
                });
            }
        }
    }
}

fn plan_route(r: &RouterSpec, seen: &ObservedRouterNs, out: &mut Vec<RouterAction>) {
    let netns = &r.netns;
    // A recreated leg loses its routes: compare against what survives.
    let rebuilt: BTreeSet<&str> = out
        .iter()
        .filter_map(|a| match a {
            RouterAction::CreateLeg {
                netns: n, inner, ..
            } if n == netns => Some(inner.as_str()),
            _ => None,
        })
        .collect();
    let current = seen
        .default_route
        .as_ref()
        .filter(|(leg, _)| !rebuilt.contains(leg.as_str()));
    match (&r.default_route, current) {
        (Some(want), Some(have)) if want == have => {}
        (Some((inner, via)), _) => out.push(RouterAction::SetDefaultRoute {
            netns: netns.clone(),
            inner: inner.clone(),
            via: *via,
        }),
        (None, Some(_)) => out.push(RouterAction::DelDefaultRoute {
            netns: netns.clone(),
        }),
        (None, None) => {}
    }
}

fn plan_neighbours(r: &RouterSpec, seen: &ObservedRouterNs, out: &mut Vec<RouterAction>) {
    let netns = &r.netns;
    let rebuilt: BTreeSet<String> = out
        .iter()
        .filter_map(|a| match a {
            RouterAction::CreateLeg {
                netns: n, inner, ..
            } if n == netns => Some(inner.clone()),
            _ => None,
        })
        .collect();
    let legs: BTreeSet<&str> = r.legs.iter().map(|l| l.inner.as_str()).collect();
    // The wanted entries, each on the leg whose addresses cover its IP.
    let mut want: BTreeSet<LegNeighbour> = BTreeSet::new();
    for n in &r.neighbours {
        if let Some(leg) = r.legs.iter().find(|l| {
            l.addresses
                .iter()
                .any(|a| a.contains(&n.ip) && a.addr() != n.ip)
        }) {
            want.insert((leg.inner.clone(), *n));
        }
    }
    let have: BTreeSet<LegNeighbour> = seen
        .neighbours
        .iter()
        .filter(|(leg, _)| legs.contains(leg.as_str()) && !rebuilt.contains(leg))
        .cloned()
        .collect();
    for (inner, n) in have.difference(&want) {
        // A changed MAC is replaced below, not deleted.
        if want.iter().any(|(l, w)| l == inner && w.ip == n.ip) {
            continue;
        }
        out.push(RouterAction::DelNeighbour {
            netns: netns.clone(),
            inner: inner.clone(),
            ip: n.ip,
        });
    }
    for (inner, n) in want.difference(&have) {
        out.push(RouterAction::SetNeighbour {
            netns: netns.clone(),
            inner: inner.clone(),
            neighbour: *n,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0xfa, 0x16, 0x3f, 0, 0, last])
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn spec() -> RoutersSpec {
        RoutersSpec {
            prefix: "qrouter-".into(),
            routers: vec![RouterSpec {
                netns: "qrouter-aaa".into(),
                legs: vec![
                    RouterLeg {
                        host: "qr1".into(),
                        inner: "ir1".into(),
                        mac: mac(1),
                        mtu: 1450,
                        addresses: [net("10.0.0.1/24")].into(),
                        announce: false,
                    },
                    RouterLeg {
                        host: "qg1".into(),
                        inner: "ig1".into(),
                        mac: mac(2),
                        mtu: 1500,
                        addresses: [net("10.99.0.10/24"), net("10.99.0.20/32")].into(),
                        announce: true,
                    },
                ],
                default_route: Some(("ig1".into(), "10.99.0.1".parse().unwrap())),
                neighbours: vec![
                    Neighbour {
                        ip: "10.0.0.5".parse().unwrap(),
                        mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, 5]),
                    },
                    // Not on any leg: ignored.
                    Neighbour {
                        ip: "10.5.0.5".parse().unwrap(),
                        mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, 6]),
                    },
                ],
            }],
        }
    }

    /// The observed state a full apply of `spec()` produces.
    fn converged() -> ObservedRouters {
        let s = spec();
        let r = &s.routers[0];
        let links = r
            .legs
            .iter()
            .map(|l| {
                (
                    l.inner.clone(),
                    ObservedLeg {
                        mac: Some(l.mac),
                        mtu: l.mtu,
                        up: true,
                        addresses: l.addresses.clone(),
                    },
                )
            })
            .collect();
        ObservedRouters {
            namespaces: [(
                r.netns.clone(),
                ObservedRouterNs {
                    links,
                    default_route: r.default_route.clone(),
                    neighbours: [("ir1".to_string(), r.neighbours[0])].into(),
                    forwarding: true,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn from_nothing_everything_in_order() {
        let plan = plan_routers(&spec(), &ObservedRouters::default());
        let kinds: Vec<&str> = plan
            .iter()
            .map(|a| match a {
                RouterAction::CreateNetns { .. } => "netns",
                RouterAction::CreateLeg { .. } => "leg",
                RouterAction::AddAddress { .. } => "addr",
                RouterAction::Announce { .. } => "garp",
                RouterAction::SetDefaultRoute { .. } => "route",
                RouterAction::SetNeighbour { .. } => "neigh",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["netns", "leg", "addr", "leg", "addr", "garp", "addr", "garp", "route", "neigh"]
        );
    }

    #[test]
    fn converged_is_empty() {
        assert_eq!(plan_routers(&spec(), &converged()), vec![]);
    }

    #[test]
    fn a_new_floating_ip_is_added_and_announced_only() {
        let mut s = spec();
        s.routers[0].legs[1].addresses.insert(net("10.99.0.21/32"));
        let plan = plan_routers(&s, &converged());
        let ip: Ipv4Addr = "10.99.0.21".parse().unwrap();
        assert_eq!(
            plan,
            vec![
                RouterAction::AddAddress {
                    netns: "qrouter-aaa".into(),
                    inner: "ig1".into(),
                    addr: net("10.99.0.21/32"),
                },
                RouterAction::Announce {
                    netns: "qrouter-aaa".into(),
                    inner: "ig1".into(),
                    ip,
                    mac: mac(2),
                },
            ]
        );
    }

    #[test]
    fn a_removed_router_and_foreign_namespaces() {
        let mut seen = converged();
        seen.namespaces
            .insert("other-ns".into(), ObservedRouterNs::default());
        let s = RoutersSpec {
            prefix: "qrouter-".into(),
            routers: vec![],
        };
        assert_eq!(
            plan_routers(&s, &seen),
            vec![RouterAction::DeleteNetns {
                netns: "qrouter-aaa".into()
            }]
        );
    }

    #[test]
    fn a_leg_with_a_foreign_mac_is_rebuilt_with_its_addresses_and_neighbours() {
        let mut seen = converged();
        let ns = seen.namespaces.get_mut("qrouter-aaa").unwrap();
        ns.links.get_mut("ir1").unwrap().mac = Some(mac(9));
        let plan = plan_routers(&spec(), &seen);
        assert_eq!(plan.len(), 4, "{plan:#?}");
        assert!(matches!(&plan[0], RouterAction::DeleteLeg { inner, .. } if inner == "ir1"));
        assert!(matches!(&plan[1], RouterAction::CreateLeg { inner, .. } if inner == "ir1"));
        assert!(matches!(&plan[2], RouterAction::AddAddress { inner, .. } if inner == "ir1"));
        assert!(matches!(&plan[3], RouterAction::SetNeighbour { inner, .. } if inner == "ir1"));
    }

    #[test]
    fn neighbour_mac_change_replaces_and_stale_ones_go() {
        let mut seen = converged();
        let ns = seen.namespaces.get_mut("qrouter-aaa").unwrap();
        let old = Neighbour {
            ip: "10.0.0.5".parse().unwrap(),
            mac: mac(77),
        };
        let stale = Neighbour {
            ip: "10.0.0.9".parse().unwrap(),
            mac: mac(78),
        };
        ns.neighbours = [("ir1".to_string(), old), ("ir1".to_string(), stale)].into();
        let plan = plan_routers(&spec(), &seen);
        assert_eq!(
            plan,
            vec![
                RouterAction::DelNeighbour {
                    netns: "qrouter-aaa".into(),
                    inner: "ir1".into(),
                    ip: stale.ip,
                },
                RouterAction::SetNeighbour {
                    netns: "qrouter-aaa".into(),
                    inner: "ir1".into(),
                    neighbour: spec().routers[0].neighbours[0],
                },
            ]
        );
    }

    #[test]
    fn gateway_removed_drops_the_default_route_and_forwarding_is_restored() {
        let mut s = spec();
        s.routers[0].default_route = None;
        let mut seen = converged();
        seen.namespaces.get_mut("qrouter-aaa").unwrap().forwarding = false;
        assert_eq!(
            plan_routers(&s, &seen),
            vec![
                RouterAction::ConfigureNetns {
                    netns: "qrouter-aaa".into()
                },
                RouterAction::DelDefaultRoute {
                    netns: "qrouter-aaa".into()
                },
            ]
        );
    }
}
