//! A watch-fed in-memory copy of the read-mostly resources a server create
//! needs: flavors, images, networks, security groups, keypairs, server groups
//! and the name index.
//!
//! Every prefix is listed at ONE etcd revision, then watched from the next
//! one (re-listed when a watch is compacted or breaks), so the cache is a
//! consistent snapshot that only lags etcd by the watch latency. It is never
//! trusted on its own: each entry carries its `mod_revision`, and whoever
//! decides something from it compares those revisions in the transaction
//! that acts on the decision (see `placement::engine`). A stale entry therefore
//! makes that transaction fail, never commit a wrong decision; the caller
//! then re-reads from etcd.
//!
//! The lock is a plain `std::sync::RwLock`, never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use etcd_client::KeyValue;
use nubo_common::keys::{self, Key};
use nubo_common::model::{self, Flavor, Image, Keypair, Network, SecurityGroup, ServerGroup};
use nubo_store::{Etcd, ListWatch};
use tokio::sync::watch;

use nubo_store::kv::kv_key;

/// One cached value.
#[derive(Debug, Clone)]
pub enum Cached {
    /// `/flavors/<name>`
    Flavor(Arc<Flavor>),
    /// `/images/<id>`
    Image(Arc<Image>),
    /// `/networks/<id>`
    Network(Arc<Network>),
    /// `/secgroups/<id>`
    SecurityGroup(Arc<SecurityGroup>),
    /// `/keypairs/<project>/<name>`
    Keypair(Arc<Keypair>),
    /// `/server-groups/<id>`
    ServerGroup(Arc<ServerGroup>),
    /// `/names/<kind>/<project>/<name>` → id
    Id(uuid::Uuid),
}

/// Types that can be read out of the cache.
pub trait FromCached: Sized {
    /// The value, when `c` holds this type.
    fn from_cached(c: &Cached) -> Option<Arc<Self>>;
}

macro_rules! from_cached {
    ($($t:ty => $v:ident),*) => {$(
        impl FromCached for $t {
            fn from_cached(c: &Cached) -> Option<Arc<Self>> {
                match c {
                    Cached::$v(v) => Some(v.clone()),
                    _ => None,
                }
            }
        }
    )*};
}
from_cached!(
    Flavor => Flavor,
    Image => Image,
    Network => Network,
    SecurityGroup => SecurityGroup,
    Keypair => Keypair,
    ServerGroup => ServerGroup
);

impl FromCached for uuid::Uuid {
    fn from_cached(c: &Cached) -> Option<Arc<Self>> {
        match c {
            Cached::Id(id) => Some(Arc::new(*id)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Cached,
    mod_rev: i64,
}

/// The prefixes the cache mirrors.
pub fn prefixes() -> Vec<String> {
    vec![
        keys::flavors_prefix(),
        keys::images_prefix(),
        keys::networks_prefix(),
        keys::secgroups_prefix(),
        keys::keypairs_root(),
        keys::server_groups_prefix(),
        keys::names_prefix(),
    ]
}

/// Decodes a value under one of [`prefixes`]; `None` for keys the cache
/// does not hold (and for values that do not decode: readers then fall back
/// to etcd, which reports the unreadable record).
pub fn decode(key: &str, value: &[u8]) -> Option<Cached> {
    if key.starts_with(&keys::names_prefix()) {
        return model::decode::<uuid::Uuid>(key, value).ok().map(Cached::Id);
    }
    Some(match keys::parse(key)? {
        Key::Flavor(_) => Cached::Flavor(Arc::new(model::decode(key, value).ok()?)),
        Key::Image(_) => Cached::Image(Arc::new(model::decode(key, value).ok()?)),
        Key::Network(_) => Cached::Network(Arc::new(model::decode(key, value).ok()?)),
        Key::SecurityGroup(_) => Cached::SecurityGroup(Arc::new(model::decode(key, value).ok()?)),
        Key::Keypair(..) => Cached::Keypair(Arc::new(model::decode(key, value).ok()?)),
        Key::ServerGroup(_) => Cached::ServerGroup(Arc::new(model::decode(key, value).ok()?)),
        _ => return None,
    })
}

/// The cache. Empty (every lookup misses) until [`ResourceCache::run`] has
/// listed etcd once.
#[derive(Debug)]
pub struct ResourceCache {
    map: RwLock<HashMap<String, Entry>>,
    ready: watch::Sender<bool>,
}

impl Default for ResourceCache {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            ready: watch::channel(false).0,
        }
    }
}

impl ResourceCache {
    /// True once the first listing is loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits for the first listing.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// The value under `key` and its mod_revision, when cached with type `T`.
    pub fn get<T: FromCached>(&self, key: &str) -> Option<(Arc<T>, i64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let e = map.get(key)?;
        Some((T::from_cached(&e.value)?, e.mod_rev))
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a put (or a delete) seen at `kv.mod_revision()`, unless the
    /// cache already holds a newer revision of the key.
    pub fn apply(&self, kv: &KeyValue, deleted: bool) {
        self.apply_raw(kv_key(kv), kv.value(), kv.mod_revision(), deleted);
    }

    /// [`ResourceCache::apply`] on the parts of a key-value.
    pub fn apply_raw(&self, key: &str, value: &[u8], rev: i64, deleted: bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|e| e.mod_rev > rev) {
            return;
        }
        match (deleted, decode(key, value)) {
            (false, Some(value)) => {
                map.insert(
                    key.to_string(),
                    Entry {
                        value,
                        mod_rev: rev,
                    },
                );
            }
            _ => {
                map.remove(key);
            }
        }
    }

