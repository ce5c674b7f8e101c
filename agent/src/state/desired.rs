//! The desired state of this node, resolved from the [`Cache`] by a pure
//! function: every instance assigned here with everything needed to run and
//! plug it, plus the cluster-wide facts networking needs (remote VTEPs, remote
//! MACs, security group members).
//!
//! An instance whose references cannot be resolved (missing or undecodable
//! spec, port, network, image, keypair or security group) is never dropped
//! silently: it lands in [`DesiredNode::broken`] with the reason, and
//! reconcilers leave whatever already exists for it alone.
//!
//! Volumes follow the same rule at their own level: a volume listed in an
//! instance's spec is always wanted (a missing or undecodable volume record
//! never detaches it), and when its QoS cannot be resolved (record or type
//! missing or undecodable) it is [`WantedQos::Held`]: an attached disk keeps
//! the limits it has, and a volume not attached yet waits rather than being
//! plugged without its limits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use nubo_common::keys;
use nubo_common::model::{
    CaptureOrder, CaptureReport, Image, IncomingMigration, Instance, Keypair, MigrationReport,
    Network, OutgoingMigration, PowerState, ProviderSegment, Qos, Remote, Resources, SecurityGroup,
    Subnet,
};
use nubo_common::{
    ImageId, InstanceId, MigrationId, NetworkId, NodeName, PortId, RouterId, SecurityGroupId,
    VolumeId,
};
use nubo_netid::MacAddr;

use crate::state::cache::{Cache, StoredStatus};
use crate::state::routing::{resolve_routers, DesiredRouter};

/// Everything this node should be running, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredNode {
    /// This node.
    pub node: Option<NodeName>,
    /// Revision of the cache this was built from.
    pub revision: i64,
    /// Revision up to which the instance statuses in
    /// [`DesiredNode::reported`] are known.
    pub statuses_revision: i64,
    /// Instances assigned here whose references all resolve.
    pub instances: BTreeMap<InstanceId, DesiredInstance>,
    /// Instances assigned here that cannot be resolved, with the reason.
    /// Reconcilers must neither create nor destroy anything for them.
    pub broken: BTreeMap<InstanceId, String>,
    /// Instances assigned here that refer to an object that may still be
    /// on its way (written in the same transaction, under a prefix the
    /// cache has not caught up with yet; see `Cache::in_flight`), with
    /// the reason. Like broken ones they are neither created nor
    /// destroyed, but nothing is reported for them; one this node already
    /// ran keeps its previous resolution in [`DesiredNode::instances`].
    pub pending: BTreeMap<InstanceId, String>,
    /// The keys the pending instances wait for (the mirror reads them, so
    /// that one etcd does not hold turns the instance broken).
    pub awaited: BTreeSet<String>,
    /// Networks with at least one port on this node, and the networks of
    /// the routers with work here (see [`DesiredNode::routers`]).
    pub networks: BTreeMap<NetworkId, DesiredNetwork>,
    /// The routers one of whose networks has a local port: this node runs
    /// a copy of each.
    pub routers: BTreeMap<RouterId, DesiredRouter>,
    /// Security groups used by local ports (directly or as the remote group
    /// of one of their rules), with their members cluster-wide.
    pub security_groups: BTreeMap<SecurityGroupId, DesiredSecurityGroup>,
    /// Status keys currently stored in etcd that this node wrote (keyed by
    /// instance), so reporters can avoid rewriting identical values and know
    /// which reboot generation was acted on.
    pub reported: BTreeMap<InstanceId, StoredStatus>,
    /// Instances migrating here (the leader's order exists, the instance is
    /// not assigned here yet). Each one whose spec resolves is in
    /// [`DesiredNode::instances`] too, so the network subsystems wire its
    /// ports like a local instance's before memory moves; compute prepares
    /// it (taps, root disk, definition) instead of creating it, never
    /// starts, stops nor destroys it, and nothing reports its status.
    pub incoming: BTreeMap<InstanceId, IncomingMigration>,
    /// Instances leaving this node (the leader's order exists): the
    /// migrations subsystem moves them; compute, volumes and status leave
    /// them alone (a guest that left is neither restarted nor reported
    /// stopped).
    pub outgoing: BTreeMap<InstanceId, DesiredOutgoing>,
    /// This node's migration reports, by migration.
    pub migration_reports: BTreeMap<MigrationId, MigrationReport>,
    /// Root-disk captures this node is to make, by image.
    pub capture_orders: BTreeMap<ImageId, CaptureOrder>,
    /// This node's capture reports, by image.
    pub capture_reports: BTreeMap<ImageId, CaptureReport>,
}

