//! Provider networks on one node: per network with local ports, a bridge
//! (`np-<12 hex of the network id>`) whose uplink is the physical network's
//! host interface itself (flat) or a VLAN device created on it (vlan,
//! `<iface>.<vid>`), and the guests' taps. The bridge owns
//! `169.254.169.254/32` like the overlay's (metadata, DHCP server id).
//!
//! Same shape as the overlay: [`crate::Netlink::observe_provider`] → pure
//! [`plan_provider`] → [`crate::Netlink::apply_provider`]. What nubo
//! creates it also removes (a bridge whose network has no local port any
//! more, with the VLAN devices enslaved to it); a physical interface is
//! never deleted, only released from the bridge by the bridge's deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::link_action::LinkAction;
use crate::observed::LinkKind;
use crate::spec::{METADATA_ADDR, METADATA_PREFIX_LEN};

/// Prefix of the provider bridges' names.
const BRIDGE_PREFIX: &str = "np-";
/// Hex digits of the network id in a bridge name (3 + 12 = 15 bytes).
const BRIDGE_ID_LEN: usize = 12;
/// Longest interface name Linux accepts.
const IFNAMSIZ_MAX: usize = 15;

/// The bridge of the provider network `network_id` (a UUID, dashes
/// ignored): `np-` and its first 12 hex digits, 15 bytes.
pub fn provider_bridge_name(network_id: &str) -> String {
    let hex: String = network_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(BRIDGE_ID_LEN)
        .collect();
    format!("{BRIDGE_PREFIX}{hex}")
}

/// True for names [`provider_bridge_name`] produces.
pub fn is_provider_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX).is_some_and(|h| {
        h.len() == BRIDGE_ID_LEN
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The VLAN device of VLAN `vid` on `iface`: `<iface>.<vid>` when that
/// fits in 15 bytes, else `pv<vid>-` and a hash of the interface name.
pub fn vlan_device_name(iface: &str, vid: u16) -> String {
    let plain = format!("{iface}.{vid}");
    if plain.len() <= IFNAMSIZ_MAX {
        return plain;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in iface.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("pv{vid}-{:06x}", hash & 0xff_ffff)
}

/// Desired provider networks of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderSpec {
    /// Provider networks with local ports (others are removed).
    pub networks: Vec<ProviderNetworkSpec>,
}

/// One provider network with local ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderNetworkSpec {
    /// Its bridge ([`provider_bridge_name`]).
    pub bridge: String,
    /// The host interface of its physical network.
    pub interface: String,
    /// Its VLAN id (`None`: flat, the interface itself is the uplink).
    pub vlan: Option<u16>,
    /// Host-side interfaces of its local ports.
    pub taps: Vec<String>,
}

impl ProviderNetworkSpec {
    /// The interface enslaved to the bridge: the VLAN device, or the
    /// physical interface of a flat network.
    pub fn uplink(&self) -> String {
        match self.vlan {
            Some(vid) => vlan_device_name(&self.interface, vid),
            None => self.interface.clone(),
        }
    }
}

/// A link as [`plan_provider`] needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    /// Its kind.
    pub kind: LinkKind,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The bridge it is enslaved to.
    pub master: Option<String>,
    /// For a VLAN device: its parent's name and VLAN id.
    pub vlan: Option<(String, u16)>,
    /// Its addresses.
    pub addresses: BTreeSet<(IpAddr, u8)>,
}

/// Every link of the namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedProvider {
    /// Links by name.
    pub links: BTreeMap<String, ObservedLink>,
}

/// One step towards the desired provider networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderAction {
    /// Delete a provider bridge and the VLAN devices enslaved to it (its
    /// network has no local port any more). A physical interface
    /// enslaved to it is released by the kernel, never deleted.
    DeleteBridge {
        /// The bridge.
        bridge: String,
        /// The VLAN devices enslaved to it.
        vlan_devices: Vec<String>,
    },
    /// Create a bridge, down.
    CreateBridge {
        /// Its name.
        bridge: String,
        /// Its MTU (the physical interface's).
        mtu: u32,
    },
    /// Create a VLAN device, down.
    CreateVlan {
        /// Its name.
        name: String,
        /// The physical interface it sits on.
        parent: String,
        /// The VLAN id.
        vid: u16,
    },
    /// A change to one existing link.
    Link(LinkAction),
}

