//! Quotas as Nova (`/os-quota-sets`) and Neutron (`/v2.0/quotas`) show
//! them, from nubo's one quota per project.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use nubo_common::proto as pb;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::Upstream;

/// A limit in OpenStack's convention: -1 = unlimited.
fn limit(v: Option<u64>) -> Value {
    v.map_or(json!(-1), |n| json!(n))
}

/// `(name, limit, usage)` rows → `{name: limit}`, or with `detail`
/// `{name: {limit, in_use, reserved}}`. Pure.
pub fn quota_body(rows: &[(&str, Option<u64>, Option<u64>)], detail: bool) -> Map<String, Value> {
    rows.iter()
        .map(|(name, l, used)| {
            let v = if detail {
                json!({"limit": limit(*l), "in_use": used.unwrap_or(0), "reserved": 0})
            } else {
                limit(*l)
            };
            (name.to_string(), v)
        })
        .collect()
}

/// Nova's rows (every key of Nova 2.1's `quota_set`). Pure. The network
/// ones are nubo's network quota (a fixed IP is a port's); `metadata_items`
/// is nubo's fixed per-server limit (usage is per server, so shown as 0);
/// injected files do not exist in nubo (a create with them is refused), so
/// their limit is 0, not unlimited.
pub fn compute_rows(q: &pb::ProjectQuota) -> Vec<(&'static str, Option<u64>, Option<u64>)> {
    let (l, u) = (q.limits.unwrap_or_default(), q.usage.unwrap_or_default());
    vec![
        ("instances", l.instances, u.instances),
        ("cores", l.vcpus, u.vcpus),
        ("ram", l.ram_mb, u.ram_mb),
        ("floating_ips", l.floating_ips, u.floating_ips),
        ("fixed_ips", l.ports, u.ports),
        ("security_groups", l.security_groups, u.security_groups),
        ("security_group_rules", None, None),
        ("key_pairs", None, None),
        ("server_groups", None, None),
        ("server_group_members", None, None),
        (
            "metadata_items",
            Some(nubo_common::model::MAX_SERVER_METADATA_ITEMS as u64),
            Some(0),
        ),
        ("injected_files", Some(0), Some(0)),
        ("injected_file_content_bytes", Some(0), Some(0)),
        ("injected_file_path_bytes", Some(0), Some(0)),
    ]
}

/// Nova's `absolute` limits of a quota: `maxTotal*` and `total*Used`
/// (unlimited = -1, as Nova). Pure.
pub fn absolute_limits(q: &pb::ProjectQuota) -> Map<String, Value> {
    let (l, u) = (q.limits.unwrap_or_default(), q.usage.unwrap_or_default());
    let mut m = Map::new();
    for (max, used, lim, use_) in [
        (
            "maxTotalInstances",
            "totalInstancesUsed",
            l.instances,
            u.instances,
        ),
        ("maxTotalCores", "totalCoresUsed", l.vcpus, u.vcpus),
        ("maxTotalRAMSize", "totalRAMUsed", l.ram_mb, u.ram_mb),
        ("maxServerGroups", "totalServerGroupsUsed", None, None),
    ] {
        m.insert(max.into(), limit(lim));
        m.insert(used.into(), json!(use_.unwrap_or(0)));
    }
    for unlimited in [
        "maxTotalKeypairs",
        "maxImageMeta",
        "maxPersonality",
        "maxPersonalitySize",
        "maxServerGroupMembers",
        "maxSecurityGroups",
        "maxSecurityGroupRules",
        "maxTotalFloatingIps",
    ] {
        m.insert(unlimited.into(), json!(-1));
    }
    m.insert(
        "maxServerMeta".into(),
        json!(nubo_common::model::MAX_SERVER_METADATA_ITEMS),
    );
    for used in ["totalSecurityGroupsUsed", "totalFloatingIpsUsed"] {
        m.insert(used.into(), json!(0));
    }
    m
}

/// Cinder's `absolute` limits of a quota. Pure.
pub fn volume_absolute_limits(q: &pb::ProjectQuota) -> Map<String, Value> {
    let (l, u) = (q.limits.unwrap_or_default(), q.usage.unwrap_or_default());
    let mut m = Map::new();
    for (max, used, lim, use_) in [
        ("maxTotalVolumes", "totalVolumesUsed", l.volumes, u.volumes),
        (
            "maxTotalVolumeGigabytes",
            "totalGigabytesUsed",
            l.gigabytes,
            u.gigabytes,
        ),
        ("maxTotalSnapshots", "totalSnapshotsUsed", None, None),
        ("maxTotalBackups", "totalBackupsUsed", None, None),
        (
            "maxTotalBackupGigabytes",
            "totalBackupGigabytesUsed",
            None,
            None,
        ),
    ] {
        m.insert(max.into(), limit(lim));
        m.insert(used.into(), json!(use_.unwrap_or(0)));
    }
    m
}