/// An instance to move away, with where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredOutgoing {
    /// The leader's order.
    pub order: OutgoingMigration,
    /// The destination's underlay address (`None`: node unknown here).
    pub destination_ip: Option<IpAddr>,
}

impl DesiredNode {
    /// Whether a migration order (incoming or outgoing) holds the instance:
    /// only the migrations subsystem acts on it.
    pub fn migrating(&self, id: &InstanceId) -> bool {
        self.incoming.contains_key(id) || self.outgoing.contains_key(id)
    }
}

/// One instance to run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInstance {
    /// The spec as written by the coordinator.
    pub spec: Instance,
    /// vCPUs, memory and disk (from the flavor if it still exists, else the
    /// copy in the spec).
    pub resources: Resources,
    /// The boot image.
    pub image: Image,
    /// The keypair served by the metadata service.
    pub keypair: Option<Keypair>,
    /// User data, base64 as in the API.
    pub user_data_b64: Option<String>,
    /// Ports in NIC order.
    pub ports: Vec<DesiredPort>,
    /// Attached volumes in attach order (the boot volume excluded), with
    /// their QoS.
    pub volumes: Vec<WantedVolume>,
}

/// A volume that should be attached to an instance, with its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedVolume {
    /// The volume.
    pub volume: VolumeId,
    /// Its limits, from its record's `volume_type`.
    pub qos: WantedQos,
    /// Attach read-only (its record's read-only mark).
    pub read_only: bool,
    /// The guest device the coordinator chose (`vdb`, …); `None` for
    /// attachments recorded before it chose them.
    pub device: Option<String>,
}

/// The I/O limits a wanted volume should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WantedQos {
    /// Apply these (a volume without a type is unlimited:
    /// `Qos::default()`).
    Limits(Qos),
    /// Not known now, with the reason: the volume record or its type is
    /// missing or undecodable. An attached disk keeps the limits it has (a
    /// bad value never lifts a tenant's limits) and is never detached for
    /// it; a volume not attached yet is not plugged until it resolves.
    Held(String),
}

impl WantedQos {
    /// The limits, when known.
    pub fn limits(&self) -> Option<&Qos> {
        match self {
            WantedQos::Limits(q) => Some(q),
            WantedQos::Held(_) => None,
        }
    }
}

impl DesiredInstance {
    /// The instance id.
    pub fn id(&self) -> InstanceId {
        self.spec.id
    }
    /// Desired power state.
    pub fn power(&self) -> PowerState {
        self.spec.power
    }
}

/// A port of a local instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    /// Id.
    pub id: PortId,
    /// MAC address.
    pub mac: MacAddr,
    /// Fixed IPv4 address (the one DHCP hands out).
    pub ip: Ipv4Addr,
    /// Its further fixed addresses (other subnets of its network): allowed
    /// by anti-spoofing, members of its groups, known to metadata.
    pub more_ips: Vec<Ipv4Addr>,
    /// Tap device name on this node.
    pub tap: String,
    /// Network.
    pub network: NetworkId,
    /// Security groups (empty when port security is off).
    pub security_groups: Vec<SecurityGroupId>,
    /// Anti-spoofing and security groups enabled.
    pub port_security: bool,
    /// `false`: administratively down, the firewall drops all its traffic.
    pub admin_state_up: bool,
}

/// A network present on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredNetwork {
    /// Id.
    pub id: NetworkId,
    /// Subnet.
    pub cidr: Ipv4Net,
    /// Gateway handed out by DHCP.
    pub gateway: Option<Ipv4Addr>,
    /// VXLAN id (0 for a provider network).
    pub vni: u32,
    /// The physical segment of a provider network (`None`: VXLAN `vni`).
    pub provider: Option<ProviderSegment>,
    /// Guest MTU (resolved: the network's, else underlay MTU − 50 on the
    /// overlay and 1500 on a provider network).
    pub mtu: u16,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// No DHCP served for its ports.
    pub dhcp_disabled: bool,
    /// Static routes handed out by DHCP (option 121), `(destination,
    /// nexthop)`.
    pub host_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Local ports on it.
    pub local_ports: BTreeSet<PortId>,
    /// Underlay addresses of the other nodes with ports on it.
    pub remote_vteps: BTreeSet<IpAddr>,
    /// MACs of ports on other nodes → their node's VTEP.
    pub remote_macs: BTreeMap<MacAddr, IpAddr>,
    /// The legs of local router copies on this network: plugged into its
    /// bridge like taps.
    pub router_legs: Vec<RouterLegPort>,
    /// Its further subnets (the fields above are its first one's).
    pub more_subnets: Vec<DesiredSubnet>,
}

/// A subnet of a network as DHCP and metadata hand it to guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSubnet {
    /// Its range.
    pub cidr: Ipv4Net,
    /// Its gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// No DHCP for addresses of it.
    pub dhcp_disabled: bool,
    /// Static routes `(destination, nexthop)`.
    pub host_routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

