use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::spec::{LocalPort, NetworkSpec, VXLAN_PORT};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

const LOCAL: &str = "10.99.0.1";
const PEER: &str = "10.99.0.2";
const PEER2: &str = "10.99.0.3";

fn net(vni: u32, taps: &[&str], vteps: &[&str], macs: &[(&str, &str)]) -> NetworkSpec {
    NetworkSpec {
        vni,
        ports: taps
            .iter()
            .enumerate()
            .map(|(i, t)| LocalPort {
                tap: t.to_string(),
                mac: MacAddr([0x02, 0, 0, 0, vni as u8, i as u8]),
            })
            .collect(),
        remote_vteps: vteps.iter().map(|v| ip(v)).collect(),
        remote_macs: macs.iter().map(|(m, v)| (mac(m), ip(v))).collect(),
    }
}

fn spec(networks: Vec<NetworkSpec>) -> OverlaySpec {
    OverlaySpec {
        underlay_ip: ip(LOCAL),
        underlay_mtu: 1500,
        networks,
    }
}

fn port(master: Option<&str>, mtu: u32, up: bool) -> ObservedPort {
    ObservedPort {
        kind: LinkKind::Tun,
        mtu,
        up,
        master: master.map(str::to_string),
    }
}

/// What a node that fully implements `spec` looks like, written out by hand
/// (independently of the planner).
fn converged(spec: &OverlaySpec) -> ObservedOverlay {
    let mut obs = ObservedOverlay::default();
    let mtu = u32::from(spec.underlay_mtu) - 50;
    for n in spec.networks.iter().filter(|n| !n.ports.is_empty()) {
        obs.bridges.insert(
            n.vni,
            ObservedBridge {
                kind: LinkKind::Bridge,
                mtu,
                up: true,
                addresses: [(ip("169.254.169.254"), 32), (ip("fe80::1"), 64)]
                    .into_iter()
                    .collect(),
            },
        );
        let mut fdb: BTreeSet<FdbEntry> = n
            .remote_vteps
            .iter()
            .map(|v| FdbEntry {
                mac: MacAddr::ZERO,
                dst: *v,
            })
            .collect();
        fdb.extend(
            n.remote_macs
                .iter()
                .map(|(m, v)| FdbEntry { mac: *m, dst: *v }),
        );
        obs.vxlans.insert(
            n.vni,
            ObservedVxlan {
                kind: LinkKind::Vxlan,
                vni: Some(n.vni),
                local: Some(spec.underlay_ip),
                dst_port: Some(VXLAN_PORT),
                learning: Some(false),
                group: None,
                mtu,
                up: true,
                master: Some(format!("nb-{}", n.vni)),
                fdb,
            },
        );
        for p in &n.ports {
            obs.ports.insert(
                p.tap.clone(),
                port(Some(&format!("nb-{}", n.vni)), mtu, true),
            );
        }
    }
    obs.ports.insert("eth0".into(), port(None, 1500, true));
    obs.ports.insert("lo".into(), port(None, 65536, true));
    obs
}

fn two_networks() -> OverlaySpec {
    spec(vec![
        net(
            100,
            &["tapa", "tapb"],
            &[PEER, PEER2],
            &[("02:00:00:00:00:aa", PEER)],
        ),
        net(200, &["tapc"], &[PEER], &[]),
    ])
}

#[test]
fn empty_spec_on_empty_node_is_empty_plan() {
    assert_eq!(plan(&spec(vec![]), &ObservedOverlay::default()), vec![]);
}

#[test]
fn converged_node_gives_empty_plan() {
    let s = two_networks();
    assert_eq!(plan(&s, &converged(&s)), vec![]);
}