    /// Replaces everything with a listing made at `revision`.
    fn replace(&self, revision: i64, kvs: &[KeyValue]) {
        let fresh: HashMap<String, Entry> = kvs
            .iter()
            .filter_map(|kv| {
                let value = decode(kv_key(kv), kv.value())?;
                let entry = Entry {
                    value,
                    mod_rev: kv.mod_revision(),
                };
                Some((kv_key(kv).to_string(), entry))
            })
            .collect();
        let n = fresh.len();
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.ready.send_replace(true);
        tracing::debug!(revision, keys = n, "resource cache listed");
    }

    /// Runs the list + watch loop ([`ListWatch::follow`]) until `shutdown`
    /// fires.
    pub async fn run(self: Arc<Self>, etcd: Etcd, shutdown: watch::Receiver<bool>) {
        ListWatch::new(etcd, prefixes())
            .follow(
                "resource cache",
                shutdown,
                |revision, kvs| self.replace(revision, kvs),
                |kv, deleted| self.apply(kv, deleted),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::Resources;
    use nubo_common::FlavorName;

    fn flavor(ram: u64) -> Vec<u8> {
        model::encode(&Flavor {
            name: FlavorName::new("m1").unwrap(),
            resources: Resources {
                vcpus: 1,
                ram_mb: ram,
                disk_gb: 1,
            },
            extra: Default::default(),
            created_at: model::now(),
            display_name: String::new(),
            private: false,
            access: Default::default(),
        })
    }

    #[test]
    fn only_known_kinds_are_decoded() {
        let k = keys::flavor(&FlavorName::new("m1").unwrap());
        assert!(matches!(decode(&k, &flavor(512)), Some(Cached::Flavor(_))));
        assert!(decode(&k, b"not json").is_none());
        let idx = format!("{}network/p1/net", keys::names_prefix());
        let id = uuid::Uuid::new_v4();
        assert!(matches!(decode(&idx, &model::encode(&id)), Some(Cached::Id(x)) if x == id));
        assert!(decode("/nubo/v1/ports/whatever", b"{}").is_none());
    }

    #[test]
    fn older_events_never_replace_newer_entries() {
        let c = ResourceCache::default();
        let k = keys::flavor(&FlavorName::new("m1").unwrap());
        c.apply_raw(&k, &flavor(512), 10, false);
        c.apply_raw(&k, &flavor(256), 5, false);
        let (f, rev) = c.get::<Flavor>(&k).unwrap();
        assert_eq!((f.resources.ram_mb, rev), (512, 10));
        // The wrong type is a miss, not a panic.
        assert!(c.get::<Image>(&k).is_none());
        // A stale delete is ignored, a newer one removes the entry.
        c.apply_raw(&k, b"", 9, true);
        assert!(c.get::<Flavor>(&k).is_some());
        c.apply_raw(&k, b"", 11, true);
        assert!(c.get::<Flavor>(&k).is_none());
        assert!(c.is_empty());
    }
}
