//! The typed, in-memory copy of the parts of `/nubo/v1/` the agent needs.
//!
//! [`Cache::apply`] is pure: it takes a key and its new value (or `None` for
//! a deletion) and updates the typed maps. Values that do not decode are
//! logged with their key and remembered in [`Cache::garbage`] (so that the
//! objects they describe are held, never torn down); keys outside the layout
//! are ignored.

use std::collections::BTreeMap;

use nubo_common::keys::{self, Key};
use nubo_common::model::{
    self, Assignment, Flavor, Image, Instance, InstanceStatus, Keypair, Network, Node, Port,
    SecurityGroup,
};
use nubo_common::{
    FlavorName, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId, SecurityGroupId,
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

/// The mirror of `/nubo/v1/`.
#[derive(Debug, Clone, Default)]
pub struct Cache {
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
    /// Instance specs by id.
    pub instances: BTreeMap<InstanceId, Instance>,
    /// Instance statuses by id.
    pub statuses: BTreeMap<InstanceId, StoredStatus>,
    /// Assignments of every node (ports of remote nodes are located through them).
    pub assignments: BTreeMap<NodeName, BTreeMap<InstanceId, Assignment>>,
    /// Keys whose value did not decode, with the reason.
    pub garbage: BTreeMap<String, String>,
}

/// What an applied change was about, so callers can decide whether it
/// warrants a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A key the reconcilers depend on changed.
    Relevant,
    /// A status or liveness key changed (written by agents themselves).
    Report,
    /// The key is not understood or not needed.
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
    /// Applies a put (`Some(value)`) or a delete (`None`) of `key` at
    /// `mod_revision`.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, mod_revision: i64) -> Change {
        self.revision = self.revision.max(mod_revision);
        let Some(parsed) = keys::parse(key) else {
            return Change::Ignored;
        };
        let g = &mut self.garbage;
        match parsed {
            Key::Node(n) => put_or_remove(&mut self.nodes, g, n, key, value),
            Key::Flavor(n) => put_or_remove(&mut self.flavors, g, n, key, value),
            Key::Image(id) => put_or_remove(&mut self.images, g, id, key, value),
            Key::Network(id) => put_or_remove(&mut self.networks, g, id, key, value),
            Key::Port(id) => put_or_remove(&mut self.ports, g, id, key, value),
            Key::SecurityGroup(id) => put_or_remove(&mut self.secgroups, g, id, key, value),
            Key::Keypair(p, name) => put_or_remove(&mut self.keypairs, g, (p, name), key, value),
            Key::Instance(id) => put_or_remove(&mut self.instances, g, id, key, value),
            Key::Assignment(node, id) => {
                let per_node = self.assignments.entry(node.clone()).or_default();
                put_or_remove(per_node, g, id, key, value);
                if per_node.is_empty() {
                    self.assignments.remove(&node);
                }
            }
            Key::InstanceStatus(id) => {
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
            Key::ServerGroup(_) | Key::Volume(_) => return Change::Ignored,
        }
        Change::Relevant
    }

    /// Whether the value stored at `key` was undecodable, and why.
    pub fn garbage_reason(&self, key: &str) -> Option<&str> {
        self.garbage.get(key).map(String::as_str)
    }

    /// The node a port lives on: its `node` field, else the node its device
    /// instance is assigned to.
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
    fn puts_deletes_and_garbage() {
        let mut c = Cache::default();
        let n = node_name("n1");
        let inst = instance(vec![]);
        let k = keys::instance(&inst.id);
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
        let change = c.apply(&keys::instance_status(&id), Some(&model::encode(&st)), 42);
        assert_eq!(change, Change::Report);
        assert_eq!(c.statuses[&id].mod_revision, 42);
        assert_eq!(
            c.apply("/nubo/v1/ipam/x/y", Some(b"1"), 43),
            Change::Ignored
        );
        assert_eq!(
            c.apply("/nubo/v1/instances/nope", Some(b"1"), 44),
            Change::Ignored
        );
        assert!(c.garbage.is_empty());
    }
}
