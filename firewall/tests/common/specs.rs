//! Spec builders shared by the snapshot and namespace tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use nubo_firewall::{
    Direction, EtherType, FirewallSpec, GroupSpec, PortSpec, Protocol, Remote, RuleSpec,
};
use nubo_netid::MacAddr;

/// A port with one IPv4 address and port security on.
pub fn port(id: &str, tap: &str, mac: [u8; 6], ip: &str, groups: &[&str]) -> PortSpec {
    PortSpec {
        port_id: id.to_string(),
        tap: tap.to_string(),
        mac: MacAddr(mac),
        ips: vec![ip.parse().expect("test ip")],
        groups: groups.iter().map(|g| g.to_string()).collect(),
        port_security: true,
    }
}

/// A rule with IPv4 ethertype.
pub fn rule(
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
        remote,
    }
}

/// A CIDR remote.
pub fn cidr(s: &str) -> Remote {
    Remote::Cidr(s.parse().expect("test cidr"))
}

/// OpenStack's default group: egress anywhere, ingress from members.
pub fn default_group(id: &str, members: &[&str]) -> GroupSpec {
    group(
        id,
        vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(
                Direction::Ingress,
                Protocol::Any,
                None,
                Remote::Group(id.to_string()),
            ),
        ],
        members,
    )
}

/// A group with the given rules and members.
pub fn group(id: &str, rules: Vec<RuleSpec>, members: &[&str]) -> GroupSpec {
    GroupSpec {
        id: id.to_string(),
        rules,
        members: members
            .iter()
            .map(|m| m.parse::<IpAddr>().expect("test ip"))
            .collect(),
    }
}

/// Builds a spec from ports and groups.
pub fn spec(ports: Vec<PortSpec>, groups: Vec<GroupSpec>) -> FirewallSpec {
    FirewallSpec {
        ports,
        groups: groups
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect::<BTreeMap<_, _>>(),
        uplinks: Vec::new(),
    }
}

/// One port whose group has `n` distinct ingress TCP rules (one per port
/// number, each from its own /32), plus egress anywhere.
pub fn many_rules(n: u16, tap: &str, mac: [u8; 6], ip: &str) -> FirewallSpec {
    let mut rules = vec![rule(Direction::Egress, Protocol::Any, None, Remote::Any)];
    for i in 0..n {
        let src = format!("10.99.{}.{}/32", i / 250, i % 250 + 1);
        rules.push(rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some((20000 + i, 20000 + i)),
            cidr(&src),
        ));
    }
    spec(
        vec![port("p-many", tap, mac, ip, &["many"])],
        vec![group("many", rules, &[])],
    )
}
