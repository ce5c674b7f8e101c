//! The etcd key layout. Every key nubo reads or writes is built here and
//! nowhere else; [`Key::parse`] turns any of them back into its meaning, so
//! watchers classify events and skip keys they do not understand.
//!
//! Keys are grouped by who needs to read them (least privilege, see
//! `docs/etcd-layout.md` for who writes and who reads each key):
//!
//! - **shared topology** under [`ROOT`]: what a hypervisor's agent needs to
//!   run its instances (`nodes/`, `flavors/`, `images/`, `networks/`,
//!   `ports/`, `secgroups/`, `keypairs/`, `server-groups/`, `volumes/`,
//!   `volume-types/`, `volume-snapshots/`, `instances/`, `assignments/`);
//!   the instance specs (`instances/`, every tenant's user data) are read
//!   by coordinators only: each node reads the copies of its own
//!   instances' specs under `hosts/<node>/` and its own `assignments/<node>/`;
//! - **node-owned** keys, written by one node's agent only:
//!   `nodes/<node>`, `nodes/<node>/alive`, the statuses of its instances
//!   under `node-owned/<node>/`, its guest-stop reports under
//!   `guest-stops/<node>/`.
//!
//! [`node_grants`] is the etcd role of a node, derived from the same
//! builders (what `nubo-coordinator node enroll` grants).
//! - **coordinator-private** data under [`PRIVATE`], which no hypervisor
//!   reads: identity (projects, users and password hashes, roles,
//!   application credentials, quotas and their usage, the token signing
//!   keys, the audit trail) and the coordinator's indexes and bookkeeping
//!   (name index, IPAM, MAC and VNI indexes, port owners, server-group
//!   members, client tokens, the evacuation switch);
//! - the coordinators' own election (`election/`, `coordinators/`).
//!
//! Clusters created before this layout kept the private data directly
//! under [`ROOT`]; [`LEGACY_MOVES`] lists what moved, and the coordinator
//! moves it on start.

use std::net::IpAddr;

use crate::model::{AppCredId, UserName};
use crate::{
    FlavorName, FloatingIpId, ImageId, InstanceId, MigrationId, NetworkId, NodeName, PortId,
    ProjectId, RouterId, SecurityGroupId, ServerGroupId, VolumeId,
};
use nubo_netid::MacAddr;

/// Everything nubo stores lives below this prefix.
pub const ROOT: &str = "/nubo/v1/";

/// Coordinator-private data: no hypervisor reads below this prefix.
pub const PRIVATE: &str = "/nubo/v1/private/";

// ------------------------------------------------------------------ nodes

/// `/nubo/v1/nodes/` — node records and their sub-keys.
pub fn nodes_prefix() -> String {
    format!("{ROOT}nodes/")
}
/// `/nubo/v1/nodes/<node>` (the agent, on start)
pub fn node(n: &NodeName) -> String {
    format!("{ROOT}nodes/{n}")
}
/// `/nubo/v1/nodes/<node>/alive` (bound to the agent's lease)
pub fn node_alive(n: &NodeName) -> String {
    format!("{ROOT}nodes/{n}/alive")
}
/// `/nubo/v1/nodes/<node>/usage` (coordinator, in placement transactions)
pub fn node_usage(n: &NodeName) -> String {
    format!("{ROOT}nodes/{n}/usage")
}
/// `/nubo/v1/nodes/<node>/admin` (operator switches)
pub fn node_admin(n: &NodeName) -> String {
    format!("{ROOT}nodes/{n}/admin")
}
/// `/nubo/v1/nodes/<node>/health` (`NodeHealth`, written by the leading
/// coordinator's failure handling; see `docs/failure-handling.md`).
pub fn node_health(n: &NodeName) -> String {
    format!("{ROOT}nodes/{n}/health")
}

// --------------------------------------------------------------- resources

/// `/nubo/v1/flavors/`
pub fn flavors_prefix() -> String {
    format!("{ROOT}flavors/")
}
/// `/nubo/v1/flavors/<name>`
pub fn flavor(n: &FlavorName) -> String {
    format!("{ROOT}flavors/{n}")
}

/// `/nubo/v1/images/`
pub fn images_prefix() -> String {
    format!("{ROOT}images/")
}
/// `/nubo/v1/images/<id>`
pub fn image(id: &ImageId) -> String {
    format!("{ROOT}images/{id}")
}

/// `/nubo/v1/networks/`
pub fn networks_prefix() -> String {
    format!("{ROOT}networks/")
}
/// `/nubo/v1/networks/<id>`
pub fn network(id: &NetworkId) -> String {
    format!("{ROOT}networks/{id}")
}

/// `/nubo/v1/ports/`
pub fn ports_prefix() -> String {
    format!("{ROOT}ports/")
}
/// `/nubo/v1/ports/<id>`
pub fn port(id: &PortId) -> String {
    format!("{ROOT}ports/{id}")
}

/// `/nubo/v1/secgroups/`
pub fn secgroups_prefix() -> String {
    format!("{ROOT}secgroups/")
}
/// `/nubo/v1/secgroups/<id>`
pub fn secgroup(id: &SecurityGroupId) -> String {
    format!("{ROOT}secgroups/{id}")
}

/// `/nubo/v1/keypairs/` — every project's keypairs.
pub fn keypairs_root() -> String {
    format!("{ROOT}keypairs/")
}
/// `/nubo/v1/keypairs/<project>/`
pub fn keypairs_prefix(p: &ProjectId) -> String {
    format!("{ROOT}keypairs/{p}/")
}
/// `/nubo/v1/keypairs/<project>/<name>`
pub fn keypair(p: &ProjectId, name: &str) -> String {
    format!("{ROOT}keypairs/{p}/{name}")
}

/// `/nubo/v1/server-groups/`
pub fn server_groups_prefix() -> String {
    format!("{ROOT}server-groups/")
}
/// `/nubo/v1/server-groups/<id>`
pub fn server_group(id: &ServerGroupId) -> String {
    format!("{ROOT}server-groups/{id}")
}

/// `/nubo/v1/volumes/`
pub fn volumes_prefix() -> String {
    format!("{ROOT}volumes/")
}
/// `/nubo/v1/volumes/<id>`
pub fn volume(id: &VolumeId) -> String {
    format!("{ROOT}volumes/{id}")
}
/// `/nubo/v1/volume-types/`
pub fn volume_types_prefix() -> String {
    format!("{ROOT}volume-types/")
}
/// `/nubo/v1/volume-types/<name>` (`VolumeType`, global like flavors)
pub fn volume_type(name: &str) -> String {
    format!("{ROOT}volume-types/{name}")
}
/// `/nubo/v1/volume-snapshots/` — every volume's snapshots.
pub fn volume_snapshots_root() -> String {
    format!("{ROOT}volume-snapshots/")
}
/// `/nubo/v1/volume-snapshots/<volume>/` — one volume's snapshots.
pub fn volume_snapshots_prefix(v: &VolumeId) -> String {
    format!("{ROOT}volume-snapshots/{v}/")
}
/// `/nubo/v1/volume-snapshots/<volume>/<name>` (`VolumeSnapshot`; the RBD
/// snapshot of the same name on the volume's image)
pub fn volume_snapshot(v: &VolumeId, name: &str) -> String {
    format!("{ROOT}volume-snapshots/{v}/{name}")
}
/// `/nubo/v1/volume-transfers/` — pending volume transfers.
pub fn volume_transfers_prefix() -> String {
    format!("{ROOT}volume-transfers/")
}
/// `/nubo/v1/volume-transfers/<id>` (`VolumeTransfer`).
pub fn volume_transfer(id: &crate::TransferId) -> String {
    format!("{ROOT}volume-transfers/{id}")
}

