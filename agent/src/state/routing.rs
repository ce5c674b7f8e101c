//! The routers this node runs a copy of, resolved from the cache by a pure
//! function (part of [`crate::state::desired::rebuild`]).
//!
//! A router has work on this node when one of its networks has a local
//! port. Its copy here then gets a leg on each of its networks (so that
//! traffic between them is routed here, whatever node the destination is
//! on) and, with a gateway, a leg on the external network carrying this
//! node's SNAT address (`router-snat/<node>/<router>`, allocated by the
//! leader) and the floating IPs of the local ports. Names and MACs are
//! derived, never stored: the gateway MAC of a (router, network) is the
//! same on every node, the external leg's MAC is this node's own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nubo_common::model::Router;
use nubo_common::{NetworkId, NodeName, PortId, RouterId};
use nubo_netid::{hashed_name, MacAddr};

use crate::state::cache::Cache;

/// A router's copy on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRouter {
    /// The router.
    pub id: RouterId,
    /// A leg per routed network.
    pub legs: Vec<DesiredRouterLeg>,
    /// The way out, when the router has a gateway.
    pub external: Option<DesiredExternalLeg>,
    /// Every port of the routed networks (cluster-wide): the namespace's
    /// permanent neighbour entries.
    pub neighbours: BTreeSet<(Ipv4Addr, MacAddr)>,
}

/// A leg of a router on one of its tenant networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRouterLeg {
    /// The network.
    pub network: NetworkId,
    /// Its subnet.
    pub cidr: Ipv4Net,
    /// Its gateway address (the leg's address).
    pub gateway: Ipv4Addr,
    /// The gateway MAC, the same on every node.
    pub mac: MacAddr,
    /// The veth end on the network's bridge.
    pub host: String,
    /// The veth end in the router namespace.
    pub inner: String,
}

/// A router's leg on its external network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredExternalLeg {
    /// The external network.
    pub network: NetworkId,
    /// Its subnet.
    pub cidr: Ipv4Net,
    /// Its gateway (the upstream router): the default route.
    pub upstream: Option<Ipv4Addr>,
    /// This node's SNAT address for the router (`None`: not allocated yet;
    /// outbound traffic without a floating IP waits for it).
    pub snat: Option<Ipv4Addr>,
    /// Floating IP → fixed IP, for the floating IPs of local ports.
    pub floating: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The leg's MAC (this node's own).
    pub mac: MacAddr,
    /// The veth end on the external network's bridge.
    pub host: String,
    /// The veth end in the router namespace.
    pub inner: String,
}

/// The MAC this node gives the frames its router copies send to other
/// nodes (see nubo-firewall's routed gateways): never a gateway MAC.
pub fn node_routing_mac(node: &NodeName) -> MacAddr {
    MacAddr::router_mac(&["node", node.as_str()])
}

/// The names of a router's leg on `network`: its host end, its inner end.
fn leg_names(router: &RouterId, network: &NetworkId, external: bool) -> (String, String) {
    let (r, n) = (router.to_string(), network.to_string());
    // Both host ends are `qr…`: the host ruleset tracks traffic from
    // router legs by that pattern (nubo-firewall `ROUTER_LEG_PATTERN`).
    let (host, inner) = if external { ("qr", "ig") } else { ("qr", "ir") };
    (hashed_name(host, &[&r, &n]), hashed_name(inner, &[&r, &n]))
}

/// The routers with work on `node`, given the networks with local ports and
/// the local ports. Pure.
pub fn resolve_routers(
    cache: &Cache,
    node: &NodeName,
    local_networks: &BTreeSet<NetworkId>,
    local_ports: &BTreeSet<PortId>,
) -> BTreeMap<RouterId, DesiredRouter> {
    cache
        .routers
        .values()
        .filter(|r| !r.disabled)
        .filter(|r| r.subnets.iter().any(|n| local_networks.contains(n)))
        .map(|r| (r.id, resolve_router(cache, node, r, local_ports)))
        .collect()
}

