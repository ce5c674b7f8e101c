//! Thin helpers over the etcd layer (`nubo-store`: member failover,
//! retries, resolution of transactions whose answer was lost): typed reads,
//! transactions and key-ordered pagination.

use base64::Engine;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use nubo_common::keys;
use nubo_common::model::{self, DecodeError};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};
use crate::view::kv_key;

/// Default and maximum page sizes of list calls.
pub const DEFAULT_PAGE: usize = 100;
/// See [`DEFAULT_PAGE`].
pub const MAX_PAGE: usize = 1000;

/// The shared etcd connection (multiplexed; cheap to clone).
#[derive(Clone)]
pub struct Store {
    etcd: nubo_store::Etcd,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A value read from etcd with the revisions needed for compares.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// mod_revision of the key.
    pub mod_rev: i64,
}

impl Store {
    /// Wraps a connection.
    pub fn new(etcd: nubo_store::Etcd) -> Self {
        Self { etcd }
    }

    /// The etcd client (over the failover channel; calls made with it are
    /// not retried: prefer [`Store::etcd`]).
    pub fn client(&self) -> &Client {
        self.etcd.client()
    }

    /// The etcd layer (retrying operations, watches, leases).
    pub fn etcd(&self) -> &nubo_store::Etcd {
        &self.etcd
    }

    /// Reads one key.
    pub async fn get_kv(&self, key: &str) -> ApiResult<Option<KeyValue>> {
        let mut resp = self.etcd.get(key, None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Reads and decodes one key; an undecodable value is a
    /// FailedPrecondition naming the key, so a hand-written value never
    /// panics anything and is never silently overwritten.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<Versioned<T>>> {
        match self.get_kv(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: decode_kv(&kv).map_err(corrupt)?,
                mod_rev: kv.mod_revision(),
            })),
        }
    }

    /// Runs a transaction (retried; a guarded one whose answer was lost is
    /// resolved by reading back what it wrote, see `nubo_store::txn`).
    pub async fn txn(&self, txn: Txn) -> ApiResult<TxnResponse> {
        Ok(self.etcd.txn(txn).await?)
    }

    /// Range read with options.
    pub async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        opts: GetOptions,
    ) -> ApiResult<etcd_client::GetResponse> {
        Ok(self.etcd.get(key, Some(opts)).await?)
    }

    /// Reads many keys in one round trip (chunks of 100 gets per txn).
    pub async fn get_many(&self, keys: &[String]) -> ApiResult<Vec<Option<KeyValue>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let resp = self.txn(Txn::new().and_then(ops)).await?;
            for r in resp.op_responses() {
                out.push(match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                    _ => None,
                });
            }
        }
        Ok(out)
    }

    /// One page of the keys under `prefix`, in key order, starting after the
    /// page token. `keep` decodes / filters each key-value (returning `None`
    /// skips it). Returns the items and the next page token (empty at the
    /// end). Never caps silently: when more keys follow, a token is returned.
    pub async fn list_page<T>(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
        mut keep: impl FnMut(&KeyValue) -> Option<T>,
    ) -> ApiResult<(Vec<T>, String)> {
        let size = page_size_of(page_size)?;
        let mut start = match decode_token(page_token, prefix)? {
            Some(mut after) => {
                after.push(0);
                after
            }
            None => prefix.as_bytes().to_vec(),
        };
        let end = keys::prefix_end(prefix);
        let mut items = Vec::new();
        let mut rev = 0;
        loop {
            let want = (size - items.len()).max(16) as i64 * 2;
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(want);
            if rev > 0 {
                opts = opts.with_revision(rev);
            }
            let resp = self.etcd.get(start.clone(), Some(opts)).await?;
            if rev == 0 {
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let kvs = resp.kvs();
            for (i, kv) in kvs.iter().enumerate() {
                if let Some(t) = keep(kv) {
                    items.push(t);
                    if items.len() == size {
                        let more = resp.more() || i + 1 < kvs.len();
                        let token = if more {
                            encode_token(kv.key())
                        } else {
                            String::new()
                        };
                        return Ok((items, token));
                    }
                }
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((items, String::new())),
            }
        }
    }

    /// Every key under `prefix` that `keep` keeps, read with [`list_page`]
    /// page by page ([`MAX_PAGE`] a page) until the end.
    ///
    /// [`list_page`]: Store::list_page
    pub async fn list_all<T>(
        &self,
        prefix: &str,
        mut keep: impl FnMut(&KeyValue) -> Option<T>,
    ) -> ApiResult<Vec<T>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self
                .list_page(prefix, MAX_PAGE as u32, &token, &mut keep)
                .await?;
            out.extend(page);
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }
}

