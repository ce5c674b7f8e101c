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
        (
            "maxTotalSnapshots",
            "totalSnapshotsUsed",
            l.snapshots,
            u.snapshots,
        ),
        ("maxTotalBackups", "totalBackupsUsed", l.backups, u.backups),
        (
            "maxTotalBackupGigabytes",
            "totalBackupGigabytesUsed",
            l.backup_gigabytes,
            u.backup_gigabytes,
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
        ("snapshots", l.snapshots, u.snapshots),
        ("backups", l.backups, u.backups),
        ("backup_gigabytes", l.backup_gigabytes, u.backup_gigabytes),
        (
            "per_volume_gigabytes",
            l.per_volume_gigabytes,
            u.per_volume_gigabytes,
        ),
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

/// The nubo resource behind each of Nova's quota keys that nubo limits.
/// Pure.
pub fn nova_resource(key: &str) -> Option<&'static str> {
    Some(match key {
        "instances" => "instances",
        "cores" => "vcpus",
        "ram" => "ram_mb",
        "floating_ips" => "floating_ips",
        "fixed_ips" => "ports",
        "security_groups" => "security_groups",
        _ => return None,
    })
}

/// A quota value of an update: an integer or a string of one; -1 =
/// unlimited (`None`). Pure.
fn quota_value(key: &str, v: &Value, s: Service) -> Result<Option<u64>, ApiError> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(t) => t.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(-1) => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n.unsigned_abs())),
        _ => Err(ApiError::bad_request(
            s,
            format!(
                "Invalid input for field/attribute {key}. Value: {v}. must be an integer >= -1"
            ),
        )),
    }
}

/// The `Quotas.Update` request of a Nova or Cinder quota update body
/// (`{key: value}`): each key nubo limits becomes a change (-1 =
/// unlimited); a key nubo has a fixed limit for (`fixed`: the rows it
/// shows, e.g. `key_pairs` -1, `injected_files` 0) may only be given that
/// value; `force` is accepted (nubo never refuses a limit below the
/// usage); anything else is a 400 naming it. Pure.
pub fn update_request(
    project: String,
    body: &Map<String, Value>,
    resource: fn(&str) -> Option<&'static str>,
    fixed: &[(&str, Option<u64>, Option<u64>)],
    s: Service,
) -> Result<pb::UpdateQuotaRequest, ApiError> {
    let mut r = pb::UpdateQuotaRequest {
        project,
        limits: Some(pb::QuotaSet::default()),
        unlimited: Vec::new(),
    };
    let set = r.limits.get_or_insert_with(Default::default);
    for (key, v) in body {
        if key == "force" {
            continue;
        }
        if let Some(res) = resource(key) {
            match quota_value(key, v, s)? {
                None => r.unlimited.push(res.to_string()),
                Some(n) => match res {
                    "instances" => set.instances = Some(n),
                    "vcpus" => set.vcpus = Some(n),
                    "ram_mb" => set.ram_mb = Some(n),
                    "volumes" => set.volumes = Some(n),
                    "gigabytes" => set.gigabytes = Some(n),
                    "ports" => set.ports = Some(n),
                    "networks" => set.networks = Some(n),
                    "security_groups" => set.security_groups = Some(n),
                    "snapshots" => set.snapshots = Some(n),
                    "backups" => set.backups = Some(n),
                    "backup_gigabytes" => set.backup_gigabytes = Some(n),
                    "per_volume_gigabytes" => set.per_volume_gigabytes = Some(n),
                    _ => set.floating_ips = Some(n),
                },
            }
            continue;
        }
        let Some((_, shown, _)) = fixed.iter().find(|(k, _, _)| k == key) else {
            return Err(ApiError::bad_request(
                s,
                format!("Bad key(s) {key} in quota_set (not a quota nubo knows)"),
            ));
        };
        if quota_value(key, v, s)? != *shown {
            return Err(ApiError::bad_request(
                s,
                format!(
                    "nubo has no quota for {key}: its limit is fixed at {} (see docs/openstack-compatibility.md)",
                    limit(*shown)
                ),
            ));
        }
    }
    Ok(r)
}

/// Nova's `quota_set` of a gRPC quota (limits only) with its `id`. Pure.
fn nova_limits(project: &str, q: &pb::ProjectQuota) -> Value {
    let mut body = quota_body(&compute_rows(q), false);
    body.insert("id".into(), json!(project));
    json!({ "quota_set": body })
}

/// `GET /compute/v2.1/os-quota-sets/{project}/defaults`: the cloud-wide
/// default (`Quotas.GetDefault`).
pub async fn compute_quota_defaults(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    crate::microversion::microversion(&headers)?;
    let q = up
        .quotas(&headers)?
        .get_default(pb::Empty {})
        .await
        .api(Service::Compute)?
        .into_inner();
    Ok(crate::microversion::versioned(axum::Json(nova_limits(
        &project, &q,
    ))))
}

