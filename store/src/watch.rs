//! A watch that survives the loss of its member.
//!
//! etcd's watch stream lives on one member's connection; when that member
//! dies (or loses its leader: the pool asks for `require_leader`, so etcd
//! cancels the stream) the stream ends with an error. [`Watch::next`]
//! opens a new one — the pool routes it to a live member — from the last
//! revision delivered + 1, so the caller sees every event exactly once and
//! in order. It only ends when resuming is impossible: the revision was
//! compacted (the caller lists again) or etcd cancelled the watch for a
//! reason other than availability.

use std::time::Duration;

use etcd_client::{Client, WatchOptions, WatchResponse, WatchStream};

use crate::retry::{Backoff, RetryPolicy};

/// What to watch besides the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// Every key under the key (a prefix).
    pub prefix: bool,
    /// Deliver the previous key-value with each event.
    pub prev_kv: bool,
}

/// Why a watch cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    /// The revision to resume from is compacted: list again.
    #[error("watch from revision {from} is compacted (oldest kept: {compact_revision})")]
    Compacted {
        /// The revision asked for.
        from: i64,
        /// etcd's compaction revision.
        compact_revision: i64,
    },
    /// etcd cancelled the watch (permission, bad request …).
    #[error("watch cancelled by etcd: {0}")]
    Canceled(String),
}

/// A resumable watch (module docs).
pub struct Watch {
    client: Client,
    key: Vec<u8>,
    spec: WatchSpec,
    next: i64,
    stream: Option<WatchStream>,
    backoff: Backoff,
    open_timeout: Duration,
    /// Consecutive failures (logged at warn the first time).
    failures: u32,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("next", &self.next)
            .finish()
    }
}

impl Watch {
    /// A watch of `key` from `start_revision` (0 = from the moment the
    /// watch is first established). Nothing is opened before the first
    /// [`Watch::next`].
    pub fn new(
        client: Client,
        policy: &RetryPolicy,
        key: impl Into<Vec<u8>>,
        spec: WatchSpec,
        start_revision: i64,
    ) -> Self {
        Self {
            client,
            key: key.into(),
            spec,
            next: start_revision,
            stream: None,
            backoff: Backoff::new(policy.first_backoff, policy.max_backoff),
            open_timeout: policy.attempt_timeout,
            failures: 0,
        }
    }

    /// The revision the watch resumes from (last delivered + 1).
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    fn options(&self) -> WatchOptions {
        let mut o = WatchOptions::new();
        if self.spec.prefix {
            o = o.with_prefix();
        }
        if self.spec.prev_kv {
            o = o.with_prev_key();
        }
        if self.next > 0 {
            o = o.with_start_revision(self.next);
        }
        o
    }

    fn broke(&mut self, why: &str) -> Duration {
        self.stream = None;
        self.failures += 1;
        let d = self.backoff.next_delay();
        let key = String::from_utf8_lossy(&self.key);
        if self.failures == 1 {
            tracing::warn!(%key, from = self.next, error = why, retry_in = ?d, "etcd watch interrupted; resuming on a live member");
        } else {
            tracing::debug!(%key, from = self.next, error = why, retry_in = ?d, "etcd watch still interrupted");
        }
        d
    }

    /// Passes every event to `apply` (the key-value, and whether it is a
    /// deletion) until the watch cannot go on; returns why (the caller then
    /// lists again).
    pub async fn follow(mut self, mut apply: impl FnMut(&etcd_client::KeyValue, bool)) -> WatchEnd {
        loop {
            match self.next().await {
                Ok(resp) => {
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            apply(kv, ev.event_type() == etcd_client::EventType::Delete);
                        }
                    }
                }
                Err(end) => return end,
            }
        }
    }

    /// The next response carrying events (never an empty one), resuming
    /// the watch on a live member after any interruption.
    pub async fn next(&mut self) -> Result<WatchResponse, WatchEnd> {
        loop {
            if self.stream.is_none() {
                let mut wc = self.client.watch_client();
                let opened = tokio::time::timeout(
                    self.open_timeout,
                    wc.watch(self.key.clone(), Some(self.options())),
                )
                .await;
                match opened {
                    Ok(Ok(s)) => self.stream = Some(s),
                    Ok(Err(e)) => {
                        let d = self.broke(&e.to_string());
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    Err(_) => {
                        let d = self.broke("opening the watch timed out");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let d = self.broke("watch stream closed");
                    tokio::time::sleep(d).await;
                    continue;
                }
                Err(e) => {
                    if crate::classify(&e) == crate::Class::Compacted {
                        return Err(WatchEnd::Compacted {
                            from: self.next,
                            compact_revision: 0,
                        });
                    }
                    let d = self.broke(&e.to_string());
                    tokio::time::sleep(d).await;
                    continue;
                }
            };
            if msg.compact_revision() > 0 {
                self.stream = None;
                return Err(WatchEnd::Compacted {
                    from: self.next,
                    compact_revision: msg.compact_revision(),
                });
            }
            if msg.canceled() {
                let reason = msg.cancel_reason().to_string();
                if reason.contains("no leader") || reason.is_empty() {
                    let d = self.broke(&format!("watch cancelled: {reason}"));
                    tokio::time::sleep(d).await;
                    continue;
                }
                self.stream = None;
                return Err(WatchEnd::Canceled(reason));
            }
            if msg.created() {
                if self.next == 0 {
                    // "From now on": pin "now", so that a resumption before
                    // the first event misses nothing.
                    if let Some(h) = msg.header() {
                        self.next = h.revision() + 1;
                    }
                }
                if self.failures > 0 {
                    tracing::info!(key = %String::from_utf8_lossy(&self.key), from = self.next, "etcd watch resumed");
                }
                self.failures = 0;
                self.backoff.reset();
            }
            if msg.events().is_empty() {
                continue;
            }
            if let Some(last) = msg
                .events()
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| kv.mod_revision())
                .max()
            {
                self.next = self.next.max(last + 1);
            }
            return Ok(msg);
        }
    }
}
