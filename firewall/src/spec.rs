//! Input types: what the agent wants enforced, independent of nubo-common.
//!
//! The agent maps its ports and security groups to these types; the engine
//! never looks at etcd or at nubo's own resource types.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use nubo_netid::MacAddr;

/// Everything the firewall of one node must enforce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The ports plugged into bridges on this node.
    pub ports: Vec<PortSpec>,
    /// Every security group referenced by a port or by a remote-group rule,
    /// keyed by group id.
    pub groups: BTreeMap<String, GroupSpec>,
    /// Per-port rate limits on what a guest may send to the node's own
    /// services (DHCP, metadata), enforced in the kernel.
    pub limits: GuestLimits,
    /// Uplinks of provider networks (a host interface or a VLAN device
    /// bridged with guests' taps): like the `vx-*` devices of the overlay,
    /// traffic entering from them is tracked, and DHCP and metadata never
    /// leave through them.
    pub uplinks: Vec<String>,
    /// Copies of a distributed router's gateway on this node, one per
    /// routed subnet whose network reaches this node through a VXLAN
    /// device: the gateway answers only its own node's guests, and the
    /// copies on other nodes never see each other.
    pub routed: Vec<RoutedGateway>,
}

/// One routed subnet's gateway as this node's firewall must confine it.
///
/// Every node hosting ports of a routed network runs a copy of the
/// network's gateway (same IP, same MAC on every node) in its router
/// namespace. At the network's VXLAN device the ruleset drops ARP for or
/// from the gateway IP and frames from the gateway MAC coming in, drops the
/// gateway's own ARP and non-IPv4 frames going out, and rewrites the source
/// MAC of routed IPv4 frames going out to [`RoutedGateway::node_mac`], so
/// other nodes' bridges never learn the gateway MAC behind their VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoutedGateway {
    /// The VXLAN device of the tenant network on this node (`vx-<vni>`),
    /// the node's door to the other nodes' copies of the same gateway.
    pub vxlan: String,
    /// The subnet's gateway address.
    pub ip: Ipv4Addr,
    /// The gateway MAC, the same on every node.
    pub mac: MacAddr,
    /// This node's routing MAC: routed frames leaving through the VXLAN
    /// device get it as source MAC. Must be unicast, non-zero and differ
    /// from the gateway MAC.
    pub node_mac: MacAddr,
}

/// A token-bucket rate: `per_second` packets per second on average, up to
/// `burst` packets at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained packets per second.
    pub per_second: u32,
    /// Packets allowed in one burst above the sustained rate.
    pub burst: u32,
}

/// What one guest (one tap) may send to the node's DHCP server and
/// metadata service; the excess is dropped in `bridge nubo` prerouting,
/// before the agent sees it, and counted per port (see
/// [`crate::render::limit_counter`]). Each tap has its own buckets: a
/// flooding guest exhausts only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// DHCP client frames (UDP to port 67).
    pub dhcp: Rate,
    /// New TCP connections (SYN) to the metadata address, port 80.
    pub metadata_connections: Rate,
}

impl Default for GuestLimits {
    /// DHCP 10/s burst 30 (a client sends 2 packets per lease, a few more
    /// when it retries); metadata 50 connections/s burst 150 (cloud-init
    /// fetches a few dozen documents at boot, one connection each).
    fn default() -> Self {
        GuestLimits {
            dhcp: Rate {
                per_second: 10,
                burst: 30,
            },
            metadata_connections: Rate {
                per_second: 50,
                burst: 150,
            },
        }
    }
}

/// One instance port: a tap device on a Linux bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Cloud-wide port id (a UUID in nubo); used to name the port's chains.
    pub port_id: String,
    /// Interface name of the port on the bridge (e.g. `tap1a2b3c4d-5e`).
    pub tap: String,
    /// The only MAC address the guest may send from.
    pub mac: MacAddr,
    /// The only IP addresses the guest may send from.
    pub ips: Vec<IpAddr>,
    /// Ids of the security groups of this port.
    pub groups: Vec<String>,
    /// `false` disables anti-spoofing and security groups for this port
    /// (OpenStack's `port_security_enabled=False`): its traffic is not
    /// filtered, except towards the host itself.
    pub port_security: bool,
    /// `false`: the port is administratively down and passes nothing, in
    /// either direction, to other ports, the wire or the host (DHCP and
    /// metadata included) — see [`crate::render`], "Ports that are down".
    pub admin_state_up: bool,
}

/// A security group: its rules and the addresses of its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group id (same as the key in [`FirewallSpec::groups`]).
    pub id: String,
    /// The rules; a port's allowed traffic is the union over its groups.
    pub rules: Vec<RuleSpec>,
    /// Addresses of every port in the cloud that is in this group, used by
    /// rules of other groups whose remote is this group.
    pub members: Vec<IpAddr>,
}

/// One security-group rule (OpenStack semantics).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSpec {
    /// Towards the guest ([`Direction::Ingress`]) or from it.
    pub direction: Direction,
    /// IPv4 or IPv6.
    pub ethertype: EtherType,
    /// Layer-4 protocol.
    pub protocol: Protocol,
    /// Inclusive destination port range; only valid with a protocol that
    /// has ports (TCP, UDP, SCTP, DCCP, UDP-Lite).
    pub port_range: Option<(u16, u16)>,
    /// ICMP type and, optionally, code (only with [`Protocol::Icmp`]; ICMPv6
    /// for IPv6): `None` = every type.
    pub icmp: Option<(u8, Option<u8>)>,
    /// The other end of the traffic.
    pub remote: Remote,
}

/// Direction of a rule, seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic arriving at the guest.
    Ingress,
    /// Traffic leaving the guest.
    Egress,
}

/// Address family of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EtherType {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Layer-4 protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// Any protocol.
    Any,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1) for IPv4 rules, ICMPv6 (58) for IPv6 rules.
    Icmp,
    /// Any other IP protocol number.
    Number(u8),
}

/// The remote end of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remote {
    /// Any address of the rule's family.
    Any,
    /// Addresses in this prefix.
    Cidr(IpNet),
    /// Addresses of the members of this security group.
    Group(String),
}
