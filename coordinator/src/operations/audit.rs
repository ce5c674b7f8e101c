//! The audit trail (`auth = "token"`): every mutating call (and every
//! refused one) is recorded under `/nubo/v1/private/audit/<time-ordered id>` by
//! the authentication layer ([`crate::api::auth`]); the leader prunes the
//! trail to the newest `RETENTION` records
//! ([`crate::background::audit`]); `Audit.List` reads it.

use etcd_client::{DeleteOptions, GetOptions, SortOrder, SortTarget};
use nubo_common::keys;
use nubo_common::model::{encode, AuditOutcome, AuditRecord, UserName};
use nubo_common::ProjectId;
use nubo_identity::audit::{delete_range_end, excess, new_audit_id};
use nubo_store::kv::decode_or_skip;
use nubo_store::Etcd;

use super::{Page, PageRequest};
use crate::error::ApiResult;
use crate::state::Ctx;

/// Writes one record of request `request_id` (best effort: a failure is
/// logged, never returned).
#[allow(clippy::too_many_arguments)]
pub async fn record(
    store: &Etcd,
    user: Option<UserName>,
    project: Option<ProjectId>,
    acted_in: Option<ProjectId>,
    action: String,
    resource_kind: &str,
    resource_id: Option<String>,
    outcome: AuditOutcome,
    request_id: String,
) {
    write(
        store,
        AuditRecord {
            time: chrono::Utc::now(),
            user,
            project,
            acted_in,
            action,
            resource_kind: resource_kind.to_string(),
            resource_id,
            outcome,
            request_id,
        },
    )
    .await
}

/// Writes `rec` under a key ordered by its time (best effort: a failure is
/// logged, never returned).
pub async fn write(store: &Etcd, rec: AuditRecord) {
    let key = keys::audit(&new_audit_id(rec.time));
    if let Err(e) = store.put(key, encode(&rec), None).await {
        tracing::warn!(error = %e, action = %rec.action, "could not write the audit record");
    }
}

/// Deletes the oldest records beyond `keep`; returns how many.
pub async fn prune(store: &Etcd, keep: usize) -> ApiResult<u64> {
    let deleted = prune_prefix(store, &keys::audit_prefix(), keep).await?;
    if deleted > 0 {
        tracing::info!(deleted, "audit trail pruned");
    }
    Ok(deleted)
}

/// Deletes the first keys (in key order: the oldest of time-ordered ids)
/// under `prefix` beyond `keep`; returns how many.
pub(crate) async fn prune_prefix(store: &Etcd, prefix: &str, keep: usize) -> ApiResult<u64> {
    let count = store
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    let Some(n) = excess(u64::try_from(count).unwrap_or(0), keep) else {
        return Ok(0);
    };
    let resp = store
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_sort(SortTarget::Key, SortOrder::Ascend)
                    .with_limit(i64::try_from(n).unwrap_or(i64::MAX)),
            ),
        )
        .await?;
    let Some(last) = resp.kvs().last() else {
        return Ok(0);
    };
    let end = delete_range_end(&String::from_utf8_lossy(last.key()));
    let deleted = store
        .delete(prefix, Some(DeleteOptions::new().with_range(end)))
        .await?
        .deleted();
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// One page of the audit trail, oldest first.
pub async fn list(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<AuditRecord>> {
    super::lookup::list_page(
        ctx,
        &keys::audit_prefix(),
        page,
        decode_or_skip::<AuditRecord>,
    )
    .await
}
