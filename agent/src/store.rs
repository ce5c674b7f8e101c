//! A thin wrapper around the etcd client: every unary call is bounded by a
//! timeout (the balanced channel would otherwise wait forever for an
//! unreachable etcd), and errors are typed.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

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
    /// The TLS material of `[etcd_tls]` could not be read.
    #[error("etcd TLS: cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
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
/// client certificate (etcd's `--client-cert-auth`).
pub async fn connect_tls(
    endpoints: &[String],
    tls: Option<&crate::config::EtcdTls>,
) -> Result<Client, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(t) = tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| StoreError::TlsFile {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut o = etcd_client::TlsOptions::new();
        if let Some(ca) = &t.ca {
            o = o.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(c), Some(k)) = (&t.cert, &t.key) {
            o = o.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
        }
        opts = opts.with_tls(o);
    }
    Ok(Client::connect(endpoints, Some(opts)).await?)
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
    let mut kv = client.kv_client();
    let resp = bounded(kv.put(key, value, opts)).await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}

/// Reads one key: its value and mod revision.
pub async fn get(client: &Client, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
    let mut kv = client.kv_client();
    let resp = bounded(kv.get(key, None)).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
}

/// Deletes `key` only if it was last modified at `mod_revision`. Returns the
/// revision after the transaction and whether it deleted.
pub async fn delete_if_unchanged(
    client: &Client,
    key: &str,
    mod_revision: i64,
) -> Result<(i64, bool), StoreError> {
    let mut kv = client.kv_client();
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
        .and_then([TxnOp::delete(key, None)]);
    let resp = bounded(kv.txn(txn)).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((rev, resp.succeeded()))
}

/// Lists every key under `prefix`: (key, value, mod revision) and the store
/// revision of the read.
pub async fn list_prefix(
    client: &Client,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>, i64)>, i64), StoreError> {
    let mut kv = client.kv_client();
    let resp = bounded(kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
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

/// Exponential backoff between retries: 100 ms doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms, capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }
    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        assert_eq!(b.next_delay(), Duration::from_millis(350));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
