//! The in-memory view of nodes (info, liveness, admin switch, usage) kept
//! current by an etcd watch on `/nubo/v1/nodes/`: list, then watch from the
//! list revision + 1 (the watch resumes on a live etcd member by itself,
//! see `nubo_store::watch`), and re-list when the watch is compacted.
//!
//! The lock is a plain `std::sync::RwLock`, never held across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use etcd_client::KeyValue;
use nubo_common::keys::{self, Key};
use nubo_common::model::{self, NodeUsage};
use nubo_common::NodeName;
use nubo_store::kv::kv_key;
use nubo_store::{Etcd, ListWatch};
use tokio::sync::watch;

use super::scheduler::{self, NodeState, Ratios, Rejections, Request};
use crate::config::Placement;

/// Shared view of every node.
#[derive(Debug)]
pub struct ClusterView {
    nodes: RwLock<BTreeMap<NodeName, Slot>>,
    ready: watch::Sender<bool>,
    /// Placements in flight from this coordinator, per node (see
    /// [`ClusterView::claim`]).
    busy: Mutex<HashMap<NodeName, u32>>,
}

/// A node chosen for one placement transaction, counted as busy until
/// dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    view: &'a ClusterView,
    /// The node.
    pub node: NodeName,
    /// Its usage as known when chosen.
    pub usage: NodeUsage,
    /// The mod_revision of that usage (0 = absent), for the compare.
    pub usage_rev: i64,
    /// Another placement from this coordinator was in flight on the node
    /// when it was chosen (only when nothing idle fitted).
    pub shared: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut busy = self.view.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.node);
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Slot {
    state: NodeState,
    /// Highest revision applied to the usage key (puts and deletes), so a
    /// late watch event never rolls back a newer local update.
    usage_seen: i64,
    /// Highest revision applied to the health key.
    health_seen: i64,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self {
            nodes: RwLock::new(BTreeMap::new()),
            ready: watch::channel(false).0,
            busy: Mutex::new(HashMap::new()),
        }
    }
}

impl ClusterView {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<NodeName, Slot>> {
        // A poisoned lock only means a panic elsewhere; the map stays usable.
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeName, Slot>> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the first full listing has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits for the first listing.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in self, so the channel cannot close while we wait.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// A copy of one node's state.
    pub fn get(&self, n: &NodeName) -> Option<NodeState> {
        self.read().get(n).map(|s| s.state.clone())
    }

    /// Up to `limit` nodes with names after `after`, in name order, and
    /// whether more follow.
    pub fn page(
        &self,
        after: Option<&NodeName>,
        limit: usize,
    ) -> (Vec<(NodeName, NodeState)>, bool) {
        let map = self.read();
        let mut it = map
            .iter()
            .filter(|(n, s)| s.state.info.is_some() && after.is_none_or(|a| *n > a));
        let page: Vec<_> = it
            .by_ref()
            .take(limit)
            .map(|(n, s)| (n.clone(), s.state.clone()))
            .collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// Chooses a node for one placement at random among the `top` best
    /// candidates, preferring nodes without a placement in flight from this
    /// coordinator: a second transaction on such a node would compare a
    /// usage revision that the first is about to change, and fail. Nodes
    /// with placements in flight are only used when nothing else fits.
    pub fn claim(
        &self,
        req: &Request<'_>,
        ratios: &Ratios,
        placement: Placement,
        exclude: &HashSet<NodeName>,
        top: usize,
    ) -> Result<Option<Claim<'_>>, Rejections> {
        let map = self.read();
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = || map.iter().map(|(n, s)| (n, &s.state));
        let names = if busy.is_empty() {
            scheduler::candidates(nodes(), req, ratios, placement, exclude, top)?
        } else {
            let mut idle = exclude.clone();
            idle.extend(busy.keys().cloned());
            match scheduler::candidates(nodes(), req, ratios, placement, &idle, top) {
                Ok(n) => n,
                Err(_) => scheduler::candidates(nodes(), req, ratios, placement, exclude, top)?,
            }
        };
        let Some(node) = rand::seq::IndexedRandom::choose(names.as_slice(), &mut rand::rng())
        else {
            return Ok(None);
        };
        let Some(slot) = map.get(node) else {
            return Ok(None);
        };
        let count = busy.entry(node.clone()).or_default();
        let shared = *count > 0;
        *count += 1;
        Ok(Some(Claim {
            view: self,
            node: node.clone(),
            usage: slot.state.usage.clone(),
            usage_rev: slot.state.usage_rev,
            shared,
        }))
    }