#[test]
fn builds_network_from_scratch_in_order() {
    let s = spec(vec![net(
        7,
        &["tap1"],
        &[PEER],
        &[("02:00:00:00:00:aa", PEER)],
    )]);
    let mut obs = ObservedOverlay::default();
    obs.ports.insert("tap1".into(), port(None, 1500, false));
    let actions = plan(&s, &obs);
    let expected = vec![
        OverlayAction::CreateBridge {
            vni: 7,
            mtu: 1450,
            mac: bridge_mac(ip(LOCAL), 7),
        },
        OverlayAction::Link(LinkAction::AddAddress {
            link: "nb-7".into(),
            addr: ip("169.254.169.254"),
            prefix_len: 32,
        }),
        OverlayAction::Link(LinkAction::SetUp {
            link: "nb-7".into(),
        }),
        OverlayAction::CreateVxlan {
            vni: 7,
            local: ip(LOCAL),
            mtu: 1450,
        },
        OverlayAction::Link(LinkAction::SetMaster {
            link: "vx-7".into(),
            master: "nb-7".into(),
        }),
        OverlayAction::Link(LinkAction::SetUp {
            link: "vx-7".into(),
        }),
        OverlayAction::AddFdb {
            vni: 7,
            entry: FdbEntry {
                mac: MacAddr::ZERO,
                dst: ip(PEER),
            },
        },
        OverlayAction::AddFdb {
            vni: 7,
            entry: FdbEntry {
                mac: mac("02:00:00:00:00:aa"),
                dst: ip(PEER),
            },
        },
        OverlayAction::Link(LinkAction::SetMtu {
            link: "tap1".into(),
            mtu: 1450,
        }),
        OverlayAction::Link(LinkAction::SetMaster {
            link: "tap1".into(),
            master: "nb-7".into(),
        }),
        OverlayAction::Link(LinkAction::SetUp {
            link: "tap1".into(),
        }),
    ];
    assert_eq!(actions, expected);
}

#[test]
fn adding_a_vtep_adds_one_flood_entry() {
    let before = two_networks();
    let obs = converged(&before);
    let mut after = before.clone();
    after.networks[1].remote_vteps.insert(ip(PEER2));
    assert_eq!(
        plan(&after, &obs),
        vec![OverlayAction::AddFdb {
            vni: 200,
            entry: FdbEntry {
                mac: MacAddr::ZERO,
                dst: ip(PEER2)
            }
        }]
    );
}

#[test]
fn removing_a_vtep_removes_its_flood_entry() {
    let before = two_networks();
    let obs = converged(&before);
    let mut after = before.clone();
    after.networks[0].remote_vteps.remove(&ip(PEER2));
    assert_eq!(
        plan(&after, &obs),
        vec![OverlayAction::DelFdb {
            vni: 100,
            entry: FdbEntry {
                mac: MacAddr::ZERO,
                dst: ip(PEER2)
            }
        }]
    );
}

#[test]
fn moved_remote_mac_is_deleted_then_added() {
    let before = two_networks();
    let obs = converged(&before);
    let mut after = before.clone();
    after.networks[0].remote_macs = vec![(mac("02:00:00:00:00:aa"), ip(PEER2))];
    assert_eq!(
        plan(&after, &obs),
        vec![
            OverlayAction::DelFdb {
                vni: 100,
                entry: FdbEntry {
                    mac: mac("02:00:00:00:00:aa"),
                    dst: ip(PEER)
                }
            },
            OverlayAction::AddFdb {
                vni: 100,
                entry: FdbEntry {
                    mac: mac("02:00:00:00:00:aa"),
                    dst: ip(PEER2)
                }
            },
        ]
    );
}

#[test]
fn last_port_leaving_deletes_the_network() {
    let before = two_networks();
    let obs = converged(&before);
    let mut after = before.clone();
    after.networks[1].ports.clear();
    assert_eq!(
        plan(&after, &obs),
        vec![OverlayAction::DeleteNetwork { vni: 200 }]
    );
    after.networks.remove(1);
    assert_eq!(
        plan(&after, &obs),
        vec![OverlayAction::DeleteNetwork { vni: 200 }]
    );
}