/// Cinder's rows. Pure.
pub fn volume_rows(q: &pb::ProjectQuota) -> Vec<(&'static str, Option<u64>, Option<u64>)> {
    let (l, u) = (q.limits.unwrap_or_default(), q.usage.unwrap_or_default());
    vec![
        ("volumes", l.volumes, u.volumes),
        ("gigabytes", l.gigabytes, u.gigabytes),
        ("snapshots", None, None),
        ("backups", None, None),
        ("backup_gigabytes", None, None),
        ("per_volume_gigabytes", None, None),
        ("groups", None, None),
    ]
}

/// `?usage=true|false` of Cinder's quota call.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Usage {
    #[serde(default)]
    usage: Option<String>,
}

/// `GET /volume/v3/{caller project}/os-quota-sets/{project}[?usage=true]`.
pub async fn volume_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_caller, project)): Path<(String, String)>,
    axum::extract::Query(u): axum::extract::Query<Usage>,
) -> Result<axum::Json<Value>, ApiError> {
    let q = fetch(&up, &headers, project.clone(), Service::Compute).await?;
    let detail = u
        .usage
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut body = quota_body(&volume_rows(&q), detail);
    body.insert("id".into(), json!(project));
    Ok(axum::Json(json!({"quota_set": body})))
}

/// Neutron's rows. Pure.
pub fn network_rows(q: &pb::ProjectQuota) -> Vec<(&'static str, Option<u64>, Option<u64>)> {
    let (l, u) = (q.limits.unwrap_or_default(), q.usage.unwrap_or_default());
    vec![
        ("network", l.networks, u.networks),
        ("subnet", l.networks, u.networks),
        ("port", l.ports, u.ports),
        ("security_group", l.security_groups, u.security_groups),
        ("floatingip", l.floating_ips, u.floating_ips),
        ("router", None, None),
        ("security_group_rule", None, None),
    ]
}

/// The quota of `project` (empty: the caller's), errors as `s`'s.
pub(crate) async fn fetch(
    up: &Upstream,
    headers: &HeaderMap,
    project: String,
    s: Service,
) -> Result<pb::ProjectQuota, ApiError> {
    up.quotas(headers)?
        .get(pb::GetRequest {
            r#ref: String::new(),
            project,
        })
        .await
        .api(s)
        .map(tonic::Response::into_inner)
}

/// Nova's `quota_set` (with its `id`) for `project`, limits only or with
/// usage (`detail`).
async fn nova_quota_set(
    up: &Upstream,
    headers: &HeaderMap,
    project: String,
    detail: bool,
) -> Result<axum::response::Response, ApiError> {
    crate::microversion::microversion(headers)?;
    let q = fetch(up, headers, project.clone(), Service::Compute).await?;
    let mut body = quota_body(&compute_rows(&q), detail);
    body.insert("id".into(), json!(project));
    Ok(crate::microversion::versioned(axum::Json(
        json!({"quota_set": body}),
    )))
}

/// Neutron's `quota` for `project`, limits only or with usage (`detail`).
async fn neutron_quota(
    up: &Upstream,
    headers: &HeaderMap,
    project: String,
    detail: bool,
) -> Result<axum::Json<Value>, ApiError> {
    let q = fetch(up, headers, project, Service::Network).await?;
    Ok(axum::Json(
        json!({"quota": quota_body(&network_rows(&q), detail)}),
    ))
}

/// `GET /compute/v2.1/os-quota-sets/{project}`.
pub async fn compute_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    nova_quota_set(&up, &headers, project, false).await
}

/// `GET /compute/v2.1/os-quota-sets/{project}/detail`.
pub async fn compute_quota_detail(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    nova_quota_set(&up, &headers, project, true).await
}

/// `GET /network/v2.0/quotas/{project}`.
pub async fn network_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    neutron_quota(&up, &headers, project, false).await
}

/// `GET /network/v2.0/quotas/{project}/details.json`.
pub async fn network_quota_detail(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    neutron_quota(&up, &headers, project, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_is_minus_one_and_detail_has_usage() {
        let q = pb::ProjectQuota {
            project: "p".into(),
            limits: Some(pb::QuotaSet {
                instances: Some(10),
                ..Default::default()
            }),
            usage: Some(pb::QuotaSet {
                instances: Some(2),
                ..Default::default()
            }),
        };
        let b = quota_body(&compute_rows(&q), false);
        assert_eq!(
            (b["instances"].clone(), b["cores"].clone()),
            (json!(10), json!(-1))
        );
        // Every key Tempest's 2.1 quota schema requires; what nubo lacks
        // is 0, not unlimited.
        for k in [
            "instances",
            "cores",
            "ram",
            "floating_ips",
            "fixed_ips",
            "metadata_items",
            "key_pairs",
            "security_groups",
            "security_group_rules",
            "injected_files",
            "injected_file_content_bytes",
            "injected_file_path_bytes",
        ] {
            assert!(b[k].is_i64(), "{k}");
        }
        assert_eq!(
            (b["metadata_items"].clone(), b["key_pairs"].clone()),
            (json!(128), json!(-1))
        );
        let d = quota_body(&compute_rows(&q), true);
        assert_eq!(
            d["instances"],
            json!({"limit": 10, "in_use": 2, "reserved": 0})
        );
    }
}
