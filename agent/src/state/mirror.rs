//! Keeps the [`Cache`] in step with etcd: one list of `/nubo/v1/`, then one
//! watch from the next revision (with `prev_kv`). After a disconnect the
//! watch resumes from the last revision seen + 1; if etcd answers that this
//! revision is compacted, the prefix is listed again and the cache rebuilt.
//! While etcd is unreachable the cache stays as it was (nothing is torn down)
//! and the mirror retries with backoff. [`MirrorHandle::request_relist`]
//! forces a fresh list (self-fencing recovery: decide on a list made after
//! the lease came back, not on a watch that may still be catching up).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use nubo_common::keys;
use tokio::sync::{watch, Notify, RwLock};
use tracing::{debug, info, warn};

use crate::state::cache::{Cache, Change};
use crate::store::{self, Backoff, StoreError};

/// Shared handle on the mirrored state.
#[derive(Debug, Clone)]
pub struct MirrorHandle {
    /// The cache.
    pub cache: Arc<RwLock<Cache>>,
    /// Bumped after every change that may alter the desired state.
    pub changes: watch::Receiver<u64>,
    /// True once the first list has been loaded.
    pub synced: watch::Receiver<bool>,
    /// Monotonic time at which the last *completed* list of the prefix was
    /// started (`None` before the first).
    pub listed: watch::Receiver<Option<std::time::Instant>>,
    relist: Arc<Notify>,
}

impl MirrorHandle {
    /// Asks the mirror to drop its watch and list the prefix again; the list
    /// is done when [`MirrorHandle::listed`] is at or after the time of the
    /// call.
    pub fn request_relist(&self) {
        self.relist.notify_one();
    }
}

/// Why a watch stream ended.
#[derive(Debug)]
enum WatchEnd {
    /// The start revision was compacted: re-list.
    Compacted(i64),
    /// Transport error, timeout or cancellation: resume from the last revision.
    Broken(String),
}

/// The mirror task's state.
pub struct Mirror {
    client: Client,
    cache: Arc<RwLock<Cache>>,
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    listed: watch::Sender<Option<std::time::Instant>>,
    relist: Arc<Notify>,
    /// The node the cache feeds ([`Cache::local_node`]).
    local_node: Option<nubo_common::NodeName>,
}

impl Mirror {
    /// A mirror over `client` and its handle.
    pub fn new(client: Client) -> (Self, MirrorHandle) {
        let cache = Arc::new(RwLock::new(Cache::default()));
        let (changes, changes_rx) = watch::channel(0);
        let (synced, synced_rx) = watch::channel(false);
        let (listed, listed_rx) = watch::channel(None);
        let relist = Arc::new(Notify::new());
        (
            Self {
                client,
                cache: cache.clone(),
                changes,
                synced,
                listed,
                relist: relist.clone(),
                local_node: None,
            },
            MirrorHandle {
                cache,
                changes: changes_rx,
                synced: synced_rx,
                listed: listed_rx,
                relist,
            },
        )
    }

    /// Scopes the relevance of volume and volume-type changes to the
    /// instances of `node` ([`Cache::local_node`]).
    pub fn with_local_node(mut self, node: nubo_common::NodeName) -> Self {
        self.local_node = Some(node);
        self
    }

    fn bump(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Lists the whole prefix and replaces the cache. Returns its revision.
    async fn relist(&self) -> Result<i64, StoreError> {
        let started = std::time::Instant::now();
        let (kvs, rev) = store::list_prefix(&self.client, keys::ROOT).await?;
        let mut fresh = Cache::for_node(self.local_node.clone());
        for (k, v, mod_rev) in &kvs {
            fresh.apply(k, Some(v), *mod_rev);
        }
        fresh.revision = rev;
        let n = kvs.len();
        *self.cache.write().await = fresh;
        info!(keys = n, revision = rev, "state listed from etcd");
        self.synced.send_replace(true);
        self.listed.send_replace(Some(started));
        self.bump();
        Ok(rev)
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut backoff = Backoff::new(store::first_backoff(), Duration::from_secs(5));
        // The revision the cache reflects; `None` = list needed.
        let mut at: Option<i64> = None;
        loop {
            let rev = match at {
                Some(r) => r,
                None => match self.relist().await {
                    Ok(r) => {
                        at = Some(r);
                        r
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(error = %e, retry_in = ?d, "listing etcd failed; running from cache");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                },
            };
            let end = tokio::select! {
                end = self.watch_from(rev + 1, &mut at, &mut backoff) => end,
                () = self.relist.notified() => {
                    info!("fresh list requested");
                    at = None;
                    continue;
                }
            };
            match end {
                WatchEnd::Compacted(c) => {
                    warn!(
                        from = rev + 1,
                        compact_revision = c,
                        "watch revision compacted; listing again"
                    );
                    at = None;
                }
                WatchEnd::Broken(reason) => {
                    let d = backoff.next_delay();
                    warn!(%reason, resume_from = at.map(|r| r + 1), retry_in = ?d,
                        "etcd watch interrupted; running from cache");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Watches from `start`, applying events; updates `at` as they arrive.
    async fn watch_from(
        &self,
        start: i64,
        at: &mut Option<i64>,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start);
        let mut wc = self.client.watch_client();
        let mut stream = match store::bounded(wc.watch(keys::ROOT, Some(opts))).await {
            Ok(s) => s,
            Err(e) => return WatchEnd::Broken(e.to_string()),
        };
        debug!(start, "watching");
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return WatchEnd::Broken("watch stream closed".into()),
                Err(e) => return WatchEnd::Broken(e.to_string()),
            };
            if msg.compact_revision() > 0 {
                return WatchEnd::Compacted(msg.compact_revision());
            }
            if msg.canceled() {
                return WatchEnd::Broken(format!("watch canceled: {}", msg.cancel_reason()));
            }
            if msg.created() {
                backoff.reset();
                info!(from = start, "watch established");
            }
            if msg.events().is_empty() {
                continue;
            }
            let mut relevant = false;
            {
                let mut cache = self.cache.write().await;
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let rev = kv.mod_revision();
                    let change = match ev.event_type() {
                        EventType::Put => cache.apply(&key, Some(kv.value()), rev),
                        EventType::Delete => cache.apply(&key, None, rev),
                    };
                    relevant |= change == Change::Relevant;
                    *at = Some(at.unwrap_or_default().max(rev));
                }
            }
            if relevant {
                self.bump();
            }
        }
    }
}
