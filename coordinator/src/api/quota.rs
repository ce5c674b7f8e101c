//! Project quotas: the limits and usage reads used inside the creation
//! transactions, and the `Quotas` service.
//!
//! Quotas are enforced with `auth = "token"` only (with `auth = "none"`
//! there are no tenants to limit). Servers count `instances`, `vcpus` and
//! `ram_mb`; the usage counter `/quota-usage/<project>` is read with its
//! mod_revision and written in the placement transaction itself under a
//! compare (see `nubo_identity::quota`), and decremented in the delete
//! transaction.

use nubo_common::keys;
use nubo_common::model::{Quota, QuotaUsage};
use nubo_common::proto::{self as pb, quotas_server::Quotas};
use nubo_common::ProjectId;
use nubo_identity::quota::effective_quota;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::config::AuthMode;
use crate::error::{ApiError, ApiResult};
use nubo_store::kv::{decode_kv, put};
use nubo_store::{Guard, TxnBuilder};

type R<T> = Result<Response<T>, Status>;

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

impl Ctx {
    /// True when quotas are enforced (`auth = "token"`).
    pub(crate) fn quotas_on(&self) -> bool {
        self.cfg.auth == AuthMode::Token
    }

    /// The limits that apply to `project`.
    pub(crate) async fn quota_limit(&self, project: &ProjectId) -> ApiResult<Quota> {
        let (pk, dk) = (keys::quota(project), keys::quota_default());
        let kvs = self.store.get_many(&[pk, dk]).await?;
        let dec = |kv: &Option<etcd_client::KeyValue>| -> ApiResult<Option<Quota>> {
            kv.as_ref()
                .map(decode_kv::<Quota>)
                .transpose()
                .map_err(ApiError::from)
        };
        Ok(effective_quota(dec(&kvs[0])?, dec(&kvs[1])?))
    }

    /// The usage of `project` and its mod_revision (0 when absent).
    pub(crate) async fn quota_usage(&self, project: &ProjectId) -> ApiResult<(QuotaUsage, i64)> {
        Ok(
            match self
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
    pub(crate) async fn quota_add(
        &self,
        t: &mut TxnBuilder,
        project: &ProjectId,
        delta: &QuotaUsage,
    ) -> ApiResult<Option<Guard>> {
        if !self.quotas_on() {
            return Ok(None);
        }
        let limit = self.quota_limit(project).await?;
        let (usage, rev) = self.quota_usage(project).await?;
        let new = nubo_identity::check_quota(project, &limit, &usage, delta)
            .map_err(|e| crate::error::ApiError::ResourceExhausted(e.to_string()))?;
        Ok(Some(reserve(t, project, rev, &new)))
    }

    /// Subtracts `delta` from `project`'s usage in `t` (`None` when quotas
    /// are off).
    pub(crate) async fn quota_release(
        &self,
        t: &mut TxnBuilder,
        project: &ProjectId,
        delta: &QuotaUsage,
    ) -> ApiResult<Option<Guard>> {
        if !self.quotas_on() {
            return Ok(None);
        }
        let (usage, rev) = self.quota_usage(project).await?;
        Ok(Some(reserve(t, project, rev, &usage.saturating_sub(delta))))
    }

    async fn get_quota(&self, r: pb::GetRequest) -> ApiResult<pb::ProjectQuota> {
        let project = crate::validate::project(&r.project)?;
        let limits = self.quota_limit(&project).await?;
        let (usage, _) = self.quota_usage(&project).await?;
        Ok(pb::ProjectQuota {
            project: project.to_string(),
            limits: Some(to_pb(&limits)),
            usage: Some(usage_pb(&usage)),
        })
    }

    async fn set_quota(&self, r: pb::SetQuotaRequest) -> ApiResult<pb::ProjectQuota> {
        let limits = from_pb(r.limits.as_ref());
        if r.project.is_empty() {
            self.store
                .txn(etcd_client::Txn::new().and_then(vec![put(&keys::quota_default(), &limits)]))
                .await?;
            return Ok(pb::ProjectQuota {
                project: String::new(),
                limits: Some(to_pb(&limits)),
                usage: None,
            });
        }
        let project = crate::validate::project(&r.project)?;
        self.store
            .txn(etcd_client::Txn::new().and_then(vec![put(&keys::quota(&project), &limits)]))
            .await?;
        tracing::info!(project = %project, ?limits, "quota set");
        self.get_quota(pb::GetRequest {
            r#ref: String::new(),
            project: project.to_string(),
        })
        .await
    }
}

fn to_pb(q: &Quota) -> pb::QuotaSet {
    pb::QuotaSet {
        instances: q.instances,
        vcpus: q.vcpus,
        ram_mb: q.ram_mb,
        volumes: q.volumes,
        gigabytes: q.gigabytes,
        ports: q.ports,
        networks: q.networks,
        security_groups: q.security_groups,
    }
}

fn usage_pb(u: &QuotaUsage) -> pb::QuotaSet {
    pb::QuotaSet {
        instances: Some(u.instances),
        vcpus: Some(u.vcpus),
        ram_mb: Some(u.ram_mb),
        volumes: Some(u.volumes),
        gigabytes: Some(u.gigabytes),
        ports: Some(u.ports),
        networks: Some(u.networks),
        security_groups: Some(u.security_groups),
    }
}

/// Absent fields are unlimited.
fn from_pb(q: Option<&pb::QuotaSet>) -> Quota {
    let Some(q) = q else {
        return Quota::UNLIMITED;
    };
    Quota {
        instances: q.instances,
        vcpus: q.vcpus,
        ram_mb: q.ram_mb,
        volumes: q.volumes,
        gigabytes: q.gigabytes,
        ports: q.ports,
        networks: q.networks,
        security_groups: q.security_groups,
    }
}

#[tonic::async_trait]
impl Quotas for Ctx {
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::ProjectQuota> {
        reply(self.get_quota(r.into_inner()).await)
    }
    async fn set(&self, r: Request<pb::SetQuotaRequest>) -> R<pb::ProjectQuota> {
        reply(self.set_quota(r.into_inner()).await)
    }
}
