//! The etcd key layout. Every key nubo reads or writes is built here and
//! nowhere else; [`parse`] turns a key back into its meaning, so watchers can
//! classify events and ignore keys they do not understand.
//!
//! See `docs/etcd-layout.md` for who writes each key.

use std::net::IpAddr;

use crate::model::{AppCredId, UserName};

use crate::{
    FlavorName, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId, SecurityGroupId,
    ServerGroupId, VolumeId,
};

/// Everything nubo stores lives below this prefix.
pub const ROOT: &str = "/nubo/v1/";

/// `/nubo/v1/nodes/` — node records and their sub-keys.
pub fn nodes_prefix() -> String {
    format!("{ROOT}nodes/")
}
/// `/nubo/v1/nodes/<node>`
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

/// The node of a `/nubo/v1/nodes/<node>/health` key. (Kept out of [`Key`]
/// so that exhaustive matches on [`Key`] elsewhere keep compiling.)
pub fn parse_node_health(key: &str) -> Option<NodeName> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("nodes/")?;
    let n = rest.strip_suffix("/health")?;
    if n.contains('/') {
        return None;
    }
    n.parse().ok()
}

/// `/nubo/v1/config/evacuation` (`EvacuationConfig`): the cluster-wide
/// switch of automatic evacuation (absent = enabled).
pub fn evacuation_config() -> String {
    format!("{ROOT}config/evacuation")
}

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
/// `/nubo/v1/vnis/<vni>` → network id (uniqueness of VNIs)
pub fn vni(vni: u32) -> String {
    format!("{ROOT}vnis/{vni}")
}

/// `/nubo/v1/ipam/<network>/` — every address taken on a network.
pub fn ipam_prefix(net: &NetworkId) -> String {
    format!("{ROOT}ipam/{net}/")
}
/// `/nubo/v1/ipam/<network>/<ip>` → the port holding it (create-if-absent)
pub fn ipam(net: &NetworkId, ip: IpAddr) -> String {
    format!("{ROOT}ipam/{net}/{ip}")
}
/// `/nubo/v1/macs/<mac>` → the port holding it (uniqueness of MACs)
pub fn mac(mac: &nubo_netid::MacAddr) -> String {
    format!("{ROOT}macs/{mac}")
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

/// `/nubo/v1/server-group-members/<group>/` — the members of a server group.
pub fn server_group_members_prefix(g: &ServerGroupId) -> String {
    format!("{ROOT}server-group-members/{g}/")
}
/// `/nubo/v1/server-group-members/<group>/<instance>` → the node the member is
/// placed on (coordinator, in the placement transaction), so affinity checks
/// read one small prefix instead of every instance.
pub fn server_group_member(g: &ServerGroupId, i: &InstanceId) -> String {
    format!("{ROOT}server-group-members/{g}/{i}")
}

/// `/nubo/v1/port-owners/<port>` → the instance a port was created for
/// (coordinator): such ports are deleted with their instance, while ports
/// created beforehand and plugged in are only unplugged.
pub fn port_owner(p: &PortId) -> String {
    format!("{ROOT}port-owners/{p}")
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

/// The meaning of a volume-type or volume-snapshot key. (Kept out of
/// [`Key`] so that exhaustive matches on [`Key`] elsewhere keep compiling.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKey {
    /// `/volume-types/<name>`
    Type(String),
    /// `/volume-snapshots/<volume>/<name>`
    Snapshot(VolumeId, String),
}

/// Classifies a volume-type or volume-snapshot key; `None` for anything
/// else (volumes themselves are [`Key::Volume`]).
pub fn parse_volume(key: &str) -> Option<VolumeKey> {
    let rest = key.strip_prefix(ROOT)?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        ["volume-types", n] if !n.is_empty() => VolumeKey::Type(n.to_string()),
        ["volume-snapshots", v, n] if !n.is_empty() => {
            VolumeKey::Snapshot(v.parse().ok()?, n.to_string())
        }
        _ => return None,
    })
}

