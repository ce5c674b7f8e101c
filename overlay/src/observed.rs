//! What the node's overlay looks like right now (input of [`crate::plan`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::spec::{FdbEntry, VXLAN_PORT};

/// The kind of a network interface as reported by `IFLA_INFO_KIND`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A VXLAN device.
    Vxlan,
    /// A tun/tap device.
    Tun,
    /// One end of a veth pair.
    Veth,
    /// An 802.1Q VLAN device.
    Vlan,
    /// Another kind, by its kernel name.
    Other(String),
    /// No kind reported (physical NICs, loopback).
    Unknown,
}

/// An observed `nb-<vni>` link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedBridge {
    /// Its kind (anything but [`LinkKind::Bridge`] is recreated).
    pub kind: LinkKind,
    /// Current MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Addresses and prefix lengths assigned to it.
    pub addresses: BTreeSet<(IpAddr, u8)>,
}

/// An observed `vx-<vni>` link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVxlan {
    /// Its kind (anything but [`LinkKind::Vxlan`] is recreated).
    pub kind: LinkKind,
    /// Configured VNI.
    pub vni: Option<u32>,
    /// Configured local (source) address.
    pub local: Option<IpAddr>,
    /// Configured UDP destination port.
    pub dst_port: Option<u16>,
    /// Whether source-MAC learning is on.
    pub learning: Option<bool>,
    /// Configured default remote / multicast group (nubo uses none).
    pub group: Option<IpAddr>,
    /// Current MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Name of the bridge it is enslaved to.
    pub master: Option<String>,
    /// Entries of its own forwarding database that have a remote
    /// destination.
    pub fdb: BTreeSet<FdbEntry>,
}

impl ObservedVxlan {
    /// Whether the device has exactly the configuration nubo creates for
    /// network `vni` with source address `local`. A device that does not
    /// must be recreated (VXLAN parameters cannot be changed in place).
    pub fn is_configured_as(&self, vni: u32, local: IpAddr) -> bool {
        self.kind == LinkKind::Vxlan
            && self.vni == Some(vni)
            && self.local == Some(local)
            && self.dst_port == Some(VXLAN_PORT)
            && self.learning == Some(false)
            && self.group.is_none()
    }
}

/// Any other observed link (a candidate port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPort {
    /// Its kind.
    pub kind: LinkKind,
    /// Current MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Name of the device it is enslaved to.
    pub master: Option<String>,
}

/// Snapshot of the overlay-related state of a node's network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedOverlay {
    /// Links named `nb-<vni>`, by VNI.
    pub bridges: BTreeMap<u32, ObservedBridge>,
    /// Links named `vx-<vni>`, by VNI.
    pub vxlans: BTreeMap<u32, ObservedVxlan>,
    /// Every other link, by name (taps and veth host ends among them).
    pub ports: BTreeMap<String, ObservedPort>,
}
