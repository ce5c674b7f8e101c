//! Keeps the [`Cache`] in step with etcd through nubo-store's list-then-watch
//! loop ([`ListWatch`]) over the node-relevant prefixes only
//! ([`keys::agent_watch_prefixes`]: the shared topology and this node's
//! own keys, what its etcd role may read; never another node's keys, the
//! instance specs, nor the coordinator's private data):
//! one list of every prefix at one revision, then one resumable watch per
//! prefix from the next revision. A watch resumes on a live member after a
//! disconnect; if its revision was compacted, everything is listed again
//! and the cache rebuilt. While etcd is unreachable the cache stays as it
//! was (nothing is torn down) and listing is retried with backoff.
//!
//! The watches deliver each prefix in revision order, each with how far it
//! is known ([`Cache::set_progress`]); a transaction writing under two
//! prefixes may thus reach the cache in two steps, which
//! [`crate::state::desired`] tells from a missing object with
//! [`Cache::in_flight`]. When a pending instance waits for a key, the
//! reconcile loop says so ([`MirrorHandle::set_awaited`]) and the mirror
//! reads the key: absent, it is recorded so ([`Cache::confirm_absent`]).
//!
//! [`MirrorHandle::request_relist`] forces a fresh list (self-fencing
//! recovery: decide on a list made after the lease came back, not on a
//! watch that may still be catching up).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::EventType;
use nubo_common::keys;
use nubo_store::{ListWatch, Update};
use tokio::sync::{mpsc, watch, Notify, RwLock};
use tracing::{debug, info, warn};

use crate::state::cache::{Cache, Change};
use crate::store::{self, Backoff};

/// Shared handle on the mirrored state.
#[derive(Debug, Clone)]
pub struct MirrorHandle {
    /// The cache.
    pub cache: Arc<RwLock<Cache>>,
    /// Bumped after every change that may alter the desired state.
    pub changes: watch::Receiver<u64>,
    /// True once the first list has been loaded.
    pub synced: watch::Receiver<bool>,
    /// Monotonic time at which the last *completed* list of the prefixes
    /// was started (`None` before the first).
    pub listed: watch::Receiver<Option<std::time::Instant>>,
    relist: Arc<Notify>,
    awaited: mpsc::UnboundedSender<BTreeSet<String>>,
    changed_at: ChangedAt,
}

/// When the oldest change not yet taken by the reconcile loop was seen.
type ChangedAt = Arc<std::sync::Mutex<Option<std::time::Instant>>>;

impl MirrorHandle {
    /// Asks the mirror to drop its watches and list the prefixes again; the
    /// list is done when [`MirrorHandle::listed`] is at or after the time
    /// of the call.
    pub fn request_relist(&self) {
        self.relist.notify_one();
    }

    /// Tells the mirror which keys pending instances wait for now (the
    /// desired state's `awaited`; call it when that set changes). The
    /// mirror reads each from etcd: one etcd does not hold is recorded as
    /// absent in the cache and the reconcile loop woken; while any remains
    /// awaited, every change wakes the loop.
    pub fn set_awaited(&self, keys: BTreeSet<String>) {
        // The mirror task gone: nothing left to ask.
        let _ = self.awaited.send(keys);
    }