/// Compare: the key does not exist.
pub fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// Compare: the key is unchanged since `rev` (0 = still absent).
pub fn unchanged(key: &str, rev: i64) -> Compare {
    if rev == 0 {
        absent(key)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, rev)
    }
}

/// Compare: no key under `prefix` changed or appeared after revision `rev`.
pub fn prefix_unchanged_since(prefix: &str, rev: i64) -> Compare {
    Compare::mod_revision(prefix, CompareOp::Less, rev + 1).with_prefix()
}

/// Compare: no key exists under `prefix`.
pub fn prefix_empty(prefix: &str) -> Compare {
    Compare::version(prefix, CompareOp::Equal, 0).with_prefix()
}

/// Put op of a JSON value.
pub fn put<T: serde::Serialize>(key: &str, value: &T) -> TxnOp {
    TxnOp::put(key, model::encode(value), None)
}

/// The kvs returned by the `i`-th op of a transaction (a get).
pub fn op_kvs(resp: &TxnResponse, i: usize) -> Vec<KeyValue> {
    match resp.op_responses().into_iter().nth(i) {
        Some(TxnOpResponse::Get(mut g)) => g.take_kvs(),
        _ => Vec::new(),
    }
}

/// Decodes a kv's value.
pub fn decode_kv<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, DecodeError> {
    model::decode(kv_key(kv), kv.value())
}

/// Decodes a kv in a listing: logs and skips an undecodable value.
pub fn decode_or_skip<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match decode_kv(kv) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = kv_key(kv), error = %e, "skipping unreadable value");
            None
        }
    }
}

/// The error for a stored value that does not decode.
pub fn corrupt(e: DecodeError) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "the stored record is unreadable ({e}); repair or delete it with etcdctl"
    ))
}

/// The page size of a request: 0 = default, larger than [`MAX_PAGE`] =
/// [`MAX_PAGE`] (the caller gets a `next_page_token` for the rest, so
/// nothing is capped silently).
pub fn page_size_of(n: u32) -> ApiResult<usize> {
    Ok(match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    })
}

/// Encodes a page token (opaque to clients).
pub fn encode_token(last_key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key)
}

/// Decodes a page token; it must belong to the listed prefix.
pub fn decode_token(token: &str, prefix: &str) -> ApiResult<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::InvalidArgument(
            "page_token is not valid for this list; start again without one".into(),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    if !raw.starts_with(prefix.as_bytes()) {
        return Err(bad());
    }
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_prefix() {
        let t = encode_token(b"/nubo/v1/flavors/m1.small");
        assert_eq!(
            decode_token(&t, "/nubo/v1/flavors/").unwrap().unwrap(),
            b"/nubo/v1/flavors/m1.small".to_vec()
        );
        assert!(decode_token(&t, "/nubo/v1/ports/").is_err());
        assert!(decode_token("%%%", "/nubo/v1/ports/").is_err());
        assert_eq!(decode_token("", "/x/").unwrap(), None);
    }

    #[test]
    fn page_sizes_default_and_are_bounded() {
        assert_eq!(page_size_of(0).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size_of(1000).unwrap(), 1000);
        assert_eq!(page_size_of(5000).unwrap(), MAX_PAGE);
    }
}