/// `/nubo/v1/instances/` — specs and their status sub-keys.
pub fn instances_prefix() -> String {
    format!("{ROOT}instances/")
}
/// `/nubo/v1/instances/<id>` (desired spec, coordinator)
pub fn instance(id: &InstanceId) -> String {
    format!("{ROOT}instances/{id}")
}
/// `/nubo/v1/instances/<id>/status` (observed state, agent)
pub fn instance_status(id: &InstanceId) -> String {
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

/// `/nubo/v1/names/<kind>/<project>/<name>` → id: makes names unique per
/// project for the kinds that need it (created in the same transaction as
/// the resource).
pub fn name_index(kind: NameKind, p: &ProjectId, name: &str) -> String {
    format!("{ROOT}names/{}/{p}/{name}", kind.as_str())
}

/// `/nubo/v1/election/coordinator` — leader election of coordinators.
pub fn election() -> String {
    format!("{ROOT}election/coordinator")
}

/// `/nubo/v1/keypairs/` — every project's keypairs.
pub fn keypairs_root() -> String {
    format!("{ROOT}keypairs/")
}

/// `/nubo/v1/names/` — the name index of every kind and project.
pub fn names_prefix() -> String {
    format!("{ROOT}names/")
}

/// `/nubo/v1/client-tokens/<project>/<token>/` — the servers created by one
/// idempotent create request (see [`client_token`]).
pub fn client_token_prefix(p: &ProjectId, token: &str) -> String {
    format!("{ROOT}client-tokens/{p}/{token}/")
}

/// `/nubo/v1/client-tokens/<project>/<token>/<index>` → instance id: the
/// server with launch index `index` of the create request carrying client
/// token `token`, written in that server's placement transaction.
pub fn client_token(p: &ProjectId, token: &str, index: u32) -> String {
    format!("{ROOT}client-tokens/{p}/{token}/{index}")
}

/// `/nubo/v1/coordinators/<id>` — live coordinators (bound to their leases).
pub fn coordinator(id: &str) -> String {
    format!("{ROOT}coordinators/{id}")
}

/// The prefixes a node agent lists and watches: what a hypervisor needs to
/// run and wire its instances (nodes for VTEPs and peers, flavors, images,
/// networks, ports, security groups, keypairs, instance specs and
/// statuses, every node's assignments, volumes and volume types), never
/// coordinator-private data (identity, audit, quotas, IPAM, indexes). No
/// prefix contains another: each key is delivered once.
pub fn agent_watch_prefixes() -> Vec<String> {
    vec![
        all_assignments_prefix(),
        flavors_prefix(),
        images_prefix(),
        instances_prefix(),
        keypairs_root(),
        networks_prefix(),
        nodes_prefix(),
        ports_prefix(),
        secgroups_prefix(),
        volume_types_prefix(),
        volumes_prefix(),
    ]
}

// ------------------------------------------------------------------ identity
//
// Written by the coordinator only. Kept out of [`Key`] (see
// [`parse_identity`]) so exhaustive matches on [`Key`] keep compiling.

/// Marker used instead of a project id for cloud-wide role assignments
/// (`_` cannot start a project id, so it never collides).
pub const CLOUD_SCOPE: &str = "_cloud";
/// Marker used instead of a project id for the default quota.
pub const DEFAULT_QUOTA: &str = "_default";

/// `/nubo/v1/projects/`
pub fn projects_prefix() -> String {
    format!("{ROOT}projects/")
}
/// `/nubo/v1/projects/<id>` (`Project`)
pub fn project(p: &ProjectId) -> String {
    format!("{ROOT}projects/{p}")
}
/// `/nubo/v1/users/`
pub fn users_prefix() -> String {
    format!("{ROOT}users/")
}
/// `/nubo/v1/users/<name>` (`User`)
pub fn user(u: &UserName) -> String {
    format!("{ROOT}users/{u}")
}
/// `/nubo/v1/roles/` — every role assignment.
pub fn roles_prefix() -> String {
    format!("{ROOT}roles/")
}
/// `/nubo/v1/roles/<user>/` — one user's role assignments (read with one
/// prefix get when issuing a token).
pub fn user_roles_prefix(u: &UserName) -> String {
    format!("{ROOT}roles/{u}/")
}
/// `/nubo/v1/roles/<user>/<project>` or `/nubo/v1/roles/<user>/_cloud`
/// (`RoleAssignment`; `None` = cloud-wide).
pub fn role(u: &UserName, p: Option<&ProjectId>) -> String {
    match p {
        Some(p) => format!("{ROOT}roles/{u}/{p}"),
        None => format!("{ROOT}roles/{u}/{CLOUD_SCOPE}"),
    }
}
/// `/nubo/v1/app-creds/`
pub fn app_creds_prefix() -> String {
    format!("{ROOT}app-creds/")
}
/// `/nubo/v1/app-creds/<id>` (`ApplicationCredential`)
pub fn app_cred(id: &AppCredId) -> String {
    format!("{ROOT}app-creds/{id}")
}
/// `/nubo/v1/quotas/`
pub fn quotas_prefix() -> String {
    format!("{ROOT}quotas/")
}
/// `/nubo/v1/quotas/<project>` (`Quota`, a project's own limits)
pub fn quota(p: &ProjectId) -> String {
    format!("{ROOT}quotas/{p}")
}
/// `/nubo/v1/quotas/_default` (`Quota` for projects without their own)
pub fn quota_default() -> String {
    format!("{ROOT}quotas/{DEFAULT_QUOTA}")
}
/// `/nubo/v1/quota-usage/<project>` (`QuotaUsage`, changed in the same
/// transaction as the resources it counts, compared by mod revision)
pub fn quota_usage(p: &ProjectId) -> String {
    format!("{ROOT}quota-usage/{p}")
}
/// `/nubo/v1/audit/` — the audit trail, oldest first.
pub fn audit_prefix() -> String {
    format!("{ROOT}audit/")
}
/// `/nubo/v1/audit/<id>` (`AuditRecord`); `id` is a time-ordered suffix
/// (see `nubo_identity::audit::audit_id`) so a prefix get lists records
/// in time order.
pub fn audit(id: &str) -> String {
    format!("{ROOT}audit/{id}")
}
/// `/nubo/v1/secrets/token-key` (`TokenKeySet`)
pub fn token_key() -> String {
    format!("{ROOT}secrets/token-key")
}

/// The meaning of an identity key under [`ROOT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityKey {
    /// `/projects/<id>`
    Project(ProjectId),
    /// `/users/<name>`
    User(UserName),
    /// `/roles/<user>/<project|_cloud>` (`None` = cloud-wide)
    Role(UserName, Option<ProjectId>),
    /// `/app-creds/<id>`
    AppCred(AppCredId),
    /// `/quotas/<project>` (`None` = `_default`)
    Quota(Option<ProjectId>),
    /// `/quota-usage/<project>`
    QuotaUsage(ProjectId),
    /// `/audit/<id>`
    Audit(String),
    /// `/secrets/token-key`
    TokenKey,
}