/// `/nubo/v1/instances/` — the instance specs (coordinators only: they
/// hold every tenant's user data; a node reads its instances' copies,
/// [`node_spec`]).
pub fn instances_prefix() -> String {
    format!("{ROOT}instances/")
}
/// `/nubo/v1/instances/<id>` (desired spec, coordinator)
pub fn instance(id: &InstanceId) -> String {
    format!("{ROOT}instances/{id}")
}
/// `/nubo/v1/instances/<id>/status`: where statuses were kept before they
/// moved under the reporting node's own keys ([`instance_status`]); only
/// the coordinator's layout migration reads it.
pub fn legacy_instance_status(id: &InstanceId) -> String {
    format!("{ROOT}instances/{id}/status")
}

/// `/nubo/v1/assignments/` — every node's assignments.
pub fn all_assignments_prefix() -> String {
    format!("{ROOT}assignments/")
}
/// `/nubo/v1/assignments/<node>/`
pub fn assignments_prefix(n: &NodeName) -> String {
    format!("{ROOT}assignments/{n}/")
}
/// `/nubo/v1/assignments/<node>/<instance>`
pub fn assignment(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}assignments/{n}/{id}")
}

// ------------------------------------------------------- per-node prefixes

/// `/nubo/v1/hosts/` — what coordinators write for one node only.
pub fn all_hosts_prefix() -> String {
    format!("{ROOT}hosts/")
}
/// `/nubo/v1/hosts/<node>/` — written by coordinators, readable by that
/// node alone (its etcd role, [`node_grants`]).
pub fn host_prefix(n: &NodeName) -> String {
    format!("{ROOT}hosts/{n}/")
}
/// `/nubo/v1/hosts/<node>/instances/` — the spec copies of a node.
pub fn node_specs_prefix(n: &NodeName) -> String {
    format!("{ROOT}hosts/{n}/instances/")
}
/// `/nubo/v1/hosts/<node>/instances/<id>` (`Instance`): the copy of the
/// spec of an instance placed on `node`, written by coordinators in every
/// transaction that writes the spec ([`instance`]) and equal to it, so the
/// node reads its instances (user data included) and no other's.
pub fn node_spec(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}hosts/{n}/instances/{id}")
}

/// `/nubo/v1/node-owned/` — every node's own keys.
pub fn all_node_owned_prefix() -> String {
    format!("{ROOT}node-owned/")
}
/// `/nubo/v1/node-owned/<node>/` — written by that node's agent (and by
/// coordinators, which reset and clean them up); the node's role may read
/// and write it, no other node's may.
pub fn node_owned_prefix(n: &NodeName) -> String {
    format!("{ROOT}node-owned/{n}/")
}
/// `/nubo/v1/node-owned/<node>/status/` — the statuses a node reports.
pub fn node_statuses_prefix(n: &NodeName) -> String {
    format!("{ROOT}node-owned/{n}/status/")
}
/// `/nubo/v1/node-owned/<node>/status/<id>` (`InstanceStatus`, observed
/// state reported by the agent of `node`, the instance's node)
pub fn instance_status(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}node-owned/{n}/status/{id}")
}
/// `/nubo/v1/node-owned/<node>/passwords/<id>` (the guest's password as
/// it posted it to the metadata service, raw bytes, at most 256; written
/// once by the agent of `node`, cleared by coordinators)
pub fn instance_password(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}node-owned/{n}/passwords/{id}")
}
/// `/nubo/v1/node-owned/<node>/usage` (`ObservedUsage`): the node's and
/// its instances' real usage over the agent's last collection period,
/// written once per period on the liveness lease (gone with the node).
pub fn node_observed_usage(n: &NodeName) -> String {
    format!("{ROOT}node-owned/{n}/usage")
}
/// `/nubo/v1/guest-stops/` — every node's guest-stop reports (one small
/// prefix the leading coordinator watches).
pub fn all_guest_stops_prefix() -> String {
    format!("{ROOT}guest-stops/")
}
/// `/nubo/v1/guest-stops/<node>/` — written by that node's agent.
pub fn guest_stops_prefix(n: &NodeName) -> String {
    format!("{ROOT}guest-stops/{n}/")
}
/// `/nubo/v1/guest-stops/<node>/<id>` (`GuestStop`): the agent of `node`
/// saw the guest power itself off; the leading coordinator turns the
/// spec's desired power to stopped and deletes the report. Node-owned,
/// outside `node-owned/` so that the leader watches the reports alone,
/// not every status.
pub fn guest_stop(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}guest-stops/{n}/{id}")
}

/// The prefixes the agent of `node` lists and watches: what a hypervisor
/// needs to run and wire its instances. Shared topology (nodes for VTEPs
/// and peers, flavors, images, networks, ports, security groups, keypairs,
/// volumes and volume types), and only its own per-node keys (its
/// assignments, its spec copies, its own reports); never another node's,
/// never the instance specs (every tenant's user data), never
/// coordinator-private data (everything under [`PRIVATE`]) nor the
/// coordinators' election. Each one is readable by the node's etcd role
/// ([`node_grants`]). No prefix contains another: each key is delivered
/// once.
pub fn agent_watch_prefixes(node: &NodeName) -> Vec<String> {
    vec![
        assignments_prefix(node),
        flavors_prefix(),
        guest_stops_prefix(node),
        host_prefix(node),
        images_prefix(),
        keypairs_root(),
        networks_prefix(),
        floating_ips_prefix(),
        node_owned_prefix(node),
        node_router_snats_prefix(node),
        nodes_prefix(),
        ports_prefix(),
        routers_prefix(),
        secgroups_prefix(),
        volume_types_prefix(),
        volumes_prefix(),
    ]
}

/// What one etcd permission of a node's role covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
}

impl Span {
    /// Whether `key` is covered.
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Span::Key(k) => k == key,
            Span::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// The etcd role of a node: what it may read and what it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGrants {
    /// Read permissions (readable, not writable).
    pub read: Vec<Span>,
    /// Read and write permissions.
    pub readwrite: Vec<Span>,
}

impl NodeGrants {
    /// Whether the role may read `key`.
    pub fn may_read(&self, key: &str) -> bool {
        self.read
            .iter()
            .chain(&self.readwrite)
            .any(|s| s.covers(key))
    }
    /// Whether the role may write `key`.
    pub fn may_write(&self, key: &str) -> bool {
        self.readwrite.iter().any(|s| s.covers(key))
    }
}

/// The etcd permissions of the role of `node` (least privilege, see
/// `docs/etcd-layout.md`): it reads every prefix its agent watches
/// ([`agent_watch_prefixes`]) and the public ticket keys
/// ([`ticket_keys_prefix`]), and writes only its node record, its alive
/// key, its node-owned prefix and its guest-stop reports. Its usage, admin switch and health, the
/// specs, other nodes' keys and everything under [`PRIVATE`] stay out of
/// its reach.
pub fn node_grants(node: &NodeName) -> NodeGrants {
    let owned = [node_owned_prefix(node), guest_stops_prefix(node)];
    NodeGrants {
        read: agent_watch_prefixes(node)
            .into_iter()
            .filter(|p| !owned.contains(p))
            // Read on demand, not watched: the keys checking stream tickets.
            .chain([ticket_keys_prefix()])
            .map(Span::Prefix)
            .collect(),
        readwrite: [Span::Key(self::node(node)), Span::Key(node_alive(node))]
            .into_iter()
            .chain(owned.into_iter().map(Span::Prefix))
            .collect(),
    }
}

