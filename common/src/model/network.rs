//! Networks, ports and security groups.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use nubo_netid::MacAddr;
use serde::{Deserialize, Serialize};

use super::{Subnet, Timestamp};
use crate::{
    FloatingIpId, InstanceId, NetworkId, NodeName, PortId, ProjectId, RouterId, RuleId,
    SecurityGroupId, SubnetId,
};

/// A network: IPv4 subnets on one segment — a VXLAN segment of the
/// overlay (tenant networks), or a flat or VLAN segment of a physical
/// network (provider networks, [`ProviderSegment`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Id.
    pub id: NetworkId,
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Its IPv4 subnet; `None` until one is added (a network created
    /// without a CIDR, as Neutron's network-then-subnet creation does): such
    /// a network has no ports, so no node builds anything for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Ipv4Net>,
    /// The subnet's own name, if it was given one (Neutron clients name
    /// subnets; nubo itself does not need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_name: Option<String>,
    /// Default gateway handed out by DHCP, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// VXLAN network identifier, unique in the cluster.
    pub vni: u32,
    /// MTU of the guest interfaces (0 = underlay MTU − 50 on each node).
    #[serde(default)]
    pub mtu: u16,
    /// DNS servers handed out by DHCP.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// The physical segment of a provider network (`None`: the VXLAN
    /// segment `vni` of the overlay).
    #[serde(default)]
    pub provider: Option<ProviderSegment>,
    /// An external network: routers' gateways and floating IPs come from it
    /// (admin only).
    #[serde(default)]
    pub external: bool,
    /// Usable by every project, not only its owner's (admin only).
    #[serde(default)]
    pub shared: bool,
    /// No node answers DHCP for its ports (guests set their address
    /// themselves; anti-spoofing still allows only the port's address).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp_disabled: bool,
    /// Static routes handed to guests by DHCP (option 121).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_routes: Vec<HostRoute>,
    /// The ranges (first, last) IPAM allocates from; empty = every host
    /// address but the gateway. Inside the subnet, disjoint, without the
    /// gateway. A port may still ask for any free host address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_pools: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// The id of the subnet the fields above describe (`None`: the
    /// network's id, as for every network made before several subnets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<SubnetId>,
    /// The network's further subnets ([`Network::subnets`] lists all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_subnets: Vec<Subnet>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A static route of a subnet's guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// Where it leads.
    pub destination: Ipv4Net,
    /// Through which address (0.0.0.0: on-link).
    pub nexthop: Ipv4Addr,
}

/// How a provider network reaches the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// Untagged frames on the physical network's interface.
    Flat,
    /// 802.1Q-tagged frames (the segment is the VLAN id).
    Vlan,
}

/// The physical segment of a provider network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSegment {
    /// Flat or VLAN.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// The physical network's name (`physnet1`), mapped to a host
    /// interface by each agent's `[physnets]`.
    pub physical_network: String,
    /// The VLAN id (1–4094) for `vlan`; `None` for `flat`.
    #[serde(default)]
    pub segment: Option<u16>,
}

/// A port: an address on a network, optionally plugged into an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Id.
    pub id: PortId,
    /// Optional name.
    #[serde(default)]
    pub name: String,
    /// Free-form description (at most 255 characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Administratively up: `false` = the port passes no traffic (its
    /// node's firewall drops everything from and to its tap).
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    /// Owner.
    pub project: ProjectId,
    /// Network.
    pub network: NetworkId,
    /// MAC address (unique in the cluster): fa:16:3e:xx:xx:xx when nubo
    /// picks it, any unicast non-zero address when the creator chose it.
    pub mac: MacAddr,
    /// Fixed IPv4 address (reserved under `/nubo/v1/private/ipam/<network>/<ip>`);
    /// `None` for a port made on a network without a subnet (it has no
    /// address and cannot be plugged into a server).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its further fixed addresses, each in a subnet of its network and
    /// reserved like `ip` ([`Port::ips`] lists all, `ip` first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_ips: Vec<Ipv4Addr>,
    /// Security groups applied to the port.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupId>,
    /// Anti-spoofing and security groups enabled.
    #[serde(default = "yes")]
    pub port_security: bool,
    /// Instance the port is plugged into.
    #[serde(default)]
    pub device: Option<InstanceId>,
    /// Node the port is bound to (the node of its instance).
    #[serde(default)]
    pub node: Option<NodeName>,
    /// The host a cloud admin bound the port to before a server plugs it
    /// (Neutron's `binding:host_id` set by hand): shown as its binding;
    /// only a server on that node may plug it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<NodeName>,
    /// The router whose interface it is (the router answers on its
    /// address); such a port is plugged into no server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterId>,
    /// Creation time.
    pub created_at: Timestamp,
}

fn yes() -> bool {
    true
}

impl Port {
    /// The deterministic name of this port's tap device on its node
    /// ([`nubo_netid::tap_name`] of its id).
    pub fn tap_name(&self) -> String {
        nubo_netid::tap_name(&self.id.to_string())
    }
}

/// Direction of a security group rule, seen from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic towards the instance.
    Ingress,
    /// Traffic leaving the instance.
    Egress,
}

/// IP version a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtherType {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// The L4 protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (v4) / ICMPv6.
    Icmp,
    /// Any other IP protocol number.
    Number(u8),
}

impl Protocol {
    /// IP protocols whose packets carry ports (TCP, UDP, DCCP, SCTP,
    /// UDP-Lite): what a rule's port range may apply to.
    pub const WITH_PORTS: [u8; 5] = [6, 17, 33, 132, 136];

