//! Project quotas: the limits and usage reads used inside the creation
//! transactions; reading and setting them.
//!
//! Quotas are enforced with `auth = "token"` only (with `auth = "none"`
//! there are no tenants to limit). Servers count `instances`, `vcpus` and
//! `ram_mb`; the usage counter `/quota-usage/<project>` is read with its
//! mod_revision and written in the placement transaction itself under a
//! compare (see `nubo_identity::quota`), and decremented in the delete
//! transaction.

use etcd_client::Txn;
use nubo_common::keys;
use nubo_common::model::{Quota, QuotaResource, QuotaUsage};
use nubo_common::ProjectId;
use nubo_identity::quota::effective_quota;
use nubo_store::kv::{decode_kv, put};
use nubo_store::{Guard, TxnBuilder};

/// Attempts of a quota update against concurrent writers.
const ATTEMPTS: usize = 16;

use crate::config::AuthMode;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Moves a project's quota usage from the value read at `rev` (0 =
/// absent) to `new` in `t`; the guard tells whether it moved meanwhile.
pub(crate) fn reserve(
    t: &mut TxnBuilder,
    project: &ProjectId,
    rev: i64,
    new: &QuotaUsage,
) -> Guard {
    let key = keys::quota_usage(project);
    let guard = t.unchanged(&key, rev);
    t.put(&key, new);
    guard
}

/// True when quotas are enforced (`auth = "token"`).
pub(crate) fn enforced(ctx: &Ctx) -> bool {
    ctx.cfg.auth == AuthMode::Token
}

/// The limits that apply to `project`.
pub(crate) async fn limit(ctx: &Ctx, project: &ProjectId) -> ApiResult<Quota> {
    let (pk, dk) = (keys::quota(project), keys::quota_default());
    let kvs = ctx.store.get_many(&[pk, dk]).await?;
    let dec = |kv: &Option<etcd_client::KeyValue>| -> ApiResult<Option<Quota>> {
        kv.as_ref()
            .map(decode_kv::<Quota>)
            .transpose()
            .map_err(ApiError::from)
    };
    Ok(effective_quota(dec(&kvs[0])?, dec(&kvs[1])?))
}

/// The usage of `project` and its mod_revision (0 when absent).
pub(crate) async fn usage(ctx: &Ctx, project: &ProjectId) -> ApiResult<(QuotaUsage, i64)> {
    Ok(
        match ctx
            .store
            .read::<QuotaUsage>(&keys::quota_usage(project))
            .await?
        {
            Some(v) => (v.value, v.mod_rev),
            None => (QuotaUsage::default(), 0),
        },
    )
}

/// Adds `delta` to `project`'s usage in `t`, after checking its limits;
/// the guard tells whether the usage moved meanwhile (`None` when
/// quotas are off).
pub(crate) async fn add(
    ctx: &Ctx,
    t: &mut TxnBuilder,
    project: &ProjectId,
    delta: &QuotaUsage,
) -> ApiResult<Option<Guard>> {
    if !enforced(ctx) {
        return Ok(None);
    }
    let limit = limit(ctx, project).await?;
    let (usage, rev) = usage(ctx, project).await?;
    let new = nubo_identity::check_quota(project, &limit, &usage, delta)
        .map_err(|e| crate::error::ApiError::ResourceExhausted(e.to_string()))?;
    Ok(Some(reserve(t, project, rev, &new)))
}

/// Subtracts `delta` from `project`'s usage in `t` (`None` when quotas
/// are off).
pub(crate) async fn release(
    ctx: &Ctx,
    t: &mut TxnBuilder,
    project: &ProjectId,
    delta: &QuotaUsage,
) -> ApiResult<Option<Guard>> {
    if !enforced(ctx) {
        return Ok(None);
    }
    let (usage, rev) = usage(ctx, project).await?;
    Ok(Some(reserve(t, project, rev, &usage.saturating_sub(delta))))
}

/// A project's quota: its limits and what it uses (`project` `None`: the
/// cloud-wide default, which has no usage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectQuota {
    /// The project, or `None` for the default.
    pub project: Option<ProjectId>,
    /// The limits that apply.
    pub limits: Quota,
    /// What the project holds.
    pub usage: Option<QuotaUsage>,
}

/// The limits that apply to `project` and its usage.
pub async fn get(ctx: &Ctx, project: &ProjectId) -> ApiResult<ProjectQuota> {
    let limits = limit(ctx, project).await?;
    let (usage, _) = usage(ctx, project).await?;
    Ok(ProjectQuota {
        project: Some(project.clone()),
        limits,
        usage: Some(usage),
    })
}

/// Sets `project`'s own limits (`None`: the default of projects without
/// their own).
pub async fn set(ctx: &Ctx, project: Option<&ProjectId>, limits: Quota) -> ApiResult<ProjectQuota> {
    let Some(project) = project else {
        ctx.store
            .txn(Txn::new().and_then(vec![put(&keys::quota_default(), &limits)]))
            .await?;
        return Ok(ProjectQuota {
            project: None,
            limits,
            usage: None,
        });
    };
    ctx.store
        .txn(Txn::new().and_then(vec![put(&keys::quota(project), &limits)]))
        .await?;
    tracing::info!(project = %project, ?limits, "quota set");
    get(ctx, project).await
}

/// The cloud-wide default: what projects without their own quota get (the
/// stored `_default`, else the built-in one).
pub async fn default(ctx: &Ctx) -> ApiResult<ProjectQuota> {
    let stored = ctx.store.read::<Quota>(&keys::quota_default()).await?;
    Ok(ProjectQuota {
        project: None,
        limits: effective_quota(None, stored.map(|v| v.value)),
        usage: None,
    })
}

/// Changes some of `project`'s limits (`None` = unlimited); the others
/// keep what applies to it now (its own quota, else the default, which is
/// copied into its own). One transaction guarded by both records'
/// revisions, retried when either moved.
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    changes: &[(QuotaResource, Option<u64>)],
) -> ApiResult<ProjectQuota> {
    let (pk, dk) = (keys::quota(project), keys::quota_default());
    for _ in 0..ATTEMPTS {
        let own = ctx.store.read::<Quota>(&pk).await?;
        let default = ctx.store.read::<Quota>(&dk).await?;
        let (own_rev, default_rev) = (
            own.as_ref().map_or(0, |v| v.mod_rev),
            default.as_ref().map_or(0, |v| v.mod_rev),
        );
        let limits =
            effective_quota(own.map(|v| v.value), default.map(|v| v.value)).with_changes(changes);
        let mut t = TxnBuilder::new();
        t.unchanged(&pk, own_rev);
        t.unchanged(&dk, default_rev);
        t.put(&pk, &limits);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(project = %project, ?limits, "quota updated");
            return get(ctx, project).await;
        }
    }
    Err(ApiError::Unavailable(format!(
        "the quota of project {project} changed {ATTEMPTS} times meanwhile; retry"
    )))
}

/// Drops `project`'s own quota: the default applies to it again.
pub async fn reset(ctx: &Ctx, project: &ProjectId) -> ApiResult<ProjectQuota> {
    let mut t = TxnBuilder::new();
    t.delete(&keys::quota(project));
    ctx.store.commit(&t).await?;
    tracing::info!(project = %project, "quota reset to the default");
    get(ctx, project).await
}