/// The etcd user (and role) of the coordinators: read-write on [`ROOT`].
/// etcd takes it from the CN of a coordinator's client certificate.
pub const ETCD_COORDINATOR_USER: &str = "coordinator";

/// The etcd user, and the name of its role, of `node`'s agent
/// (`nubo-node-<node>`): the CN of the client certificate
/// `nubo-coordinator node enroll` issues; the role holds [`node_grants`].
/// Prefixed so that no node name can collide with `root` or
/// [`ETCD_COORDINATOR_USER`].
pub fn node_etcd_user(node: &NodeName) -> String {
    format!("nubo-node-{node}")
}

// ------------------------------------------------------------ coordinators

/// `/nubo/v1/election/coordinator` — leader election of coordinators.
pub fn election() -> String {
    format!("{ROOT}election/coordinator")
}
/// `/nubo/v1/coordinators/<id>` — live coordinators (bound to their leases).
pub fn coordinator(id: &str) -> String {
    format!("{ROOT}coordinators/{id}")
}

// ---------------------------------------------- coordinator-private indexes

/// `/nubo/v1/private/names/` — the name index of every kind and project.
pub fn names_prefix() -> String {
    format!("{PRIVATE}names/")
}
/// `/nubo/v1/private/names/<kind>/<project>/<name>` → id: makes names
/// unique per project for the kinds that need it (created in the same
/// transaction as the resource).
pub fn name_index(kind: NameKind, p: &ProjectId, name: &str) -> String {
    format!("{PRIVATE}names/{}/{p}/{name}", kind.as_str())
}

/// `/nubo/v1/private/ipam/` — every network's taken addresses.
pub fn ipam_root() -> String {
    format!("{PRIVATE}ipam/")
}
/// `/nubo/v1/private/ipam/<network>/` — every address taken on a network.
pub fn ipam_prefix(net: &NetworkId) -> String {
    format!("{PRIVATE}ipam/{net}/")
}
/// `/nubo/v1/private/ipam/<network>/<ip>` → the port holding it
/// (create-if-absent)
pub fn ipam(net: &NetworkId, ip: IpAddr) -> String {
    format!("{PRIVATE}ipam/{net}/{ip}")
}

/// `/nubo/v1/private/bare-ports/<network>/` — the ports of a network that
/// have no address (made while it had no subnet).
pub fn bare_ports_prefix(net: &NetworkId) -> String {
    format!("{PRIVATE}bare-ports/{net}/")
}
/// `/nubo/v1/private/bare-ports/<network>/<port>` → the port id: keeps a
/// network with address-less ports from being deleted under them.
pub fn bare_port(net: &NetworkId, port: &PortId) -> String {
    format!("{PRIVATE}bare-ports/{net}/{port}")
}

/// `/nubo/v1/private/macs/` — every taken MAC.
pub fn macs_prefix() -> String {
    format!("{PRIVATE}macs/")
}
/// `/nubo/v1/private/macs/<mac>` → the port holding it (uniqueness of MACs)
pub fn mac(mac: &MacAddr) -> String {
    format!("{PRIVATE}macs/{mac}")
}

/// `/nubo/v1/private/vnis/<vni>` → network id (uniqueness of VNIs)
pub fn vni(vni: u32) -> String {
    format!("{PRIVATE}vnis/{vni}")
}

/// `/nubo/v1/private/provider-segments/<physnet>/<vlan id | flat>` →
/// network id: makes a VLAN id unique on a physical network, and allows
/// one flat network per physical network (`segment` `None` = flat).
/// Created and deleted in the network's own transactions.
pub fn provider_segment(physical_network: &str, segment: Option<u16>) -> String {
    match segment {
        Some(vid) => format!("{PRIVATE}provider-segments/{physical_network}/{vid}"),
        None => format!("{PRIVATE}provider-segments/{physical_network}/{FLAT_SEGMENT}"),
    }
}

/// The last component of [`provider_segment`] for a flat network.
const FLAT_SEGMENT: &str = "flat";

/// `/nubo/v1/private/shared-network-names/<name>` → network id: the name
/// by which every project finds a shared network (unique among shared
/// networks; written and deleted with the network).
pub fn shared_network_name(name: &str) -> String {
    format!("{PRIVATE}shared-network-names/{name}")
}

/// `/nubo/v1/private/port-owners/` — every port made for an instance.
pub fn port_owners_prefix() -> String {
    format!("{PRIVATE}port-owners/")
}
/// `/nubo/v1/private/port-owners/<port>` → the instance a port was created
/// for (coordinator): such ports are deleted with their instance, while
/// ports created beforehand and plugged in are only unplugged.
pub fn port_owner(p: &PortId) -> String {
    format!("{PRIVATE}port-owners/{p}")
}

/// `/nubo/v1/private/server-group-members/<group>/` — the members of a
/// server group.
pub fn server_group_members_prefix(g: &ServerGroupId) -> String {
    format!("{PRIVATE}server-group-members/{g}/")
}
/// `/nubo/v1/private/server-group-members/<group>/<instance>` → the node
/// the member is placed on (coordinator, in the placement transaction), so
/// affinity checks read one small prefix instead of every instance.
pub fn server_group_member(g: &ServerGroupId, i: &InstanceId) -> String {
    format!("{PRIVATE}server-group-members/{g}/{i}")
}

/// `/nubo/v1/private/client-tokens/<project>/<token>/` — the servers
/// created by one idempotent create request (see [`client_token`]).
pub fn client_token_prefix(p: &ProjectId, token: &str) -> String {
    format!("{PRIVATE}client-tokens/{p}/{token}/")
}
/// `/nubo/v1/private/client-tokens/<project>/<token>/<index>` → instance
/// id: the server with launch index `index` of the create request carrying
/// client token `token`, written in that server's placement transaction.
pub fn client_token(p: &ProjectId, token: &str, index: u32) -> String {
    format!("{PRIVATE}client-tokens/{p}/{token}/{index}")
}

/// `/nubo/v1/private/instance-actions/<instance>/` — what was done to an
/// instance (OpenStack's instance actions), oldest first; deleted with it.
pub fn instance_actions_prefix(i: &InstanceId) -> String {
    format!("{PRIVATE}instance-actions/{i}/")
}
/// `/nubo/v1/private/instance-actions/<instance>/<time-ordered id>` →
/// `InstanceAction` (coordinator, in the transaction that acts).
pub fn instance_action(i: &InstanceId, id: &str) -> String {
    format!("{PRIVATE}instance-actions/{i}/{id}")
}

/// `/nubo/v1/private/deleted-servers/` — what is left of deleted servers.
pub fn deleted_servers_prefix() -> String {
    format!("{PRIVATE}deleted-servers/")
}
/// `/nubo/v1/private/deleted-servers/<instance>` → `DeletedServer`
/// (coordinator, in the transaction that deletes the server; pruned by the
/// leader after the retention).
pub fn deleted_server(i: &InstanceId) -> String {
    format!("{PRIVATE}deleted-servers/{i}")
}

/// `/nubo/v1/private/instance-migrations/` — the instances being moved.
pub fn instance_migrations_prefix() -> String {
    format!("{PRIVATE}instance-migrations/")
}
/// `/nubo/v1/private/instance-migrations/<instance>` → the id of the
/// instance's migration that is not over yet (coordinator): written with
/// the `Migration` in the transaction that reserves the destination,
/// deleted by the switch or the rollback. At most one migration per
/// instance, and every other move of the instance (evacuation, drain)
/// compares it absent.
pub fn instance_migration(i: &InstanceId) -> String {
    format!("{PRIVATE}instance-migrations/{i}")
}

