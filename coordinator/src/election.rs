//! Registration (`keys::coordinator(id)`) and leader election
//! (`keys::election()`), both bound to one etcd lease.
//!
//! The leader is the coordinator whose create-if-absent put of the election
//! key (on its lease) succeeded. Followers do not poll: they WATCH the
//! election key and campaign again the moment it is deleted, which happens
//! when the leader's lease expires (kill -9, partition: ≈ one lease TTL) or
//! when the leader resigns (clean shutdown revokes the lease: immediate).
//!
//! Leader-only writes (node health, automatic evacuation) additionally
//! compare `lease(election key) == our lease` inside their transaction (see
//! [`leader_guard`]), so a deposed leader that has not noticed yet can never
//! write.
//!
//! Losing the etcd member the coordinator talks to loses neither the lease
//! nor the leadership: every keep-alive goes out on a fresh stream (routed
//! to a live member by `nubo-store`) and is retried until the lease's TTL
//! has passed since the last acknowledged renewal; the election watch
//! resumes on a live member from the last revision seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse};
use nubo_common::keys;
use nubo_common::model::{self, LeaderRecord};
use nubo_store::{Etcd, RetryPolicy, StoreError, WatchSpec};
use tokio::sync::watch;

/// What this coordinator knows about the election.
#[derive(Debug, Default)]
pub struct LeaderState {
    inner: RwLock<Inner>,
    /// Times this coordinator became or stopped being the leader.
    transitions: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    is_leader: bool,
    leader_id: String,
    registered: bool,
    lease: i64,
}

impl LeaderState {
    /// True while this coordinator holds the election key on a live lease.
    pub fn is_leader(&self) -> bool {
        self.snapshot().is_leader
    }

    /// The lease holding the election key while this coordinator leads.
    pub fn leader_lease(&self) -> Option<i64> {
        let s = self.snapshot();
        s.is_leader.then_some(s.lease)
    }

    /// The id of the current leader, if known.
    pub fn leader_id(&self) -> String {
        self.snapshot().leader_id
    }

    /// True while registered under `keys::coordinator(id)`.
    pub fn is_registered(&self) -> bool {
        self.snapshot().registered
    }