#[test]
fn leftover_vxlan_without_bridge_is_deleted() {
    let s = spec(vec![]);
    let mut obs = converged(&two_networks());
    obs.bridges.clear();
    assert_eq!(
        plan(&s, &obs),
        vec![
            OverlayAction::DeleteNetwork { vni: 100 },
            OverlayAction::DeleteNetwork { vni: 200 }
        ]
    );
}

#[test]
fn underlay_mtu_change_resizes_bridge_vxlan_and_ports() {
    let before = spec(vec![net(5, &["tapx"], &[PEER], &[])]);
    let obs = converged(&before);
    let mut after = before.clone();
    after.underlay_mtu = 9000;
    let set = |link: &str| {
        OverlayAction::Link(LinkAction::SetMtu {
            link: link.into(),
            mtu: 8950,
        })
    };
    assert_eq!(
        plan(&after, &obs),
        vec![set("nb-5"), set("vx-5"), set("tapx")]
    );
}

#[test]
fn vxlan_with_wrong_local_ip_is_recreated() {
    let s = spec(vec![net(9, &["tapq"], &[PEER], &[])]);
    let mut obs = converged(&s);
    if let Some(vx) = obs.vxlans.get_mut(&9) {
        vx.local = Some(ip("10.99.0.77"));
    }
    assert_eq!(
        plan(&s, &obs),
        vec![
            OverlayAction::DeleteLink {
                name: "vx-9".into()
            },
            OverlayAction::CreateVxlan {
                vni: 9,
                local: ip(LOCAL),
                mtu: 1450
            },
            OverlayAction::Link(LinkAction::SetMaster {
                link: "vx-9".into(),
                master: "nb-9".into()
            }),
            OverlayAction::Link(LinkAction::SetUp {
                link: "vx-9".into()
            }),
            OverlayAction::AddFdb {
                vni: 9,
                entry: FdbEntry {
                    mac: MacAddr::ZERO,
                    dst: ip(PEER)
                }
            },
        ]
    );
}

#[test]
fn vxlan_with_learning_or_group_or_port_is_recreated() {
    let s = spec(vec![net(9, &["tapq"], &[], &[])]);
    let tweaks: [fn(&mut ObservedVxlan); 4] = [
        |v| v.learning = Some(true),
        |v| v.group = Some("239.1.1.1".parse().unwrap()),
        |v| v.dst_port = Some(8472),
        |v| v.kind = LinkKind::Other("dummy".into()),
    ];
    for tweak in tweaks {
        let mut obs = converged(&s);
        if let Some(vx) = obs.vxlans.get_mut(&9) {
            tweak(vx);
        }
        let actions = plan(&s, &obs);
        assert_eq!(
            actions.first(),
            Some(&OverlayAction::DeleteLink {
                name: "vx-9".into()
            })
        );
        assert!(matches!(
            actions.get(1),
            Some(OverlayAction::CreateVxlan { vni: 9, .. })
        ));
    }
}

#[test]
fn non_bridge_named_like_a_bridge_is_recreated() {
    let s = spec(vec![net(3, &["tapz"], &[], &[])]);
    let mut obs = converged(&s);
    if let Some(b) = obs.bridges.get_mut(&3) {
        b.kind = LinkKind::Other("dummy".into());
    }
    let actions = plan(&s, &obs);
    assert_eq!(
        actions[0],
        OverlayAction::DeleteLink {
            name: "nb-3".into()
        }
    );
    assert!(matches!(
        actions[1],
        OverlayAction::CreateBridge { vni: 3, .. }
    ));
    assert!(
        actions.contains(&OverlayAction::Link(LinkAction::AddAddress {
            link: "nb-3".into(),
            addr: ip("169.254.169.254"),
            prefix_len: 32
        }))
    );
}

#[test]
fn missing_address_and_down_bridge_are_fixed() {
    let s = spec(vec![net(3, &["tapz"], &[], &[])]);
    let mut obs = converged(&s);
    if let Some(b) = obs.bridges.get_mut(&3) {
        b.up = false;
        b.addresses.clear();
    }
    assert_eq!(
        plan(&s, &obs),
        vec![
            OverlayAction::Link(LinkAction::AddAddress {
                link: "nb-3".into(),
                addr: ip("169.254.169.254"),
                prefix_len: 32
            }),
            OverlayAction::Link(LinkAction::SetUp {
                link: "nb-3".into()
            }),
        ]
    );
}

