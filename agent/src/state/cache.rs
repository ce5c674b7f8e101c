//! The typed, in-memory copy of the parts of `/nubo/v1/` the agent needs.
//!
//! [`Cache::apply`] is pure: it takes a key and its new value (or `None` for
//! a deletion) and updates the typed maps. Values that do not decode are
//! logged with their key and remembered in [`Cache::garbage`] (so that the
//! objects they describe are held, never torn down); keys outside the layout
//! are ignored.
//!
//! Volumes and volume types are kept too, so that the agent resolves the
//! volumes of its instances and their QoS from the mirror (never from etcd
//! directly): a change to one used by an instance of [`Cache::local_node`]
//! is [`Change::Relevant`] and reaches attached disks at once.

use std::collections::{BTreeMap, HashMap};

use nubo_common::keys::{self, Key};
use nubo_common::model::{
    self, Assignment, CaptureOrder, CaptureReport, Flavor, FloatingIp, GuestStop, Image,
    IncomingMigration, Instance, InstanceStatus, Keypair, MigrationReport, Network, Node,
    OutgoingMigration, Port, Router, RouterSnat, SecurityGroup, Volume, VolumeType,
};
use nubo_common::{
    FlavorName, FloatingIpId, ImageId, InstanceId, MigrationId, NetworkId, NodeName, PortId,
    ProjectId, RouterId, SecurityGroupId, VolumeId,
};
use serde::de::DeserializeOwned;

/// A status value with the etcd revision that last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatus {
    /// The decoded status.
    pub status: InstanceStatus,
    /// `mod_revision` of the key (for compare-and-delete).
    pub mod_revision: i64,
}

/// The mirror of the node-relevant prefixes of `/nubo/v1/`
/// ([`keys::agent_watch_prefixes`]).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// The node whose reconcilers this cache feeds: volume and volume-type
    /// changes are [`Change::Relevant`] only when one of its instances uses
    /// them. `None`: every instance counts (conservative).
    pub local_node: Option<NodeName>,
    /// Revision of the store this cache reflects.
    pub revision: i64,
    /// Nodes by name.
    pub nodes: BTreeMap<NodeName, Node>,
    /// Flavors by name.
    pub flavors: BTreeMap<FlavorName, Flavor>,
    /// Images by id.
    pub images: BTreeMap<ImageId, Image>,
    /// Networks by id.
    pub networks: BTreeMap<NetworkId, Network>,
    /// Ports by id.
    pub ports: BTreeMap<PortId, Port>,
    /// Security groups by id.
    pub secgroups: BTreeMap<SecurityGroupId, SecurityGroup>,
    /// Keypairs by project and name.
    pub keypairs: BTreeMap<(ProjectId, String), Keypair>,
    /// Instance specs by id: the copies of this node's instances' specs
    /// (`/nubo/v1/hosts/<node>/instances/<id>`; the node cannot read the
    /// specs themselves).
    pub instances: BTreeMap<InstanceId, Instance>,
    /// The statuses this node reported, by instance id.
    pub statuses: BTreeMap<InstanceId, StoredStatus>,
    /// This node's guest-stop reports by instance id, with the revision of
    /// their key (see `crate::compute::power_sync`).
    pub guest_stops: BTreeMap<InstanceId, (GuestStop, i64)>,
    /// Assignments by node (the agent reads only its own node's).
    pub assignments: BTreeMap<NodeName, BTreeMap<InstanceId, Assignment>>,
    /// Volumes by id (every volume: which ones matter follows from the
    /// instances' `volumes`).
    pub volumes: BTreeMap<VolumeId, Volume>,
    /// Volume types (QoS classes) by name.
    pub volume_types: BTreeMap<String, VolumeType>,
    /// Routers by id.
    pub routers: BTreeMap<RouterId, Router>,
    /// Floating IPs by id.
    pub floating_ips: BTreeMap<FloatingIpId, FloatingIp>,
    /// The SNAT address of each router on each node, by (node, router)
    /// (the agent reads only its own node's).
    pub router_snats: BTreeMap<(NodeName, RouterId), RouterSnat>,
    /// The leader's orders to receive an instance migrating here
    /// (`hosts/<node>/incoming/<instance>`), by instance.
    pub incoming: BTreeMap<InstanceId, IncomingMigration>,
    /// The leader's orders to move an instance away
    /// (`hosts/<node>/outgoing/<instance>`), by instance.
    pub outgoing: BTreeMap<InstanceId, OutgoingMigration>,
    /// This node's migration reports, by migration.
    pub migration_reports: BTreeMap<MigrationId, MigrationReport>,
    /// The captures this node is to make (`hosts/<node>/captures/<image>`),
    /// by image.
    pub capture_orders: BTreeMap<ImageId, CaptureOrder>,
    /// This node's capture reports, by image.
    pub capture_reports: BTreeMap<ImageId, CaptureReport>,
    /// Keys whose value did not decode, with the reason.
    pub garbage: BTreeMap<String, String>,
    /// How far each watched prefix is known: every change under it up to
    /// that revision has been applied (empty for a cache not fed by the
    /// mirror: then everything counts as known).
    pub progress: BTreeMap<String, i64>,
    /// Mod revisions of the keys that refer to others (assignments,
    /// instance specs, ports), to tell a reference not delivered yet from
    /// a missing one ([`Cache::in_flight`]).
    pub revisions: HashMap<String, i64>,
    /// Keys etcd was asked for and did not hold, with the revision of that
    /// read ([`Cache::confirm_absent`]).
    pub absent: BTreeMap<String, i64>,
}

