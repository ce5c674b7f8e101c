//! The agent's side of the etcd layer (`nubo-store`, shared with the
//! coordinator): its connection ([`connect_etcd`]) and retry [`policy`]
//! (every unary call bounded by a timeout and retried on another member
//! within the policy's deadline), and [`bounded`] for the liveness lease's
//! keep-alive stream, whose single attempts the agent times itself.

use std::time::Duration;

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

/// Connects to `endpoints` through the etcd layer, over TLS when `tls` is
/// set (trust its CA, present its client certificate: etcd's
/// `--client-cert-auth`), with the agent's retry [`policy`]. Requests go to
/// one member chosen at random (spreading agents over the members) while
/// it works, to another as soon as it fails. No request is made here: an
/// unreachable etcd surfaces on the first call, which callers retry.
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

/// Exponential backoff with jitter between retries (`nubo_store`'s):
/// [`first_backoff`] doubling up to a maximum.
pub use nubo_store::Backoff;

/// First pause of the agent's retry loops.
pub fn first_backoff() -> Duration {
    Duration::from_millis(100)
}
