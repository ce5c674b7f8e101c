//! `Quotas`: the gRPC adapter of [`crate::operations::quotas`].

use nubo_common::model::{Quota, QuotaUsage};
use nubo_common::proto::{self as pb, quotas_server::Quotas};
use tonic::Request;

use super::{project, reply, R};
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
}