/// Classifies an identity key; `None` for anything else.
pub fn parse_identity(key: &str) -> Option<IdentityKey> {
    let rest = key.strip_prefix(ROOT)?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        ["projects", p] => IdentityKey::Project(p.parse().ok()?),
        ["users", u] => IdentityKey::User(u.parse().ok()?),
        ["roles", u, s] if *s == CLOUD_SCOPE => IdentityKey::Role(u.parse().ok()?, None),
        ["roles", u, p] => IdentityKey::Role(u.parse().ok()?, Some(p.parse().ok()?)),
        ["app-creds", id] => IdentityKey::AppCred(id.parse().ok()?),
        ["quotas", s] if *s == DEFAULT_QUOTA => IdentityKey::Quota(None),
        ["quotas", p] => IdentityKey::Quota(Some(p.parse().ok()?)),
        ["quota-usage", p] => IdentityKey::QuotaUsage(p.parse().ok()?),
        ["audit", id] if !id.is_empty() => IdentityKey::Audit(id.to_string()),
        ["secrets", "token-key"] => IdentityKey::TokenKey,
        _ => return None,
    })
}

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
        }
    }
}

/// The meaning of a key under [`ROOT`].
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
    /// `/instances/<id>`
    Instance(InstanceId),
    /// `/instances/<id>/status`
    InstanceStatus(InstanceId),
    /// `/assignments/<node>/<id>`
    Assignment(NodeName, InstanceId),
}

