//! Validation of the spec and compilation of each port's rules into the
//! disjoint set elements the renderer writes out.
//!
//! Invalid input never aborts: the offending port or rule is logged and
//! dropped (a dropped rule only ever allows less).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tracing::warn;

use crate::interval::{merge_ranges, sweep, Range};
use crate::names::valid_ifname;
use crate::spec::{
    Direction, EtherType, FirewallSpec, PortSpec, Protocol, Remote, RoutedGateway, RuleSpec,
};

/// Protocols whose header starts with 16-bit source and destination ports
/// (TCP, UDP, DCCP, SCTP, UDP-Lite): the only ones a port range may use.
const PORT_PROTOCOLS: [u8; 5] = [6, 17, 33, 132, 136];

/// A rule after validation, in the form both render modes use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidRule {
    /// IP protocol number, `None` for any.
    pub proto: Option<u8>,
    /// Inclusive destination port range.
    pub ports: Option<(u16, u16)>,
    /// ICMP(v6) type and optional code (`proto` is then 1 or 58).
    pub icmp: Option<(u8, Option<u8>)>,
    /// Remote end.
    pub remote: ValidRemote,
}

/// Remote end of a validated rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ValidRemote {
    /// An address range (a CIDR, or the whole family for "any").
    Range(Range),
    /// Members of a security group (by id).
    Group(String),
}

/// Allowed traffic of one port, one direction and one address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    /// Validated rules, sorted and deduplicated (used by linear mode).
    pub rules: Vec<ValidRule>,
    /// Address ranges allowing any protocol.
    pub any: Vec<Range>,
    /// Address range . protocol elements.
    pub proto: Vec<(Range, u8)>,
    /// Address range . protocol . port range elements.
    pub ports: Vec<(Range, u8, (u16, u16))>,
    /// Remote-group rules, by group id.
    pub groups: BTreeMap<String, GroupSide>,
    /// Rules with an ICMP type (and code): rendered one rule each in both
    /// modes (rare, and a type/code is no set element of the sweep).
    pub icmp: Vec<ValidRule>,
}

/// Remote-group rules of one side, for one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSide {
    /// Some rule allows any protocol from/to the group.
    pub any: bool,
    /// Protocols allowed on all ports.
    pub proto: BTreeSet<u8>,
    /// Protocol . port range elements (disjoint).
    pub ports: Vec<(u8, (u16, u16))>,
}

/// The compiled policy of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    /// The validated input.
    pub port: PortSpec,
    /// Ingress and egress, for IPv4 and IPv6, keyed by (direction, family).
    pub sides: BTreeMap<(Direction, EtherType), Side>,
}

/// The validated, compiled spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Ports, sorted by port id, with unique ids and taps.
    pub ports: Vec<PortPolicy>,
    /// Member addresses of every group referenced as a remote, by group id.
    pub members: BTreeMap<String, (BTreeSet<IpAddr>, BTreeSet<IpAddr>)>,
    /// Provider uplinks, valid names only, sorted, once each.
    pub uplinks: BTreeSet<String>,
    /// Valid routed gateways by VXLAN device, sorted, once each.
    pub routed: BTreeMap<String, Vec<RoutedGateway>>,
}

/// Validates and compiles the spec.
pub fn compile(spec: &FirewallSpec) -> Compiled {
    let mut by_id: BTreeMap<&str, &PortSpec> = BTreeMap::new();
    for port in &spec.ports {
        if !valid_ifname(&port.tap) {
            warn!(port = %port.port_id, tap = %port.tap, "invalid tap name, port dropped from the firewall");
            continue;
        }
        if by_id.insert(&port.port_id, port).is_some() {
            warn!(port = %port.port_id, "duplicate port id, keeping the last one");
        }
    }
    let mut taps: BTreeSet<&str> = BTreeSet::new();
    let mut out = Compiled::default();
    for u in &spec.uplinks {
        if valid_ifname(u) {
            out.uplinks.insert(u.clone());
        } else {
            warn!(uplink = %u, "invalid uplink name, ignored by the firewall");
        }
    }
    out.routed = compile_routed(&spec.routed);
    let mut remote_groups: BTreeSet<String> = BTreeSet::new();
    for (id, port) in by_id {
        if !taps.insert(&port.tap) {
            warn!(port = %id, tap = %port.tap, "tap already used by another port, port dropped from the firewall");
            continue;
        }
        let mut port = port.clone();
        port.ips.sort();
        port.ips.dedup();
        port.groups.sort();
        port.groups.dedup();
        let mut sides: BTreeMap<(Direction, EtherType), Vec<ValidRule>> = BTreeMap::new();
        if port.port_security {
            for gid in &port.groups {
                let Some(group) = spec.groups.get(gid) else {
                    warn!(port = %id, group = %gid, "port refers to an unknown security group, ignored");
                    continue;
                };
                for rule in &group.rules {
                    if let Some(valid) = validate(rule, gid) {
                        if let ValidRemote::Group(g) = &valid.remote {
                            remote_groups.insert(g.clone());
                        }
                        sides
                            .entry((rule.direction, rule.ethertype))
                            .or_default()
                            .push(valid);
                    }
                }
            }
        }
        let sides = sides
            .into_iter()
            .map(|(k, rules)| (k, build_side(rules)))
            .collect();
        out.ports.push(PortPolicy { port, sides });
    }
    for gid in remote_groups {
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        match spec.groups.get(&gid) {
            Some(group) => {
                for ip in &group.members {
                    match ip {
                        IpAddr::V4(_) => v4.insert(*ip),
                        IpAddr::V6(_) => v6.insert(*ip),
                    };
                }
            }
            None => warn!(group = %gid, "remote group unknown, it has no members"),
        }
        out.members.insert(gid, (v4, v6));
    }
    out
}

