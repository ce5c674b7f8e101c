//! The helpers both daemons read and write nubo's keys with, on top of
//! [`Etcd`] (retries, failover): JSON values read with the revision to
//! compare ([`Versioned`]), many keys in one round trip, whole prefixes at
//! one revision, key-ordered pages, and the compares of nubo's guarded
//! transactions (build those with [`crate::TxnBuilder`]).
//!
//! A value that does not decode is never a panic: [`Etcd::read`] answers
//! [`StoreError::Corrupt`] naming the key (so it is never silently
//! overwritten), and listings log and skip it ([`decode_or_skip`]).

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use nubo_common::keys;
use nubo_common::model::{self, DecodeError};
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::etcd::Etcd;

/// A value read from etcd with the revision needed to compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// The key's mod_revision when read.
    pub mod_rev: i64,
}

/// Keys read per transaction by [`Etcd::get_many`].
const GETS_PER_TXN: usize = 100;

impl Etcd {
    /// Reads one key.
    pub async fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut resp = self.get(key, None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Reads and decodes one key; an undecodable value is
    /// [`StoreError::Corrupt`] naming the key.
    pub async fn read<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.get_kv(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: decode_kv(&kv)?,
                mod_rev: kv.mod_revision(),
            })),
        }
    }

    /// Reads many keys in few round trips (100 gets per transaction), in
    /// the order asked.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GETS_PER_TXN) {
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

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let r = self
            .get(keys::election(), Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Up to `size` items of the keys under `prefix`, in key order, starting
    /// after the key `after` (from the start when `None`), all read at one
    /// revision. `keep` decodes / filters each key-value (`None` skips it).
    /// Returns the items and, when more keys follow, the last key returned
    /// (where the next page starts).
    pub async fn list_page<T>(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        size: usize,
        mut keep: impl FnMut(&KeyValue) -> Option<T>,
    ) -> Result<(Vec<T>, Option<Vec<u8>>), StoreError> {
        let size = size.max(1);
        let mut start = match after {
            Some(a) => {
                let mut s = a.to_vec();
                s.push(0);
                s
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
            let resp = self.get(start.clone(), Some(opts)).await?;
            if rev == 0 {
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let kvs = resp.kvs();
            for (i, kv) in kvs.iter().enumerate() {
                if let Some(t) = keep(kv) {
                    items.push(t);
                    if items.len() == size {
                        let more = resp.more() || i + 1 < kvs.len();
                        return Ok((items, more.then(|| kv.key().to_vec())));
                    }
                }
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((items, None)),
            }
        }
    }

    /// Every key under `prefix` that `keep` keeps (pages of 1000 until the
    /// end; each page is consistent, the whole need not be).
    pub async fn list_all<T>(
        &self,
        prefix: &str,
        mut keep: impl FnMut(&KeyValue) -> Option<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, next) = self
                .list_page(prefix, after.as_deref(), 1000, &mut keep)
                .await?;
            out.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Deletes `key` only if it was last modified at `mod_revision`.
    /// Returns the revision after the transaction and whether it deleted.
    pub async fn delete_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
    ) -> Result<(i64, bool), StoreError> {
        let t = Txn::new()
            .when([unchanged(key, mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.txn(t).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((rev, resp.succeeded()))
    }
}

/// Compare: the key does not exist.
pub fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// Compare: the key exists.
pub fn present(key: &str) -> Compare {
    Compare::version(key, CompareOp::Greater, 0)
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

/// The key of a key-value as text (keys nubo writes are ASCII; anything
/// else reads as "" and is skipped by `keys::parse`).
pub fn kv_key(kv: &KeyValue) -> &str {
    std::str::from_utf8(kv.key()).unwrap_or("")
}

/// Decodes a key-value's JSON value; the error names the key.
pub fn decode_kv<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, DecodeError> {
    model::decode(kv_key(kv), kv.value())
}

/// Decodes a key-value in a listing: logs and skips an undecodable value.
pub fn decode_or_skip<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match decode_kv(kv) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = kv_key(kv), error = %e, "skipping unreadable value");
            None
        }
    }
}

/// [`decode_or_skip`] keeping the key's mod_revision.
pub fn versioned_or_skip<T: DeserializeOwned>(kv: &KeyValue) -> Option<Versioned<T>> {
    decode_or_skip(kv).map(|value| Versioned {
        value,
        mod_rev: kv.mod_revision(),
    })
}