/// Classifies a key. Returns `None` for keys outside the layout or with
/// malformed ids (e.g. written by hand), which callers log and skip.
pub fn parse(key: &str) -> Option<Key> {
    let rest = key.strip_prefix(ROOT)?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        ["nodes", n] => Key::Node(n.parse().ok()?),
        ["nodes", n, "alive"] => Key::NodeAlive(n.parse().ok()?),
        ["nodes", n, "usage"] => Key::NodeUsage(n.parse().ok()?),
        ["nodes", n, "admin"] => Key::NodeAdmin(n.parse().ok()?),
        ["flavors", n] => Key::Flavor(n.parse().ok()?),
        ["images", id] => Key::Image(id.parse().ok()?),
        ["networks", id] => Key::Network(id.parse().ok()?),
        ["ports", id] => Key::Port(id.parse().ok()?),
        ["secgroups", id] => Key::SecurityGroup(id.parse().ok()?),
        ["keypairs", p, name] if !name.is_empty() => {
            Key::Keypair(p.parse().ok()?, name.to_string())
        }
        ["server-groups", id] => Key::ServerGroup(id.parse().ok()?),
        ["volumes", id] => Key::Volume(id.parse().ok()?),
        ["instances", id] => Key::Instance(id.parse().ok()?),
        ["instances", id, "status"] => Key::InstanceStatus(id.parse().ok()?),
        ["assignments", n, id] => Key::Assignment(n.parse().ok()?, id.parse().ok()?),
        _ => return None,
    })
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
        assert_eq!(parse(&node(&n)), Some(Key::Node(n.clone())));
        assert_eq!(parse(&node_alive(&n)), Some(Key::NodeAlive(n.clone())));
        assert_eq!(parse(&node_usage(&n)), Some(Key::NodeUsage(n.clone())));
        assert_eq!(parse(&instance(&i)), Some(Key::Instance(i)));
        assert_eq!(parse(&instance_status(&i)), Some(Key::InstanceStatus(i)));
        assert_eq!(
            parse(&assignment(&n, &i)),
            Some(Key::Assignment(n.clone(), i))
        );
        assert_eq!(parse(&port(&p)), Some(Key::Port(p)));
        let proj = ProjectId::default_project();
        assert_eq!(
            parse(&keypair(&proj, "k1")),
            Some(Key::Keypair(proj, "k1".into()))
        );
    }

    #[test]
    fn node_health_keys_parse_back() {
        let n = NodeName::new("node-1").unwrap();
        assert_eq!(parse_node_health(&node_health(&n)), Some(n.clone()));
        assert_eq!(parse_node_health(&node_alive(&n)), None);
        assert_eq!(parse_node_health("/nubo/v1/nodes/a/b/health"), None);
        assert_eq!(parse(&node_health(&n)), None);
    }

    #[test]
    fn identity_keys_parse_back() {
        let u = UserName::new("alice").unwrap();
        let p = ProjectId::new("p1").unwrap();
        let a = AppCredId::new_random();
        assert_eq!(
            parse_identity(&project(&p)),
            Some(IdentityKey::Project(p.clone()))
        );
        assert_eq!(
            parse_identity(&user(&u)),
            Some(IdentityKey::User(u.clone()))
        );
        assert_eq!(
            parse_identity(&role(&u, Some(&p))),
            Some(IdentityKey::Role(u.clone(), Some(p.clone())))
        );
        assert_eq!(
            parse_identity(&role(&u, None)),
            Some(IdentityKey::Role(u.clone(), None))
        );
        assert!(role(&u, None).starts_with(&user_roles_prefix(&u)));
        assert_eq!(parse_identity(&app_cred(&a)), Some(IdentityKey::AppCred(a)));
        assert_eq!(
            parse_identity(&quota(&p)),
            Some(IdentityKey::Quota(Some(p.clone())))
        );
        assert_eq!(
            parse_identity(&quota_default()),
            Some(IdentityKey::Quota(None))
        );
        assert_eq!(
            parse_identity(&quota_usage(&p)),
            Some(IdentityKey::QuotaUsage(p))
        );
        assert_eq!(
            parse_identity(&audit("0001-ab")),
            Some(IdentityKey::Audit("0001-ab".into()))
        );
        assert_eq!(parse_identity(&token_key()), Some(IdentityKey::TokenKey));
        assert_eq!(parse_identity("/nubo/v1/roles/alice/_bad"), None);
        assert_eq!(parse(&user(&u)), None);
    }

    #[test]
    fn volume_keys_parse_back() {
        let v = VolumeId::new_random();
        assert_eq!(
            parse_volume(&volume_type("ssd")),
            Some(VolumeKey::Type("ssd".into()))
        );
        assert_eq!(
            parse_volume(&volume_snapshot(&v, "s1")),
            Some(VolumeKey::Snapshot(v, "s1".into()))
        );
        assert!(volume_snapshot(&v, "s1").starts_with(&volume_snapshots_prefix(&v)));
        assert!(volume_snapshots_prefix(&v).starts_with(&volume_snapshots_root()));
        assert_eq!(parse(&volume(&v)), Some(Key::Volume(v)));
        assert_eq!(parse(&volume_type("ssd")), None);
        assert_eq!(parse_volume(&volume(&v)), None);
        assert_eq!(
            parse_volume("/nubo/v1/volume-snapshots/not-a-uuid/s1"),
            None
        );
        assert_eq!(parse_volume("/nubo/v1/volume-types/"), None);
    }

    #[test]
    fn garbage_keys_are_not_understood() {
        assert_eq!(parse("/nubo/v1/instances/not-a-uuid"), None);
        assert_eq!(parse("/nubo/v1/instances/"), None);
        assert_eq!(parse("/other/thing"), None);
        assert_eq!(parse("/nubo/v1/nodes/a/b/c"), None);
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn node_prefix_does_not_confuse_sub_keys() {
        let n = NodeName::new("n1").unwrap();
        assert!(node_alive(&n).starts_with(&node(&n)));
        assert!(matches!(parse(&node_alive(&n)), Some(Key::NodeAlive(_))));
    }

    #[test]
    fn client_token_keys_nest_under_their_token() {
        let p = ProjectId::default_project();
        let k = client_token(&p, "tok-1", 7);
        assert_eq!(k, format!("{ROOT}client-tokens/{p}/tok-1/7"));
        assert!(k.starts_with(&client_token_prefix(&p, "tok-1")));
        assert!(!k.starts_with(&client_token_prefix(&p, "tok")));
        assert!(parse(&k).is_none());
    }

    #[test]
    fn agents_watch_what_nodes_need_and_nothing_private() {
        let prefixes = agent_watch_prefixes();
        let watched = |k: &str| {
            prefixes
                .iter()
                .filter(|p| k.starts_with(p.as_str()))
                .count()
        };
        let n = NodeName::new("node-1").unwrap();
        let i = InstanceId::new_random();
        let p = ProjectId::default_project();
        for k in [
            node(&n),
            node_alive(&n),
            assignment(&n, &i),
            instance(&i),
            instance_status(&i),
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
        ] {
            assert_eq!(watched(&k), 0, "{k}");
        }
    }
}