impl DesiredSubnet {
    fn of(s: &Subnet) -> Self {
        Self {
            cidr: s.cidr,
            gateway: s.gateway,
            dns: s.dns.clone(),
            dhcp_disabled: s.dhcp_disabled,
            host_routes: s
                .host_routes
                .iter()
                .map(|r| (r.destination, r.nexthop))
                .collect(),
        }
    }
}

/// A router leg's end on a network's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLegPort {
    /// The veth end on the bridge.
    pub host: String,
    /// The MAC of the leg (its end in the router namespace).
    pub mac: MacAddr,
}

impl DesiredNetwork {
    /// The subnet holding `ip`: a further subnet containing it, else the
    /// first one (whose fields the network carries).
    pub fn subnet_for(&self, ip: Ipv4Addr) -> DesiredSubnet {
        let in_first = self.cidr.contains(&ip);
        match self.more_subnets.iter().find(|s| s.cidr.contains(&ip)) {
            Some(s) if !in_first => s.clone(),
            _ => DesiredSubnet {
                cidr: self.cidr,
                gateway: self.gateway,
                dns: self.dns.clone(),
                dhcp_disabled: self.dhcp_disabled,
                host_routes: self.host_routes.clone(),
            },
        }
    }

    /// The bridge the network's local taps, DHCP and metadata server sit
    /// on: `nb-<vni>` (overlay) or `np-<id>` (provider network).
    pub fn bridge(&self) -> String {
        match self.provider {
            None => nubo_overlay::bridge_name(self.vni),
            Some(_) => nubo_overlay::provider_bridge_name(&self.id.to_string()),
        }
    }
}

/// A security group with its member addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSecurityGroup {
    /// The group and its rules.
    pub group: SecurityGroup,
    /// IPs of every port (cluster-wide) that is a member.
    pub members: BTreeSet<Ipv4Addr>,
}

/// VXLAN overhead subtracted from the underlay MTU when a network has none.
const VXLAN_OVERHEAD: u16 = 50;
/// Guest MTU of a provider network that sets none (untagged Ethernet).
const PROVIDER_MTU: u16 = 1500;

/// Builds the desired state of `node` (whose underlay MTU is `underlay_mtu`)
/// from the cache. Pure.
pub fn build(cache: &Cache, node: &NodeName, underlay_mtu: u16) -> DesiredNode {
    rebuild(cache, node, underlay_mtu, None)
}