fn resolve_router(
    cache: &Cache,
    node: &NodeName,
    r: &Router,
    local_ports: &BTreeSet<PortId>,
) -> DesiredRouter {
    let rid = r.id.to_string();
    let mut legs = Vec::new();
    for net_id in &r.subnets {
        let Some(net) = cache.networks.get(net_id) else {
            tracing::warn!(router = %r.id, network = %net_id, "routed network not found; leg left out");
            continue;
        };
        // Joined by a port: the router answers on the port's address and
        // MAC; otherwise on the network's gateway, with its own MAC.
        let (address, mac) = match r.interface_port(net_id) {
            Some(p) => (Some(p.ip), p.mac),
            None => (
                net.gateway,
                MacAddr::router_mac(&[&rid, &net_id.to_string()]),
            ),
        };
        let (Some(cidr), Some(gateway)) = (net.cidr, address) else {
            tracing::warn!(router = %r.id, network = %net_id, "routed network has no subnet or no gateway; leg left out");
            continue;
        };
        let (host, inner) = leg_names(&r.id, net_id, false);
        legs.push(DesiredRouterLeg {
            network: *net_id,
            cidr,
            gateway,
            mac,
            host,
            inner,
        });
    }
    let routed: BTreeSet<NetworkId> = legs.iter().map(|l| l.network).collect();
    let neighbours = cache
        .ports
        .values()
        .filter(|p| routed.contains(&p.network) && p.router.is_none())
        .filter_map(|p| Some((p.ip?, p.mac)))
        .collect();
    let external = r.gateway.as_ref().and_then(|gw| {
        let Some(net) = cache.networks.get(&gw.network) else {
            tracing::warn!(router = %r.id, network = %gw.network, "external network not found; no way out");
            return None;
        };
        let Some(cidr) = net.cidr else {
            tracing::warn!(router = %r.id, network = %gw.network, "external network has no subnet; no way out");
            return None;
        };
        let (host, inner) = leg_names(&r.id, &gw.network, true);
        let floating = cache
            .floating_ips
            .values()
            .filter(|f| f.router == Some(r.id) && f.network == gw.network)
            .filter(|f| f.port.is_some_and(|p| local_ports.contains(&p)))
            .filter_map(|f| Some((f.address, f.fixed_ip?)))
            .collect();
        Some(DesiredExternalLeg {
            network: gw.network,
            cidr,
            upstream: net.gateway,
            snat: cache
                .router_snats
                .get(&(node.clone(), r.id))
                .filter(|s| s.network == gw.network)
                .map(|s| s.ip),
            floating,
            mac: MacAddr::router_mac(&[&rid, node.as_str()]),
            host,
            inner,
        })
    });
    DesiredRouter {
        id: r.id,
        legs,
        external,
        neighbours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;

    #[test]
    fn a_router_has_work_only_where_its_networks_have_ports() {
        let mut w = World::new();
        let (n1, n2) = (node_name("n1"), node_name("n2"));
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        let a = w.network(100, 0);
        let other = w.network(200, 0);
        let r = w.router(&[a], None);
        w.instance_on(&n1, a, &[]);
        w.instance_on(&n2, other, &[]);
        assert_eq!(
            build(&w.cache, &n1, 1500)
                .routers
                .keys()
                .collect::<Vec<_>>(),
            [&r]
        );
        assert!(build(&w.cache, &n2, 1500).routers.is_empty());
    }

    #[test]
    fn a_disabled_router_has_work_nowhere() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let a = w.network(100, 0);
        let r = w.router(&[a], None);
        w.instance_on(&n1, a, &[]);
        assert_eq!(build(&w.cache, &n1, 1500).routers.len(), 1);
        if let Some(router) = w.cache.routers.get_mut(&r) {
            router.disabled = true;
        }
        assert!(build(&w.cache, &n1, 1500).routers.is_empty());
    }

    #[test]
    fn legs_snat_local_floating_ips_and_neighbours() {
        let mut w = World::new();
        let (n1, n2) = (node_name("n1"), node_name("n2"));
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        let a = w.network(100, 0);
        let b = w.network(200, 0);
        let ext = w.external_network();
        let r = w.router(&[a, b], Some(ext));
        let (_, p1) = w.instance_on(&n1, a, &[]);
        let (_, p2) = w.instance_on(&n2, a, &[]);
        w.floating_ip(ext, "10.77.0.50", &p1, r);
        w.floating_ip(ext, "10.77.0.51", &p2, r);
        w.router_snat(&n1, r, ext, "10.77.0.10");
        // Another node's SNAT record is not this node's.
        w.router_snat(&n2, r, ext, "10.77.0.11");

        let d1 = build(&w.cache, &n1, 1500);
        let d2 = build(&w.cache, &n2, 1500);
        let (r1, r2) = (&d1.routers[&r], &d2.routers[&r]);
        // A leg on each routed network, the same gateway MAC on every node.
        assert_eq!(r1.legs.len(), 2);
        assert_eq!(r1.legs, r2.legs);
        assert_eq!(
            r1.legs[0].gateway,
            "192.168.0.1".parse::<Ipv4Addr>().unwrap()
        );
        // The external leg: this node's SNAT address, its own MAC, only
        // the floating IPs of its ports.
        let (x1, x2) = (r1.external.as_ref().unwrap(), r2.external.as_ref().unwrap());
        assert_eq!(x1.snat, Some("10.77.0.10".parse().unwrap()));
        assert_ne!(x1.mac, x2.mac);
        assert_eq!(x1.host, x2.host, "the same name on every node");
        assert_eq!(
            x1.floating.iter().collect::<Vec<_>>(),
            [(&"10.77.0.50".parse::<Ipv4Addr>().unwrap(), &p1.ip.unwrap())]
        );
        assert_eq!(x1.upstream, Some("10.77.0.1".parse().unwrap()));
        // Every port of the routed networks is a neighbour, wherever it is.
        assert!(r1.neighbours.contains(&(p1.ip.unwrap(), p1.mac)));
        assert!(r1.neighbours.contains(&(p2.ip.unwrap(), p2.mac)));
        // The routed network without a local port, and the external one,
        // are present with the legs as their only ports.
        for net in [b, ext] {
            let n = &d1.networks[&net];
            assert!(n.local_ports.is_empty());
            assert_eq!(n.router_legs.len(), 1, "{net}");
        }
        assert!(d1.networks[&a]
            .router_legs
            .iter()
            .any(|l| l.mac == r1.legs[0].mac));
    }

    #[test]
    fn a_router_joined_by_a_port_answers_on_its_address_and_mac() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let a = w.network(100, 0);
        let b = w.network(200, 0);
        let r = w.router(&[a], None);
        let rp = w.router_port(r, b, "192.168.0.77");
        w.instance_on(&n1, a, &[]);
        let (_, guest_b) = w.instance_on(&n1, b, &[]);
        let d = build(&w.cache, &n1, 1500);
        let legs = &d.routers[&r].legs;
        let by_port = legs.iter().find(|l| l.network == b).unwrap();
        assert_eq!(
            (Some(by_port.gateway), by_port.mac),
            (rp.ip, rp.mac),
            "the port's address and MAC, not the network's gateway"
        );
        // Positive control: the network joined by subnet keeps its gateway.
        let by_net = legs.iter().find(|l| l.network == a).unwrap();
        assert_eq!(by_net.gateway, "192.168.0.1".parse::<Ipv4Addr>().unwrap());
        assert_ne!(by_net.mac, rp.mac);
        // The router's own port is no neighbour; the guest's is.
        let n = &d.routers[&r].neighbours;
        assert!(!n.iter().any(|(_, m)| *m == rp.mac), "{n:?}");
        assert!(n.contains(&(guest_b.ip.unwrap(), guest_b.mac)));
    }

    #[test]
    fn a_missing_or_gatewayless_network_loses_its_leg_not_the_router() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let a = w.network(100, 0);
        let b = w.network(200, 0);
        let mut net_b = w.cache.networks[&b].clone();
        net_b.gateway = None;
        w.cache.apply(
            &nubo_common::keys::network(&b),
            Some(&nubo_common::model::encode(&net_b)),
            999,
        );
        let gone = NetworkId::new_random();
        let r = w.router(&[a, b, gone], None);
        w.instance_on(&n1, a, &[]);
        let d = build(&w.cache, &n1, 1500);
        let legs: Vec<NetworkId> = d.routers[&r].legs.iter().map(|l| l.network).collect();
        assert_eq!(legs, [a]);
        assert!(d.routers[&r].external.is_none());
    }
}