/// What an applied change was about, so callers can decide whether it
/// warrants a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A key the reconcilers depend on changed.
    Relevant,
    /// A status or liveness key changed (written by agents themselves).
    Report,
    /// The key is not understood or not needed (a volume or volume type no
    /// local instance uses is still stored, but reports `Ignored`).
    Ignored,
}

fn put_or_remove<K: Ord, T: DeserializeOwned>(
    map: &mut BTreeMap<K, T>,
    garbage: &mut BTreeMap<String, String>,
    id: K,
    key: &str,
    value: Option<&[u8]>,
) {
    match value {
        None => {
            map.remove(&id);
            garbage.remove(key);
        }
        Some(bytes) => match model::decode::<T>(key, bytes) {
            Ok(v) => {
                map.insert(id, v);
                garbage.remove(key);
            }
            Err(e) => {
                tracing::warn!(key, reason = %e, "skipping undecodable value");
                // The previous good value (if any) is dropped: the object is
                // now unknown, and whatever depends on it is held.
                map.remove(&id);
                garbage.insert(key.to_string(), e.to_string());
            }
        },
    }
}

impl Cache {
    /// An empty cache feeding the reconcilers of `node` (see
    /// [`Cache::local_node`]).
    pub fn for_node(node: Option<NodeName>) -> Self {
        Self {
            local_node: node,
            ..Self::default()
        }
    }