/// [`build`], keeping for a pending instance (see
/// [`DesiredNode::pending`]) its resolution in `previous`, the desired
/// state of the previous pass. Pure.
pub fn rebuild(
    cache: &Cache,
    node: &NodeName,
    underlay_mtu: u16,
    previous: Option<&DesiredNode>,
) -> DesiredNode {
    let mut out = DesiredNode {
        node: Some(node.clone()),
        revision: cache.revision,
        statuses_revision: cache.statuses_revision(),
        ..DesiredNode::default()
    };
    out.reported = cache
        .statuses
        .iter()
        .filter(|(_, s)| &s.status.node == node)
        .map(|(id, s)| (*id, s.clone()))
        .collect();

    // Assignments whose value is garbage still name an instance (the key is
    // valid): hold those.
    let assign_prefix = keys::assignments_prefix(node);
    for (key, reason) in cache.garbage.range(assign_prefix.clone()..) {
        if !key.starts_with(&assign_prefix) {
            break;
        }
        if let Some(keys::Key::Assignment(_, id)) = keys::parse(key) {
            out.broken
                .insert(id, format!("assignment is undecodable: {reason}"));
        }
    }

    let assigned = cache.assignments.get(node);
    for id in assigned.into_iter().flat_map(|a| a.keys()) {
        let since = cache
            .mod_revision(&keys::assignment(node, id))
            .unwrap_or_default();
        match resolve_instance(cache, node, *id, since) {
            Ok(inst) => {
                out.instances.insert(*id, inst);
            }
            Err(Unresolved::Broken(reason)) => {
                out.broken.insert(*id, reason);
            }
            Err(Unresolved::Pending { key, reason }) => {
                if let Some(prev) = previous.and_then(|p| p.instances.get(id)) {
                    out.instances.insert(*id, prev.clone());
                }
                out.pending.insert(*id, reason);
                out.awaited.insert(key);
            }
        }
    }

    // Migrations. An incoming instance already assigned here (the switch
    // done, its order not deleted yet) is an ordinary one.
    for (id, order) in &cache.incoming {
        if out.instances.contains_key(id) || out.broken.contains_key(id) {
            continue;
        }
        let since = cache
            .mod_revision(&keys::node_incoming(node, id))
            .unwrap_or_default();
        match resolve_spec(cache, &order.spec, since) {
            Ok(inst) => {
                out.instances.insert(*id, inst);
                out.incoming.insert(*id, order.clone());
            }
            Err(Unresolved::Broken(reason)) => {
                tracing::warn!(instance = %id, migration = %order.migration, %reason, "incoming migration cannot be prepared");
                out.incoming.insert(*id, order.clone());
            }
            Err(Unresolved::Pending { key, .. }) => {
                out.incoming.insert(*id, order.clone());
                out.awaited.insert(key);
            }
        }
    }
    for (id, order) in &cache.outgoing {
        out.outgoing.insert(
            *id,
            DesiredOutgoing {
                order: order.clone(),
                destination_ip: cache.nodes.get(&order.destination).map(|n| n.underlay_ip),
            },
        );
    }
    out.migration_reports = cache.migration_reports.clone();
    out.capture_orders = cache.capture_orders.clone();
    out.capture_reports = cache.capture_reports.clone();
    // A spec copy whose assignment may still be on its way (the switch of
    // a migration writes both, under two prefixes): its guest is held.
    for (id, spec) in &cache.instances {
        if out.instances.contains_key(id) || out.broken.contains_key(id) {
            continue;
        }
        let spec_rev = cache
            .mod_revision(&keys::node_spec(node, id))
            .unwrap_or_default();
        let assignment = keys::assignment(node, id);
        if cache.in_flight(&assignment, spec_rev) {
            out.pending
                .insert(spec.id, "assignment not received yet".into());
            out.awaited.insert(assignment);
        }
    }

    // Networks and security groups used locally.
    let mut used_groups: BTreeSet<SecurityGroupId> = BTreeSet::new();
    for inst in out.instances.values() {
        for p in &inst.ports {
            // resolve_instance checked the network exists.
            if let Some(net) = cache.networks.get(&p.network) {
                if let Some(entry) = network_entry(&mut out.networks, net, underlay_mtu) {
                    entry.local_ports.insert(p.id);
                }
            }
            used_groups.extend(p.security_groups.iter().copied());
        }
    }
    // Remote groups referenced by the rules of used groups need members too.
    let direct: Vec<SecurityGroupId> = used_groups.iter().copied().collect();
    for g in direct {
        if let Some(sg) = cache.secgroups.get(&g) {
            for r in &sg.rules {
                if let Remote::Group(other) = &r.remote {
                    used_groups.insert(*other);
                }
            }
        }
    }
    for g in &used_groups {
        if let Some(sg) = cache.secgroups.get(g) {
            out.security_groups.insert(
                *g,
                DesiredSecurityGroup {
                    group: sg.clone(),
                    members: BTreeSet::new(),
                },
            );
        }
    }

    // Routers with work here, and their networks (a router routes to its
    // networks that have no local port too).
    let local_ports: BTreeSet<PortId> = out
        .networks
        .values()
        .flat_map(|n| n.local_ports.iter().copied())
        .collect();
    let local_networks: BTreeSet<NetworkId> = out.networks.keys().copied().collect();
    out.routers = resolve_routers(cache, node, &local_networks, &local_ports);
    for r in out.routers.values() {
        let legs = r.legs.iter().map(|l| (l.network, &l.host, l.mac));
        let external = r.external.iter().map(|x| (x.network, &x.host, x.mac));
        for (net_id, host, mac) in legs.chain(external) {
            let Some(net) = cache.networks.get(&net_id) else {
                continue;
            };
            if let Some(entry) = network_entry(&mut out.networks, net, underlay_mtu) {
                entry.router_legs.push(RouterLegPort {
                    host: host.clone(),
                    mac,
                });
            }
        }
    }

    // One pass over every port in the cluster: remote VTEPs/MACs and members.
    for port in cache.ports.values() {
        for g in &port.security_groups {
            if let Some(dsg) = out.security_groups.get_mut(g) {
                dsg.members.extend(port.ips());
            }
        }
        if local_ports.contains(&port.id) {
            continue;
        }
        let Some(net) = out.networks.get_mut(&port.network) else {
            continue;
        };
        let Some(port_node) = cache.port_node(port) else {
            continue;
        };
        if &port_node == node {
            continue;
        }
        if let Some(remote) = cache.nodes.get(&port_node) {
            net.remote_vteps.insert(remote.underlay_ip);
            net.remote_macs.insert(port.mac, remote.underlay_ip);
        }
    }
    migration_paths(cache, &mut out);
    out
}