/// `/nubo/v1/private/config/evacuation` (`EvacuationConfig`): the
/// cluster-wide switch of automatic evacuation (absent = enabled).
pub fn evacuation_config() -> String {
    format!("{PRIVATE}config/evacuation")
}

// ---------------------------------------------- coordinator-private identity

/// Marker used instead of a project id for cloud-wide role assignments
/// (`_` cannot start a project id, so it never collides).
pub const CLOUD_SCOPE: &str = "_cloud";
/// Marker used instead of a project id for the default quota.
pub const DEFAULT_QUOTA: &str = "_default";

/// `/nubo/v1/private/projects/`
pub fn projects_prefix() -> String {
    format!("{PRIVATE}projects/")
}
/// `/nubo/v1/private/projects/<id>` (`Project`)
pub fn project(p: &ProjectId) -> String {
    format!("{PRIVATE}projects/{p}")
}
/// `/nubo/v1/private/users/`
pub fn users_prefix() -> String {
    format!("{PRIVATE}users/")
}
/// `/nubo/v1/private/users/<name>` (`User`, with its password hash)
pub fn user(u: &UserName) -> String {
    format!("{PRIVATE}users/{u}")
}
/// `/nubo/v1/private/roles/` — every role assignment.
pub fn roles_prefix() -> String {
    format!("{PRIVATE}roles/")
}
/// `/nubo/v1/private/roles/<user>/` — one user's role assignments (read
/// with one prefix get when issuing a token).
pub fn user_roles_prefix(u: &UserName) -> String {
    format!("{PRIVATE}roles/{u}/")
}
/// `/nubo/v1/private/roles/<user>/<project>` or `.../roles/<user>/_cloud`
/// (`RoleAssignment`; `None` = cloud-wide).
pub fn role(u: &UserName, p: Option<&ProjectId>) -> String {
    match p {
        Some(p) => format!("{PRIVATE}roles/{u}/{p}"),
        None => format!("{PRIVATE}roles/{u}/{CLOUD_SCOPE}"),
    }
}
/// `/nubo/v1/private/app-creds/`
pub fn app_creds_prefix() -> String {
    format!("{PRIVATE}app-creds/")
}
/// `/nubo/v1/private/app-creds/<id>` (`ApplicationCredential`)
pub fn app_cred(id: &AppCredId) -> String {
    format!("{PRIVATE}app-creds/{id}")
}
/// `/nubo/v1/private/quotas/`
pub fn quotas_prefix() -> String {
    format!("{PRIVATE}quotas/")
}
/// `/nubo/v1/private/quotas/<project>` (`Quota`, a project's own limits)
pub fn quota(p: &ProjectId) -> String {
    format!("{PRIVATE}quotas/{p}")
}
/// `/nubo/v1/private/quotas/_default` (`Quota` for projects without their
/// own)
pub fn quota_default() -> String {
    format!("{PRIVATE}quotas/{DEFAULT_QUOTA}")
}
/// `/nubo/v1/private/quota-usage/` (every project's usage)
pub fn quota_usage_prefix() -> String {
    format!("{PRIVATE}quota-usage/")
}
/// `/nubo/v1/private/quota-usage/<project>` (`QuotaUsage`, changed in the
/// same transaction as the resources it counts, compared by mod revision)
pub fn quota_usage(p: &ProjectId) -> String {
    format!("{PRIVATE}quota-usage/{p}")
}
/// `/nubo/v1/private/audit/` — the audit trail, oldest first.
pub fn audit_prefix() -> String {
    format!("{PRIVATE}audit/")
}
/// `/nubo/v1/private/audit/<id>` (`AuditRecord`); `id` is a time-ordered
/// suffix (see `nubo_identity::audit::audit_id`) so a prefix get lists
/// records in time order.
pub fn audit(id: &str) -> String {
    format!("{PRIVATE}audit/{id}")
}
/// `/nubo/v1/private/secrets/token-key` (`TokenKeySet`)
pub fn token_key() -> String {
    format!("{PRIVATE}secrets/token-key")
}

/// `/nubo/v1/routers/` — routers.
pub fn routers_prefix() -> String {
    format!("{ROOT}routers/")
}
/// `/nubo/v1/routers/<id>` (`Router`).
pub fn router(id: &RouterId) -> String {
    format!("{ROOT}routers/{id}")
}
/// `/nubo/v1/floating-ips/` — floating IPs.
pub fn floating_ips_prefix() -> String {
    format!("{ROOT}floating-ips/")
}
/// `/nubo/v1/floating-ips/<id>` (`FloatingIp`).
pub fn floating_ip(id: &FloatingIpId) -> String {
    format!("{ROOT}floating-ips/{id}")
}
/// `/nubo/v1/private/router-interfaces/<network>` (router id, JSON
/// string): a tenant network is routed by at most one router
/// (create-if-absent when the subnet is added).
pub fn router_interface(net: &NetworkId) -> String {
    format!("{PRIVATE}router-interfaces/{net}")
}
/// `/nubo/v1/private/floating-ip-ports/<port>` (floating IP id, JSON
/// string): a port has at most one floating IP.
pub fn floating_ip_port(port: &PortId) -> String {
    format!("{PRIVATE}floating-ip-ports/{port}")
}

/// `/nubo/v1/migrations/` — migrations (`Migration`).
pub fn migrations_prefix() -> String {
    format!("{ROOT}migrations/")
}
/// `/nubo/v1/migrations/<id>` (`Migration`): written by the leader.
pub fn migration(id: &MigrationId) -> String {
    format!("{ROOT}migrations/{id}")
}
/// `/nubo/v1/hosts/<node>/incoming/` — migrations coming to a node.
pub fn node_incoming_prefix(n: &NodeName) -> String {
    format!("{ROOT}hosts/{n}/incoming/")
}
/// `/nubo/v1/hosts/<node>/incoming/<instance>` (`IncomingMigration`): the
/// leader's order to the destination to prepare for the instance.
pub fn node_incoming(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}hosts/{n}/incoming/{id}")
}
/// `/nubo/v1/hosts/<node>/outgoing/` — migrations leaving a node.
pub fn node_outgoing_prefix(n: &NodeName) -> String {
    format!("{ROOT}hosts/{n}/outgoing/")
}
/// `/nubo/v1/hosts/<node>/outgoing/<instance>` (`OutgoingMigration`): the
/// leader's order to the source to move the instance.
pub fn node_outgoing(n: &NodeName, id: &InstanceId) -> String {
    format!("{ROOT}hosts/{n}/outgoing/{id}")
}
/// `/nubo/v1/node-owned/<node>/migrations/` — a node's migration reports.
pub fn node_migration_reports_prefix(n: &NodeName) -> String {
    format!("{ROOT}node-owned/{n}/migrations/")
}
/// `/nubo/v1/node-owned/<node>/migrations/<id>` (`MigrationReport`): what
/// the agent of `node` reports about migration `id`.
pub fn node_migration_report(n: &NodeName, id: &MigrationId) -> String {
    format!("{ROOT}node-owned/{n}/migrations/{id}")
}

