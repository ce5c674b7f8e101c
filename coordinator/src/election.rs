//! Registration (`keys::coordinator(id)`) and leader election
//! (`keys::election()`), both bound to one etcd lease: the leader is the
//! coordinator whose create-if-absent put of the election key succeeded;
//! when its lease expires (crash, partition) the key vanishes and a peer
//! takes over within a lease TTL.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use nubo_common::keys;
use tokio::sync::watch;

/// What this coordinator knows about the election.
#[derive(Debug, Default)]
pub struct LeaderState {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    is_leader: bool,
    leader_id: String,
    registered: bool,
}

impl LeaderState {
    /// True while this coordinator holds the election key on a live lease.
    pub fn is_leader(&self) -> bool {
        self.snapshot().is_leader
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

    fn set(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.write().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Runs registration + election until `shutdown`; on shutdown revokes the
/// lease so a peer takes over at once.
pub async fn run(
    client: Client,
    id: String,
    ttl: i64,
    state: Arc<LeaderState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut lease_id = 0;
        let r = tokio::select! {
            r = session(&client, &id, ttl, &state, &mut lease_id) => r,
            _ = shutdown.wait_for(|s| *s) => Ok(()),
        };
        state.set(|s| {
            s.is_leader = false;
            s.registered = false;
        });
        if lease_id != 0 {
            let _ = client.lease_client().revoke(lease_id).await;
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = r {
            tracing::warn!(coordinator = %id, error = %e, "election session lost; starting a new one");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn session(
    client: &Client,
    id: &str,
    ttl: i64,
    state: &LeaderState,
    lease_out: &mut i64,
) -> Result<(), etcd_client::Error> {
    let mut leases = client.lease_client();
    let lease = leases.grant(ttl, None).await?.id();
    *lease_out = lease;
    let mut kv = client.kv_client();
    kv.put(
        keys::coordinator(id),
        serde_json::to_vec(
            &serde_json::json!({ "id": id, "lease": lease, "pid": std::process::id() }),
        )
        .unwrap_or_default(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    state.set(|s| s.registered = true);
    let (mut keeper, mut stream) = leases.keep_alive(lease).await?;
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let key = keys::election();
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                id,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = kv.txn(txn).await?;
        let (leader, holder) = if resp.succeeded() {
            (true, id.to_string())
        } else {
            match resp.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                    Some(kv) => {
                        let holder = String::from_utf8_lossy(kv.value()).into_owned();
                        (kv.lease() == lease && holder == id, holder)
                    }
                    None => (false, String::new()),
                },
                _ => (false, String::new()),
            }
        };
        let was = state.is_leader();
        state.set(|s| {
            s.is_leader = leader;
            s.leader_id = holder;
        });
        if leader != was {
            tracing::info!(coordinator = %id, leader, "leadership changed");
        }
        tokio::time::sleep(period).await;
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(r) if r.ttl() > 0 => {}
            _ => {
                return Err(etcd_client::Error::LeaseKeepAliveError(format!(
                    "lease {lease:x} expired"
                )))
            }
        }
    }
}
