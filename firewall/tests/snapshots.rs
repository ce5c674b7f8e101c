//! Golden files of rendered rulesets (`UPDATE_SNAPSHOTS=1` rewrites them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::snapshot::assert_snapshot;
use common::specs::*;
use nubo_firewall::{
    router_ruleset, ruleset, ruleset_with_mode, Direction, ExternalLeg, FirewallSpec, FloatingNat,
    InternalLeg, Protocol, Remote, RenderMode, RoutedGateway, RouterNatSpec,
};
use nubo_netid::MacAddr;

const MAC_A: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x11];
const MAC_B: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x12];

/// The specs covered by snapshots (also applied for real by the netns tests).
pub fn cases() -> Vec<(&'static str, FirewallSpec)> {
    let default_group_spec = spec(
        vec![port("port-a", "tapa", MAC_A, "10.77.0.11", &["default"])],
        vec![default_group("default", &["10.77.0.11"])],
    );
    let ssh = spec(
        vec![port("port-a", "tapa", MAC_A, "10.77.0.11", &["ssh"])],
        vec![group(
            "ssh",
            vec![rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some((22, 22)),
                cidr("10.77.0.0/24"),
            )],
            &[],
        )],
    );
    let remote_group = spec(
        vec![port("port-a", "tapa", MAC_A, "10.77.0.11", &["web"])],
        vec![
            group(
                "web",
                vec![
                    rule(
                        Direction::Ingress,
                        Protocol::Tcp,
                        Some((80, 80)),
                        Remote::Group("lb".into()),
                    ),
                    rule(
                        Direction::Ingress,
                        Protocol::Tcp,
                        Some((443, 443)),
                        Remote::Group("lb".into()),
                    ),
                    rule(
                        Direction::Ingress,
                        Protocol::Icmp,
                        None,
                        Remote::Group("lb".into()),
                    ),
                ],
                &["10.77.0.11"],
            ),
            group("lb", vec![], &["10.77.0.20", "10.77.0.21"]),
        ],
    );
    // A secured port without any group (Neutron's `security_groups: []`):
    // anti-spoofing, then nothing but ARP/DHCP/ND to other ports and only
    // DHCP and metadata to the host.
    let mut anti_spoof = spec(
        vec![port("port-a", "tapa", MAC_A, "10.77.0.11", &[])],
        vec![],
    );
    anti_spoof.ports[0]
        .ips
        .push("fd00::11".parse().expect("ip"));
    let mut unsecured = port("port-b", "tapb", MAC_B, "10.77.0.12", &["default"]);
    unsecured.port_security = false;
    let two_ports = spec(
        vec![
            port("port-a", "tapa", MAC_A, "10.77.0.11", &["default", "ssh"]),
            port(
                "port-c",
                "tapc",
                [0x02, 0x77, 0, 0, 0, 0x13],
                "10.77.0.13",
                &["default"],
            ),
            unsecured,
        ],
        vec![
            default_group("default", &["10.77.0.11", "10.77.0.13"]),
            group(
                "ssh",
                vec![
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
                        cidr("10.77.0.0/16"),
                    ),
                ],
                &["10.77.0.11"],
            ),
        ],
    );
    let mut routed = spec(
        vec![port("port-a", "tapa", MAC_A, "10.77.0.11", &["default"])],
        vec![default_group("default", &["10.77.0.11"])],
    );
    let gw = |vxlan: &str, ip: &str, mac: [u8; 6]| RoutedGateway {
        vxlan: vxlan.into(),
        ip: ip.parse().expect("ip"),
        mac: MacAddr(mac),
        node_mac: MacAddr([0x02, 0x6e, 0, 0, 0, 0x01]),
    };
    routed.routed = vec![
        // Two subnets of one network behind vx-100, one gateway MAC.
        gw("vx-100", "10.77.1.1", [0xfa, 0x16, 0x3f, 0, 0, 0x01]),
        gw("vx-100", "10.77.0.1", [0xfa, 0x16, 0x3f, 0, 0, 0x01]),
        gw("vx-200", "10.88.0.1", [0xfa, 0x16, 0x3f, 0, 0, 0x02]),
        // Dropped with a warning: bad name, multicast MAC, node MAC =
        // gateway MAC, a second node MAC for the same gateway MAC.
        gw("vx 300", "10.99.0.1", [0xfa, 0x16, 0x3f, 0, 0, 0x03]),
        gw("vx-300", "10.99.0.1", [0x01, 0x16, 0x3f, 0, 0, 0x03]),
        RoutedGateway {
            node_mac: MacAddr([0xfa, 0x16, 0x3f, 0, 0, 0x04]),
            ..gw("vx-400", "10.99.0.1", [0xfa, 0x16, 0x3f, 0, 0, 0x04])
        },
        RoutedGateway {
            node_mac: MacAddr([0x02, 0x6e, 0, 0, 0, 0x09]),
            ..gw("vx-200", "10.88.1.1", [0xfa, 0x16, 0x3f, 0, 0, 0x02])
        },
    ];
    // Two ports, one administratively down: dropped first, both ways.
    let mut down = port("port-d", "tapd", MAC_B, "10.77.0.12", &["default"]);
    down.admin_state_up = false;
    let port_down = spec(
        vec![
            port("port-a", "tapa", MAC_A, "10.77.0.11", &["default"]),
            down,
        ],
        vec![default_group("default", &["10.77.0.11", "10.77.0.12"])],
    );
    vec![
        ("default_group", default_group_spec),
        ("port_down", port_down),
        ("icmp_type_code", icmp_type_code()),
        ("tcp22_from_cidr", ssh),
        ("remote_group", remote_group),
        ("anti_spoof", anti_spoof),
        ("routed_gateways", routed),
        ("two_ports", two_ports),
    ]
}