/// The provider plan: actions, taps not created yet, and networks that
/// cannot be wired with the reason (logged by the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderPlan {
    /// Actions in order.
    pub actions: Vec<ProviderAction>,
    /// Taps of the spec that do not exist yet.
    pub waiting: Vec<String>,
    /// `(bridge, reason)` of networks left unwired.
    pub problems: Vec<(String, String)>,
}

/// Plans the actions that turn `observed` into `spec`. Pure and
/// deterministic. Order: bridges to remove, then per network (spec
/// order): bridge, address, uplink, stray ports, taps. A network whose
/// interface is missing, whose VLAN device name is taken by another
/// link, or whose flat interface is enslaved elsewhere is left alone and
/// reported in [`ProviderPlan::problems`]; a tap listed twice goes to its
/// first network.
pub fn plan_provider(spec: &ProviderSpec, observed: &ObservedProvider) -> ProviderPlan {
    let mut out = ProviderPlan::default();
    let wanted: BTreeSet<&str> = spec.networks.iter().map(|n| n.bridge.as_str()).collect();
    for name in observed.links.keys() {
        if is_provider_bridge_name(name) && !wanted.contains(name.as_str()) {
            let vlan_devices = observed
                .links
                .iter()
                .filter(|(_, l)| l.kind == LinkKind::Vlan && l.master.as_deref() == Some(name))
                .map(|(n, _)| n.clone())
                .collect();
            out.actions.push(ProviderAction::DeleteBridge {
                bridge: name.clone(),
                vlan_devices,
            });
        }
    }
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    let all_taps: BTreeSet<&str> = spec
        .networks
        .iter()
        .flat_map(|n| n.taps.iter().map(String::as_str))
        .collect();
    for net in &spec.networks {
        if let Err(reason) = plan_network(net, observed, &mut claimed, &all_taps, &mut out) {
            out.problems.push((net.bridge.clone(), reason));
        }
    }
    out
}

