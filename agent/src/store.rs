//! A thin wrapper around the etcd layer (`nubo-store`): the client goes to
//! a live etcd member (failover when one dies), every unary call is bounded
//! by a timeout and retried on another member within [`policy`]'s deadline,
//! and errors are typed.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use nubo_store::RetryPolicy;

/// Bound of every unary etcd request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// An etcd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd answered with an error or the transport failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// No answer within the timeout.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// The etcd layer gave up (retries exhausted, NOSPACE, bad TLS files).
    #[error("{0}")]
    Store(#[from] nubo_store::StoreError),
}

/// Retries of the agent's unary etcd calls: each attempt bounded by
/// [`REQUEST_TIMEOUT`], retried (other member, backoff with jitter) for up
/// to 6 s. A longer etcd outage is left to the callers' own loops.
pub fn policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: REQUEST_TIMEOUT,
        deadline: Duration::from_secs(6),
        ..RetryPolicy::default()
    }
}

/// Runs `fut` with [`REQUEST_TIMEOUT`].
pub async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Timeout(REQUEST_TIMEOUT)),
    }
}

/// Connects lazily to `endpoints` (no request is made; an unreachable etcd
/// surfaces on the first call, which callers retry).
pub async fn connect(endpoints: &[String]) -> Result<Client, StoreError> {
    connect_tls(endpoints, None).await
}

/// [`connect`] over TLS when `tls` is set: trust its CA and present its
/// client certificate (etcd's `--client-cert-auth`). Requests go to one
/// member chosen at random (spreading agents over the members) while it
/// works, to another as soon as it fails.
pub async fn connect_tls(
    endpoints: &[String],
    tls: Option<&crate::config::EtcdTls>,
) -> Result<Client, StoreError> {
    Ok(connect_etcd(endpoints, tls).await?.client().clone())
}

/// [`connect_tls`], the etcd layer's handle itself (for its list-then-watch
/// loop and resumable watches).
pub async fn connect_etcd(
    endpoints: &[String],
    tls: Option<&crate::config::EtcdTls>,
) -> Result<nubo_store::Etcd, StoreError> {
    let cfg = nubo_store::EtcdConfig::new(endpoints.to_vec())
        .with_tls(tls.map(|t| nubo_store::TlsFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }))
        .with_retry(policy());
    Ok(nubo_store::Etcd::connect(&cfg).await?)
}

/// Puts `value` at `key`; returns the revision of the write.
pub async fn put(client: &Client, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
    put_with(client, key, value, None).await
}

/// Puts `value` at `key` with optional options; returns the revision.
pub async fn put_with(
    client: &Client,
    key: &str,
    value: Vec<u8>,
    opts: Option<PutOptions>,
) -> Result<i64, StoreError> {
    let resp = nubo_store::retry::retry(&policy(), "put", || {
        let (mut kv, v, o) = (client.kv_client(), value.clone(), opts.clone());
        async move { kv.put(key, v, o).await }
    })
    .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}

/// Reads one key: its value and mod revision.
pub async fn get(client: &Client, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
    let resp = nubo_store::retry::retry(&policy(), "get", || {
        let mut kv = client.kv_client();
        async move { kv.get(key, None).await }
    })
    .await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
}

/// Runs a transaction through the etcd layer (retried; a guarded one whose
/// answer was lost is resolved by reading back what it wrote).
pub async fn txn(client: &Client, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
    Ok(nubo_store::txn::txn(client, &policy(), txn).await?)
}

/// Deletes `key` only if it was last modified at `mod_revision`. Returns the
/// revision after the transaction and whether it deleted.
pub async fn delete_if_unchanged(
    client: &Client,
    key: &str,
    mod_revision: i64,
) -> Result<(i64, bool), StoreError> {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
        .and_then([TxnOp::delete(key, None)]);
    let resp = txn(client, t).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((rev, resp.succeeded()))
}

/// Lists every key under `prefix`: (key, value, mod revision) and the store
/// revision of the read.
pub async fn list_prefix(
    client: &Client,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), StoreError> {
    let resp = nubo_store::retry::retry(&policy(), "list", || {
        let mut kv = client.kv_client();
        async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
                kv.mod_revision(),
            )
        })
        .collect();
    Ok((kvs, rev))
}

/// Exponential backoff with jitter between retries (`nubo_store`'s):
/// [`first_backoff`] doubling up to a maximum.
pub use nubo_store::Backoff;

/// First pause of the agent's retry loops.
pub fn first_backoff() -> Duration {
    Duration::from_millis(100)
}
