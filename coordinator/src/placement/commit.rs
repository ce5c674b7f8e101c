//! Group commit of placement transactions.
//!
//! Each placement is one etcd transaction (compares + puts + the probes read
//! when it fails). Under load, the placements queued while earlier
//! transactions are in flight are merged into ONE etcd transaction: the
//! union of their compares (the read-set revisions are deduplicated) and of
//! their puts. etcd evaluates every compare before applying any put, so the
//! merged transaction commits exactly when each member would have committed
//! on its own at that revision; the members are independent because
//! members that write or compare the same contended key (a node's usage, an
//! address, a MAC, a plugged port, a client-token index) are never merged,
//! and placements that join a server group (whose compare covers a prefix
//! every member writes to) always go alone. When a merged transaction fails
//! (a compare, or any error), every member is retried on its own, with its
//! probes, so callers see exactly what a lone transaction would have told
//! them. This divides etcd's per-transaction cost (raft entry, fsync share,
//! gRPC round trip) by the group size.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nubo_store::{Answer, Etcd, TxnBuilder};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{ApiError, ApiResult};

/// etcd's default `--max-txn-ops`: the most compares, and the most
/// operations, one transaction may carry.
pub const MAX_TXN_OPS: usize = 128;
/// Most placements merged into one transaction.
pub const MAX_GROUP: usize = 16;
/// Most (estimated) bytes merged into one transaction; etcd refuses
/// requests above `--max-request-bytes` (1.5 MiB by default).
pub const MAX_GROUP_BYTES: usize = 512 * 1024;
/// Merged transactions in flight at once.
const GROUPS_IN_FLIGHT: usize = 8;

/// One placement transaction.
#[derive(Debug, Clone, Default)]
pub struct Member {
    /// Its compares (shared ones are deduplicated when merged), writes and
    /// failure reads.
    pub txn: TxnBuilder,
    /// Keys this placement compares and writes that another concurrent
    /// placement might also touch; members sharing one are never merged.
    pub contended: Vec<String>,
    /// False for placements whose compares cover keys other members may
    /// write (server-group members): they always commit alone.
    pub mergeable: bool,
    /// Estimated size of the transaction's values in bytes.
    pub bytes: usize,
}

/// Counters of the committer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions sent (merged ones and lone ones).
    pub txns: AtomicU64,
    /// Placements committed through a merged transaction.
    pub merged: AtomicU64,
    /// Merged transactions that failed (members retried alone).
    pub merge_failures: AtomicU64,
}

type Job = (Member, oneshot::Sender<ApiResult<Answer>>);

/// The group committer: cheap to clone; the background task ends when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<Stats>,
}

impl Committer {
    /// Starts the committer's task (must run inside a tokio runtime).
    pub fn start(store: Etcd) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(store, rx, stats.clone()));
        Self { tx, stats }
    }

    /// Commits one placement (possibly merged with others). A failed
    /// answer carries the member's own failure reads.
    pub async fn commit(&self, m: Member) -> ApiResult<Answer> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((m, reply))
            .map_err(|_| ApiError::Unavailable("the coordinator is shutting down".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("the coordinator is shutting down".into()))?
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Takes members off `queue` (starting with `first`) while they fit in one
/// transaction; returns the group and the first member that did not fit.
pub fn take_group<T>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    member: impl Fn(&T) -> &Member,
) -> (Vec<T>, Option<T>) {
    let mut compares = member(&first).txn.compare_count();
    let mut ops = member(&first).txn.op_count();
    let mut bytes = member(&first).bytes;
    let mut keys: HashSet<String> = member(&first).contended.iter().cloned().collect();
    let mergeable = member(&first).mergeable;
    let mut group = vec![first];
    if !mergeable {
        return (group, None);
    }
    while group.len() < MAX_GROUP {
        let Some(j) = next() else { break };
        let m = member(&j);
        // Deps shared with the group cost nothing; count them anyway (an
        // upper bound keeps this simple and safe).
        let fits = m.mergeable
            && compares + m.txn.compare_count() <= MAX_TXN_OPS
            && ops + m.txn.op_count() <= MAX_TXN_OPS
            && bytes + m.bytes <= MAX_GROUP_BYTES
            && !m.contended.iter().any(|k| keys.contains(k));
        if !fits {
            return (group, Some(j));
        }
        compares += m.txn.compare_count();
        ops += m.txn.op_count();
        bytes += m.bytes;
        keys.extend(m.contended.iter().cloned());
        group.push(j);
    }
    (group, None)
}