fn plan_network<'a>(
    net: &'a ProviderNetworkSpec,
    observed: &ObservedProvider,
    claimed: &mut BTreeSet<&'a str>,
    all_taps: &BTreeSet<&str>,
    out: &mut ProviderPlan,
) -> Result<(), String> {
    let links = &observed.links;
    let Some(phys) = links.get(&net.interface) else {
        return Err(format!(
            "host interface {:?} of the physical network does not exist",
            net.interface
        ));
    };
    let uplink = net.uplink();
    let mtu = phys.mtu;
    // Check everything before planning anything for this network.
    match (net.vlan, links.get(&uplink)) {
        (Some(vid), Some(l)) if l.vlan.as_ref() != Some(&(net.interface.clone(), vid)) => {
            return Err(format!(
                "interface {uplink:?} exists and is not VLAN {vid} of {:?}",
                net.interface
            ))
        }
        (None, Some(l)) if l.master.as_ref().is_some_and(|m| *m != net.bridge) => {
            return Err(format!(
                "interface {:?} is already enslaved to {:?}",
                net.interface,
                l.master.as_deref().unwrap_or_default()
            ))
        }
        _ => {}
    }
    let actions = &mut out.actions;
    let bridge = match links.get(&net.bridge) {
        Some(b) if b.kind == LinkKind::Bridge => b.clone(),
        other => {
            if other.is_some() {
                actions.push(ProviderAction::DeleteBridge {
                    bridge: net.bridge.clone(),
                    vlan_devices: Vec::new(),
                });
            }
            actions.push(ProviderAction::CreateBridge {
                bridge: net.bridge.clone(),
                mtu,
            });
            ObservedLink {
                kind: LinkKind::Bridge,
                mtu,
                up: false,
                master: None,
                vlan: None,
                addresses: BTreeSet::new(),
            }
        }
    };
    if bridge.mtu != mtu {
        actions.push(ProviderAction::Link(LinkAction::SetMtu {
            link: net.bridge.clone(),
            mtu,
        }));
    }
    if !bridge
        .addresses
        .contains(&(METADATA_ADDR, METADATA_PREFIX_LEN))
    {
        actions.push(ProviderAction::Link(LinkAction::AddAddress {
            link: net.bridge.clone(),
            addr: METADATA_ADDR,
            prefix_len: METADATA_PREFIX_LEN,
        }));
    }
    if !bridge.up {
        actions.push(ProviderAction::Link(LinkAction::SetUp {
            link: net.bridge.clone(),
        }));
    }
    // The uplink: the VLAN device (created when missing) or the interface.
    let up_link = match (net.vlan, links.get(&uplink)) {
        (Some(vid), None) => {
            actions.push(ProviderAction::CreateVlan {
                name: uplink.clone(),
                parent: net.interface.clone(),
                vid,
            });
            None
        }
        (_, l) => l,
    };
    if !phys.up {
        actions.push(ProviderAction::Link(LinkAction::SetUp {
            link: net.interface.clone(),
        }));
    }
    if up_link.and_then(|l| l.master.as_deref()) != Some(net.bridge.as_str()) {
        actions.push(ProviderAction::Link(LinkAction::SetMaster {
            link: uplink.clone(),
            master: net.bridge.clone(),
        }));
    }
    if net.vlan.is_some() && !up_link.is_some_and(|l| l.up) {
        actions.push(ProviderAction::Link(LinkAction::SetUp {
            link: uplink.clone(),
        }));
    }
    // Ports enslaved here that are neither the uplink nor wanted anywhere.
    for (name, l) in links {
        if l.master.as_deref() == Some(net.bridge.as_str())
            && *name != uplink
            && !all_taps.contains(name.as_str())
        {
            actions.push(ProviderAction::Link(LinkAction::Detach {
                link: name.clone(),
            }));
        }
    }
    for tap in &net.taps {
        if !claimed.insert(tap.as_str()) {
            tracing::warn!(bridge = %net.bridge, %tap, "ignoring tap already listed in another provider network");
            continue;
        }
        let Some(port) = links.get(tap) else {
            out.waiting.push(tap.clone());
            continue;
        };
        if port.mtu != mtu {
            actions.push(ProviderAction::Link(LinkAction::SetMtu {
                link: tap.clone(),
                mtu,
            }));
        }
        if port.master.as_deref() != Some(net.bridge.as_str()) {
            actions.push(ProviderAction::Link(LinkAction::SetMaster {
                link: tap.clone(),
                master: net.bridge.clone(),
            }));
        }
        if !port.up {
            actions.push(ProviderAction::Link(LinkAction::SetUp {
                link: tap.clone(),
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: LinkKind, master: Option<&str>) -> ObservedLink {
        ObservedLink {
            kind,
            mtu: 1500,
            up: true,
            master: master.map(str::to_string),
            vlan: None,
            addresses: BTreeSet::new(),
        }
    }

    const BR: &str = "np-0123456789ab";

    fn vlan_net() -> ProviderNetworkSpec {
        ProviderNetworkSpec {
            bridge: BR.into(),
            interface: "eth1".into(),
            vlan: Some(120),
            taps: vec!["tap1".into()],
        }
    }

    /// What applying `plan` to `obs` leaves (enough of the kernel's
    /// behaviour for convergence checks).
    fn simulate(obs: &mut ObservedProvider, plan: &[ProviderAction]) {
        for a in plan {
            match a {
                ProviderAction::DeleteBridge {
                    bridge,
                    vlan_devices,
                } => {
                    for v in vlan_devices {
                        obs.links.remove(v);
                    }
                    obs.links.remove(bridge);
                    for l in obs.links.values_mut() {
                        if l.master.as_deref() == Some(bridge) {
                            l.master = None;
                        }
                    }
                }
                ProviderAction::CreateBridge { bridge, mtu } => {
                    let mut l = link(LinkKind::Bridge, None);
                    l.mtu = *mtu;
                    l.up = false;
                    obs.links.insert(bridge.clone(), l);
                }
                ProviderAction::CreateVlan { name, parent, vid } => {
                    let mut l = link(LinkKind::Vlan, None);
                    l.up = false;
                    l.vlan = Some((parent.clone(), *vid));
                    obs.links.insert(name.clone(), l);
                }
                ProviderAction::Link(LinkAction::AddAddress {
                    link,
                    addr,
                    prefix_len,
                }) => {
                    obs.links
                        .get_mut(link)
                        .unwrap()
                        .addresses
                        .insert((*addr, *prefix_len));
                }
                ProviderAction::Link(LinkAction::SetMtu { link, mtu }) => {
                    obs.links.get_mut(link).unwrap().mtu = *mtu
                }
                ProviderAction::Link(LinkAction::SetMaster { link, master }) => {
                    obs.links.get_mut(link).unwrap().master = Some(master.clone())
                }
                ProviderAction::Link(LinkAction::Detach { link }) => {
                    obs.links.get_mut(link).unwrap().master = None
                }
                ProviderAction::Link(LinkAction::SetUp { link }) => {
                    obs.links.get_mut(link).unwrap().up = true
                }
            }
        }
    }

    fn host() -> ObservedProvider {
        let mut obs = ObservedProvider::default();
        obs.links
            .insert("eth1".into(), link(LinkKind::Unknown, None));
        obs.links.insert("tap1".into(), link(LinkKind::Tun, None));
        obs
    }

    #[test]
    fn names_fit_and_are_recognised() {
        let b = provider_bridge_name("0123abcd-ef01-4567-89ab-cdef01234567");
        assert_eq!(b, "np-0123abcdef01");
        assert!(b.len() <= 15 && is_provider_bridge_name(&b));
        for other in ["np-0123", "nb-42", "np-0123abcdef0g", "np-0123ABCDEF01"] {
            assert!(!is_provider_bridge_name(other), "{other}");
        }
        assert_eq!(vlan_device_name("eth1", 120), "eth1.120");
        let long = vlan_device_name("enp129s0f1np1", 4094);
        assert!(long.len() <= 15 && long.starts_with("pv4094-"), "{long}");
        assert_ne!(long, vlan_device_name("enp129s0f1np2", 4094));
    }

    #[test]
    fn a_vlan_network_gets_its_device_and_bridge_then_converges() {
        let spec = ProviderSpec {
            networks: vec![vlan_net()],
        };
        let mut obs = host();
        let plan = plan_provider(&spec, &obs);
        assert!(plan.problems.is_empty(), "{plan:?}");
        assert_eq!(
            plan.actions,
            vec![
                ProviderAction::CreateBridge {
                    bridge: BR.into(),
                    mtu: 1500
                },
                ProviderAction::Link(LinkAction::AddAddress {
                    link: BR.into(),
                    addr: METADATA_ADDR,
                    prefix_len: METADATA_PREFIX_LEN
                }),
                ProviderAction::Link(LinkAction::SetUp { link: BR.into() }),
                ProviderAction::CreateVlan {
                    name: "eth1.120".into(),
                    parent: "eth1".into(),
                    vid: 120
                },
                ProviderAction::Link(LinkAction::SetMaster {
                    link: "eth1.120".into(),
                    master: BR.into()
                }),
                ProviderAction::Link(LinkAction::SetUp {
                    link: "eth1.120".into()
                }),
                ProviderAction::Link(LinkAction::SetMaster {
                    link: "tap1".into(),
                    master: BR.into()
                }),
            ]
        );
        simulate(&mut obs, &plan.actions);
        assert_eq!(plan_provider(&spec, &obs), ProviderPlan::default());
        assert_eq!(
            obs.links["eth1"].master, None,
            "the interface itself is not enslaved"
        );

        // The last port gone: the VLAN device and the bridge go, the
        // physical interface stays.
        let plan = plan_provider(&ProviderSpec::default(), &obs);
        assert_eq!(
            plan.actions,
            vec![ProviderAction::DeleteBridge {
                bridge: BR.into(),
                vlan_devices: vec!["eth1.120".into()]
            }]
        );
        simulate(&mut obs, &plan.actions);
        assert!(obs.links.contains_key("eth1"));
        assert_eq!(
            plan_provider(&ProviderSpec::default(), &obs),
            ProviderPlan::default()
        );
    }

    #[test]
    fn a_flat_network_enslaves_the_interface_itself() {
        let spec = ProviderSpec {
            networks: vec![ProviderNetworkSpec {
                vlan: None,
                ..vlan_net()
            }],
        };
        let mut obs = host();
        obs.links.get_mut("eth1").unwrap().up = false;
        let plan = plan_provider(&spec, &obs);
        assert!(plan
            .actions
            .contains(&ProviderAction::Link(LinkAction::SetMaster {
                link: "eth1".into(),
                master: BR.into()
            })));
        assert!(plan
            .actions
            .contains(&ProviderAction::Link(LinkAction::SetUp {
                link: "eth1".into()
            })));
        assert!(!plan
            .actions
            .iter()
            .any(|a| matches!(a, ProviderAction::CreateVlan { .. })));
        simulate(&mut obs, &plan.actions);
        assert_eq!(plan_provider(&spec, &obs), ProviderPlan::default());
        // Removal never deletes the interface: the bridge goes, eth1 is
        // released.
        let plan = plan_provider(&ProviderSpec::default(), &obs);
        assert_eq!(
            plan.actions,
            vec![ProviderAction::DeleteBridge {
                bridge: BR.into(),
                vlan_devices: vec![]
            }]
        );
    }

    #[test]
    fn problems_leave_the_network_alone() {
        let spec = ProviderSpec {
            networks: vec![vlan_net()],
        };
        // No such interface.
        let mut obs = host();
        obs.links.remove("eth1");
        let plan = plan_provider(&spec, &obs);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.problems.len(), 1);
        assert!(plan.problems[0].1.contains("\"eth1\""), "{plan:?}");
        // The VLAN device's name is taken by something else.
        let mut obs = host();
        obs.links
            .insert("eth1.120".into(), link(LinkKind::Bridge, None));
        let plan = plan_provider(&spec, &obs);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.problems[0].1.contains("is not VLAN 120"), "{plan:?}");
        // A flat interface enslaved to a bridge that is not ours.
        let mut obs = host();
        obs.links.get_mut("eth1").unwrap().master = Some("br0".into());
        let flat = ProviderSpec {
            networks: vec![ProviderNetworkSpec {
                vlan: None,
                ..vlan_net()
            }],
        };
        let plan = plan_provider(&flat, &obs);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.problems[0].1.contains("\"br0\""), "{plan:?}");
    }

    #[test]
    fn missing_taps_wait_and_strays_are_released() {
        let spec = ProviderSpec {
            networks: vec![ProviderNetworkSpec {
                taps: vec!["tap1".into(), "tap2".into()],
                ..vlan_net()
            }],
        };
        let mut obs = host();
        let first = plan_provider(&spec, &obs);
        simulate(&mut obs, &first.actions);
        obs.links
            .insert("tapold".into(), link(LinkKind::Tun, Some(BR)));
        let plan = plan_provider(&spec, &obs);
        assert_eq!(plan.waiting, vec!["tap2".to_string()]);
        assert_eq!(
            plan.actions,
            vec![ProviderAction::Link(LinkAction::Detach {
                link: "tapold".into()
            })]
        );
    }
}
