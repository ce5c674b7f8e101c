//! Quotas: a pure check of a request against a project's limits.
//!
//! # Enforcing it in the coordinator (no request can ever exceed a quota)
//!
//! The check is only safe when it is part of the transaction that creates
//! the resources. In the placement (or create) transaction:
//!
//! 1. read `keys::quota_usage(project)` → `usage` (absent = zero) and its
//!    `mod_revision` (0 when absent); read the limit with
//!    [`effective_quota`] from `keys::quota(project)` and
//!    `keys::quota_default()`;
//! 2. `let new_usage = quota::check(&project, &limit, &usage, &delta)?`
//!    (the error maps to `ResourceExhausted` with its sentence);
//! 3. add to the same etcd `Txn` as the resources themselves:
//!    `when: Compare::mod_revision(quota_usage_key, Equal, rev)` (for an
//!    absent key: `Compare::create_revision(key, Equal, 0)`), `and_then:
//!    put(quota_usage_key, encode(&new_usage))`;
//! 4. if the transaction fails on that compare, another request changed the
//!    usage: re-read and retry from 1 (bounded, e.g. 16 attempts, then
//!    `Unavailable`), like the node-usage compare of placements.
//!
//! Deleting resources subtracts in the same way (`usage.saturating_sub`,
//! same compare), so the counter never drifts from the resources. Limits may
//! be lowered below the current usage: only requests that add to an
//! over-limit resource fail; releasing always succeeds.

use std::fmt;

use nubo_common::model::{Quota, QuotaResource, QuotaUsage};
use nubo_common::ProjectId;

/// What a request adds (or, for deletions, removes): same fields as a usage.
pub type QuotaDelta = QuotaUsage;

/// A request would take a project over one of its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct QuotaExceeded {
    /// The project.
    pub project: ProjectId,
    /// The first resource (in [`QuotaResource::ALL`] order) over its limit.
    pub resource: QuotaResource,
    /// Its limit.
    pub limit: u64,
    /// What the project holds.
    pub usage: u64,
    /// What the request adds.
    pub requested: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota exceeded for {} in project \"{}\": limit {}, in use {}, requested {}",
            self.resource, self.project, self.limit, self.usage, self.requested
        )
    }
}

impl From<QuotaExceeded> for tonic::Status {
    fn from(e: QuotaExceeded) -> Self {
        tonic::Status::resource_exhausted(e.to_string())
    }
}

/// Checks `request` against `limit` given the current `usage` and returns
/// the usage after the request. Resources the request does not add to are
/// not checked (so a lowered limit never blocks unrelated work).
pub fn check(
    project: &ProjectId,
    limit: &Quota,
    usage: &QuotaUsage,
    request: &QuotaDelta,
) -> Result<QuotaUsage, QuotaExceeded> {
    for r in QuotaResource::ALL {
        let (used, wanted) = (usage.get(r), request.get(r));
        if wanted == 0 {
            continue;
        }
        if let Some(max) = limit.get(r) {
            if used.saturating_add(wanted) > max {
                return Err(QuotaExceeded {
                    project: project.clone(),
                    resource: r,
                    limit: max,
                    usage: used,
                    requested: wanted,
                });
            }
        }
    }
    Ok(usage.saturating_add(request))
}

/// The limits that apply to a project: its own record, else the stored
/// cloud-wide default (`/quotas/_default`), else [`Quota::cloud_default`].
pub fn effective_quota(project_quota: Option<Quota>, stored_default: Option<Quota>) -> Quota {
    project_quota
        .or(stored_default)
        .unwrap_or_else(Quota::cloud_default)
}

/// The delta of `count` instances of a flavor (vCPUs, RAM; one port each is
/// counted separately by the port code).
pub fn instances_delta(count: u64, vcpus: u64, ram_mb: u64) -> QuotaDelta {
    QuotaDelta {
        instances: count,
        vcpus: count.saturating_mul(vcpus),
        ram_mb: count.saturating_mul(ram_mb),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p1() -> ProjectId {
        ProjectId::new("p1").unwrap()
    }

    #[test]
    fn within_limits_returns_the_new_usage() {
        let limit = Quota::cloud_default();
        let usage = instances_delta(2, 2, 1024);
        let new = check(&p1(), &limit, &usage, &instances_delta(3, 2, 1024)).unwrap();
        assert_eq!(new, instances_delta(5, 2, 1024));
        // Exactly at the limit is fine.
        let full = check(&p1(), &limit, &new, &instances_delta(5, 2, 1024)).unwrap();
        assert_eq!(full.instances, 10);
        assert_eq!(full.vcpus, 20);
    }

    #[test]
    fn exceeding_reports_the_first_resource_in_a_sentence() {
        let limit = Quota::cloud_default();
        let usage = instances_delta(10, 1, 512);
        let err = check(&p1(), &limit, &usage, &instances_delta(1, 1, 512)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota exceeded for instances in project \"p1\": limit 10, in use 10, requested 1"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::ResourceExhausted
        );
        let err = check(
            &p1(),
            &limit,
            &QuotaUsage::default(),
            &instances_delta(2, 16, 512),
        )
        .unwrap_err();
        assert_eq!(err.resource, QuotaResource::Vcpus);
        assert_eq!((err.limit, err.usage, err.requested), (20, 0, 32));
    }

    #[test]
    fn unlimited_and_unrequested_resources_are_not_checked() {
        let usage = QuotaUsage {
            ports: 900,
            ..Default::default()
        };
        // Over the port limit already (limit lowered), but not asking for ports.
        let new = check(
            &p1(),
            &Quota::cloud_default(),
            &usage,
            &instances_delta(1, 1, 1),
        )
        .unwrap();
        assert_eq!(new.ports, 900);
        let more_ports = QuotaDelta {
            ports: 1,
            ..Default::default()
        };
        assert!(check(&p1(), &Quota::cloud_default(), &usage, &more_ports).is_err());
        assert!(check(&p1(), &Quota::UNLIMITED, &usage, &more_ports).is_ok());
        let huge = QuotaDelta {
            ram_mb: u64::MAX,
            ..Default::default()
        };
        let big_usage = QuotaUsage {
            ram_mb: 5,
            ..Default::default()
        };
        assert_eq!(
            check(&p1(), &Quota::UNLIMITED, &big_usage, &huge)
                .unwrap()
                .ram_mb,
            u64::MAX
        );
        // Saturation never wraps below a limit.
        let limited = Quota {
            ram_mb: Some(u64::MAX - 1),
            ..Quota::UNLIMITED
        };
        assert!(check(&p1(), &limited, &big_usage, &huge).is_err());
    }

    #[test]
    fn release_saturates_and_effective_quota_falls_back() {
        let usage = instances_delta(1, 2, 100);
        assert_eq!(
            usage.saturating_sub(&instances_delta(3, 2, 100)),
            QuotaUsage::default()
        );
        let own = Quota {
            instances: Some(1),
            ..Quota::UNLIMITED
        };
        let dflt = Quota {
            instances: Some(2),
            ..Quota::UNLIMITED
        };
        assert_eq!(effective_quota(Some(own), Some(dflt)), own);
        assert_eq!(effective_quota(None, Some(dflt)), dflt);
        assert_eq!(effective_quota(None, None), Quota::cloud_default());
    }
}