/// `/nubo/v1/private/captures/` — the root-disk captures not over yet.
pub fn captures_prefix() -> String {
    format!("{PRIVATE}captures/")
}
/// `/nubo/v1/private/captures/<image>` (`CaptureJob`): a capture of a
/// root disk on its node (coordinator; written with the node's order,
/// deleted by the leader when the image is stored or in error).
pub fn capture_job(image: &ImageId) -> String {
    format!("{PRIVATE}captures/{image}")
}
/// `/nubo/v1/hosts/<node>/captures/` — the captures a node is to make.
pub fn node_capture_orders_prefix(n: &NodeName) -> String {
    format!("{ROOT}hosts/{n}/captures/")
}
/// `/nubo/v1/hosts/<node>/captures/<image>` (`CaptureOrder`): copy an
/// instance's root disk for image `image` (coordinator).
pub fn node_capture_order(n: &NodeName, image: &ImageId) -> String {
    format!("{ROOT}hosts/{n}/captures/{image}")
}
/// `/nubo/v1/node-owned/<node>/captures/<image>` (`CaptureReport`): how far
/// the agent of `node` got with the capture for `image`.
pub fn node_capture_report(n: &NodeName, image: &ImageId) -> String {
    format!("{ROOT}node-owned/{n}/captures/{image}")
}

/// `/nubo/v1/router-snat/` — per-node SNAT addresses of routers.
pub fn router_snats_prefix() -> String {
    format!("{ROOT}router-snat/")
}
/// `/nubo/v1/router-snat/<node>/` — the SNAT addresses this node's router
/// namespaces use (the only part of [`router_snats_prefix`] a node reads).
pub fn node_router_snats_prefix(node: &NodeName) -> String {
    format!("{ROOT}router-snat/{node}/")
}
/// `/nubo/v1/router-snat/<node>/<router>` (`RouterSnat`): the address
/// router `router` SNATs to on node `node` (one per router and node: one
/// address answered for by several nodes would break return traffic).
pub fn router_snat(node: &NodeName, router: &RouterId) -> String {
    format!("{ROOT}router-snat/{node}/{router}")
}

/// `/nubo/v1/private/revoked-tokens/` — tokens revoked before their
/// expiry (each key leased until the token would have expired).
pub fn revoked_tokens_prefix() -> String {
    format!("{PRIVATE}revoked-tokens/")
}

/// `/nubo/v1/private/revoked-tokens/<token id>` (`RevokedToken`).
pub fn revoked_token(token_id: &str) -> String {
    format!("{PRIVATE}revoked-tokens/{token_id}")
}

/// `/nubo/v1/private/secrets/ticket-key` (`TicketSigningKey`): the
/// coordinators' private Ed25519 key signing stream tickets.
pub fn ticket_signing_key() -> String {
    format!("{PRIVATE}secrets/ticket-key")
}
/// `/nubo/v1/ticket-keys/` — the public halves of the coordinators' ticket
/// keys, which every node reads to check the tickets it is shown.
pub fn ticket_keys_prefix() -> String {
    format!("{ROOT}ticket-keys/")
}
/// `/nubo/v1/ticket-keys/<kid>` (`TicketVerifyKey`).
pub fn ticket_verify_key(kid: &str) -> String {
    format!("{ROOT}ticket-keys/{kid}")
}

// ------------------------------------------------------------------ legacy

/// One prefix of coordinator-private data that clusters created before the
/// grouping by reader kept directly under [`ROOT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyMove {
    /// The segment under [`ROOT`] the keys were written at (`ipam/`).
    pub from: &'static str,
}

impl LegacyMove {
    /// The old prefix (`/nubo/v1/ipam/`).
    pub fn old_prefix(&self) -> String {
        format!("{ROOT}{}", self.from)
    }
    /// The new prefix (`/nubo/v1/private/ipam/`).
    pub fn new_prefix(&self) -> String {
        format!("{PRIVATE}{}", self.from)
    }
    /// Where the old key `key` (under [`LegacyMove::old_prefix`]) lives
    /// now; `None` for another key.
    pub fn moved(&self, key: &str) -> Option<String> {
        key.strip_prefix(&self.old_prefix())
            .map(|rest| format!("{}{rest}", self.new_prefix()))
    }
}

/// Every prefix moved under [`PRIVATE`] (the same segment below it).
pub const LEGACY_MOVES: &[LegacyMove] = &[
    LegacyMove { from: "names/" },
    LegacyMove { from: "ipam/" },
    LegacyMove { from: "macs/" },
    LegacyMove { from: "vnis/" },
    LegacyMove {
        from: "port-owners/",
    },
    LegacyMove {
        from: "server-group-members/",
    },
    LegacyMove {
        from: "client-tokens/",
    },
    LegacyMove { from: "config/" },
    LegacyMove { from: "projects/" },
    LegacyMove { from: "users/" },
    LegacyMove { from: "roles/" },
    LegacyMove { from: "app-creds/" },
    LegacyMove { from: "quotas/" },
    LegacyMove {
        from: "quota-usage/",
    },
    LegacyMove { from: "audit/" },
    LegacyMove { from: "secrets/" },
];

// ------------------------------------------------------------------- Key

/// Resource kinds whose names are unique within a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Networks.
    Network,
    /// Security groups.
    SecurityGroup,
    /// Images.
    Image,
    /// Server groups.
    ServerGroup,
    /// Volumes.
    Volume,
    /// Routers.
    Router,
}

impl NameKind {
    /// Path segment.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::SecurityGroup => "secgroup",
            Self::Image => "image",
            Self::ServerGroup => "server-group",
            Self::Volume => "volume",
            Self::Router => "router",
        }
    }

    /// The kind as users read it in messages ("security group").
    pub fn label(&self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::SecurityGroup => "security group",
            Self::Image => "image",
            Self::ServerGroup => "server group",
            Self::Volume => "volume",
            Self::Router => "router",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "network" => Self::Network,
            "secgroup" => Self::SecurityGroup,
            "image" => Self::Image,
            "server-group" => Self::ServerGroup,
            "volume" => Self::Volume,
            "router" => Self::Router,
            _ => return None,
        })
    }
}

