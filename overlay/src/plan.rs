//! The pure planner: desired [`OverlaySpec`] + [`ObservedOverlay`] →
//! ordered list of [`OverlayAction`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nubo_netid::MacAddr;
use tracing::warn;

use crate::link_action::LinkAction;
use crate::names::{bridge_name, vxlan_name};
use crate::observed::{LinkKind, ObservedBridge, ObservedOverlay, ObservedPort, ObservedVxlan};
use crate::spec::{network_mtu, FdbEntry, OverlaySpec, METADATA_ADDR, METADATA_PREFIX_LEN};

/// Largest valid VNI (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;

/// One step towards the desired overlay. Links are named, not indexed, so a
/// plan is meaningful on its own and stable across runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayAction {
    /// Delete `vx-<vni>` and `nb-<vni>` (the network has no local port any
    /// more). Ports are released by the kernel.
    DeleteNetwork {
        /// The network.
        vni: u32,
    },
    /// Delete one link (a misconfigured `nb-*`/`vx-*` about to be
    /// recreated).
    DeleteLink {
        /// Link name.
        name: String,
    },
    /// Create bridge `nb-<vni>`, down, with a fixed MTU and MAC.
    CreateBridge {
        /// The network.
        vni: u32,
        /// Its MTU (marked as set by the user, so enslaving ports never
        /// changes it).
        mtu: u32,
        /// Its MAC, fixed so it does not follow the lowest port MAC.
        mac: MacAddr,
    },
    /// Create VXLAN device `vx-<vni>`, down, not enslaved.
    CreateVxlan {
        /// The network (and VXLAN id).
        vni: u32,
        /// Source address of encapsulated packets (this node's VTEP).
        local: IpAddr,
        /// Its MTU.
        mtu: u32,
    },
    /// A change to one existing link.
    Link(LinkAction),
    /// Remove an entry from the FDB of `vx-<vni>`.
    DelFdb {
        /// The network.
        vni: u32,
        /// The entry.
        entry: FdbEntry,
    },
    /// Add an entry to the FDB of `vx-<vni>` (appended for the all-zeros
    /// MAC, replacing for unicast MACs).
    AddFdb {
        /// The network.
        vni: u32,
        /// The entry.
        entry: FdbEntry,
    },
    /// A port of the spec has no interface yet (its tap is created by the
    /// hypervisor/guest driver). Applying it does nothing; it keeps the plan
    /// non-empty until the port is attached.
    WaitForPort {
        /// The network.
        vni: u32,
        /// The missing interface.
        tap: String,
    },
}

/// Plans the actions that turn `observed` into `spec`.
///
/// Deterministic: the same inputs give the same plan. Order: networks that
/// must go first (by VNI), then per network in VNI order: bridge, VXLAN
/// device, FDB removals, FDB additions, stray ports, spec ports (by name).
/// Invalid input is logged and skipped: VNIs outside 1..=16777215, a VNI
/// listed twice (the first one is used), a tap listed in two networks (the
/// lower VNI gets it).
pub fn plan(spec: &OverlaySpec, observed: &ObservedOverlay) -> Vec<OverlayAction> {
    let desired = desired_networks(spec);
    let mtu = network_mtu(spec.underlay_ip, spec.underlay_mtu);
    let mut actions = Vec::new();

    let present: BTreeSet<u32> = observed
        .bridges
        .keys()
        .chain(observed.vxlans.keys())
        .copied()
        .collect();
    for vni in present.iter().filter(|vni| !desired.contains_key(vni)) {
        actions.push(OverlayAction::DeleteNetwork { vni: *vni });
    }

    let wanted_taps: BTreeSet<&str> = desired
        .values()
        .flat_map(|net| net.taps.iter().map(String::as_str))
        .collect();

    for (&vni, net) in &desired {
        plan_bridge(spec, vni, mtu, observed.bridges.get(&vni), &mut actions);
        let vx = plan_vxlan(spec, vni, mtu, observed.vxlans.get(&vni), &mut actions);
        plan_fdb(vni, &vx.fdb, &net.fdb, &mut actions);
        plan_ports(vni, mtu, net, &wanted_taps, &observed.ports, &mut actions);
    }
    actions
}

/// A network of the spec after validation and de-duplication.
struct DesiredNetwork {
    taps: BTreeSet<String>,
    fdb: BTreeSet<FdbEntry>,
}

fn desired_networks(spec: &OverlaySpec) -> BTreeMap<u32, DesiredNetwork> {
    let mut out = BTreeMap::new();
    let mut claimed_taps = BTreeSet::new();
    let mut by_vni: BTreeMap<u32, &crate::spec::NetworkSpec> = BTreeMap::new();
    for net in &spec.networks {
        if net.vni == 0 || net.vni > MAX_VNI {
            warn!(
                vni = net.vni,
                "ignoring network with a VNI outside 1..=16777215"
            );
            continue;
        }
        if by_vni.contains_key(&net.vni) {
            warn!(
                vni = net.vni,
                "ignoring network listed twice in the overlay spec"
            );
            continue;
        }
        by_vni.insert(net.vni, net);
    }
    for (vni, net) in by_vni {
        let mut taps = BTreeSet::new();
        for port in &net.ports {
            if claimed_taps.insert(port.tap.clone()) {
                taps.insert(port.tap.clone());
            } else {
                warn!(vni, tap = %port.tap, "ignoring tap already listed in another network");
            }
        }
        if taps.is_empty() {
            continue;
        }
        let mut fdb = BTreeSet::new();
        for vtep in net.remote_vteps.iter().filter(|v| **v != spec.underlay_ip) {
            fdb.insert(FdbEntry {
                mac: MacAddr::ZERO,
                dst: *vtep,
            });
        }
        let mut unicast: BTreeMap<MacAddr, IpAddr> = BTreeMap::new();
        for (mac, vtep) in &net.remote_macs {
            if mac.is_zero() || *vtep == spec.underlay_ip {
                continue;
            }
            unicast.insert(*mac, *vtep);
        }
        fdb.extend(unicast.into_iter().map(|(mac, dst)| FdbEntry { mac, dst }));
        out.insert(vni, DesiredNetwork { taps, fdb });
    }
    out
}

