//! What the metadata service knows about each instance, and how callers are
//! mapped to it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock};

use nubo_netid::MacAddr;
use serde::{Deserialize, Serialize};

/// Everything the metadata service serves about one instance port.
///
/// Built by the agent from its local cache of etcd objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// Instance UUID (OpenStack `uuid`, EC2 `instance-id`).
    pub uuid: String,
    /// Display name (OpenStack `name`).
    pub name: String,
    /// Guest hostname (OpenStack `hostname`, EC2 `hostname`/`local-hostname`).
    pub hostname: String,
    /// Owning project / tenant.
    pub project_id: String,
    /// Availability zone (EC2 `placement/availability-zone`).
    pub availability_zone: String,
    /// SSH public keys as `(name, key)` pairs, in the order they are listed.
    pub public_keys: Vec<(String, String)>,
    /// Raw user data; `None` makes `user_data` / `user-data` answer 404.
    pub user_data: Option<Vec<u8>>,
    /// OpenStack `network_data.json` document (`null` is served as `{}`).
    pub network_data: serde_json::Value,
    /// OpenStack `vendor_data.json` document (`null` is served as `{}`).
    pub vendor_data: serde_json::Value,
    /// OpenStack `vendor_data2.json` document (`null` is served as `{}`).
    pub vendor_data2: serde_json::Value,
    /// The port's fixed IPv4 address; with the bridge it is the lookup key.
    pub local_ipv4: Ipv4Addr,
    /// The port's MAC; a caller whose neighbour entry shows another MAC is refused.
    pub mac: MacAddr,
    /// Index of this instance within its launch request (`ami-launch-index`).
    pub launch_index: u32,
    /// User-supplied key/value metadata (OpenStack `meta`).
    pub meta: BTreeMap<String, String>,
    /// Flavor name, served as EC2 `instance-type` when present.
    pub instance_type: Option<String>,
}

impl InstanceMeta {
    /// A minimal record: name and hostname default to the UUID, everything
    /// else empty. Fill in the remaining public fields as needed.
    pub fn new(uuid: impl Into<String>, local_ipv4: Ipv4Addr, mac: MacAddr) -> Self {
        let uuid = uuid.into();
        InstanceMeta {
            name: uuid.clone(),
            hostname: uuid.clone(),
            uuid,
            project_id: String::new(),
            availability_zone: String::new(),
            public_keys: Vec::new(),
            user_data: None,
            network_data: serde_json::Value::Null,
            vendor_data: serde_json::Value::Null,
            vendor_data2: serde_json::Value::Null,
            local_ipv4,
            mac,
            launch_index: 0,
            meta: BTreeMap::new(),
            instance_type: None,
        }
    }
}

/// Maps a caller's (bridge, source IP) to the instance that owns that
/// address on that bridge. Called on every request: must not block.
pub trait InstanceLookup: Send + Sync + 'static {
    /// The instance whose port has `ip` on `bridge`, if any.
    fn lookup(&self, bridge: &str, ip: Ipv4Addr) -> Option<Arc<InstanceMeta>>;
}

type Table = HashMap<String, HashMap<Ipv4Addr, Arc<InstanceMeta>>>;

/// The in-memory table the agent keeps up to date: bridge → IP → instance.
///
/// Cheap to clone; all clones share the same table.
#[derive(Debug, Clone, Default)]
pub struct InstanceTable {
    inner: Arc<RwLock<Table>>,
}

impl InstanceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the entry for `meta.local_ipv4` on `bridge`;
    /// returns the entry it replaced.
    pub fn insert(&self, bridge: &str, meta: InstanceMeta) -> Option<Arc<InstanceMeta>> {
        let mut table = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        table
            .entry(bridge.to_owned())
            .or_default()
            .insert(meta.local_ipv4, Arc::new(meta))
    }

    /// Removes the entry for `ip` on `bridge`; returns it if there was one.
    pub fn remove(&self, bridge: &str, ip: Ipv4Addr) -> Option<Arc<InstanceMeta>> {
        let mut table = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let per_bridge = table.get_mut(bridge)?;
        let removed = per_bridge.remove(&ip);
        if per_bridge.is_empty() {
            table.remove(bridge);
        }
        removed
    }

    /// Removes every entry of `bridge`.
    pub fn remove_bridge(&self, bridge: &str) {
        let mut table = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        table.remove(bridge);
    }

    /// Replaces the whole table atomically with `(bridge, meta)` entries
    /// (e.g. after a resync from etcd). Later duplicates win.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (String, InstanceMeta)>) {
        let mut fresh = Table::new();
        for (bridge, meta) in entries {
            fresh
                .entry(bridge)
                .or_default()
                .insert(meta.local_ipv4, Arc::new(meta));
        }
        let mut table = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        *table = fresh;
    }

    /// Number of entries over all bridges.
    pub fn len(&self) -> usize {
        let table = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        table.values().map(HashMap::len).sum()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InstanceLookup for InstanceTable {
    fn lookup(&self, bridge: &str, ip: Ipv4Addr) -> Option<Arc<InstanceMeta>> {
        let table = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        table.get(bridge)?.get(&ip).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uuid: &str, ip: [u8; 4]) -> InstanceMeta {
        InstanceMeta::new(uuid, Ipv4Addr::from(ip), MacAddr([2, 0, 0, 0, 0, ip[3]]))
    }

    #[test]
    fn same_ip_on_two_bridges_are_distinct() {
        let table = InstanceTable::new();
        assert!(table.insert("nb-1", meta("a", [10, 0, 0, 5])).is_none());
        assert!(table.insert("nb-2", meta("b", [10, 0, 0, 5])).is_none());
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(table.lookup("nb-1", ip).unwrap().uuid, "a");
        assert_eq!(table.lookup("nb-2", ip).unwrap().uuid, "b");
        assert!(table.lookup("nb-3", ip).is_none());
        assert!(table.lookup("nb-1", Ipv4Addr::new(10, 0, 0, 6)).is_none());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn insert_replaces_and_remove_cleans_up() {
        let table = InstanceTable::new();
        table.insert("nb-1", meta("a", [10, 0, 0, 5]));
        let old = table.insert("nb-1", meta("a2", [10, 0, 0, 5])).unwrap();
        assert_eq!(old.uuid, "a");
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(table.remove("nb-1", ip).unwrap().uuid, "a2");
        assert!(table.remove("nb-1", ip).is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn replace_all_and_remove_bridge() {
        let table = InstanceTable::new();
        table.insert("nb-9", meta("gone", [10, 9, 0, 1]));
        let clone = table.clone();
        clone.replace_all([
            ("nb-1".to_owned(), meta("a", [10, 0, 0, 5])),
            ("nb-1".to_owned(), meta("b", [10, 0, 0, 6])),
            ("nb-2".to_owned(), meta("c", [10, 0, 0, 5])),
        ]);
        assert!(table.lookup("nb-9", Ipv4Addr::new(10, 9, 0, 1)).is_none());
        assert_eq!(table.len(), 3);
        table.remove_bridge("nb-1");
        assert_eq!(table.len(), 1);
        assert_eq!(
            clone
                .lookup("nb-2", Ipv4Addr::new(10, 0, 0, 5))
                .unwrap()
                .uuid,
            "c"
        );
    }
}