/// The overlay paths of migrations, before the switch moves the ports:
/// each side floods to the other's VTEP on the networks of the migrating
/// instance (so the guest's announcement and traffic cross at once), and
/// once the source reported the guest migrated, the source points the
/// guest's MACs at the destination. Pure.
fn migration_paths(cache: &Cache, out: &mut DesiredNode) {
    let vtep = |n: &NodeName| cache.nodes.get(n).map(|n| n.underlay_ip);
    let mut paths: Vec<(InstanceId, IpAddr, bool)> = Vec::new();
    for (id, o) in &out.outgoing {
        if let Some(ip) = o.destination_ip {
            let left = out
                .migration_reports
                .get(&o.order.migration)
                .is_some_and(|r| r.phase == nubo_common::model::MigrationPhase::Migrated);
            paths.push((*id, ip, left));
        }
    }
    for (id, order) in &out.incoming {
        if let Some(ip) = vtep(&order.source) {
            paths.push((*id, ip, false));
        }
    }
    for (id, ip, left) in paths {
        let Some(inst) = out.instances.get(&id) else {
            continue;
        };
        for p in &inst.ports {
            if let Some(net) = out.networks.get_mut(&p.network) {
                net.remote_vteps.insert(ip);
                if left {
                    net.remote_macs.insert(p.mac, ip);
                }
            }
        }
    }
}

/// The entry of `net` in `networks`, made on first use; `None` (logged)
/// for a network without a subnet, which cannot have ports — only a
/// hand-edited record gets here.
fn network_entry<'a>(
    networks: &'a mut BTreeMap<NetworkId, DesiredNetwork>,
    net: &Network,
    underlay_mtu: u16,
) -> Option<&'a mut DesiredNetwork> {
    match networks.entry(net.id) {
        std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
        std::collections::btree_map::Entry::Vacant(v) => {
            let Some(desired) = desired_network(net, underlay_mtu) else {
                tracing::warn!(network = %net.id, "network without a subnet has local ports; left out");
                return None;
            };
            Some(v.insert(desired))
        }
    }
}

/// A network as this node sees it, before its ports and remotes are
/// filled in (`None` without a subnet).
fn desired_network(net: &Network, underlay_mtu: u16) -> Option<DesiredNetwork> {
    Some(DesiredNetwork {
        id: net.id,
        cidr: net.cidr?,
        gateway: net.gateway,
        vni: net.vni,
        provider: net.provider.clone(),
        mtu: match (net.mtu, &net.provider) {
            (0, None) => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            (0, Some(_)) => PROVIDER_MTU,
            (m, _) => m,
        },
        dns: net.dns.clone(),
        dhcp_disabled: net.dhcp_disabled,
        host_routes: net
            .host_routes
            .iter()
            .map(|r| (r.destination, r.nexthop))
            .collect(),
        local_ports: BTreeSet::new(),
        remote_vteps: BTreeSet::new(),
        remote_macs: BTreeMap::new(),
        router_legs: Vec::new(),
        more_subnets: net.more_subnets.iter().map(DesiredSubnet::of).collect(),
    })
}

/// Why an instance cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unresolved {
    /// An object it needs is missing or undecodable.
    Broken(String),
    /// An object it needs may still be on its way (`key`).
    Pending {
        /// The key awaited.
        key: String,
        /// What is missing.
        reason: String,
    },
}

/// Why an object referenced by key `key`, from an object written at
/// `since`, is unavailable.
fn missing(cache: &Cache, what: &str, key: &str, since: i64) -> Unresolved {
    if cache.in_flight(key, since) {
        return Unresolved::Pending {
            key: key.to_string(),
            reason: format!("{what} not received yet"),
        };
    }
    Unresolved::Broken(missing_reason(cache, what, key))
}

/// Why an object referenced by key `key` is unavailable.
fn missing_reason(cache: &Cache, what: &str, key: &str) -> String {
    match cache.garbage_reason(key) {
        Some(reason) => format!("{what} is undecodable: {reason}"),
        None => format!("{what} not found"),
    }
}

fn resolve_instance(
    cache: &Cache,
    node: &NodeName,
    id: InstanceId,
    assigned_at: i64,
) -> Result<DesiredInstance, Unresolved> {
    let spec_key = keys::node_spec(node, &id);
    let spec = cache
        .instances
        .get(&id)
        .ok_or_else(|| missing(cache, "instance spec", &spec_key, assigned_at))?;
    let spec_rev = cache.mod_revision(&spec_key).unwrap_or_default();
    resolve_spec(cache, spec, spec_rev)
}

