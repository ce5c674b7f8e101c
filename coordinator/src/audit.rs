//! The audit trail (`auth = "token"`): every mutating call (and every
//! refused one) is recorded under `/nubo/v1/audit/<time-ordered id>` by
//! the authentication layer ([`crate::auth`]); the leader prunes the
//! trail to the newest [`RETENTION`] records; `Audit.List` reads it.

use std::time::Duration;

use etcd_client::{DeleteOptions, GetOptions, SortOrder, SortTarget};
use nubo_common::keys;
use nubo_common::model::{encode, AuditOutcome, AuditRecord, UserName};
use nubo_common::proto::{self as pb, audit_server::Audit};
use nubo_common::ProjectId;
use nubo_identity::audit::{delete_range_end, excess, new_audit_id, RETENTION};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::api::Ctx;
use crate::error::ApiResult;
use crate::store::{decode_or_skip, Store};

/// Writes one record (best effort: a failure is logged, never returned).
#[allow(clippy::too_many_arguments)]
pub async fn record(
    store: &Store,
    user: Option<UserName>,
    project: Option<ProjectId>,
    action: String,
    resource_kind: &str,
    resource_id: Option<String>,
    outcome: AuditOutcome,
) {
    let time = chrono::Utc::now();
    let rec = AuditRecord {
        time,
        user,
        project,
        action,
        resource_kind: resource_kind.to_string(),
        resource_id,
        outcome,
        request_id: uuid::Uuid::new_v4().simple().to_string(),
    };
    let key = keys::audit(&new_audit_id(time));
    if let Err(e) = store.etcd().put(key, encode(&rec), None).await {
        tracing::warn!(error = %e, action = %rec.action, "could not write the audit record");
    }
}

/// Deletes the oldest records beyond `keep`; returns how many.
pub async fn prune(store: &Store, keep: usize) -> ApiResult<u64> {
    let prefix = keys::audit_prefix();
    let count = store
        .range(
            prefix.as_str(),
            GetOptions::new().with_prefix().with_count_only(),
        )
        .await?
        .count();
    let Some(n) = excess(u64::try_from(count).unwrap_or(0), keep) else {
        return Ok(0);
    };
    let resp = store
        .range(
            prefix.as_str(),
            GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_sort(SortTarget::Key, SortOrder::Ascend)
                .with_limit(i64::try_from(n).unwrap_or(i64::MAX)),
        )
        .await?;
    let Some(last) = resp.kvs().last() else {
        return Ok(0);
    };
    let end = delete_range_end(&String::from_utf8_lossy(last.key()));
    let deleted = store
        .etcd()
        .delete(prefix.as_str(), Some(DeleteOptions::new().with_range(end)))
        .await?
        .deleted();
    tracing::info!(deleted, "audit trail pruned");
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// The leader's pruning loop (every minute).
pub async fn run_pruner(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if ctx.leader.is_leader() {
            if let Err(e) = prune(&ctx.store, RETENTION).await {
                tracing::warn!(error = %e, "could not prune the audit trail");
            }
        }
    }
}

fn entry(r: AuditRecord) -> pb::AuditEntry {
    let (outcome, message) = match r.outcome {
        AuditOutcome::Ok => ("ok".to_string(), String::new()),
        AuditOutcome::Error { code, message } => (code, message),
    };
    pb::AuditEntry {
        time: r.time.to_rfc3339(),
        user: r.user.map(|u| u.to_string()).unwrap_or_default(),
        project: r.project.map(|p| p.to_string()).unwrap_or_default(),
        action: r.action,
        resource_kind: r.resource_kind,
        resource_id: r.resource_id.unwrap_or_default(),
        outcome,
        message,
        request_id: r.request_id,
    }
}

#[tonic::async_trait]
impl Audit for Ctx {
    async fn list(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let r = r.into_inner();
        let (records, next) = self
            .store
            .list_page(&keys::audit_prefix(), r.page_size, &r.page_token, |kv| {
                decode_or_skip::<AuditRecord>(kv).map(entry)
            })
            .await?;
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_page_token: next,
        }))
    }
}
