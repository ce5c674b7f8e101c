//! Bringing an existing cluster's keys to the current layout, on every
//! coordinator start, before anything is served.
//!
//! Clusters created before keys were grouped by reader kept the
//! coordinator-private data (identity, indexes, bookkeeping) directly under
//! `/nubo/v1/`; it now lives under `/nubo/v1/private/` with the same
//! suffix ([`keys::LEGACY_MOVES`]). Each old key is moved in a guarded
//! transaction: the old key is unchanged since read and the new one is
//! absent → put the new one (same value, same lease), delete the old one.
//! So:
//!
//! - a key moves exactly once, whatever the number of coordinators
//!   starting at once: a concurrent mover makes the other's transaction
//!   fail, which then reads again and finds the key gone;
//! - running it again moves nothing and writes nothing (idempotent);
//! - a key present at both places with different values (an old
//!   coordinator still running after the move) is never overwritten: the
//!   old key stays, is logged with both names, and counted in
//!   [`Migration::kept`] for an operator to look at. Upgrade by stopping
//!   every coordinator of the older version first.

use etcd_client::{GetOptions, KeyValue, PutOptions, TxnOp};
use nubo_common::keys::{self, LegacyMove};
use nubo_store::kv::kv_key;
use nubo_store::{Etcd, StoreError, TxnBuilder};

/// Old keys moved per transaction (two compares and two writes each, under
/// etcd's default of 128 per transaction).
const BATCH: usize = 50;
/// Failed transactions of one batch (each one another coordinator's
/// progress) before giving up.
const ATTEMPTS: usize = 64;

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// Keys moved by this coordinator.
    pub moved: usize,
    /// Old keys deleted because the new key already held the same value.
    pub duplicates: usize,
    /// Old keys left in place because the new key holds another value.
    pub kept: Vec<String>,
}

/// Why the layout could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// etcd failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The keys kept changing under this coordinator.
    #[error(
        "keys under {prefix} kept changing while they were moved to {to}: is a coordinator of \
         an older version still running? Stop it and start this one again"
    )]
    Contended {
        /// The old prefix.
        prefix: String,
        /// The new prefix.
        to: String,
    },
}

/// Moves every old-layout key under its new prefix (module docs).
pub async fn migrate(etcd: &Etcd) -> Result<Migration, MigrationError> {
    let mut out = Migration::default();
    for m in keys::LEGACY_MOVES {
        migrate_prefix(etcd, m, &mut out).await?;
    }
    if out.moved > 0 || out.duplicates > 0 {
        tracing::info!(
            moved = out.moved,
            duplicates = out.duplicates,
            "moved coordinator-private keys under {}",
            keys::PRIVATE
        );
    }
    Ok(out)
}

async fn migrate_prefix(
    etcd: &Etcd,
    m: &LegacyMove,
    out: &mut Migration,
) -> Result<(), MigrationError> {
    let prefix = m.old_prefix();
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.as_bytes().to_vec();
    let mut failures = 0;
    loop {
        let resp = etcd
            .get(
                start.clone(),
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(BATCH as i64),
                ),
            )
            .await?;
        let olds = resp.kvs();
        let Some(last) = olds.last() else {
            return Ok(());
        };
        let news: Vec<String> = olds.iter().filter_map(|kv| m.moved(kv_key(kv))).collect();
        if news.len() != olds.len() {
            // Not UTF-8: no key nubo wrote; skip what cannot be named.
            tracing::warn!(prefix, "skipping old keys that are not UTF-8");
        }
        let current = etcd.get_many(&news).await?;
        let mut t = TxnBuilder::new();
        let mut planned = Plan::default();
        for (old, (new, now)) in olds
            .iter()
            .filter(|kv| m.moved(kv_key(kv)).is_some())
            .zip(news.iter().zip(&current))
        {
            plan_one(&mut t, old, new, now.as_ref(), &mut planned);
        }
        if t.is_unguarded() || etcd.commit(&t).await?.succeeded() {
            out.moved += planned.moved;
            out.duplicates += planned.duplicates;
            out.kept.extend(planned.kept);
            start = last.key().to_vec();
            start.push(0);
            failures = 0;
            if !resp.more() {
                return Ok(());
            }
            continue;
        }
        // Another coordinator moved (some of) these keys meanwhile: read
        // the same range again.
        failures += 1;
        if failures >= ATTEMPTS {
            return Err(MigrationError::Contended {
                prefix,
                to: m.new_prefix(),
            });
        }
    }
}

#[derive(Default)]
struct Plan {
    moved: usize,
    duplicates: usize,
    kept: Vec<String>,
}

/// The compares and writes that move `old` to `new`, given what `new`
/// holds now.
fn plan_one(t: &mut TxnBuilder, old: &KeyValue, new: &str, now: Option<&KeyValue>, p: &mut Plan) {
    let old_key = kv_key(old);
    match now {
        None => {
            t.unchanged(old_key, old.mod_revision());
            t.absent(new);
            let opts = (old.lease() != 0).then(|| PutOptions::new().with_lease(old.lease()));
            t.op(TxnOp::put(new, old.value(), opts));
            t.delete(old_key);
            p.moved += 1;
        }
        Some(n) if n.value() == old.value() => {
            t.unchanged(old_key, old.mod_revision());
            t.delete(old_key);
            p.duplicates += 1;
        }
        Some(_) => {
            tracing::error!(
                old = old_key,
                new,
                "both the old and the new key exist with different values; \
                 keeping both (is a coordinator of an older version still running?)"
            );
            p.kept.push(old_key.to_string());
        }
    }
}