#[test]
fn missing_tap_is_reported_and_others_attached() {
    let s = spec(vec![net(4, &["tapgone", "tapok"], &[], &[])]);
    let mut obs = converged(&s);
    obs.ports.remove("tapgone");
    if let Some(p) = obs.ports.get_mut("tapok") {
        p.master = None;
    }
    assert_eq!(
        plan(&s, &obs),
        vec![
            OverlayAction::WaitForPort {
                vni: 4,
                tap: "tapgone".into()
            },
            OverlayAction::Link(LinkAction::SetMaster {
                link: "tapok".into(),
                master: "nb-4".into()
            }),
        ]
    );
}

#[test]
fn stray_port_is_detached_but_moving_port_is_not() {
    let before = two_networks();
    let mut obs = converged(&before);
    obs.ports
        .insert("tapstray".into(), port(Some("nb-100"), 1450, true));
    let mut after = before.clone();
    // tapb moves from network 100 to network 200.
    after.networks[0].ports.retain(|p| p.tap != "tapb");
    after.networks[1].ports.push(LocalPort {
        tap: "tapb".into(),
        mac: mac("02:00:00:00:00:0b"),
    });
    assert_eq!(
        plan(&after, &obs),
        vec![
            OverlayAction::Link(LinkAction::Detach {
                link: "tapstray".into()
            }),
            OverlayAction::Link(LinkAction::SetMaster {
                link: "tapb".into(),
                master: "nb-200".into()
            }),
        ]
    );
}

#[test]
fn own_vtep_and_invalid_input_are_ignored() {
    let mut s = spec(vec![
        net(
            1,
            &["tapa"],
            &[LOCAL, PEER],
            &[("02:00:00:00:00:01", LOCAL)],
        ),
        net(0, &["tapzero"], &[], &[]),
        net(1 << 24, &["tapbig"], &[], &[]),
        net(2, &["tapa"], &[], &[]),
    ]);
    let obs = converged(&spec(vec![net(1, &["tapa"], &[PEER], &[])]));
    assert_eq!(plan(&s, &obs), vec![]);
    // The same VNI twice: the first definition is used.
    s.networks.push(net(1, &["tapother"], &[], &[]));
    assert_eq!(plan(&s, &obs), vec![]);
}

#[test]
fn plan_does_not_depend_on_spec_order() {
    let s = two_networks();
    let mut reversed = s.clone();
    reversed.networks.reverse();
    for n in &mut reversed.networks {
        n.ports.reverse();
    }
    let obs = ObservedOverlay::default();
    assert_eq!(plan(&s, &obs), plan(&reversed, &obs));
    assert!(!plan(&s, &obs).is_empty());
}

#[test]
fn duplicate_remote_mac_keeps_last() {
    let s = spec(vec![net(
        6,
        &["tapm"],
        &[],
        &[("02:00:00:00:00:aa", PEER), ("02:00:00:00:00:aa", PEER2)],
    )]);
    let mut obs = converged(&spec(vec![net(6, &["tapm"], &[], &[])]));
    obs.ports
        .insert("tapm".into(), port(Some("nb-6"), 1450, true));
    assert_eq!(
        plan(&s, &obs),
        vec![OverlayAction::AddFdb {
            vni: 6,
            entry: FdbEntry {
                mac: mac("02:00:00:00:00:aa"),
                dst: ip(PEER2)
            }
        }]
    );
}

#[test]
fn bridge_mac_is_local_unicast_and_per_node() {
    let a = bridge_mac(ip(LOCAL), 100);
    let b = bridge_mac(ip(PEER), 100);
    let c = bridge_mac(ip(LOCAL), 101);
    assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(a, bridge_mac(ip(LOCAL), 100));
}
