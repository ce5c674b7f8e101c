//! [`Etcd`]: the handle both daemons hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use etcd_client::{
    Client, ConnectOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse, PutOptions,
    PutResponse, StatusResponse, Txn, TxnResponse,
};
use tower::util::BoxCloneSyncService;

use crate::config::EtcdConfig;
use crate::error::StoreError;
use crate::observe::SharedObserver;
use crate::pool::{FailoverChannel, MemberHealth, Pool};
use crate::retry::{retry, RetryPolicy};
use crate::watch::{Watch, WatchSpec};

/// A connection to an etcd cluster with failover and retries (crate docs).
/// Cheap to clone; every clone shares the members' connections.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    pool: Arc<Pool>,
    policy: RetryPolicy,
    observer: Option<SharedObserver>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("members", &self.pool.health())
            .finish()
    }
}

impl Etcd {
    /// Opens a lazy connection to every member (nothing is sent: an etcd
    /// that is down surfaces on the first request, which is retried) and
    /// starts probing them. Fails only on a bad configuration.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        let pool = Pool::start(cfg).await?;
        let channel = etcd_client::Channel::Custom(BoxCloneSyncService::new(FailoverChannel {
            pool: pool.clone(),
        }));
        // `require_leader`: a member cut off from the quorum refuses at once
        // ("no leader", and the pool moves on) instead of hanging.
        let client = Client::from_channel(
            channel,
            Some(ConnectOptions::new().with_require_leader(true)),
        )
        .await?;
        Ok(Self {
            client,
            pool,
            policy: cfg.retry,
            observer: None,
        })
    }

    /// The etcd client over the failover channel: requests made with it
    /// directly (watch streams, keep-alive streams) go to a live member
    /// but are not retried.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The same connection with another retry policy.
    pub fn with_policy(&self, policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..self.clone()
        }
    }

    /// The same connection reporting to `observer` (request durations,
    /// refused transactions: [`crate::observe`]); clones made from the
    /// returned handle report too.
    pub fn with_observer(&self, observer: SharedObserver) -> Self {
        Self {
            observer: Some(observer),
            ..self.clone()
        }
    }

    /// Reports one finished request to the observer, if any.
    fn observed<T>(&self, op: &'static str, started: Instant, r: &Result<T, StoreError>) {
        if let Some(o) = &self.observer {
            o.request(op, started.elapsed(), r.is_ok());
        }
    }

    /// What the pool knows about each member.
    pub fn members(&self) -> Vec<MemberHealth> {
        self.pool.health()
    }

    /// Runs `op` with retries: only for operations that may run twice
    /// (reads, puts of fixed values, deletes, lease calls).
    pub async fn retry<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let r = retry(&self.policy, what, || op(self.client.clone())).await;
        self.observed(what, started, &r);
        r
    }

    /// Range read (linearizable unless the options say serializable).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        let key = key.into();
        self.retry("get", |c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.kv_client().get(k, o).await }
        })
        .await
    }

    /// Puts a value (idempotent: re-sent after a lost answer).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: Option<PutOptions>,
    ) -> Result<PutResponse, StoreError> {
        let (key, value) = (key.into(), value.into());
        self.retry("put", |c| {
            let (k, v, o) = (key.clone(), value.clone(), opts.clone());
            async move { c.kv_client().put(k, v, o).await }
        })
        .await
    }

    /// Deletes a key or range (re-sent after a lost answer: the count of a
    /// re-sent delete may be 0).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, StoreError> {
        let key = key.into();
        self.retry("delete", |c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.kv_client().delete(k, o).await }
        })
        .await
    }

    /// A transaction, resolved when its answer is lost ([`crate::txn`]).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let started = Instant::now();
        let r = crate::txn::txn(&self.client, &self.policy, txn).await;
        self.observed("txn", started, &r);
        if let (Some(o), Ok(resp)) = (&self.observer, &r) {
            if !resp.succeeded() {
                o.txn_conflict();
            }
        }
        r
    }

    /// `Maintenance.Status` of the member requests go to.
    pub async fn status(&self) -> Result<StatusResponse, StoreError> {
        self.retry("status", |c| async move {
            c.maintenance_client().status().await
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.retry("lease grant", |c| async move {
            c.lease_client().grant(ttl, None).await.map(|r| r.id())
        })
        .await
    }

    /// One keep-alive of lease `id` on a fresh stream (so it goes to a live
    /// member). `Ok(false)` when the lease is gone (expired or revoked).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<bool, StoreError> {
        self.retry("lease keep-alive", |c| async move {
            match c.lease_client().keep_alive(id).await {
                // The client checks the first answer and calls a TTL ≤ 0
                // "lease not found".
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Revokes lease `id` (its keys are deleted).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        self.retry("lease revoke", |c| async move {
            match c.lease_client().revoke(id).await {
                Ok(_) => Ok(()),
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("lease not found") =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// A resumable watch of every key under `prefix` after revision `rev`
    /// (typically the revision a listing was read at).
    pub fn watch_prefix_after(&self, prefix: impl Into<Vec<u8>>, rev: i64) -> Watch {
        self.watch(
            prefix,
            WatchSpec {
                prefix: true,
                prev_kv: false,
            },
            rev + 1,
        )
    }

    /// A resumable watch of `key` from `start_revision` ([`crate::watch`]).
    pub fn watch(&self, key: impl Into<Vec<u8>>, spec: WatchSpec, start_revision: i64) -> Watch {
        Watch::new(self.client.clone(), &self.policy, key, spec, start_revision)
    }
}