/// The meaning of a key: one variant per key this module builds. New keys
/// add variants, so matches elsewhere end with a `_` arm.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `/nodes/<node>`
    Node(NodeName),
    /// `/nodes/<node>/alive`
    NodeAlive(NodeName),
    /// `/nodes/<node>/usage`
    NodeUsage(NodeName),
    /// `/nodes/<node>/admin`
    NodeAdmin(NodeName),
    /// `/nodes/<node>/health`
    NodeHealth(NodeName),
    /// `/flavors/<name>`
    Flavor(FlavorName),
    /// `/images/<id>`
    Image(ImageId),
    /// `/networks/<id>`
    Network(NetworkId),
    /// `/ports/<id>`
    Port(PortId),
    /// `/secgroups/<id>`
    SecurityGroup(SecurityGroupId),
    /// `/keypairs/<project>/<name>`
    Keypair(ProjectId, String),
    /// `/server-groups/<id>`
    ServerGroup(ServerGroupId),
    /// `/volumes/<id>`
    Volume(VolumeId),
    /// `/volume-transfers/<id>`
    VolumeTransfer(crate::TransferId),
    /// `/volume-types/<name>`
    VolumeType(String),
    /// `/volume-snapshots/<volume>/<name>`
    VolumeSnapshot(VolumeId, String),
    /// `/instances/<id>`
    Instance(InstanceId),
    /// `/instances/<id>/status` (the layout before statuses moved under
    /// `node-owned/`)
    LegacyInstanceStatus(InstanceId),
    /// `/hosts/<node>/instances/<id>`
    NodeSpec(NodeName, InstanceId),
    /// `/node-owned/<node>/status/<id>`
    InstanceStatus(NodeName, InstanceId),
    /// `/node-owned/<node>/usage`
    NodeObservedUsage(NodeName),
    /// `/node-owned/<node>/passwords/<id>`
    InstancePassword(NodeName, InstanceId),
    /// `/guest-stops/<node>/<id>`
    GuestStop(NodeName, InstanceId),
    /// `/assignments/<node>/<id>`
    Assignment(NodeName, InstanceId),
    /// `/election/coordinator`
    Election,
    /// `/coordinators/<id>`
    Coordinator(String),
    /// `private/names/<kind>/<project>/<name>`
    Name(NameKind, ProjectId, String),
    /// `private/ipam/<network>/<ip>`
    Ipam(NetworkId, IpAddr),
    /// `private/macs/<mac>`
    Mac(MacAddr),
    /// `private/vnis/<vni>`
    Vni(u32),
    /// `private/provider-segments/<physnet>/<vlan id | flat>` (`None` = flat)
    ProviderSegment(String, Option<u16>),
    /// `private/shared-network-names/<name>`
    SharedNetworkName(String),
    /// `private/port-owners/<port>`
    PortOwner(PortId),
    /// `private/server-group-members/<group>/<instance>`
    ServerGroupMember(ServerGroupId, InstanceId),
    /// `private/client-tokens/<project>/<token>/<index>`
    ClientToken(ProjectId, String, u32),
    /// `private/config/evacuation`
    EvacuationConfig,
    /// `private/instance-migrations/<instance>`
    InstanceMigration(InstanceId),
    /// `private/instance-actions/<instance>/<id>`
    InstanceAction(InstanceId, String),
    /// `private/deleted-servers/<instance>`
    DeletedServer(InstanceId),
    /// `private/projects/<id>`
    Project(ProjectId),
    /// `private/users/<name>`
    User(UserName),
    /// `private/roles/<user>/<project|_cloud>` (`None` = cloud-wide)
    Role(UserName, Option<ProjectId>),
    /// `private/app-creds/<id>`
    AppCred(AppCredId),
    /// `private/quotas/<project>` (`None` = `_default`)
    Quota(Option<ProjectId>),
    /// `private/quota-usage/<project>`
    QuotaUsage(ProjectId),
    /// `private/audit/<id>`
    Audit(String),
    /// `private/secrets/token-key`
    TokenKey,
    /// `private/secrets/ticket-key`
    TicketSigningKey,
    /// `private/revoked-tokens/<token id>`
    RevokedToken(String),
    /// `/ticket-keys/<kid>`
    TicketVerifyKey(String),
    /// `/routers/<id>`
    Router(RouterId),
    /// `/floating-ips/<id>`
    FloatingIp(FloatingIpId),
    /// `private/router-interfaces/<network>`
    RouterInterface(NetworkId),
    /// `private/floating-ip-ports/<port>`
    FloatingIpPort(PortId),
    /// `/router-snat/<node>/<router>`
    RouterSnat(NodeName, RouterId),
    /// `/migrations/<id>`
    Migration(MigrationId),
    /// `/hosts/<node>/incoming/<instance>`
    IncomingMigration(NodeName, InstanceId),
    /// `/hosts/<node>/outgoing/<instance>`
    OutgoingMigration(NodeName, InstanceId),
    /// `/node-owned/<node>/migrations/<id>`
    MigrationReport(NodeName, MigrationId),
    /// `private/captures/<image>`
    CaptureJob(ImageId),
    /// `/hosts/<node>/captures/<image>`
    CaptureOrder(NodeName, ImageId),
    /// `/node-owned/<node>/captures/<image>`
    CaptureReport(NodeName, ImageId),
}

impl Key {
    /// Classifies a key. `None` for keys outside the layout or with
    /// malformed ids (written by hand, or by another version), which
    /// callers log and skip.
    pub fn parse(key: &str) -> Option<Key> {
        if let Some(rest) = key.strip_prefix(PRIVATE) {
            return Self::parse_private(rest);
        }
        let rest = key.strip_prefix(ROOT)?;
        let parts: Vec<&str> = rest.split('/').collect();
        Some(match parts.as_slice() {
            ["nodes", n] => Key::Node(n.parse().ok()?),
            ["nodes", n, "alive"] => Key::NodeAlive(n.parse().ok()?),
            ["nodes", n, "usage"] => Key::NodeUsage(n.parse().ok()?),
            ["nodes", n, "admin"] => Key::NodeAdmin(n.parse().ok()?),
            ["nodes", n, "health"] => Key::NodeHealth(n.parse().ok()?),
            ["flavors", n] => Key::Flavor(n.parse().ok()?),
            ["images", id] => Key::Image(id.parse().ok()?),
            ["networks", id] => Key::Network(id.parse().ok()?),
            ["ports", id] => Key::Port(id.parse().ok()?),
            ["secgroups", id] => Key::SecurityGroup(id.parse().ok()?),
            ["keypairs", p, name] if !name.is_empty() => {
                Key::Keypair(p.parse().ok()?, name.to_string())
            }
            ["server-groups", id] => Key::ServerGroup(id.parse().ok()?),
            ["volume-transfers", id] => Key::VolumeTransfer(id.parse().ok()?),
            ["volumes", id] => Key::Volume(id.parse().ok()?),
            ["volume-types", n] if !n.is_empty() => Key::VolumeType(n.to_string()),
            ["volume-snapshots", v, n] if !n.is_empty() => {
                Key::VolumeSnapshot(v.parse().ok()?, n.to_string())
            }
            ["instances", id] => Key::Instance(id.parse().ok()?),
            ["instances", id, "status"] => Key::LegacyInstanceStatus(id.parse().ok()?),
            ["hosts", n, "instances", id] => Key::NodeSpec(n.parse().ok()?, id.parse().ok()?),
            ["node-owned", n, "status", id] => {
                Key::InstanceStatus(n.parse().ok()?, id.parse().ok()?)
            }
            ["node-owned", n, "usage"] => Key::NodeObservedUsage(n.parse().ok()?),
            ["node-owned", n, "passwords", id] => {
                Key::InstancePassword(n.parse().ok()?, id.parse().ok()?)
            }
            ["guest-stops", n, id] => Key::GuestStop(n.parse().ok()?, id.parse().ok()?),
            ["assignments", n, id] => Key::Assignment(n.parse().ok()?, id.parse().ok()?),
            ["election", "coordinator"] => Key::Election,
            ["coordinators", id] if !id.is_empty() => Key::Coordinator(id.to_string()),
            ["ticket-keys", kid] if !kid.is_empty() => Key::TicketVerifyKey(kid.to_string()),
            ["routers", id] => Key::Router(id.parse().ok()?),
            ["floating-ips", id] => Key::FloatingIp(id.parse().ok()?),
            ["router-snat", n, r] => Key::RouterSnat(n.parse().ok()?, r.parse().ok()?),
            ["migrations", id] => Key::Migration(id.parse().ok()?),
            ["hosts", n, "incoming", id] => {
                Key::IncomingMigration(n.parse().ok()?, id.parse().ok()?)
            }
            ["hosts", n, "outgoing", id] => {
                Key::OutgoingMigration(n.parse().ok()?, id.parse().ok()?)
            }
            ["node-owned", n, "migrations", id] => {
                Key::MigrationReport(n.parse().ok()?, id.parse().ok()?)
            }
            ["hosts", n, "captures", id] => Key::CaptureOrder(n.parse().ok()?, id.parse().ok()?),
            ["node-owned", n, "captures", id] => {
                Key::CaptureReport(n.parse().ok()?, id.parse().ok()?)
            }
            _ => return None,
        })
    }