/// Validates the routed gateways: a valid device name, a unicast gateway
/// address, unicast non-zero MACs, a node MAC that is not the gateway MAC,
/// and one node MAC per gateway MAC and device (the rewrite must be
/// unambiguous). Invalid entries are logged and dropped: without them the
/// gateway is only less confined, never anything else filtered.
fn compile_routed(routed: &[RoutedGateway]) -> BTreeMap<String, Vec<RoutedGateway>> {
    let unicast = |m: &nubo_netid::MacAddr| !m.is_zero() && m.0[0] & 1 == 0;
    let mut sorted: Vec<&RoutedGateway> = routed.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out: BTreeMap<String, Vec<RoutedGateway>> = BTreeMap::new();
    for gw in sorted {
        let problem = if !valid_ifname(&gw.vxlan) {
            Some("invalid VXLAN device name")
        } else if gw.ip.is_unspecified() || gw.ip.is_broadcast() || gw.ip.is_multicast() {
            Some("gateway address is not unicast")
        } else if !unicast(&gw.mac) || !unicast(&gw.node_mac) {
            Some("gateway and node MACs must be unicast and non-zero")
        } else if gw.mac == gw.node_mac {
            Some("node MAC equals the gateway MAC")
        } else if out.get(&gw.vxlan).is_some_and(|v| {
            v.iter()
                .any(|o| o.mac == gw.mac && o.node_mac != gw.node_mac)
        }) {
            Some("another node MAC is already given for this gateway MAC on this device")
        } else {
            None
        };
        match problem {
            Some(why) => warn!(
                vxlan = %gw.vxlan, ip = %gw.ip, mac = %gw.mac, node_mac = %gw.node_mac,
                "{why}: routed gateway ignored by the firewall"
            ),
            None => out.entry(gw.vxlan.clone()).or_default().push(gw.clone()),
        }
    }
    out
}

/// Checks one rule; `None` (with a warning) when it cannot be enforced as
/// written.
fn validate(rule: &RuleSpec, group: &str) -> Option<ValidRule> {
    let proto = match rule.protocol {
        Protocol::Any => None,
        Protocol::Tcp => Some(6),
        Protocol::Udp => Some(17),
        Protocol::Icmp => Some(match rule.ethertype {
            EtherType::V4 => 1,
            EtherType::V6 => 58,
        }),
        Protocol::Number(n) => Some(n),
    };
    if let Some((lo, hi)) = rule.port_range {
        let ok = proto.is_some_and(|p| PORT_PROTOCOLS.contains(&p)) && lo <= hi;
        if !ok {
            warn!(
                group,
                ?rule,
                "port range needs TCP/UDP/SCTP/DCCP/UDP-Lite and min <= max; rule ignored"
            );
            return None;
        }
    }
    if rule.icmp.is_some() && !(rule.protocol == Protocol::Icmp && rule.port_range.is_none()) {
        warn!(
            group,
            ?rule,
            "an ICMP type/code needs protocol ICMP and no port range; rule ignored"
        );
        return None;
    }
    let remote = match &rule.remote {
        Remote::Any => ValidRemote::Range(match rule.ethertype {
            EtherType::V4 => (0, u128::from(u32::MAX)),
            EtherType::V6 => (0, u128::MAX),
        }),
        Remote::Cidr(net) => match (net, rule.ethertype) {
            (IpNet::V4(n), EtherType::V4) => ValidRemote::Range((
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            )),
            (IpNet::V6(n), EtherType::V6) => {
                ValidRemote::Range((u128::from(n.network()), u128::from(n.broadcast())))
            }
            _ => {
                warn!(
                    group,
                    ?rule,
                    "remote prefix does not match the rule's ethertype; rule ignored"
                );
                return None;
            }
        },
        Remote::Group(g) => ValidRemote::Group(g.clone()),
    };
    Some(ValidRule {
        proto,
        ports: rule.port_range,
        icmp: rule.icmp,
        remote,
    })
}