/// Resolves what `spec` (written at revision `spec_rev`) refers to.
fn resolve_spec(
    cache: &Cache,
    spec: &Instance,
    spec_rev: i64,
) -> Result<DesiredInstance, Unresolved> {
    let image = cache.images.get(&spec.image).ok_or_else(|| {
        missing(
            cache,
            &format!("image {}", spec.image),
            &keys::image(&spec.image),
            spec_rev,
        )
    })?;
    let keypair = match &spec.key_name {
        None => None,
        Some(name) => Some(
            cache
                .keypairs
                .get(&(spec.project.clone(), name.clone()))
                .ok_or_else(|| {
                    missing(
                        cache,
                        &format!("keypair {name}"),
                        &keys::keypair(&spec.project, name),
                        spec_rev,
                    )
                })?
                .clone(),
        ),
    };
    let resources = cache
        .flavors
        .get(&spec.flavor)
        .map(|f| f.resources)
        .unwrap_or(spec.resources);
    let mut ports = Vec::with_capacity(spec.ports.len());
    for pid in &spec.ports {
        let port_key = keys::port(pid);
        let port = cache
            .ports
            .get(pid)
            .ok_or_else(|| missing(cache, &format!("port {pid}"), &port_key, spec_rev))?;
        let port_rev = cache.mod_revision(&port_key).unwrap_or_default();
        if !cache.networks.contains_key(&port.network) {
            return Err(missing(
                cache,
                &format!("network {} of port {pid}", port.network),
                &keys::network(&port.network),
                port_rev,
            ));
        }
        for g in &port.security_groups {
            if !cache.secgroups.contains_key(g) {
                return Err(missing(
                    cache,
                    &format!("security group {g} of port {pid}"),
                    &keys::secgroup(g),
                    port_rev,
                ));
            }
        }
        // The coordinator never plugs an address-less port; a hand-edited
        // record that does is held with the reason.
        let Some(ip) = port.ip else {
            return Err(Unresolved::Broken(format!(
                "port {pid} has no fixed IP and cannot be plugged"
            )));
        };
        ports.push(DesiredPort {
            id: port.id,
            mac: port.mac,
            ip,
            more_ips: port.more_ips.clone(),
            tap: port.tap_name(),
            network: port.network,
            security_groups: if port.port_security {
                port.security_groups.clone()
            } else {
                Vec::new()
            },
            port_security: port.port_security,
            admin_state_up: port.admin_state_up,
        });
    }
    let volumes = spec
        .volumes
        .iter()
        .map(|a| {
            let record = cache.volumes.get(&a.volume);
            WantedVolume {
                volume: a.volume,
                qos: volume_qos(cache, &a.volume),
                read_only: record.and_then(|v| v.read_only).unwrap_or(false),
                device: record.and_then(|v| v.device.clone()),
            }
        })
        .collect();
    Ok(DesiredInstance {
        spec: with_guest_stop(cache, spec, spec_rev),
        resources,
        image: image.clone(),
        keypair,
        user_data_b64: spec.user_data_b64.clone(),
        ports,
        volumes,
    })
}

/// `spec`, stopped when this node reported its guest powered off while
/// this very spec (revision `spec_rev`) wanted it running: the guest stays
/// off until the coordinator records the stop in the spec, or the spec
/// changes (e.g. `nubo server start`). Pure.
fn with_guest_stop(cache: &Cache, spec: &Instance, spec_rev: i64) -> Instance {
    match cache.guest_stops.get(&spec.id) {
        Some((stop, _)) if stop.spec_revision >= spec_rev && spec.power == PowerState::Running => {
            Instance {
                power: PowerState::Stopped,
                ..spec.clone()
            }
        }
        _ => spec.clone(),
    }
}