    /// Claims node `n` itself (a resize on its node, a move to a named
    /// node): counted as busy like [`ClusterView::claim`]; `None` when the
    /// node is not registered.
    pub fn claim_node(&self, n: &NodeName) -> Option<Claim<'_>> {
        let map = self.read();
        let slot = map.get(n).filter(|s| s.state.info.is_some())?;
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let count = busy.entry(n.clone()).or_default();
        let shared = *count > 0;
        *count += 1;
        Some(Claim {
            view: self,
            node: n.clone(),
            usage: slot.state.usage.clone(),
            usage_rev: slot.state.usage_rev,
            shared,
        })
    }

    /// Number of nodes with placements in flight from this coordinator.
    pub fn busy_nodes(&self) -> usize {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Records a usage value read or written at `rev` (mod_revision), unless
    /// something newer is known.
    pub fn record_usage(&self, n: &NodeName, usage: Option<NodeUsage>, rev: i64) {
        let mut map = self.write();
        let slot = map.entry(n.clone()).or_default();
        if rev < slot.usage_seen {
            return;
        }
        slot.usage_seen = rev;
        slot.state.usage_corrupt = false;
        match usage {
            Some(u) => {
                slot.state.usage = u;
                slot.state.usage_rev = rev;
            }
            None => {
                slot.state.usage = NodeUsage::default();
                slot.state.usage_rev = 0;
            }
        }
    }

    /// Every registered node, in name order.
    pub fn all(&self) -> Vec<(NodeName, NodeState)> {
        self.page(None, usize::MAX).0
    }

    /// Records a health value read or written at `rev`, unless something
    /// newer is known.
    pub fn record_health(&self, n: &NodeName, health: Option<model::NodeHealth>, rev: i64) {
        let mut map = self.write();
        let slot = map.entry(n.clone()).or_default();
        if rev < slot.health_seen {
            return;
        }
        slot.health_seen = rev;
        slot.state.health = health;
    }

    /// Records an undecodable usage value.
    fn record_corrupt_usage(&self, n: &NodeName, rev: i64) {
        let mut map = self.write();
        let slot = map.entry(n.clone()).or_default();
        if rev >= slot.usage_seen {
            slot.usage_seen = rev;
            slot.state.usage_corrupt = true;
            slot.state.usage_rev = rev;
        }
    }

    /// Applies a usage key/value read from etcd (decode or mark corrupt).
    pub fn apply_usage_kv(&self, n: &NodeName, kv: &KeyValue) {
        match model::decode::<NodeUsage>(kv_key(kv), kv.value()) {
            Ok(u) => self.record_usage(n, Some(u), kv.mod_revision()),
            Err(e) => {
                tracing::warn!(key = kv_key(kv), error = %e, "unreadable node usage; node excluded from scheduling");
                self.record_corrupt_usage(n, kv.mod_revision());
            }
        }
    }

    /// Sets the admin switch locally (after writing it to etcd).
    pub fn set_admin(&self, n: &NodeName, admin: model::NodeAdmin) {
        if let Some(s) = self.write().get_mut(n) {
            s.state.admin = admin;
        }
    }

    fn apply(&self, kv: &KeyValue, deleted: bool) {
        let key = kv_key(kv);
        let Some(parsed) = keys::parse(key) else {
            return;
        };
        if let Key::NodeHealth(n) = parsed {
            let health = if deleted {
                None
            } else {
                match model::decode::<model::NodeHealth>(key, kv.value()) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "unreadable node health; treated as absent");
                        None
                    }
                }
            };
            self.record_health(&n, health, kv.mod_revision());
            return;
        }
        match parsed {
            Key::NodeUsage(n) => {
                if deleted {
                    self.record_usage(&n, None, kv.mod_revision());
                } else {
                    self.apply_usage_kv(&n, kv);
                }
            }
            Key::Node(n) => {
                let info = if deleted {
                    None
                } else {
                    match model::decode::<model::Node>(key, kv.value()) {
                        Ok(info) if info.name == n => Some(info),
                        Ok(info) => {
                            tracing::warn!(key, name = %info.name, "node record names another node; skipped");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "unreadable node record; skipped");
                            None
                        }
                    }
                };
                self.write().entry(n).or_default().state.info = info;
            }
            Key::NodeAlive(n) => {
                self.write().entry(n).or_default().state.alive = !deleted;
            }
            Key::NodeAdmin(n) => {
                let admin = if deleted {
                    model::NodeAdmin::default()
                } else {
                    model::decode(key, kv.value()).unwrap_or_else(|e| {
                        tracing::warn!(key, error = %e, "unreadable admin switch; treating the node as disabled");
                        model::NodeAdmin {
                            enabled: false,
                            reason: Some("unreadable admin record".into()),
                        }
                    })
                };
                self.write().entry(n).or_default().state.admin = admin;
            }
            _ => {}
        }
    }

    /// Replaces every node with a listing made at `rev`, keeping the usage
    /// and health updates newer than it (this coordinator's own
    /// placements).
    fn replace(&self, rev: i64, kvs: &[KeyValue]) {
        let staging = ClusterView::default();
        for kv in kvs {
            staging.apply(kv, false);
        }
        let mut fresh: BTreeMap<NodeName, Slot> = BTreeMap::new();
        fresh.append(&mut staging.write());
        {
            let mut map = self.write();
            for (n, slot) in fresh.iter_mut() {
                // Keep usage updates newer than the listing (local placements).
                if let Some(old) = map.get(n) {
                    if old.usage_seen > rev {
                        slot.state.usage = old.state.usage.clone();
                        slot.state.usage_rev = old.state.usage_rev;
                        slot.state.usage_corrupt = old.state.usage_corrupt;
                        slot.usage_seen = old.usage_seen;
                    }
                }
                slot.usage_seen = slot.usage_seen.max(slot.state.usage_rev);
                if let Some(old) = map.get(n) {
                    if old.health_seen > rev {
                        slot.state.health = old.state.health.clone();
                        slot.health_seen = old.health_seen;
                    }
                }
            }
            *map = fresh;
        }
        self.ready.send_replace(true);
        tracing::debug!(revision = rev, "node view listed");
    }

    /// Runs the list + watch loop ([`ListWatch::follow`]) until `shutdown`
    /// fires.
    pub async fn run(self: Arc<Self>, etcd: Etcd, shutdown: watch::Receiver<bool>) {
        ListWatch::new(etcd, vec![keys::nodes_prefix()])
            .follow(
                "node view",
                shutdown,
                |rev, kvs| self.replace(rev, kvs),
                |kv, deleted| self.apply(kv, deleted),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::{Node, Resources};

    fn view_with(nodes: usize) -> ClusterView {
        let v = ClusterView::default();
        {
            let mut map = v.write();
            for i in 0..nodes {
                let name = NodeName::new(format!("n{i}")).unwrap();
                let mut slot = Slot::default();
                slot.state.alive = true;
                slot.state.info = Some(Node {
                    name: name.clone(),
                    underlay_ip: "10.0.0.1".parse().unwrap(),
                    underlay_mtu: 1500,
                    availability_zone: "nova".into(),
                    labels: Default::default(),
                    capacity: Resources {
                        vcpus: 16,
                        ram_mb: 4096,
                        disk_gb: 100,
                    },
                    agent_version: String::new(),
                    registered_at: model::now(),
                });
                map.insert(name, slot);
            }
        }
        v
    }

    const R: Ratios = Ratios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    };

    fn req() -> Request<'static> {
        Request {
            resources: Resources {
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 1,
            },
            availability_zone: None,
            group: None,
            hosts: Default::default(),
        }
    }

    #[test]
    fn concurrent_claims_prefer_idle_nodes_and_release_on_drop() {
        let v = view_with(4);
        let none = HashSet::new();
        let claims: Vec<_> = (0..4)
            .map(|_| {
                v.claim(&req(), &R, Placement::Spread, &none, 16)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let nodes: HashSet<_> = claims.iter().map(|c| c.node.clone()).collect();
        assert_eq!(nodes.len(), 4, "four placements in flight use four nodes");
        assert!(claims.iter().all(|c| !c.shared));
        assert_eq!(v.busy_nodes(), 4);
        // All busy: a fifth placement still gets a node (they all fit).
        let fifth = v
            .claim(&req(), &R, Placement::Spread, &none, 16)
            .unwrap()
            .unwrap();
        assert!(fifth.shared);
        drop(claims);
        assert_eq!(v.busy_nodes(), 1);
        drop(fifth);
        assert_eq!(v.busy_nodes(), 0);
    }

    #[test]
    fn claims_report_rejections_when_nothing_fits() {
        let v = view_with(2);
        let mut big = req();
        big.resources.ram_mb = 8192;
        let rej = v
            .claim(&big, &R, Placement::Spread, &HashSet::new(), 16)
            .unwrap_err();
        assert_eq!((rej.total, rej.capacity), (2, 2));
        assert_eq!(v.busy_nodes(), 0);
    }
}