    /// Whether a rule of this protocol may have a port range.
    pub fn has_ports(&self) -> bool {
        match self {
            Self::Tcp | Self::Udp => true,
            Self::Number(n) => Self::WITH_PORTS.contains(n),
            Self::Any | Self::Icmp => false,
        }
    }
}

/// Where the remote end of a rule may be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Remote {
    /// Anywhere.
    Any,
    /// An address range.
    Cidr(IpNet),
    /// Any port that is a member of this security group.
    Group(SecurityGroupId),
}

/// One allow rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    /// Id.
    pub id: RuleId,
    /// Direction.
    pub direction: Direction,
    /// IP version.
    pub ethertype: EtherType,
    /// Protocol.
    pub protocol: Protocol,
    /// Inclusive destination port range for TCP/UDP (`None` = all ports).
    #[serde(default)]
    pub ports: Option<(u16, u16)>,
    /// ICMP type and optional code (protocol ICMP only; `None` = any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    /// Remote end.
    pub remote: Remote,
}

/// The ICMP (ICMPv6 for IPv6) messages a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpMatch {
    /// ICMP type, 0-255.
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// ICMP code, 0-255 (`None` = any code of the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// A named set of allow rules applied to ports (default: deny ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Id.
    pub id: SecurityGroupId,
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<SecurityGroupRule>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl SecurityGroup {
    /// The rules OpenStack puts in a project's "default" group: all egress,
    /// and ingress from members of the same group.
    pub fn default_rules(own: SecurityGroupId) -> Vec<SecurityGroupRule> {
        vec![
            SecurityGroupRule {
                id: RuleId::new_random(),
                direction: Direction::Egress,
                ethertype: EtherType::Ipv4,
                protocol: Protocol::Any,
                ports: None,
                icmp: None,
                remote: Remote::Any,
            },
            SecurityGroupRule {
                id: RuleId::new_random(),
                direction: Direction::Ingress,
                ethertype: EtherType::Ipv4,
                protocol: Protocol::Any,
                ports: None,
                icmp: None,
                remote: Remote::Group(own),
            },
        ]
    }
}

/// An address of a network as stored by IPAM: `/nubo/v1/private/ipam/<network>/<ip>`.
/// Held by exactly one of a port, a floating IP or a router's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAllocation {
    /// The port holding the address.
    #[serde(default)]
    pub port: Option<PortId>,
    /// The floating IP holding it (external networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_ip: Option<FloatingIpId>,
    /// The router whose gateway (SNAT address) it is (external networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterId>,
    /// With `router`: the node whose SNAT address of that router it is
    /// (`None`: the router's own gateway address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_node: Option<NodeName>,
    /// The address.
    pub ip: IpAddr,
}

/// A router: connects its tenant networks to each other and, through its
/// gateway, to one external network. Distributed: every node hosting a
/// port of one of its networks routes for its local guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// Id.
    pub id: RouterId,
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// The external network and the address outbound traffic is SNATed to.
    #[serde(default)]
    pub gateway: Option<RouterGateway>,
    /// The tenant networks it routes (each in at most one router).
    #[serde(default)]
    pub subnets: Vec<NetworkId>,
    /// Administratively down: no node routes, SNATs or NATs for it (its
    /// networks, addresses and floating IPs stay allocated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The networks of `subnets` it joined by a port: there it answers on
    /// that port's address (and MAC) instead of the network's gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interface_ports: Vec<RouterPort>,
    /// Creation time.
    pub created_at: Timestamp,
}

impl Router {
    /// Its interface port on `network`, if it joined it by a port.
    pub fn interface_port(&self, network: &NetworkId) -> Option<&RouterPort> {
        self.interface_ports.iter().find(|p| p.network == *network)
    }
}

/// A router's interface made from a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPort {
    /// The network.
    pub network: NetworkId,
    /// The port (its `router` is the router).
    pub port: PortId,
    /// The port's address: the router's on that network.
    pub ip: Ipv4Addr,
    /// The port's MAC: the router's on that network.
    pub mac: MacAddr,
}

/// A router's way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterGateway {
    /// The external network.
    pub network: NetworkId,
    /// The router's address on it (reserved in its IPAM): the SNAT source.
    pub ip: Ipv4Addr,
}

/// The address a router SNATs outbound traffic to on one node, allocated
/// by the leader from the router's external network for every node that
/// hosts a port of one of the router's networks, and released when the
/// node hosts none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterSnat {
    /// The router.
    pub router: RouterId,
    /// The node.
    pub node: NodeName,
    /// The external network (the router's gateway network).
    pub network: NetworkId,
    /// The address (reserved in the external network's IPAM).
    pub ip: Ipv4Addr,
}

/// A floating IP: an address of an external network, mapped 1:1 (DNAT and
/// SNAT) to a port's fixed address on the node where the port lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// Id.
    pub id: FloatingIpId,
    /// Owner.
    pub project: ProjectId,
    /// The external network the address belongs to.
    pub network: NetworkId,
    /// The address (reserved in the network's IPAM).
    pub address: Ipv4Addr,
    /// The port it is associated with, if any.
    #[serde(default)]
    pub port: Option<PortId>,
    /// The port's fixed address (set with `port`).
    #[serde(default)]
    pub fixed_ip: Option<Ipv4Addr>,
    /// The router connecting the port's network to `network` (set with
    /// `port`).
    #[serde(default)]
    pub router: Option<RouterId>,
    /// Creation time.
    pub created_at: Timestamp,
}