/// Payload of one address-range element, for the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Allow {
    Any,
    Proto(u8),
    Ports(u8, (u16, u16)),
}

/// What one elementary address range allows, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Profile {
    any: bool,
    proto: BTreeSet<u8>,
    ports: Vec<(u8, (u16, u16))>,
}

/// Normalises a list of allowances: a protocol allowed on all ports makes
/// its port ranges redundant, and port ranges are merged per protocol. When
/// any protocol is allowed the rest is left out of the other sets.
fn profile(allows: &[&Allow]) -> Profile {
    let any = allows.iter().any(|a| matches!(a, Allow::Any));
    let proto: BTreeSet<u8> = allows
        .iter()
        .filter_map(|a| match a {
            Allow::Proto(p) => Some(*p),
            _ => None,
        })
        .collect();
    let ports = merge_ports(allows.iter().filter_map(|a| match a {
        Allow::Ports(p, r) if !proto.contains(p) => Some((*p, *r)),
        _ => None,
    }));
    if any {
        Profile {
            any,
            proto: BTreeSet::new(),
            ports: Vec::new(),
        }
    } else {
        Profile { any, proto, ports }
    }
}

/// Merges port ranges per protocol into sorted disjoint ranges.
fn merge_ports(items: impl Iterator<Item = (u8, (u16, u16))>) -> Vec<(u8, (u16, u16))> {
    let mut per: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
    for (p, r) in items {
        per.entry(p).or_default().push(r);
    }
    per.into_iter()
        .flat_map(|(p, rs)| merge_ranges(rs).into_iter().map(move |r| (p, r)))
        .collect()
}