    /// Applies a put (`Some(value)`) or a delete (`None`) of `key` at
    /// `mod_revision`.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, mod_revision: i64) -> Change {
        self.revision = self.revision.max(mod_revision);
        if value.is_some() {
            self.absent.remove(key);
        }
        let Some(parsed) = keys::parse(key) else {
            return Change::Ignored;
        };
        if matches!(
            parsed,
            Key::Assignment(..) | Key::NodeSpec(..) | Key::Port(_) | Key::IncomingMigration(..)
        ) {
            match value {
                Some(_) => self.revisions.insert(key.to_string(), mod_revision),
                None => self.revisions.remove(key),
            };
        }
        let g = &mut self.garbage;
        match parsed {
            Key::Node(n) => put_or_remove(&mut self.nodes, g, n, key, value),
            Key::Flavor(n) => put_or_remove(&mut self.flavors, g, n, key, value),
            Key::Image(id) => put_or_remove(&mut self.images, g, id, key, value),
            Key::Network(id) => put_or_remove(&mut self.networks, g, id, key, value),
            Key::Port(id) => put_or_remove(&mut self.ports, g, id, key, value),
            Key::SecurityGroup(id) => put_or_remove(&mut self.secgroups, g, id, key, value),
            Key::Keypair(p, name) => put_or_remove(&mut self.keypairs, g, (p, name), key, value),
            Key::Router(id) => put_or_remove(&mut self.routers, g, id, key, value),
            Key::FloatingIp(id) => put_or_remove(&mut self.floating_ips, g, id, key, value),
            Key::RouterSnat(node, router) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                put_or_remove(&mut self.router_snats, g, (node, router), key, value);
            }
            Key::NodeSpec(_, id) => put_or_remove(&mut self.instances, g, id, key, value),
            Key::IncomingMigration(node, id) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                put_or_remove(&mut self.incoming, g, id, key, value);
            }
            Key::OutgoingMigration(node, id) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                put_or_remove(&mut self.outgoing, g, id, key, value);
            }
            Key::MigrationReport(node, id) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                // Relevant: a guest that left moves its MAC's FDB entry.
                put_or_remove(&mut self.migration_reports, g, id, key, value);
            }
            Key::CaptureOrder(node, id) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                put_or_remove(&mut self.capture_orders, g, id, key, value);
            }
            Key::CaptureReport(node, id) => {
                if self.local_node.as_ref().is_some_and(|n| *n != node) {
                    return Change::Ignored;
                }
                put_or_remove(&mut self.capture_reports, g, id, key, value);
            }
            Key::Assignment(node, id) => {
                let per_node = self.assignments.entry(node.clone()).or_default();
                put_or_remove(per_node, g, id, key, value);
                if per_node.is_empty() {
                    self.assignments.remove(&node);
                }
            }
            Key::GuestStop(_, id) => {
                let mut stops = BTreeMap::new();
                put_or_remove(&mut stops, g, id, key, value);
                match stops.remove(&id) {
                    Some(s) => self.guest_stops.insert(id, (s, mod_revision)),
                    None => self.guest_stops.remove(&id),
                };
            }
            Key::InstanceStatus(_, id) => {
                match value.map(|b| model::decode::<InstanceStatus>(key, b)) {
                    None => {
                        self.statuses.remove(&id);
                        g.remove(key);
                    }
                    Some(Ok(status)) => {
                        self.statuses.insert(
                            id,
                            StoredStatus {
                                status,
                                mod_revision,
                            },
                        );
                        g.remove(key);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(key, reason = %e, "skipping undecodable status");
                        self.statuses.remove(&id);
                        g.insert(key.to_string(), e.to_string());
                    }
                }
                return Change::Report;
            }
            Key::NodeAlive(_) | Key::NodeUsage(_) | Key::NodeAdmin(_) => return Change::Report,
            Key::Volume(id) => {
                put_or_remove(&mut self.volumes, g, id, key, value);
                return if self.volume_used_locally(&id) {
                    Change::Relevant
                } else {
                    Change::Ignored
                };
            }
            Key::VolumeType(name) => return self.apply_volume_type(name, key, value),
            // Node health, snapshots, server groups, the coordinators' and
            // their private keys: nothing an agent acts on.
            _ => return Change::Ignored,
        }
        Change::Relevant
    }

    /// Stores a volume type; relevant when a local instance has a volume of
    /// that type (the type's volumes do not change with it, so one check
    /// covers the old and the new value).
    fn apply_volume_type(&mut self, name: String, key: &str, value: Option<&[u8]>) -> Change {
        let used = self.type_used_locally(&name);
        put_or_remove(&mut self.volume_types, &mut self.garbage, name, key, value);
        if used {
            Change::Relevant
        } else {
            Change::Ignored
        }
    }

    /// The specs of the instances assigned to [`Cache::local_node`] (every
    /// instance when it is `None`).
    fn local_instances(&self) -> Box<dyn Iterator<Item = &Instance> + '_> {
        match &self.local_node {
            None => Box::new(self.instances.values()),
            Some(n) => Box::new(
                self.assignments
                    .get(n)
                    .into_iter()
                    .flat_map(|a| a.keys())
                    .filter_map(|id| self.instances.get(id)),
            ),
        }
    }

    /// Whether a local instance has `volume` attached (in its spec).
    fn volume_used_locally(&self, volume: &VolumeId) -> bool {
        self.local_instances()
            .any(|i| i.volumes.iter().any(|a| a.volume == *volume))
    }

    /// Whether a local instance has a volume of type `name` attached.
    fn type_used_locally(&self, name: &str) -> bool {
        self.local_instances().any(|i| {
            i.volumes.iter().any(|a| {
                self.volumes
                    .get(&a.volume)
                    .is_some_and(|v| v.volume_type.as_deref() == Some(name))
            })
        })
    }

    /// Records that every change under `prefix` up to `revision` has been
    /// applied.
    pub fn set_progress(&mut self, prefix: &str, revision: i64) {
        let p = self.progress.entry(prefix.to_string()).or_default();
        *p = (*p).max(revision);
    }

    /// How far the watched prefix holding `key` is known (`None`: no
    /// prefix holds it, or the cache is not fed by the mirror).
    pub fn progress_of(&self, key: &str) -> Option<i64> {
        self.progress
            .iter()
            .filter(|(p, _)| key.starts_with(p.as_str()))
            .map(|(_, r)| *r)
            .next()
    }

    /// The mod revision of an assignment, spec copy or port key.
    pub fn mod_revision(&self, key: &str) -> Option<i64> {
        self.revisions.get(key).copied()
    }

    /// Records that etcd did not hold `key` at `revision`.
    pub fn confirm_absent(&mut self, key: &str, revision: i64) {
        let r = self.absent.entry(key.to_string()).or_default();
        *r = (*r).max(revision);
    }

    /// Whether `key`, missing from the cache and referred to by an object
    /// written at `since`, may still be on its way: its prefix is only
    /// known up to an earlier revision (a transaction that wrote both
    /// reaches the cache prefix by prefix) and no read since showed it
    /// absent. An undecodable value is not on its way: it is there, and
    /// bad.
    pub fn in_flight(&self, key: &str, since: i64) -> bool {
        if self.garbage.contains_key(key) {
            return false;
        }
        self.progress_of(key).is_some_and(|p| p < since)
            && self.absent.get(key).is_none_or(|r| *r < since)
    }

    /// The revision up to which the statuses of this node's instances are
    /// known.
    pub fn statuses_revision(&self) -> i64 {
        self.local_node
            .as_ref()
            .and_then(|n| self.progress_of(&keys::node_statuses_prefix(n)))
            .unwrap_or(self.revision)
    }

    /// Whether the value stored at `key` was undecodable, and why.
    pub fn garbage_reason(&self, key: &str) -> Option<&str> {
        self.garbage.get(key).map(String::as_str)
    }

    /// The node a port lives on: its `node` field, else the node its device
    /// instance is assigned to, if that is this node (the only one whose
    /// assignments the agent reads).
    pub fn port_node(&self, port: &Port) -> Option<NodeName> {
        if let Some(n) = &port.node {
            return Some(n.clone());
        }
        let dev = port.device?;
        self.assignments
            .iter()
            .find(|(_, a)| a.contains_key(&dev))
            .map(|(n, _)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn the_nodes_usage_record_does_not_wake_the_reconcilers() {
        // Written by this agent once per collection period: a relevant
        // change would start a reconcile pass every period.
        let mut c = Cache::default();
        let n = NodeName::new("n1").unwrap();
        let key = keys::node_observed_usage(&n);
        assert_eq!(c.apply(&key, Some(b"{}"), 5), Change::Ignored);
        assert_eq!(c.apply(&key, None, 6), Change::Ignored);
        assert!(c.garbage.is_empty());
    }

    #[test]
    fn puts_deletes_and_garbage() {
        let mut c = Cache::default();
        let n = node_name("n1");
        let inst = instance(vec![]);
        let k = keys::node_spec(&n, &inst.id);
        assert_eq!(
            c.apply(&k, Some(&model::encode(&inst)), 5),
            Change::Relevant
        );
        assert_eq!(c.instances.get(&inst.id), Some(&inst));
        assert_eq!(c.revision, 5);

        // Garbage replaces the good value and is remembered.
        c.apply(&k, Some(b"{not json"), 6);
        assert!(!c.instances.contains_key(&inst.id));
        assert!(c.garbage_reason(&k).is_some());
        // A good value heals it.
        c.apply(&k, Some(&model::encode(&inst)), 7);
        assert!(c.garbage_reason(&k).is_none());
        c.apply(&k, None, 8);
        assert!(c.instances.is_empty());

        let ak = keys::assignment(&n, &inst.id);
        c.apply(&ak, Some(&model::encode(&assignment(&n, inst.id))), 9);
        assert_eq!(c.assignments[&n].len(), 1);
        c.apply(&ak, None, 10);
        assert!(c.assignments.is_empty());
    }

    #[test]
    fn statuses_keep_their_revision_and_unknown_keys_are_ignored() {
        let mut c = Cache::default();
        let id = InstanceId::new_random();
        let st = status(&node_name("n1"), model::InstanceState::Running, 0);
        let change = c.apply(
            &keys::instance_status(&node_name("n1"), &id),
            Some(&model::encode(&st)),
            42,
        );
        assert_eq!(change, Change::Report);
        assert_eq!(c.statuses[&id].mod_revision, 42);
        assert_eq!(
            c.apply("/nubo/v1/private/ipam/x/y", Some(b"1"), 43),
            Change::Ignored
        );
        assert_eq!(
            c.apply("/nubo/v1/instances/nope", Some(b"1"), 44),
            Change::Ignored
        );
        assert!(c.garbage.is_empty());
    }

    #[test]
    fn volumes_and_types_are_kept_and_wake_only_for_local_instances() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.cache.local_node = Some(n1.clone());
        w.node(&n1, "10.0.0.1");
        let net = w.network(1, 0);
        let (local, _) = w.instance_on(&n1, net, &[]);
        let (remote, _) = w.instance_on(&node_name("n2"), net, &[]);
        // A type no local disk uses: stored, no pass.
        assert_eq!(w.volume_type("gold", Some(200)), Change::Ignored);
        assert_eq!(w.cache.volume_types["gold"].qos.write_iops_sec, Some(200));
        let v_local = w.volume(Some("gold"));
        let v_remote = w.volume(Some("silver"));
        assert_eq!(
            w.cache.volumes[&v_local].volume_type.as_deref(),
            Some("gold")
        );
        w.attach(local, v_local);
        w.attach(remote, v_remote);

        // Used here: a type change and a volume change wake the reconcilers.
        assert_eq!(w.volume_type("gold", Some(100)), Change::Relevant);
        assert_eq!(w.cache.volume_types["gold"].qos.write_iops_sec, Some(100));
        let vk = keys::volume(&v_local);
        let rec = model::encode(&w.cache.volumes[&v_local]);
        assert_eq!(w.cache.apply(&vk, Some(&rec), 100), Change::Relevant);
        // Used only on another node: stored, no pass here.
        assert_eq!(w.volume_type("silver", Some(5)), Change::Ignored);
        let rk = keys::volume(&v_remote);
        let remote_rec = model::encode(&w.cache.volumes[&v_remote]);
        assert_eq!(w.cache.apply(&rk, None, 101), Change::Ignored);
        assert!(!w.cache.volumes.contains_key(&v_remote));
        // Without a local node every instance counts.
        w.cache.local_node = None;
        assert_eq!(w.cache.apply(&rk, Some(&remote_rec), 102), Change::Relevant);
        assert_eq!(w.volume_type("silver", Some(6)), Change::Relevant);
        w.cache.local_node = Some(n1);

        // Undecodable values: remembered as garbage, the old value dropped,
        // never a panic; a good value heals them.
        let tk = keys::volume_type("gold");
        assert_eq!(w.cache.apply(&tk, Some(b"{nope"), 103), Change::Relevant);
        assert!(!w.cache.volume_types.contains_key("gold"));
        assert!(w.cache.garbage_reason(&tk).is_some());
        assert_eq!(w.cache.apply(&vk, Some(b"[]"), 104), Change::Relevant);
        assert!(!w.cache.volumes.contains_key(&v_local));
        assert!(w.cache.garbage_reason(&vk).is_some());
        assert_eq!(w.cache.apply(&vk, Some(&rec), 105), Change::Relevant);
        assert!(w.cache.garbage_reason(&vk).is_none());
        assert_eq!(w.cache.apply(&tk, None, 106), Change::Relevant);
        assert!(w.cache.garbage_reason(&tk).is_none());
        assert_eq!(w.cache.revision, 106);

        // Snapshots and malformed volume keys are not kept.
        let snap = keys::volume_snapshot(&v_local, "s1");
        assert_eq!(w.cache.apply(&snap, Some(b"{}"), 107), Change::Ignored);
        assert_eq!(
            w.cache.apply("/nubo/v1/volume-types/", Some(b"{}"), 108),
            Change::Ignored
        );
        assert_eq!(
            w.cache
                .apply("/nubo/v1/volumes/not-a-uuid", Some(b"{}"), 109),
            Change::Ignored
        );
        assert!(w.cache.garbage.is_empty(), "{:?}", w.cache.garbage);
    }

    #[test]
    fn progress_tells_a_key_on_its_way_from_a_missing_one() {
        let mut c = Cache::default();
        let port = keys::port(&nubo_common::PortId::new_random());
        // Not fed by the mirror: everything is known.
        assert!(!c.in_flight(&port, 10));
        c.set_progress(&keys::ports_prefix(), 8);
        c.local_node = Some(node_name("n1"));
        c.set_progress(&keys::node_statuses_prefix(&node_name("n1")), 12);
        assert_eq!(c.progress_of(&port), Some(8));
        assert!(c.in_flight(&port, 10));
        assert!(!c.in_flight(&port, 8));
        // Progress never goes back.
        c.set_progress(&keys::ports_prefix(), 5);
        assert_eq!(c.progress_of(&port), Some(8));
        // Read absent after the referring write: missing.
        c.confirm_absent(&port, 9);
        assert!(c.in_flight(&port, 10));
        c.confirm_absent(&port, 10);
        assert!(!c.in_flight(&port, 10));
        // A put forgets the absence; an undecodable value is never on its way.
        c.apply(&port, Some(b"{"), 11);
        assert!(c.absent.is_empty());
        assert!(!c.in_flight(&port, 20));
        assert_eq!(c.statuses_revision(), 12);
    }
}