    fn parse_private(rest: &str) -> Option<Key> {
        let parts: Vec<&str> = rest.split('/').collect();
        Some(match parts.as_slice() {
            ["names", k, p, name] if !name.is_empty() => {
                Key::Name(NameKind::parse(k)?, p.parse().ok()?, name.to_string())
            }
            ["ipam", net, ip] => Key::Ipam(net.parse().ok()?, ip.parse().ok()?),
            ["macs", m] => Key::Mac(m.parse().ok()?),
            ["vnis", v] => Key::Vni(v.parse().ok()?),
            ["provider-segments", n, seg] if !n.is_empty() => Key::ProviderSegment(
                n.to_string(),
                if *seg == FLAT_SEGMENT {
                    None
                } else {
                    Some(seg.parse().ok().filter(|v| (1..=4094).contains(v))?)
                },
            ),
            ["shared-network-names", n] if !n.is_empty() => Key::SharedNetworkName(n.to_string()),
            ["port-owners", p] => Key::PortOwner(p.parse().ok()?),
            ["server-group-members", g, i] => {
                Key::ServerGroupMember(g.parse().ok()?, i.parse().ok()?)
            }
            ["client-tokens", p, t, i] if !t.is_empty() => {
                Key::ClientToken(p.parse().ok()?, t.to_string(), i.parse().ok()?)
            }
            ["config", "evacuation"] => Key::EvacuationConfig,
            ["instance-migrations", id] => Key::InstanceMigration(id.parse().ok()?),
            ["instance-actions", i, id] if !id.is_empty() => {
                Key::InstanceAction(i.parse().ok()?, id.to_string())
            }
            ["deleted-servers", i] => Key::DeletedServer(i.parse().ok()?),
            ["projects", p] => Key::Project(p.parse().ok()?),
            ["users", u] => Key::User(u.parse().ok()?),
            ["roles", u, s] if *s == CLOUD_SCOPE => Key::Role(u.parse().ok()?, None),
            ["roles", u, p] => Key::Role(u.parse().ok()?, Some(p.parse().ok()?)),
            ["app-creds", id] => Key::AppCred(id.parse().ok()?),
            ["quotas", s] if *s == DEFAULT_QUOTA => Key::Quota(None),
            ["quotas", p] => Key::Quota(Some(p.parse().ok()?)),
            ["quota-usage", p] => Key::QuotaUsage(p.parse().ok()?),
            ["audit", id] if !id.is_empty() => Key::Audit(id.to_string()),
            ["secrets", "token-key"] => Key::TokenKey,
            ["secrets", "ticket-key"] => Key::TicketSigningKey,
            ["revoked-tokens", id] if !id.is_empty() => Key::RevokedToken(id.to_string()),
            ["router-interfaces", n] => Key::RouterInterface(n.parse().ok()?),
            ["floating-ip-ports", p] => Key::FloatingIpPort(p.parse().ok()?),
            ["captures", id] => Key::CaptureJob(id.parse().ok()?),
            _ => return None,
        })
    }

    /// True for coordinator-private keys (no hypervisor reads them).
    pub fn is_private(&self) -> bool {
        matches!(
            self,
            Key::Name(..)
                | Key::Ipam(..)
                | Key::Mac(_)
                | Key::Vni(_)
                | Key::ProviderSegment(..)
                | Key::SharedNetworkName(_)
                | Key::PortOwner(_)
                | Key::ServerGroupMember(..)
                | Key::ClientToken(..)
                | Key::EvacuationConfig
                | Key::InstanceMigration(_)
                | Key::InstanceAction(..)
                | Key::DeletedServer(_)
                | Key::Project(_)
                | Key::User(_)
                | Key::Role(..)
                | Key::AppCred(_)
                | Key::Quota(_)
                | Key::QuotaUsage(_)
                | Key::Audit(_)
                | Key::TokenKey
                | Key::TicketSigningKey
                | Key::RevokedToken(_)
                | Key::RouterInterface(_)
                | Key::FloatingIpPort(_)
                | Key::CaptureJob(_)
        )
    }
}

/// [`Key::parse`].
pub fn parse(key: &str) -> Option<Key> {
    Key::parse(key)
}