async fn run(store: Etcd, mut rx: mpsc::UnboundedReceiver<Job>, stats: Arc<Stats>) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let mut held: Option<Job> = None;
    loop {
        // Wait for a free slot first: while every slot is busy, placements
        // queue up and the next group gets bigger.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let (group, rest) = take_group(first, || rx.try_recv().ok(), |j| &j.0);
        held = rest;
        let (store, stats) = (store.clone(), stats.clone());
        tokio::spawn(async move {
            commit_group(&store, group, &stats).await;
            drop(permit);
        });
    }
}

async fn commit_alone(store: &Etcd, m: &Member, stats: &Stats) -> ApiResult<Answer> {
    stats.txns.fetch_add(1, Ordering::Relaxed);
    Ok(store.commit(&m.txn).await?)
}

async fn commit_group(store: &Etcd, group: Vec<Job>, stats: &Stats) {
    if group.len() > 1 {
        stats.txns.fetch_add(1, Ordering::Relaxed);
        let members: Vec<&TxnBuilder> = group.iter().map(|j| &j.0.txn).collect();
        match store.txn(nubo_store::merged(&members)).await {
            Ok(resp) if resp.succeeded() => {
                let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                stats
                    .merged
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                for (_, reply) in group {
                    let _ = reply.send(Ok(Answer::applied(revision)));
                }
                return;
            }
            Ok(_) => {
                stats.merge_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.merge_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "merged placement transaction failed; retrying alone");
            }
        }
    }
    futures::future::join_all(group.into_iter().map(|(m, reply)| async move {
        let r = commit_alone(store, &m, stats).await;
        let _ = reply.send(r);
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(contended: &[&str], ops: usize, mergeable: bool) -> Member {
        let mut txn = TxnBuilder::new();
        txn.unchanged("/c", 1);
        txn.depends_on("/flavor", 3);
        for i in 0..ops {
            txn.put(&format!("/k{i}"), &"v");
        }
        Member {
            txn,
            contended: contended.iter().map(|s| s.to_string()).collect(),
            mergeable,
            bytes: 4096,
        }
    }

    fn group(ms: Vec<Member>) -> (Vec<Member>, Option<Member>) {
        let mut it = ms.into_iter();
        let first = it.next().unwrap();
        take_group(first, || it.next(), |m| m)
    }

    #[test]
    fn independent_placements_are_merged() {
        let (g, rest) = group(vec![
            member(&["/u/a"], 7, true),
            member(&["/u/b"], 7, true),
            member(&["/u/c"], 7, true),
        ]);
        assert_eq!(g.len(), 3);
        assert!(rest.is_none());
    }

    #[test]
    fn placements_on_one_node_are_never_merged() {
        let (g, rest) = group(vec![
            member(&["/u/a", "/ip/1"], 7, true),
            member(&["/u/b", "/ip/2"], 7, true),
            member(&["/u/c", "/ip/1"], 7, true),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(rest.unwrap().contended[0], "/u/c");
    }

    #[test]
    fn group_members_and_full_transactions_go_alone() {
        let (g, rest) = group(vec![
            member(&["/u/a"], 7, false),
            member(&["/u/b"], 7, true),
        ]);
        assert_eq!(g.len(), 1);
        assert!(rest.is_none(), "the second is left in the queue");
        let (g, rest) = group(vec![
            member(&["/u/a"], 7, true),
            member(&["/u/b"], 7, false),
        ]);
        assert_eq!(g.len(), 1);
        assert!(rest.is_some());
        let (g, rest) = group(vec![
            member(&["/u/a"], 100, true),
            member(&["/u/b"], 29, true),
        ]);
        assert_eq!(g.len(), 1, "129 operations do not fit in one transaction");
        assert!(rest.is_some());
        let mut big = member(&["/u/b"], 7, true);
        big.bytes = MAX_GROUP_BYTES;
        let (g, rest) = group(vec![member(&["/u/a"], 7, true), big]);
        assert_eq!(g.len(), 1, "user data too large to merge");
        assert!(rest.is_some());
    }

    #[test]
    fn groups_are_bounded() {
        let ms: Vec<Member> = (0..40)
            .map(|i| member(&[format!("/u/{i}").as_str()], 1, true))
            .collect();
        let mut it = ms.into_iter();
        let first = it.next().unwrap();
        let (g, rest) = take_group(first, || it.next(), |m| m);
        assert_eq!(g.len(), MAX_GROUP);
        assert!(rest.is_none());
        assert_eq!(it.count(), 40 - MAX_GROUP, "the rest stays queued");
    }
}
