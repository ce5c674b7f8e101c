//! List, then watch: the one loop that keeps a local copy of some prefixes
//! of etcd in step, for every daemon.
//!
//! [`ListWatch::next`] first lists every prefix at ONE revision (a page of
//! [`ListWatch::with_page`] keys a request, each request retried by the
//! etcd layer) and hands the caller an [`Update::Listed`] snapshot to
//! replace its copy with. Then it watches each prefix from the listing's
//! revision + 1 with a resumable [`crate::Watch`] (moved to a live member after
//! any interruption, nothing missed) and hands over every watch response as
//! an [`Update::Events`]. When a watch cannot go on (its revision was
//! compacted, or etcd cancelled it), or the caller asks with
//! [`ListWatch::relist`], the next call lists again.
//!
//! Each prefix is its own watch, so the events of one prefix arrive in
//! revision order, but a transaction that writes under two prefixes
//! reaches the caller as two updates, in either order. Each update carries
//! how far its prefix is known ([`Update::Events::progress`]): every event
//! of that prefix up to that revision has been delivered. A caller that
//! needs the two halves of a transaction together compares that progress
//! with the revision of what it holds (see the agent's `state::cache`).
//!
//! ```no_run
//! # async fn demo(etcd: nubo_store::Etcd) -> Result<(), nubo_store::StoreError> {
//! use nubo_store::{ListWatch, Update};
//! let mut lw = ListWatch::new(etcd, vec!["/app/a/".into(), "/app/b/".into()]);
//! loop {
//!     match lw.next().await? {
//!         Update::Listed { revision, kvs, .. } => println!("{} keys at {revision}", kvs.len()),
//!         Update::Events { prefix, events, .. } => println!("{} events under #{prefix}", events.len()),
//!     }
//! }
//! # }
//! ```

use std::time::Instant;

use etcd_client::{Event, EventType, GetOptions, KeyValue};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::error::StoreError;
use crate::watch::{WatchEnd, WatchSpec};
use crate::Etcd;

/// Keys read per range request while listing.
pub const LIST_PAGE: i64 = 2000;

/// How long [`ListWatch::follow`] waits after a failed listing.
pub const RELIST_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// What [`ListWatch::next`] hands over.
#[derive(Debug)]
pub enum Update {
    /// Every key-value under the prefixes, read at one revision: replace
    /// the local copy with it.
    Listed {
        /// The revision of the read.
        revision: i64,
        /// The key-values, prefix after prefix, each in key order.
        kvs: Vec<KeyValue>,
        /// When the listing started (monotonic): a decision that must rest
        /// on a list made after some moment compares with this.
        started: Instant,
    },
    /// The events of one watch response, in revision order.
    Events {
        /// The prefix they fall under (its index in the prefixes given).
        prefix: usize,
        /// The events (puts and deletes, with the previous key-value when
        /// asked for).
        events: Vec<Event>,
        /// Every event of this prefix up to this revision has now been
        /// delivered (the revision of the last event).
        progress: i64,
    },
}

/// The watches of one listing.
struct Watching {
    rx: mpsc::Receiver<(usize, Result<Vec<Event>, WatchEnd>)>,
    /// The watch tasks (aborted when dropped).
    _tasks: JoinSet<()>,
}

/// List-then-watch over a set of prefixes (module docs).
pub struct ListWatch {
    etcd: Etcd,
    prefixes: Vec<String>,
    page: i64,
    prev_kv: bool,
    /// `None`: a listing is due.
    watching: Option<Watching>,
}

impl std::fmt::Debug for ListWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListWatch")
            .field("prefixes", &self.prefixes)
            .field("watching", &self.watching.is_some())
            .finish()
    }
}

impl ListWatch {
    /// A loop over `prefixes` (keys under none of them are never read).
    /// Nothing is read before the first [`ListWatch::next`].
    pub fn new(etcd: Etcd, prefixes: Vec<String>) -> Self {
        Self {
            etcd,
            prefixes,
            page: LIST_PAGE,
            prev_kv: false,
            watching: None,
        }
    }

    /// Lists `page` keys per request instead of [`LIST_PAGE`].
    pub fn with_page(mut self, page: i64) -> Self {
        self.page = page.max(1);
        self
    }

    /// Delivers the previous key-value with every event.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The prefixes, in the order [`Update::Events::prefix`] indexes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Drops the watches: the next call lists again.
    pub fn relist(&mut self) {
        self.watching = None;
    }

