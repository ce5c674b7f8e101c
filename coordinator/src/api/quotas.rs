//! `Quotas`: the gRPC adapter of [`crate::operations::quotas`].

use nubo_common::model::{Quota, QuotaResource, QuotaUsage};
use nubo_common::proto::{self as pb, quotas_server::Quotas};
use tonic::Request;

use super::{project, reply, R};
use crate::error::ApiError;
use crate::operations::quotas::{self, ProjectQuota};
use crate::state::Ctx;

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
        floating_ips: q.floating_ips,
        snapshots: q.snapshots,
        backups: q.backups,
        backup_gigabytes: q.backup_gigabytes,
        per_volume_gigabytes: q.per_volume_gigabytes,
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
        floating_ips: Some(u.floating_ips),
        snapshots: Some(u.snapshots),
        backups: Some(u.backups),
        backup_gigabytes: Some(u.backup_gigabytes),
        per_volume_gigabytes: Some(u.per_volume_gigabytes),
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
        floating_ips: q.floating_ips,
        snapshots: q.snapshots,
        backups: q.backups,
        backup_gigabytes: q.backup_gigabytes,
        per_volume_gigabytes: q.per_volume_gigabytes,
    }
}

fn quota_pb(q: ProjectQuota) -> pb::ProjectQuota {
    pb::ProjectQuota {
        project: q.project.map(|p| p.to_string()).unwrap_or_default(),
        limits: Some(to_pb(&q.limits)),
        usage: q.usage.as_ref().map(usage_pb),
    }
}

#[tonic::async_trait]
impl Quotas for Ctx {
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::ProjectQuota> {
        let r = r.into_inner();
        let go = async { quotas::get(self, &project(&r.project)?).await };
        reply(go.await.map(quota_pb))
    }
    async fn set(&self, r: Request<pb::SetQuotaRequest>) -> R<pb::ProjectQuota> {
        let r = r.into_inner();
        let go = async {
            let limits = from_pb(r.limits.as_ref());
            if r.project.is_empty() {
                return quotas::set(self, None, limits).await;
            }
            quotas::set(self, Some(&project(&r.project)?), limits).await
        };
        reply(go.await.map(quota_pb))
    }
    async fn get_default(&self, _r: Request<pb::Empty>) -> R<pb::ProjectQuota> {
        reply(quotas::default(self).await.map(quota_pb))
    }
    async fn update(&self, r: Request<pb::UpdateQuotaRequest>) -> R<pb::ProjectQuota> {
        let r = r.into_inner();
        let go = async {
            let project = project(&r.project)?;
            let changes = changes(r.limits.as_ref(), &r.unlimited)?;
            quotas::update(self, &project, &changes).await
        };
        reply(go.await.map(quota_pb))
    }
    async fn reset(&self, r: Request<pb::GetRequest>) -> R<pb::ProjectQuota> {
        let r = r.into_inner();
        let go = async { quotas::reset(self, &project(&r.project)?).await };
        reply(go.await.map(quota_pb))
    }
}

/// The changes of an update: the present fields of `set`, and the
/// resources named in `unlimited` (an unknown name, or one both set and
/// unlimited, is refused).
fn changes(
    set: Option<&pb::QuotaSet>,
    unlimited: &[String],
) -> Result<Vec<(QuotaResource, Option<u64>)>, ApiError> {
    let set = set.copied().unwrap_or_default();
    let given = from_pb(Some(&set));
    let mut out: Vec<(QuotaResource, Option<u64>)> = QuotaResource::ALL
        .into_iter()
        .filter_map(|r| given.get(r).map(|l| (r, Some(l))))
        .collect();
    for name in unlimited {
        let r = QuotaResource::parse(name).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "unknown quota resource {name:?} (one of: {})",
                QuotaResource::ALL.map(|r| r.as_str()).join(", ")
            ))
        })?;
        if out.iter().any(|(o, _)| *o == r) {
            return Err(ApiError::InvalidArgument(format!(
                "quota resource {name} is both given a limit and made unlimited"
            )));
        }
        out.push((r, None));
    }
    Ok(out)
}