/// The smallest key greater than every key starting with `prefix`
/// (etcd's `range_end` for a prefix scan).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_parses_back() {
        let n = NodeName::new("node-1").unwrap();
        let i = InstanceId::new_random();
        let p = PortId::new_random();
        let net = NetworkId::new_random();
        let v = VolumeId::new_random();
        let t = crate::TransferId::new_random();
        let g = ServerGroupId::new_random();
        let proj = ProjectId::default_project();
        let u = UserName::new("alice").unwrap();
        let a = AppCredId::new_random();
        let m: MacAddr = "fa:16:3e:00:00:01".parse().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let im = ImageId::new_random();
        let cases = [
            (node(&n), Key::Node(n.clone())),
            (node_alive(&n), Key::NodeAlive(n.clone())),
            (node_usage(&n), Key::NodeUsage(n.clone())),
            (node_observed_usage(&n), Key::NodeObservedUsage(n.clone())),
            (
                instance_password(&n, &i),
                Key::InstancePassword(n.clone(), i),
            ),
            (node_admin(&n), Key::NodeAdmin(n.clone())),
            (node_health(&n), Key::NodeHealth(n.clone())),
            (
                flavor(&FlavorName::new("m1").unwrap()),
                Key::Flavor(FlavorName::new("m1").unwrap()),
            ),
            (network(&net), Key::Network(net)),
            (port(&p), Key::Port(p)),
            (
                keypair(&proj, "k1"),
                Key::Keypair(proj.clone(), "k1".into()),
            ),
            (server_group(&g), Key::ServerGroup(g)),
            (volume(&v), Key::Volume(v)),
            (volume_transfer(&t), Key::VolumeTransfer(t)),
            (volume_type("ssd"), Key::VolumeType("ssd".into())),
            (
                volume_snapshot(&v, "s1"),
                Key::VolumeSnapshot(v, "s1".into()),
            ),
            (instance(&i), Key::Instance(i)),
            (legacy_instance_status(&i), Key::LegacyInstanceStatus(i)),
            (instance_status(&n, &i), Key::InstanceStatus(n.clone(), i)),
            (node_spec(&n, &i), Key::NodeSpec(n.clone(), i)),
            (guest_stop(&n, &i), Key::GuestStop(n.clone(), i)),
            (assignment(&n, &i), Key::Assignment(n.clone(), i)),
            (election(), Key::Election),
            (coordinator("c1"), Key::Coordinator("c1".into())),
            (
                name_index(NameKind::ServerGroup, &proj, "web"),
                Key::Name(NameKind::ServerGroup, proj.clone(), "web".into()),
            ),
            (ipam(&net, ip), Key::Ipam(net, ip)),
            (mac(&m), Key::Mac(m)),
            (vni(42), Key::Vni(42)),
            (
                provider_segment("physnet1", Some(120)),
                Key::ProviderSegment("physnet1".into(), Some(120)),
            ),
            (
                provider_segment("physnet1", None),
                Key::ProviderSegment("physnet1".into(), None),
            ),
            (
                shared_network_name("ext"),
                Key::SharedNetworkName("ext".into()),
            ),
            (port_owner(&p), Key::PortOwner(p)),
            (server_group_member(&g, &i), Key::ServerGroupMember(g, i)),
            (
                client_token(&proj, "tok-1", 7),
                Key::ClientToken(proj.clone(), "tok-1".into(), 7),
            ),
            (evacuation_config(), Key::EvacuationConfig),
            (instance_migration(&i), Key::InstanceMigration(i)),
            (
                instance_action(&i, "0001-ab"),
                Key::InstanceAction(i, "0001-ab".into()),
            ),
            (deleted_server(&i), Key::DeletedServer(i)),
            (project(&proj), Key::Project(proj.clone())),
            (user(&u), Key::User(u.clone())),
            (
                role(&u, Some(&proj)),
                Key::Role(u.clone(), Some(proj.clone())),
            ),
            (role(&u, None), Key::Role(u.clone(), None)),
            (app_cred(&a), Key::AppCred(a)),
            (quota(&proj), Key::Quota(Some(proj.clone()))),
            (quota_default(), Key::Quota(None)),
            (quota_usage(&proj), Key::QuotaUsage(proj.clone())),
            (audit("0001-ab"), Key::Audit("0001-ab".into())),
            (token_key(), Key::TokenKey),
            (revoked_token("abc"), Key::RevokedToken("abc".into())),
            (capture_job(&im), Key::CaptureJob(im)),
            (
                node_capture_order(&n, &im),
                Key::CaptureOrder(n.clone(), im),
            ),
            (
                node_capture_report(&n, &im),
                Key::CaptureReport(n.clone(), im),
            ),
        ];
        for (k, want) in cases {
            assert_eq!(Key::parse(&k), Some(want.clone()), "{k}");
            assert_eq!(
                k.starts_with(PRIVATE),
                want.is_private(),
                "{k} is private exactly when its key says so"
            );
        }
    }

    #[test]
    fn prefixes_hold_their_keys() {
        let n = NodeName::new("n1").unwrap();
        let u = UserName::new("alice").unwrap();
        let v = VolumeId::new_random();
        let net = NetworkId::new_random();
        let p = ProjectId::default_project();
        assert!(node_alive(&n).starts_with(&node(&n)));
        assert!(role(&u, None).starts_with(&user_roles_prefix(&u)));
        assert!(volume_snapshot(&v, "s1").starts_with(&volume_snapshots_prefix(&v)));
        assert!(volume_snapshots_prefix(&v).starts_with(&volume_snapshots_root()));
        assert!(ipam_prefix(&net).starts_with(&ipam_root()));
        let k = client_token(&p, "tok-1", 7);
        assert!(k.starts_with(&client_token_prefix(&p, "tok-1")));
        assert!(!k.starts_with(&client_token_prefix(&p, "tok")));
        assert!(name_index(NameKind::Network, &p, "x").starts_with(&names_prefix()));
    }

    #[test]
    fn garbage_keys_are_not_understood() {
        for k in [
            "/nubo/v1/instances/not-a-uuid",
            "/nubo/v1/instances/",
            "/other/thing",
            "/nubo/v1/nodes/a/b/c",
            "/nubo/v1/nodes/a/b/health",
            "/nubo/v1/volume-types/",
            "/nubo/v1/volume-snapshots/not-a-uuid/s1",
            "/nubo/v1/private/roles/alice/_bad",
            "/nubo/v1/private/names/nonsense/p1/x",
            "/nubo/v1/private/ipam/not-a-net/10.0.0.1",
            "/nubo/v1/private/vnis/x",
            "/nubo/v1/private/provider-segments/physnet1/4095",
            "/nubo/v1/private/provider-segments/physnet1/x",
            "/nubo/v1/private/client-tokens/p1/tok/notanumber",
        ] {
            assert_eq!(Key::parse(k), None, "{k}");
        }
    }

    #[test]
    fn legacy_keys_move_under_private_with_the_same_suffix() {
        let p = ProjectId::default_project();
        let u = UserName::new("alice").unwrap();
        for (old, new) in [
            ("/nubo/v1/users/alice".to_string(), user(&u)),
            (
                "/nubo/v1/client-tokens/default/tok/3".to_string(),
                client_token(&p, "tok", 3),
            ),
            (
                "/nubo/v1/secrets/token-key".to_string(),
                token_key().to_string(),
            ),
            (
                "/nubo/v1/config/evacuation".to_string(),
                evacuation_config(),
            ),
        ] {
            let moved: Vec<String> = LEGACY_MOVES.iter().filter_map(|m| m.moved(&old)).collect();
            assert_eq!(moved, vec![new], "{old}");
        }
        // Shared keys never move, and no old prefix holds another.
        for shared in [
            "/nubo/v1/networks/x",
            "/nubo/v1/nodes/n1",
            "/nubo/v1/private/ipam/x",
        ] {
            assert!(
                LEGACY_MOVES.iter().all(|m| m.moved(shared).is_none()),
                "{shared}"
            );
        }
        for a in LEGACY_MOVES {
            for b in LEGACY_MOVES {
                assert!(a == b || !a.old_prefix().starts_with(&b.old_prefix()));
            }
            assert!(a.new_prefix().starts_with(PRIVATE));
        }
    }

    #[test]
    fn agents_watch_what_nodes_need_and_nothing_private() {
        let n = NodeName::new("node-1").unwrap();
        // A name that extends the other: prefixes must not leak between them.
        let other = NodeName::new("node-10").unwrap();
        let prefixes = agent_watch_prefixes(&n);
        let watched = |k: &str| {
            prefixes
                .iter()
                .filter(|p| k.starts_with(p.as_str()))
                .count()
        };
        let i = InstanceId::new_random();
        let p = ProjectId::default_project();
        for k in [
            node(&n),
            node_alive(&n),
            node(&other),
            node_alive(&other),
            assignment(&n, &i),
            node_spec(&n, &i),
            instance_status(&n, &i),
            guest_stop(&n, &i),
            port(&PortId::new_random()),
            keypair(&p, "k"),
            volume_type("gold"),
            volume(&VolumeId::new_random()),
        ] {
            assert_eq!(watched(&k), 1, "{k}");
        }
        for k in [
            audit("x"),
            token_key(),
            quota_usage(&p),
            ipam(&NetworkId::new_random(), "10.0.0.1".parse().unwrap()),
            client_token(&p, "t", 0),
            name_index(NameKind::Network, &p, "net"),
            users_prefix(),
            election(),
            instance(&i),
            legacy_instance_status(&i),
            assignment(&other, &i),
            node_spec(&other, &i),
            instance_status(&other, &i),
        ] {
            assert_eq!(watched(&k), 0, "{k}");
        }
        for pre in &prefixes {
            assert!(!pre.starts_with(PRIVATE), "{pre}");
        }
    }

    #[test]
    fn a_node_role_reads_what_it_watches_and_writes_only_its_own_keys() {
        let n = NodeName::new("node-1").unwrap();
        let other = NodeName::new("node-10").unwrap();
        let g = node_grants(&n);
        let i = InstanceId::new_random();
        let p = ProjectId::default_project();
        for pre in agent_watch_prefixes(&n) {
            assert!(g.may_read(&format!("{pre}x")), "{pre}");
        }
        for k in [
            node(&n),
            node_alive(&n),
            instance_status(&n, &i),
            guest_stop(&n, &i),
            node_observed_usage(&n),
        ] {
            assert!(g.may_write(&k), "{k}");
        }
        for k in [
            node_usage(&n),
            node_admin(&n),
            node_health(&n),
            node(&other),
            node_alive(&other),
            node_observed_usage(&other),
            instance_status(&other, &i),
            instance(&i),
            node_spec(&n, &i),
            assignment(&n, &i),
            port(&PortId::new_random()),
            token_key(),
        ] {
            assert!(!g.may_write(&k), "{k}");
        }
        assert!(g.may_read(&ticket_verify_key("0123abcd")));
        assert!(!g.may_write(&ticket_verify_key("0123abcd")));
        for k in [
            token_key(),
            ticket_signing_key(),
            user(&UserName::new("alice").unwrap()),
            audit("x"),
            quota_usage(&p),
            instance(&i),
            node_spec(&other, &i),
            assignment(&other, &i),
            instance_status(&other, &i),
            election(),
        ] {
            assert!(!g.may_read(&k), "{k}");
        }
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