    /// The next update: a listing when one is due (the first call, after a
    /// watch ended, after [`ListWatch::relist`]), else the next watch
    /// response of any prefix. Fails only when listing fails (the etcd
    /// layer already retried; the caller waits and calls again, which
    /// lists again). Cancel-safe: a call dropped half-way loses nothing
    /// (a listing in progress is started over).
    pub async fn next(&mut self) -> Result<Update, StoreError> {
        loop {
            let Some(w) = self.watching.as_mut() else {
                return self.list().await;
            };
            match w.rx.recv().await {
                Some((prefix, Ok(events))) => {
                    let progress = events
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| kv.mod_revision())
                        .max()
                        .unwrap_or_default();
                    return Ok(Update::Events {
                        prefix,
                        events,
                        progress,
                    });
                }
                Some((prefix, Err(end))) => {
                    let p = self.prefixes.get(prefix).map_or("", String::as_str);
                    match &end {
                        WatchEnd::Compacted {
                            from,
                            compact_revision,
                        } => tracing::warn!(
                            prefix = p,
                            from,
                            compact_revision,
                            "watch revision compacted; listing again"
                        ),
                        WatchEnd::Canceled(reason) => {
                            tracing::warn!(prefix = p, %reason, "watch cancelled by etcd; listing again")
                        }
                    }
                    self.watching = None;
                }
                // Every task ended without a word (cannot happen: each
                // sends its end): list again.
                None => self.watching = None,
            }
        }
    }

    /// Drives the loop until `shutdown` turns true, for a caller that
    /// keeps one copy and needs no more than this: every listing goes to
    /// `listed` (its revision and key-values, to replace the copy with),
    /// every event to `event` (the key-value, and whether it was a
    /// delete). A listing that fails is logged under `what` and tried again
    /// after [`RELIST_PAUSE`].
    pub async fn follow(
        mut self,
        what: &str,
        mut shutdown: watch::Receiver<bool>,
        mut listed: impl FnMut(i64, &[KeyValue]),
        mut event: impl FnMut(&KeyValue, bool),
    ) {
        loop {
            let update = tokio::select! {
                u = self.next() => u,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match update {
                Ok(Update::Listed { revision, kvs, .. }) => listed(revision, &kvs),
                Ok(Update::Events { events, .. }) => {
                    for e in &events {
                        if let Some(kv) = e.kv() {
                            event(kv, e.event_type() == EventType::Delete);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(what, %error, "listing failed; listing again");
                    tokio::select! {
                        _ = tokio::time::sleep(RELIST_PAUSE) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// Lists every prefix at one revision, then starts the watches.
    async fn list(&mut self) -> Result<Update, StoreError> {
        let started = Instant::now();
        let mut revision = 0;
        let mut kvs = Vec::new();
        for prefix in &self.prefixes {
            list_prefix_at(&self.etcd, prefix, self.page, &mut revision, |kv| {
                kvs.push(kv.clone())
            })
            .await?;
        }
        let (tx, rx) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        let spec = WatchSpec {
            prefix: true,
            prev_kv: self.prev_kv,
        };
        for (i, prefix) in self.prefixes.iter().enumerate() {
            let mut watch = self.etcd.watch(prefix.clone(), spec, revision + 1);
            let tx = tx.clone();
            tasks.spawn(async move {
                loop {
                    let msg = match watch.next().await {
                        Ok(resp) => (i, Ok(resp.events().to_vec())),
                        Err(end) => {
                            let _ = tx.send((i, Err(end))).await;
                            return;
                        }
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.watching = Some(Watching { rx, _tasks: tasks });
        tracing::debug!(revision, keys = kvs.len(), prefixes = ?self.prefixes, "listed; watching");
        Ok(Update::Listed {
            revision,
            kvs,
            started,
        })
    }
}

/// Reads every key under `prefix`, `page` a request, all at one revision:
/// `*rev`, or (if 0) the revision of the first read, which `*rev` is then
/// set to. Passes each key-value to `each`, in key order. Each read is
/// retried by the etcd layer.
pub async fn list_prefix_at(
    etcd: &Etcd,
    prefix: &str,
    page: i64,
    rev: &mut i64,
    mut each: impl FnMut(&KeyValue),
) -> Result<(), StoreError> {
    let end = nubo_common::keys::prefix_end(prefix);
    let mut start = prefix.as_bytes().to_vec();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if *rev > 0 {
            opts = opts.with_revision(*rev);
        }
        let resp = etcd.get(start.clone(), Some(opts)).await?;
        if *rev == 0 {
            *rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            each(kv);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}
