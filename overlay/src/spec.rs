//! Desired state of the overlay on one node.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use nubo_netid::MacAddr;

/// UDP destination port of every VXLAN device (IANA VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// Address every bridge owns: the metadata service and the DHCP server id.
pub const METADATA_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// Prefix length of [`METADATA_ADDR`] on the bridges.
pub const METADATA_PREFIX_LEN: u8 = 32;

/// Everything the overlay of one node should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlaySpec {
    /// This node's VTEP address (the `local` of every VXLAN device).
    pub underlay_ip: IpAddr,
    /// MTU of the underlay network; overlay devices get this minus the
    /// VXLAN encapsulation overhead (see [`network_mtu`]).
    pub underlay_mtu: u16,
    /// Networks with ports on this node. A network without local ports is
    /// treated as absent: its bridge and VXLAN device are removed.
    pub networks: Vec<NetworkSpec>,
}

/// One overlay network as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// VXLAN network identifier, 1..=16777215.
    pub vni: u32,
    /// Ports of this network hosted on this node.
    pub ports: Vec<LocalPort>,
    /// Underlay addresses of the other nodes with ports on this network
    /// (this node's own address is ignored if present).
    pub remote_vteps: BTreeSet<IpAddr>,
    /// Known remote port MACs and the VTEP behind which each lives. When a
    /// MAC is listed more than once the last entry wins.
    pub remote_macs: Vec<(MacAddr, IpAddr)>,
}

/// An instance port hosted on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPort {
    /// Host-side interface (tap or veth host end) to enslave to the bridge.
    pub tap: String,
    /// The port's (guest-side) MAC address.
    pub mac: MacAddr,
}

/// A forwarding database entry of a VXLAN device: frames for `mac` are sent
/// to the VTEP `dst`. The all-zeros MAC means "every broadcast, unknown
/// unicast and multicast frame", one entry per remote VTEP (head-end
/// replication).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// Destination MAC (all zeros for the flood entries).
    pub mac: MacAddr,
    /// Remote VTEP address.
    pub dst: IpAddr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

/// MTU of the bridge, the VXLAN device and the ports of every network:
/// the underlay MTU minus the VXLAN overhead (50 bytes over IPv4, 70 over
/// IPv6), never below the IPv4 minimum of 68.
pub fn network_mtu(underlay_ip: IpAddr, underlay_mtu: u16) -> u32 {
    let overhead = match underlay_ip {
        IpAddr::V4(_) => 50,
        IpAddr::V6(_) => 70,
    };
    u32::from(underlay_mtu).saturating_sub(overhead).max(68)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_overhead() {
        assert_eq!(network_mtu("10.0.0.1".parse().unwrap(), 1500), 1450);
        assert_eq!(network_mtu("fd00::1".parse().unwrap(), 9000), 8930);
        assert_eq!(network_mtu("10.0.0.1".parse().unwrap(), 20), 68);
    }
}