#[test]
fn rendered_rulesets_match_snapshots() {
    for (name, spec) in cases() {
        assert_snapshot(&format!("{name}.nft"), ruleset(&spec).text());
    }
    let (_, two) = cases().pop().expect("cases");
    assert_snapshot(
        "two_ports_linear.nft",
        ruleset_with_mode(&two, RenderMode::Linear).text(),
    );
}

#[test]
fn rendering_is_deterministic_and_order_independent() {
    for (_, spec) in cases() {
        let mut shuffled = spec.clone();
        shuffled.ports.reverse();
        for g in shuffled.groups.values_mut() {
            g.rules.reverse();
            g.members.reverse();
        }
        let a = ruleset(&spec);
        assert_eq!(a, ruleset(&spec));
        assert_eq!(a, ruleset(&shuffled));
    }
}

#[test]
fn fingerprint_changes_with_the_spec() {
    let cases = cases();
    let prints: std::collections::BTreeSet<String> = cases
        .iter()
        .map(|(_, s)| ruleset(s).fingerprint().to_string())
        .collect();
    assert_eq!(prints.len(), cases.len());
}

#[test]
fn many_rules_stay_a_constant_number_of_nft_rules() {
    let count_rules = |text: &str| {
        text.lines()
            .filter(|l| l.ends_with(" accept") || l.ends_with(" return"))
            .count()
    };
    let small = ruleset(&many_rules(10, "tapa", MAC_A, "10.77.0.11"));
    let big = ruleset(&many_rules(10_000, "tapa", MAC_A, "10.77.0.11"));
    assert_eq!(count_rules(small.text()), count_rules(big.text()));
    let linear = ruleset_with_mode(
        &many_rules(10_000, "tapa", MAC_A, "10.77.0.11"),
        RenderMode::Linear,
    );
    assert!(count_rules(linear.text()) > 10_000);
}

/// Router namespace tables: a router with a SNAT address and two floating
/// IPs on two subnets, the same without SNAT address, and one without a
/// gateway.
fn router_cases() -> Vec<(&'static str, RouterNatSpec)> {
    let fip = |floating: &str, fixed: &str| FloatingNat {
        floating: floating.parse().expect("ip"),
        fixed: fixed.parse().expect("ip"),
    };
    let internal = vec![
        InternalLeg {
            leg: "qr0000000000b".into(),
            cidr: "10.77.1.0/24".parse().expect("cidr"),
        },
        InternalLeg {
            leg: "qr0000000000a".into(),
            cidr: "10.77.0.0/24".parse().expect("cidr"),
        },
    ];
    let full = RouterNatSpec {
        external: Some(ExternalLeg {
            leg: "qg0000000000e".into(),
            snat: Some("10.78.0.10".parse().expect("ip")),
            floating: vec![
                fip("10.78.0.21", "10.77.1.6"),
                fip("10.78.0.20", "10.77.0.5"),
            ],
        }),
        internal: internal.clone(),
    };
    let mut no_snat = full.clone();
    if let Some(ext) = no_snat.external.as_mut() {
        ext.snat = None;
    }
    let no_gateway = RouterNatSpec {
        external: None,
        internal,
    };
    vec![
        ("router_full", full),
        ("router_no_snat", no_snat),
        ("router_no_gateway", no_gateway),
    ]
}

#[test]
fn router_rulesets_match_snapshots() {
    for (name, spec) in router_cases() {
        assert_snapshot(
            &format!("{name}.nft"),
            &router_ruleset(&spec).expect("valid spec"),
        );
    }
}