fn build_side(mut rules: Vec<ValidRule>) -> Side {
    rules.sort();
    rules.dedup();
    let mut items: Vec<(Range, Allow)> = Vec::new();
    let mut groups: BTreeMap<String, Vec<Allow>> = BTreeMap::new();
    let mut icmp = Vec::new();
    for rule in &rules {
        if rule.icmp.is_some() {
            icmp.push(rule.clone());
            continue;
        }
        let allow = match (rule.proto, rule.ports) {
            (None, _) => Allow::Any,
            (Some(p), None) => Allow::Proto(p),
            (Some(p), Some(r)) => Allow::Ports(p, r),
        };
        match &rule.remote {
            ValidRemote::Range(r) => items.push((*r, allow)),
            ValidRemote::Group(g) => groups.entry(g.clone()).or_default().push(allow),
        }
    }
    let mut side = Side {
        rules: rules.clone(),
        icmp,
        ..Side::default()
    };
    for (range, prof) in sweep(&items, profile) {
        if prof.any {
            side.any.push(range);
        }
        side.proto.extend(prof.proto.iter().map(|p| (range, *p)));
        side.ports
            .extend(prof.ports.iter().map(|(p, r)| (range, *p, *r)));
    }
    side.any = merge_ranges(side.any);
    for (gid, allows) in groups {
        let refs: Vec<&Allow> = allows.iter().collect();
        let prof = profile(&refs);
        side.groups.insert(
            gid,
            GroupSide {
                any: prof.any,
                proto: prof.proto,
                ports: prof.ports,
            },
        );
    }
    side
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::GroupSpec;
    use nubo_netid::MacAddr;

    fn rule(
        direction: Direction,
        protocol: Protocol,
        ports: Option<(u16, u16)>,
        remote: Remote,
    ) -> RuleSpec {
        RuleSpec {
            direction,
            ethertype: EtherType::V4,
            protocol,
            port_range: ports,
            icmp: None,
            remote,
        }
    }

    fn spec_with(rules: Vec<RuleSpec>) -> FirewallSpec {
        let mut groups = BTreeMap::new();
        groups.insert(
            "g".to_string(),
            GroupSpec {
                id: "g".into(),
                rules,
                members: vec!["10.0.0.5".parse().unwrap()],
            },
        );
        FirewallSpec {
            ports: vec![PortSpec {
                port_id: "p1".into(),
                tap: "tap1".into(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                ips: vec!["10.0.0.5".parse().unwrap()],
                groups: vec!["g".into()],
                port_security: true,
                admin_state_up: true,
            }],
            groups,
            ..FirewallSpec::default()
        }
    }

    fn cidr(s: &str) -> Remote {
        Remote::Cidr(s.parse().unwrap())
    }

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()))
    }

    #[test]
    fn overlapping_cidrs_become_disjoint() {
        let spec = spec_with(vec![
            rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some((22, 22)),
                cidr("10.0.0.0/8"),
            ),
            rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some((20, 30)),
                cidr("10.1.0.0/16"),
            ),
        ]);
        let c = compile(&spec);
        let side = &c.ports[0].sides[&(Direction::Ingress, EtherType::V4)];
        assert_eq!(
            side.ports,
            vec![
                ((v4("10.0.0.0"), v4("10.0.255.255")), 6, (22, 22)),
                ((v4("10.1.0.0"), v4("10.1.255.255")), 6, (20, 30)),
                ((v4("10.2.0.0"), v4("10.255.255.255")), 6, (22, 22)),
            ]
        );
    }

    #[test]
    fn any_protocol_absorbs_narrower_rules() {
        let spec = spec_with(vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(
                Direction::Egress,
                Protocol::Udp,
                Some((53, 53)),
                cidr("10.0.0.0/24"),
            ),
        ]);
        let c = compile(&spec);
        let side = &c.ports[0].sides[&(Direction::Egress, EtherType::V4)];
        assert_eq!(side.any, vec![(0, u128::from(u32::MAX))]);
        assert!(side.ports.is_empty() && side.proto.is_empty());
    }

    #[test]
    fn protocol_without_ports_absorbs_port_ranges() {
        let spec = spec_with(vec![
            rule(
                Direction::Ingress,
                Protocol::Tcp,
                None,
                Remote::Group("g".into()),
            ),
            rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some((1, 5)),
                Remote::Group("g".into()),
            ),
            rule(
                Direction::Ingress,
                Protocol::Udp,
                Some((1, 5)),
                Remote::Group("g".into()),
            ),
            rule(
                Direction::Ingress,
                Protocol::Udp,
                Some((4, 9)),
                Remote::Group("g".into()),
            ),
        ]);
        let c = compile(&spec);
        let g = &c.ports[0].sides[&(Direction::Ingress, EtherType::V4)].groups["g"];
        assert_eq!(g.proto, BTreeSet::from([6]));
        assert_eq!(g.ports, vec![(17, (1, 9))]);
        assert!(c.members["g"]
            .0
            .contains(&"10.0.0.5".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn invalid_rules_are_dropped() {
        let mut bad_family = rule(Direction::Ingress, Protocol::Tcp, None, cidr("fd00::/64"));
        bad_family.ethertype = EtherType::V4;
        let spec = spec_with(vec![
            rule(
                Direction::Ingress,
                Protocol::Icmp,
                Some((8, 0)),
                Remote::Any,
            ),
            rule(Direction::Ingress, Protocol::Any, Some((1, 2)), Remote::Any),
            rule(Direction::Ingress, Protocol::Tcp, Some((9, 1)), Remote::Any),
            bad_family,
        ]);
        let c = compile(&spec);
        assert!(c.ports[0].sides.is_empty(), "{:?}", c.ports[0].sides);
    }

    #[test]
    fn bad_and_duplicate_taps_are_dropped() {
        let mut spec = spec_with(vec![]);
        let mut second = spec.ports[0].clone();
        second.port_id = "p2".into();
        let mut third = spec.ports[0].clone();
        third.port_id = "p3".into();
        third.tap = "bad\"tap".into();
        spec.ports.push(second);
        spec.ports.push(third);
        let c = compile(&spec);
        let ids: Vec<_> = c.ports.iter().map(|p| p.port.port_id.as_str()).collect();
        assert_eq!(ids, vec!["p1"]);
    }

    #[test]
    fn no_port_security_means_no_rules() {
        let mut spec = spec_with(vec![rule(
            Direction::Ingress,
            Protocol::Any,
            None,
            Remote::Any,
        )]);
        spec.ports[0].port_security = false;
        let c = compile(&spec);
        assert!(c.ports[0].sides.is_empty());
    }
}