fn plan_bridge(
    spec: &OverlaySpec,
    vni: u32,
    mtu: u32,
    observed: Option<&ObservedBridge>,
    actions: &mut Vec<OverlayAction>,
) {
    let name = bridge_name(vni);
    let fresh;
    let bridge = match observed {
        Some(b) if b.kind == LinkKind::Bridge => b,
        other => {
            if other.is_some() {
                actions.push(OverlayAction::DeleteLink { name: name.clone() });
            }
            actions.push(OverlayAction::CreateBridge {
                vni,
                mtu,
                mac: bridge_mac(spec.underlay_ip, vni),
            });
            fresh = ObservedBridge {
                kind: LinkKind::Bridge,
                mtu,
                up: false,
                addresses: BTreeSet::new(),
            };
            &fresh
        }
    };
    if bridge.mtu != mtu {
        actions.push(OverlayAction::Link(LinkAction::SetMtu {
            link: name.clone(),
            mtu,
        }));
    }
    if !bridge
        .addresses
        .contains(&(METADATA_ADDR, METADATA_PREFIX_LEN))
    {
        actions.push(OverlayAction::Link(LinkAction::AddAddress {
            link: name.clone(),
            addr: METADATA_ADDR,
            prefix_len: METADATA_PREFIX_LEN,
        }));
    }
    if !bridge.up {
        actions.push(OverlayAction::Link(LinkAction::SetUp { link: name }));
    }
}

fn plan_vxlan(
    spec: &OverlaySpec,
    vni: u32,
    mtu: u32,
    observed: Option<&ObservedVxlan>,
    actions: &mut Vec<OverlayAction>,
) -> ObservedVxlan {
    let name = vxlan_name(vni);
    let vx = match observed {
        Some(v) if v.is_configured_as(vni, spec.underlay_ip) => v.clone(),
        other => {
            if other.is_some() {
                actions.push(OverlayAction::DeleteLink { name: name.clone() });
            }
            actions.push(OverlayAction::CreateVxlan {
                vni,
                local: spec.underlay_ip,
                mtu,
            });
            ObservedVxlan {
                kind: LinkKind::Vxlan,
                vni: Some(vni),
                local: Some(spec.underlay_ip),
                dst_port: Some(crate::spec::VXLAN_PORT),
                learning: Some(false),
                group: None,
                mtu,
                up: false,
                master: None,
                fdb: BTreeSet::new(),
            }
        }
    };
    if vx.mtu != mtu {
        actions.push(OverlayAction::Link(LinkAction::SetMtu {
            link: name.clone(),
            mtu,
        }));
    }
    let bridge = bridge_name(vni);
    if vx.master.as_deref() != Some(bridge.as_str()) {
        actions.push(OverlayAction::Link(LinkAction::SetMaster {
            link: name.clone(),
            master: bridge,
        }));
    }
    if !vx.up {
        actions.push(OverlayAction::Link(LinkAction::SetUp { link: name }));
    }
    vx
}

fn plan_fdb(
    vni: u32,
    observed: &BTreeSet<FdbEntry>,
    desired: &BTreeSet<FdbEntry>,
    actions: &mut Vec<OverlayAction>,
) {
    for entry in observed.difference(desired) {
        actions.push(OverlayAction::DelFdb { vni, entry: *entry });
    }
    for entry in desired.difference(observed) {
        actions.push(OverlayAction::AddFdb { vni, entry: *entry });
    }
}

fn plan_ports(
    vni: u32,
    mtu: u32,
    net: &DesiredNetwork,
    wanted_taps: &BTreeSet<&str>,
    ports: &BTreeMap<String, ObservedPort>,
    actions: &mut Vec<OverlayAction>,
) {
    let bridge = bridge_name(vni);
    for (name, port) in ports {
        if port.master.as_deref() == Some(bridge.as_str()) && !wanted_taps.contains(name.as_str()) {
            actions.push(OverlayAction::Link(LinkAction::Detach {
                link: name.clone(),
            }));
        }
    }
    for tap in &net.taps {
        let Some(port) = ports.get(tap) else {
            actions.push(OverlayAction::WaitForPort {
                vni,
                tap: tap.clone(),
            });
            continue;
        };
        if port.mtu != mtu {
            actions.push(OverlayAction::Link(LinkAction::SetMtu {
                link: tap.clone(),
                mtu,
            }));
        }
        if port.master.as_deref() != Some(bridge.as_str()) {
            actions.push(OverlayAction::Link(LinkAction::SetMaster {
                link: tap.clone(),
                master: bridge.clone(),
            }));
        }
        if !port.up {
            actions.push(OverlayAction::Link(LinkAction::SetUp { link: tap.clone() }));
        }
    }
}

/// A locally administered unicast MAC for the bridge of `vni` on the node
/// with VTEP `underlay_ip`: stable across restarts and recreation, distinct
/// between nodes (FNV-1a of the address and VNI).
fn bridge_mac(underlay_ip: IpAddr, vni: u32) -> MacAddr {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let ip_bytes: Vec<u8> = match underlay_ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    for byte in ip_bytes.iter().chain(vni.to_be_bytes().iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    MacAddr([0x02, h[3], h[4], h[5], h[6], h[7]])
}

#[cfg(test)]
mod tests;
