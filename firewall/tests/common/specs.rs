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
        admin_state_up: true,
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
        icmp: None,
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
        ..FirewallSpec::default()
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

/// ICMP rules with a type (and code) next to a plain one: each typed rule
/// is one nft rule in both modes; a type on a TCP rule is dropped.
pub fn icmp_type_code() -> FirewallSpec {
    let typed = |t: u8, c: Option<u8>, remote: Remote| RuleSpec {
        icmp: Some((t, c)),
        ..rule(Direction::Ingress, Protocol::Icmp, None, remote)
    };
    spec(
        vec![port(
            "port-a",
            "tapa",
            [0x02, 0x77, 0, 0, 0, 0x11],
            "10.77.0.11",
            &["icmp"],
        )],
        vec![
            group(
                "icmp",
                vec![
                    typed(3, Some(2), cidr("10.77.0.0/24")),
                    typed(0, Some(0), cidr("10.0.0.0/8")),
                    typed(8, None, Remote::Group("lb".into())),
                    rule(Direction::Egress, Protocol::Icmp, None, Remote::Any),
                    RuleSpec {
                        icmp: Some((8, None)),
                        ..rule(Direction::Ingress, Protocol::Tcp, None, Remote::Any)
                    },
                ],
                &["10.77.0.11"],
            ),
            group("lb", vec![], &["10.77.0.20"]),
        ],
    )
}