    /// When the oldest change not taken yet was seen by the mirror (`None`:
    /// no change since the last call). The reconcile loop takes it when a
    /// pass starts: that pass applies every change seen until then.
    pub fn take_changed_at(&self) -> Option<std::time::Instant> {
        self.changed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// What woke the mirror.
enum Wake {
    Update(Result<Update, nubo_store::StoreError>),
    Relist,
    Awaited(BTreeSet<String>),
}

/// The mirror task's state.
pub struct Mirror {
    etcd: nubo_store::Etcd,
    lw: ListWatch,
    cache: Arc<RwLock<Cache>>,
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    listed: watch::Sender<Option<std::time::Instant>>,
    relist: Arc<Notify>,
    changed_at: ChangedAt,
    awaited_rx: mpsc::UnboundedReceiver<BTreeSet<String>>,
    /// The node the cache feeds ([`Cache::local_node`]).
    local_node: Option<nubo_common::NodeName>,
    /// Keys pending instances wait for ([`MirrorHandle::set_awaited`]),
    /// until they arrive or are read absent: while there are any, every
    /// change wakes the reconcile loop (the progress it carries may settle
    /// them).
    awaited: BTreeSet<String>,
}

impl Mirror {
    /// A mirror over `etcd` of what the agent of `node` reads
    /// ([`keys::agent_watch_prefixes`]: what its etcd role may read), and
    /// its handle.
    pub fn new(etcd: nubo_store::Etcd, node: nubo_common::NodeName) -> (Self, MirrorHandle) {
        let cache = Arc::new(RwLock::new(Cache::default()));
        let (changes, changes_rx) = watch::channel(0);
        let (synced, synced_rx) = watch::channel(false);
        let (listed, listed_rx) = watch::channel(None);
        let (awaited_tx, awaited_rx) = mpsc::unbounded_channel();
        let relist = Arc::new(Notify::new());
        let changed_at = ChangedAt::default();
        (
            Self {
                lw: ListWatch::new(etcd.clone(), keys::agent_watch_prefixes(&node)),
                etcd,
                cache: cache.clone(),
                changes,
                synced,
                listed,
                relist: relist.clone(),
                changed_at: changed_at.clone(),
                awaited_rx,
                local_node: Some(node),
                awaited: BTreeSet::new(),
            },
            MirrorHandle {
                cache,
                changes: changes_rx,
                synced: synced_rx,
                listed: listed_rx,
                relist,
                awaited: awaited_tx,
                changed_at,
            },
        )
    }

    fn bump(&self) {
        self.changed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(std::time::Instant::now);
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(store::first_backoff(), Duration::from_secs(5));
        loop {
            let wake = tokio::select! {
                u = self.lw.next() => Wake::Update(u),
                () = self.relist.notified() => Wake::Relist,
                Some(keys) = self.awaited_rx.recv() => Wake::Awaited(keys),
            };
            match wake {
                Wake::Update(Ok(Update::Listed {
                    revision,
                    kvs,
                    started,
                })) => {
                    backoff.reset();
                    self.replace(revision, kvs, started).await;
                }
                Wake::Update(Ok(Update::Events {
                    prefix,
                    events,
                    progress,
                })) => self.apply(prefix, &events, progress).await,
                Wake::Update(Err(e)) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "listing etcd failed; running from cache");
                    tokio::time::sleep(d).await;
                }
                Wake::Relist => {
                    info!("fresh list requested");
                    self.lw.relist();
                }
                Wake::Awaited(keys) => self.await_keys(keys).await,
            }
        }
    }

    /// Replaces the cache with a fresh listing.
    async fn replace(
        &mut self,
        revision: i64,
        kvs: Vec<etcd_client::KeyValue>,
        started: std::time::Instant,
    ) {
        let mut fresh = Cache::for_node(self.local_node.clone());
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            fresh.apply(&key, Some(kv.value()), kv.mod_revision());
        }
        fresh.revision = revision;
        for p in self.lw.prefixes() {
            fresh.set_progress(p, revision);
        }
        *self.cache.write().await = fresh;
        self.awaited.clear();
        info!(keys = kvs.len(), revision, "state listed from etcd");
        self.synced.send_replace(true);
        self.listed.send_replace(Some(started));
        self.bump();
    }

    /// Applies the events of one watch response of prefix `prefix`.
    async fn apply(&mut self, prefix: usize, events: &[etcd_client::Event], progress: i64) {
        // While instances wait, any progress may settle them.
        let mut relevant = !self.awaited.is_empty();
        {
            let mut cache = self.cache.write().await;
            for ev in events {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let rev = kv.mod_revision();
                let change = match ev.event_type() {
                    EventType::Put => cache.apply(&key, Some(kv.value()), rev),
                    EventType::Delete => cache.apply(&key, None, rev),
                };
                relevant |= change == Change::Relevant;
                if ev.event_type() == EventType::Put {
                    self.awaited.remove(key.as_ref());
                }
            }
            if let Some(p) = self.lw.prefixes().get(prefix) {
                cache.set_progress(p, progress);
            }
        }
        if relevant {
            self.bump();
        }
    }

    /// Awaits `keys` (replacing the previous set) and reads them: those
    /// etcd does not hold are recorded as absent.
    async fn await_keys(&mut self, keys: BTreeSet<String>) {
        let mut confirmed = false;
        self.awaited = keys.clone();
        for key in keys {
            match self.etcd.get(key.as_str(), None).await {
                Ok(resp) if resp.kvs().is_empty() => {
                    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                    debug!(%key, revision = rev, "awaited key is not in etcd");
                    self.cache.write().await.confirm_absent(&key, rev);
                    self.awaited.remove(&key);
                    confirmed = true;
                }
                // There: its event is on the way and wakes the loop.
                Ok(_) => {}
                Err(e) => warn!(%key, error = %e, "could not read an awaited key"),
            }
        }
        if confirmed {
            self.bump();
        }
    }
}