/// `PUT /compute/v2.1/os-quota-sets/{project}` (`Quotas.Update`, cloud
/// admins): per-user quotas (`user_id`) do not exist in nubo (400).
pub async fn update_compute_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    body: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    const S: Service = Service::Compute;
    crate::microversion::microversion(&headers)?;
    if q.contains_key("user_id") {
        return Err(ApiError::bad_request(
            S,
            "nubo has no per-user quotas (user_id): a project's quota applies to all its users",
        ));
    }
    let body = crate::error::json_body(S, body)?;
    let set = body
        .get("quota_set")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request(S, "the body needs a quota_set object"))?;
    let fixed = compute_rows(&pb::ProjectQuota::default());
    let r = update_request(project.clone(), set, nova_resource, &fixed, S)?;
    let q = up.quotas(&headers)?.update(r).await.api(S)?.into_inner();
    let mut body = quota_body(&compute_rows(&q), false);
    // Nova's update answer has no id.
    body.remove("id");
    Ok(crate::microversion::versioned(axum::Json(
        json!({ "quota_set": body }),
    )))
}

/// `DELETE /compute/v2.1/os-quota-sets/{project}`: `Quotas.Reset` (the
/// default applies again); 202 as Nova.
pub async fn reset_compute_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    crate::microversion::microversion(&headers)?;
    up.quotas(&headers)?
        .reset(pb::GetRequest {
            r#ref: String::new(),
            project,
        })
        .await
        .api(Service::Compute)?;
    Ok(crate::microversion::versioned(
        axum::http::StatusCode::ACCEPTED,
    ))
}

/// The nubo resource behind each of Cinder's quota keys that nubo
/// limits. Pure.
pub fn cinder_resource(key: &str) -> Option<&'static str> {
    Some(match key {
        "volumes" => "volumes",
        "gigabytes" => "gigabytes",
        "snapshots" => "snapshots",
        // nubo has no backups: the limits are kept, the usage is 0.
        "backups" => "backups",
        "backup_gigabytes" => "backup_gigabytes",
        "per_volume_gigabytes" => "per_volume_gigabytes",
        _ => return None,
    })
}

/// `GET /volume/v3/{caller}/os-quota-sets/{project}/defaults`.
pub async fn volume_quota_defaults(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_caller, project)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let q = up
        .quotas(&headers)?
        .get_default(pb::Empty {})
        .await
        .api(Service::Compute)?
        .into_inner();
    let mut body = quota_body(&volume_rows(&q), false);
    body.insert("id".into(), json!(project));
    Ok(axum::Json(json!({ "quota_set": body })))
}

/// `PUT /volume/v3/{caller}/os-quota-sets/{project}` (`Quotas.Update`,
/// cloud admins): `volumes`, `gigabytes`, `snapshots`,
/// `per_volume_gigabytes`, and `backups` / `backup_gigabytes` (kept,
/// usage always 0: nubo has no backups); `groups` only at its shown value.
pub async fn update_volume_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_caller, project)): Path<(String, String)>,
    body: Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    const S: Service = Service::Compute;
    let body = crate::error::json_body(S, body)?;
    let set = body
        .get("quota_set")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request(S, "the body needs a quota_set object"))?;
    let fixed = volume_rows(&pb::ProjectQuota::default());
    let r = update_request(project, set, cinder_resource, &fixed, S)?;
    let q = up.quotas(&headers)?.update(r).await.api(S)?.into_inner();
    Ok(axum::Json(
        json!({ "quota_set": quota_body(&volume_rows(&q), false) }),
    ))
}

/// `DELETE /volume/v3/{caller}/os-quota-sets/{project}`: `Quotas.Reset`
/// (200 without a body, as Cinder).
pub async fn reset_volume_quota(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_caller, project)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    up.quotas(&headers)?
        .reset(pb::GetRequest {
            r#ref: String::new(),
            project,
        })
        .await
        .api(Service::Compute)?;
    Ok(axum::http::StatusCode::OK)
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
        let fixed = compute_rows(&pb::ProjectQuota::default());
        let body = |v: Value| v.as_object().cloned().unwrap();
        let r = update_request(
            "p".into(),
            &body(json!({"ram": "5120", "cores": -1, "key_pairs": -1, "injected_files": 0, "force": true})),
            nova_resource,
            &fixed,
            Service::Compute,
        )
        .unwrap();
        assert_eq!(r.limits.unwrap().ram_mb, Some(5120));
        assert_eq!(r.unlimited, vec!["vcpus".to_string()]);
        for bad in [
            json!({"key_pairs": 10}),
            json!({"bogus": 1}),
            json!({"ram": -2}),
            json!({"ram": "x"}),
        ] {
            let e = update_request(
                "p".into(),
                &body(bad.clone()),
                nova_resource,
                &fixed,
                Service::Compute,
            )
            .unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let d = quota_body(&compute_rows(&q), true);
        assert_eq!(
            d["instances"],
            json!({"limit": 10, "in_use": 2, "reserved": 0})
        );
    }
}