/// The limits of `volume`: its type's QoS, unlimited without a type,
/// [`WantedQos::Held`] when the record or the type cannot be read (the
/// coordinator refuses to delete a type in use, so a missing type is a
/// damaged or lagging store, not "no limits").
fn volume_qos(cache: &Cache, volume: &VolumeId) -> WantedQos {
    let Some(v) = cache.volumes.get(volume) else {
        return WantedQos::Held(missing_reason(
            cache,
            &format!("volume {volume}"),
            &keys::volume(volume),
        ));
    };
    match &v.volume_type {
        None => WantedQos::Limits(Qos::default()),
        Some(t) => match cache.volume_types.get(t) {
            Some(vt) => WantedQos::Limits(vt.qos),
            None => WantedQos::Held(missing_reason(
                cache,
                &format!("volume type {t} of volume {volume}"),
                &keys::volume_type(t),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use nubo_common::model::{self, InstanceState};

    #[test]
    fn resolves_local_instances_and_cluster_wide_networking() {
        let mut w = World::new();
        let n1 = node_name("n1");
        let n2 = node_name("n2");
        let n3 = node_name("n3");
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        w.node(&n3, "10.0.0.3");
        let net = w.network(100, 0);
        let other_net = w.network(200, 1400);
        let sg = w.secgroup_self_referencing();
        let (i1, p1) = w.instance_on(&n1, net, &[sg]);
        let (_i2, p2) = w.instance_on(&n2, net, &[sg]);
        let (_i3, _p3) = w.instance_on(&n3, other_net, &[]);
        let d = build(&w.cache, &n1, 1500);

        assert_eq!(d.instances.len(), 1);
        assert!(d.broken.is_empty());
        let di = &d.instances[&i1];
        assert_eq!(di.ports.len(), 1);
        assert_eq!(di.ports[0].tap, p1.tap_name());
        assert_eq!(di.ports[0].mac, p1.mac);

        // Only the network with a local port is present, MTU resolved.
        assert_eq!(d.networks.len(), 1);
        let dn = &d.networks[&net];
        assert_eq!(dn.mtu, 1450);
        assert_eq!(dn.vni, 100);
        assert_eq!(dn.local_ports, BTreeSet::from([p1.id]));
        let vtep2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(dn.remote_vteps, BTreeSet::from([vtep2]));
        assert_eq!(dn.remote_macs, BTreeMap::from([(p2.mac, vtep2)]));

        // Members cluster-wide.
        assert_eq!(
            d.security_groups[&sg].members,
            BTreeSet::from([p1.ip.unwrap(), p2.ip.unwrap()])
        );
    }

    #[test]
    fn broken_references_are_reported_not_dropped() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let (ok, _) = w.instance_on(&n1, net, &[]);
        let (bad_port, p) = w.instance_on(&n1, net, &[]);
        w.cache.apply(&keys::port(&p.id), Some(b"garbage"), 100);
        let (no_image, _) = w.instance_on(&n1, net, &[]);
        let img = w.cache.instances[&no_image].image;
        w.cache.apply(&keys::image(&img), None, 101);
        let garbage_assign = InstanceId::new_random();
        w.cache
            .apply(&keys::assignment(&n1, &garbage_assign), Some(b"{"), 102);
        let (no_spec, _) = w.instance_on(&n1, net, &[]);
        w.cache.apply(&keys::node_spec(&n1, &no_spec), None, 103);

        let d = build(&w.cache, &n1, 1500);
        assert_eq!(d.instances.keys().collect::<Vec<_>>(), vec![&ok]);
        assert!(
            d.broken[&bad_port].contains("undecodable"),
            "{:?}",
            d.broken
        );
        assert!(d.broken[&no_image].contains("not found"));
        assert!(d.broken[&garbage_assign].contains("assignment"));
        assert!(d.broken[&no_spec].contains("instance spec"));
    }

    #[test]
    fn reported_holds_only_this_nodes_statuses() {
        let mut w = World::new();
        let n1 = node_name("n1");
        let a = InstanceId::new_random();
        let b = InstanceId::new_random();
        let st = |n: &NodeName| model::encode(&status(n, InstanceState::Running, 0));
        w.cache
            .apply(&keys::instance_status(&n1, &a), Some(&st(&n1)), 7);
        // A status naming another node (written by hand) is not this node's.
        w.cache.apply(
            &keys::instance_status(&n1, &b),
            Some(&st(&node_name("n2"))),
            8,
        );
        let d = build(&w.cache, &n1, 1500);
        assert_eq!(d.reported.keys().collect::<Vec<_>>(), vec![&a]);
        assert_eq!(d.reported[&a].mod_revision, 7);
    }

    #[test]
    fn attached_volumes_resolve_their_qos_and_unknowns_are_held_not_dropped() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(1, 0);
        let (id, _) = w.instance_on(&n1, net, &[]);
        w.volume_type("gold", Some(200));
        let gold = w.volume(Some("gold"));
        let plain = w.volume(None);
        let orphan = w.volume(Some("gold"));
        let bad_type = w.volume(Some("bad"));
        w.cache.apply(&keys::volume_type("bad"), Some(b"{"), 500);
        let gone_type = w.volume(Some("gone"));
        let bad_record = w.volume(None);
        let order = vec![gold, plain, orphan, bad_type, gone_type, bad_record];
        for v in &order {
            w.attach(id, *v);
        }
        w.cache.apply(&keys::volume(&orphan), None, 501);
        w.cache.apply(&keys::volume(&bad_record), Some(b"1"), 502);

        let d = build(&w.cache, &n1, 1500);
        // Volume trouble never makes the instance broken.
        assert!(d.broken.is_empty(), "{:?}", d.broken);
        let vols = &d.instances[&id].volumes;
        // Every attached volume stays wanted, in attach order.
        assert_eq!(vols.iter().map(|v| v.volume).collect::<Vec<_>>(), order);
        assert_eq!(
            vols[0].qos,
            WantedQos::Limits(Qos {
                write_iops_sec: Some(200),
                ..Qos::default()
            })
        );
        assert_eq!(vols[1].qos, WantedQos::Limits(Qos::default()));
        let held = |i: usize| match &vols[i].qos {
            WantedQos::Held(r) => r.clone(),
            q => panic!("{i}: {q:?}"),
        };
        assert!(held(2).contains(&format!("volume {orphan} not found")));
        assert!(held(3).contains("volume type bad"));
        assert!(held(3).contains("undecodable"));
        assert!(held(4).contains("volume type gone"));
        assert!(held(4).contains("not found"));
        assert!(held(5).contains("undecodable"));

        // The type comes back: resolved at the next build.
        w.volume_type("gone", Some(7));
        let d = build(&w.cache, &n1, 1500);
        assert_eq!(
            d.instances[&id].volumes[4]
                .qos
                .limits()
                .map(|q| q.write_iops_sec),
            Some(Some(7))
        );
    }

    #[test]
    fn an_instance_waiting_for_the_rest_of_a_transaction_is_pending_not_broken() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(7, 0);
        let (id, port) = w.instance_on(&n1, net, &[]);
        // The mirror's view: every prefix known up to now.
        let now = w.cache.revision;
        for p in keys::agent_watch_prefixes(&n1) {
            w.cache.set_progress(&p, now);
        }
        let d0 = build(&w.cache, &n1, 1500);
        assert!(d0.instances.contains_key(&id) && d0.pending.is_empty());

        // One transaction at now+1 adds a port to the spec and writes the
        // port: the instances prefix has arrived, the ports prefix not yet.
        let mut new_port = port.clone();
        new_port.id = PortId::new_random();
        let mut spec = w.cache.instances[&id].clone();
        spec.ports.push(new_port.id);
        w.cache.apply(
            &keys::node_spec(&n1, &id),
            Some(&model::encode(&spec)),
            now + 1,
        );
        w.cache.set_progress(&keys::host_prefix(&n1), now + 1);
        let d = rebuild(&w.cache, &n1, 1500, Some(&d0));
        assert!(d.broken.is_empty(), "{:?}", d.broken);
        assert!(
            d.pending[&id].contains("not received yet"),
            "{:?}",
            d.pending
        );
        assert_eq!(d.awaited, BTreeSet::from([keys::port(&new_port.id)]));
        // It keeps what it had: its network stays wired, nothing reported.
        assert_eq!(d.instances[&id], d0.instances[&id]);
        assert_eq!(d.networks.len(), 1);
        // Without a previous pass it is only pending.
        let d = build(&w.cache, &n1, 1500);
        assert!(!d.instances.contains_key(&id) && d.pending.contains_key(&id));

        // etcd read after the transaction does not hold the port: missing.
        let mut read = w.cache.clone();
        read.confirm_absent(&keys::port(&new_port.id), now + 1);
        let d = build(&read, &n1, 1500);
        assert!(d.pending.is_empty() && d.broken[&id].contains("not found"));
        // The ports prefix caught up without it: missing too.
        let mut caught_up = w.cache.clone();
        caught_up.set_progress(&keys::ports_prefix(), now + 1);
        let d = build(&caught_up, &n1, 1500);
        assert!(d.pending.is_empty() && d.broken[&id].contains("not found"));
        // The port arrives: resolved, with both ports.
        w.cache.apply(
            &keys::port(&new_port.id),
            Some(&model::encode(&new_port)),
            now + 1,
        );
        w.cache.set_progress(&keys::ports_prefix(), now + 1);
        let d = rebuild(&w.cache, &n1, 1500, Some(&d0));
        assert!(d.pending.is_empty() && d.awaited.is_empty());
        assert_eq!(d.instances[&id].ports.len(), 2);
    }

    #[test]
    fn an_assignment_ahead_of_its_spec_is_pending() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let now = w.cache.revision;
        for p in keys::agent_watch_prefixes(&n1) {
            w.cache.set_progress(&p, now);
        }
        let id = InstanceId::new_random();
        w.cache.apply(
            &keys::assignment(&n1, &id),
            Some(&model::encode(&assignment(&n1, id))),
            now + 1,
        );
        w.cache
            .set_progress(&keys::assignments_prefix(&n1), now + 1);
        let d = build(&w.cache, &n1, 1500);
        assert!(d.broken.is_empty());
        assert_eq!(d.awaited, BTreeSet::from([keys::node_spec(&n1, &id)]));
        // The spec copies' prefix moves past the assignment without the spec.
        w.cache.set_progress(&keys::host_prefix(&n1), now + 2);
        let d = build(&w.cache, &n1, 1500);
        assert!(d.pending.is_empty());
        assert!(d.broken[&id].contains("instance spec not found"));
    }
}