    fn snapshot(&self) -> Inner {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times this coordinator became or stopped being the
    /// leader since it started.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    fn set(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let was = inner.is_leader;
        f(&mut inner);
        if inner.is_leader != was {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The transaction compare that makes a write conditional on `lease` still
/// holding the election key (i.e. on this coordinator still leading).
pub fn leader_guard(lease: i64) -> Compare {
    Compare::lease(keys::election(), CompareOp::Equal, lease)
}

/// Runs registration + election until `shutdown`; on shutdown revokes the
/// lease (resigning) so a peer takes over at once.
pub async fn run(
    etcd: Etcd,
    id: String,
    ttl: i64,
    state: Arc<LeaderState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut lease_id = 0;
        let r = tokio::select! {
            r = session(&etcd, &id, ttl, &state, &mut lease_id) => r,
            _ = shutdown.wait_for(|s| *s) => Ok(()),
        };
        state.set(|s| {
            s.is_leader = false;
            s.registered = false;
            s.lease = 0;
        });
        if lease_id != 0 {
            let _ = tokio::time::timeout(Duration::from_secs(2), etcd.lease_revoke(lease_id)).await;
        }
        if *shutdown.borrow() {
            tracing::info!(coordinator = %id, "resigned (lease revoked)");
            return;
        }
        if let Err(e) = r {
            tracing::warn!(coordinator = %id, error = %e, "election session lost; starting a new one");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn lost(msg: String) -> StoreError {
    StoreError::Etcd(etcd_client::Error::LeaseKeepAliveError(msg))
}

/// One lease: keeps it alive (every TTL/3; a renewal that fails is retried
/// on live members until the TTL has passed since the last one that
/// worked) while campaigning; returns when the lease is lost.
async fn session(
    etcd: &Etcd,
    id: &str,
    ttl: i64,
    state: &LeaderState,
    lease_out: &mut i64,
) -> Result<(), StoreError> {
    let lease = etcd.lease_grant(ttl).await?;
    *lease_out = lease;
    state.set(|s| s.lease = lease);
    etcd.put(
        keys::coordinator(id),
        serde_json::to_vec(
            &serde_json::json!({ "id": id, "lease": lease, "pid": std::process::id() }),
        )
        .unwrap_or_default(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    state.set(|s| s.registered = true);
    let ttl_d = Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1));
    let period = (ttl_d / 3).max(Duration::from_millis(200));
    let keep = async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            let left = ttl_d.saturating_sub(renewed.elapsed());
            if left.is_zero() {
                return Err(lost(format!("lease {lease:x}: not renewed for {ttl_d:?}")));
            }
            let policy = RetryPolicy {
                deadline: left,
                attempt_timeout: period.max(Duration::from_millis(300)).min(left),
                ..*etcd.policy()
            };
            let sent = Instant::now();
            match etcd.with_policy(policy).lease_keep_alive_once(lease).await {
                Ok(true) => renewed = sent,
                Ok(false) => return Err(lost(format!("lease {lease:x} expired"))),
                Err(e) => {
                    return Err(lost(format!(
                        "lease {lease:x}: no renewal for {:?}: {e}",
                        renewed.elapsed()
                    )))
                }
            }
        }
    };
    tokio::select! {
        r = keep => r,
        r = campaign(etcd, id, lease, state) => r,
    }
}

/// Campaigns, then watches the election key; campaigns again as soon as it
/// is deleted. Never returns `Ok`.
async fn campaign(
    etcd: &Etcd,
    id: &str,
    lease: i64,
    state: &LeaderState,
) -> Result<(), StoreError> {
    let key = keys::election();
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                model::encode(&LeaderRecord {
                    id: id.to_string(),
                    lease,
                    since: model::now(),
                }),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = etcd.txn(txn).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (leader, holder) = if resp.succeeded() {
            (true, id.to_string())
        } else {
            match resp.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                    Some(kv) => (kv.lease() == lease, holder_id(kv.value())),
                    // Deleted between the compare and the get: try again.
                    None => continue,
                },
                _ => (false, String::new()),
            }
        };
        publish(state, id, leader, holder);
        let mut events = etcd.watch(key.as_str(), WatchSpec::default(), rev + 1);
        'watching: loop {
            let msg = match events.next().await {
                Ok(m) => m,
                // Compacted or cancelled: read the key again.
                Err(_) => break 'watching,
            };
            for ev in msg.events() {
                match (ev.event_type(), ev.kv()) {
                    (EventType::Delete, _) => {
                        tracing::debug!(coordinator = %id, "election key deleted; campaigning");
                        break 'watching;
                    }
                    (EventType::Put, Some(kv)) => {
                        let holder = holder_id(kv.value());
                        publish(state, id, kv.lease() == lease, holder);
                    }
                    _ => {}
                }
            }
        }
        publish(state, id, false, String::new());
    }
}

/// The leader id held by the election key: its JSON [`LeaderRecord`], or
/// the raw value as written by coordinators older than the JSON record.
pub fn holder_id(value: &[u8]) -> String {
    match serde_json::from_slice::<LeaderRecord>(value) {
        Ok(r) => r.id,
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

fn publish(state: &LeaderState, id: &str, leader: bool, holder: String) {
    let was = state.is_leader();
    state.set(|s| {
        s.is_leader = leader;
        s.leader_id = holder.clone();
    });
    if leader != was {
        tracing::info!(coordinator = %id, leader, leader_id = %holder, "leadership changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_election_value_is_json_naming_the_leader() {
        let v = model::encode(&LeaderRecord {
            id: "coord-1".into(),
            lease: 0x1234,
            since: model::now(),
        });
        let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(json["id"], "coord-1");
        assert_eq!(json["lease"], 0x1234);
        assert_eq!(holder_id(&v), "coord-1");
        // A value written by an older coordinator (plain id) still reads.
        assert_eq!(holder_id(b"coord-0"), "coord-0");
    }
}
