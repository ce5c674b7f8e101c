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
//!
//! Clusters created before nodes got their own etcd roles kept each
//! instance's status at `/nubo/v1/instances/<id>/status`; it moves to the
//! reporting node's own keys (`/nubo/v1/node-owned/<node>/status/<id>`,
//! the node named in the status) the same way. And every placed instance
//! gets the copy of its spec its node reads
//! (`/nubo/v1/hosts/<node>/instances/<id>`): spec and copy are written
//! together (the spec unchanged since read), so both carry one revision.

use etcd_client::{GetOptions, KeyValue, PutOptions, TxnOp};
use nubo_common::keys::{self, Key, LegacyMove};
use nubo_common::model::{Instance, InstanceStatus};
use nubo_store::kv::{decode_kv, kv_key};
use nubo_store::{Etcd, TxnBuilder};

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
    /// Specs whose node copy this coordinator wrote.
    pub copied: usize,
}

pub use crate::error::MigrationError;

/// Moves every old-layout key under its new prefix (module docs).
pub async fn migrate(etcd: &Etcd) -> Result<Migration, MigrationError> {
    let mut out = Migration::default();
    for m in keys::LEGACY_MOVES {
        migrate_prefix(etcd, m, &mut out).await?;
    }
    // Boxed: kept off the stack of the future that starts the coordinator.
    Box::pin(migrate_statuses(etcd, &mut out)).await?;
    Box::pin(copy_specs(etcd, &mut out)).await?;
    if out.copied > 0 {
        tracing::info!(
            copied = out.copied,
            "wrote the node copies of instance specs"
        );
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
    in_batches(etcd, &prefix, &m.new_prefix(), out, |olds| async move {
        let n = olds.len();
        let pairs: Vec<(KeyValue, String)> = olds
            .into_iter()
            .filter_map(|kv| m.moved(kv_key(&kv)).map(|new| (kv, new)))
            .collect();
        if pairs.len() != n {
            // Not UTF-8: no key nubo wrote; skip what cannot be named.
            tracing::warn!(
                prefix = m.old_prefix(),
                "skipping old keys that are not UTF-8"
            );
        }
        move_batch(etcd, pairs).await
    })
    .await
}

/// Moves each old key-value to its new key in one transaction (see
/// [`plan_one`]); `None` when the transaction did not apply (another
/// coordinator's progress: read again).
async fn move_batch(
    etcd: &Etcd,
    pairs: Vec<(KeyValue, String)>,
) -> Result<Option<Migration>, MigrationError> {
    let news: Vec<String> = pairs.iter().map(|(_, n)| n.clone()).collect();
    let current = etcd.get_many(&news).await?;
    let mut t = TxnBuilder::new();
    let mut planned = Plan::default();
    for ((old, new), now) in pairs.iter().zip(&current) {
        plan_one(&mut t, old, new, now.as_ref(), &mut planned);
    }
    if t.is_unguarded() || etcd.commit(&t).await?.succeeded() {
        return Ok(Some(Migration {
            moved: planned.moved,
            duplicates: planned.duplicates,
            kept: planned.kept,
            copied: 0,
        }));
    }
    Ok(None)
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

/// Calls `batch` with the key-values under `prefix`, [`BATCH`] at a time
/// in key order, until it has seen them all, adding what each did to
/// `out`. `batch` answers what its transaction did, or `None` when it did
/// not apply (another coordinator's progress): then the same range is
/// read again, up to [`ATTEMPTS`] times in a row.
async fn in_batches<F, Fut>(
    etcd: &Etcd,
    prefix: &str,
    to: &str,
    out: &mut Migration,
    mut batch: F,
) -> Result<(), MigrationError>
where
    F: FnMut(Vec<KeyValue>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Migration>, MigrationError>>,
{
    let end = keys::prefix_end(prefix);
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
        let Some(last) = resp.kvs().last() else {
            return Ok(());
        };
        let next = {
            let mut k = last.key().to_vec();
            k.push(0);
            k
        };
        if let Some(done) = batch(resp.kvs().to_vec()).await? {
            out.moved += done.moved;
            out.duplicates += done.duplicates;
            out.kept.extend(done.kept);
            out.copied += done.copied;
            start = next;
            failures = 0;
            if !resp.more() {
                return Ok(());
            }
            continue;
        }
        failures += 1;
        if failures >= ATTEMPTS {
            return Err(MigrationError::Contended {
                prefix: prefix.to_string(),
                to: to.to_string(),
            });
        }
    }
}

/// Moves `/nubo/v1/instances/<id>/status` to the reporting node's
/// `/nubo/v1/node-owned/<node>/status/<id>` (module docs). A status that
/// does not decode names no node: it is logged and left in place.
async fn migrate_statuses(etcd: &Etcd, out: &mut Migration) -> Result<(), MigrationError> {
    let prefix = keys::instances_prefix();
    let to = keys::all_node_owned_prefix();
    in_batches(etcd, &prefix, &to, out, |kvs| async move {
        let mut pairs = Vec::new();
        for kv in kvs {
            let Some(Key::LegacyInstanceStatus(id)) = keys::parse(kv_key(&kv)) else {
                continue;
            };
            match decode_kv::<InstanceStatus>(&kv) {
                Ok(st) => pairs.push((kv, keys::instance_status(&st.node, &id))),
                Err(e) => tracing::error!(
                    key = kv_key(&kv),
                    error = %e,
                    "an old-layout status does not decode and names no node; left in place"
                ),
            }
        }
        move_batch(etcd, pairs).await
    })
    .await
}

/// Writes the node copy of every placed instance's spec that lacks one
/// equal to it at its revision (module docs): spec and copy in one
/// transaction, the spec unchanged since read.
async fn copy_specs(etcd: &Etcd, out: &mut Migration) -> Result<(), MigrationError> {
    let prefix = keys::instances_prefix();
    let to = keys::all_hosts_prefix();
    in_batches(etcd, &prefix, &to, out, |kvs| async move {
        let mut specs = Vec::new();
        for kv in kvs {
            let Some(Key::Instance(_)) = keys::parse(kv_key(&kv)) else {
                continue;
            };
            match decode_kv::<Instance>(&kv) {
                Ok(inst) if inst.node.is_some() => specs.push((kv, inst)),
                Ok(_) => {}
                Err(e) => tracing::error!(
                    key = kv_key(&kv),
                    error = %e,
                    "an instance spec does not decode; no node copy written"
                ),
            }
        }
        let copy_keys: Vec<String> = specs
            .iter()
            .filter_map(|(_, i)| i.node.as_ref().map(|n| keys::node_spec(n, &i.id)))
            .collect();
        let copies = etcd.get_many(&copy_keys).await?;
        let mut t = TxnBuilder::new();
        let mut copied = 0;
        for ((kv, inst), copy) in specs.iter().zip(&copies) {
            let in_step = copy
                .as_ref()
                .is_some_and(|c| c.value() == kv.value() && c.mod_revision() == kv.mod_revision());
            if in_step {
                continue;
            }
            t.unchanged(kv_key(kv), kv.mod_revision());
            crate::operations::specs::put_into(&mut t, inst);
            copied += 1;
        }
        if t.is_unguarded() || etcd.commit(&t).await?.succeeded() {
            return Ok(Some(Migration {
                copied,
                ..Migration::default()
            }));
        }
        Ok(None)
    })
    .await
}
