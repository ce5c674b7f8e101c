//! Nova's admin views of the hosts: `os-hypervisors` and `os-services`
//! over `Nodes.List` (admin only in nubo too: a member gets 403). Each
//! nubo node is one hypervisor and one `nova-compute` service (its agent).
//! Nova 2.1 gives hypervisors and services integer ids; nubo's are names,
//! so the id is a stable 31-bit hash of the node name. The statistics are
//! the sums of the nodes' views; a hypervisor's servers are
//! `Servers.List(all_projects, node)`; its uptime is how long its agent
//! has been registered (nubo does not read the host's `uptime`);
//! `PUT /os-services/disable|enable` is `Nodes.SetEnabled`.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// The routes (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/v2.1/os-hypervisors", get(list_short))
        .route("/v2.1/os-hypervisors/detail", get(list_detail))
        .route("/v2.1/os-hypervisors/statistics", get(statistics))
        .route("/v2.1/os-hypervisors/{id}", get(show))
        .route("/v2.1/os-hypervisors/{id}/uptime", get(uptime))
        .route("/v2.1/os-hypervisors/{name}/search", get(search))
        .route("/v2.1/os-hypervisors/{name}/servers", get(servers_on))
        .route("/v2.1/os-services", get(services))
        .route("/v2.1/os-services/{action}", put(set_service))
}

/// The 2.1 integer id of node `name`: stable, 31 bits. Pure.
pub fn node_id(name: &str) -> u64 {
    nubo_netid::fnv1a64(name.as_bytes()) & 0x7fff_ffff
}

fn state(n: &pb::Node) -> &'static str {
    if n.alive {
        "up"
    } else {
        "down"
    }
}

fn status(n: &pb::Node) -> &'static str {
    if n.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

/// The short hypervisor view. Pure.
pub fn short_view(n: &pb::Node) -> Value {
    json!({"id": node_id(&n.name), "hypervisor_hostname": n.name, "state": state(n), "status": status(n)})
}

/// The detailed hypervisor view: capacity and nubo's allocation. Pure.
pub fn detail_view(n: &pb::Node) -> Value {
    let cap = n.capacity.unwrap_or_default();
    let used = n.usage.unwrap_or_default();
    let mut v = short_view(n);
    let extra = json!({
        "hypervisor_type": "QEMU",
        "hypervisor_version": 0,
        "host_ip": n.underlay_ip,
        "vcpus": cap.vcpus,
        "vcpus_used": used.vcpus,
        "memory_mb": cap.ram_mb,
        "memory_mb_used": used.ram_mb,
        "free_ram_mb": i128::from(cap.ram_mb) - i128::from(used.ram_mb),
        "local_gb": cap.disk_gb,
        "local_gb_used": used.disk_gb,
        "free_disk_gb": i128::from(cap.disk_gb) - i128::from(used.disk_gb),
        "disk_available_least": i128::from(cap.disk_gb) - i128::from(used.disk_gb),
        "running_vms": n.instances,
        "current_workload": 0,
        "cpu_info": "{}",
        "service": {"host": n.name, "id": node_id(&n.name), "disabled_reason": null},
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// The `nova-compute` service of a node. Pure.
pub fn service_view(n: &pb::Node) -> Value {
    json!({
        "id": node_id(&n.name),
        "binary": "nova-compute",
        "host": n.name,
        "zone": n.availability_zone,
        "status": status(n),
        "state": state(n),
        "updated_at": if n.health_since.is_empty() { Value::Null } else { json!(n.health_since) },
        "disabled_reason": null,
    })
}

/// Every node (cloud admins only: `Nodes.List` refuses others).
pub(crate) async fn nodes(up: &Upstream, headers: &HeaderMap) -> Result<Vec<pb::Node>, ApiError> {
    microversion(headers)?;
    crate::list_all!(up.nodes(headers)?, nodes, S)
}

async fn list_short(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let views: Vec<Value> = nodes(&up, &headers).await?.iter().map(short_view).collect();
    Ok(versioned(Json(json!({ "hypervisors": views }))))
}

async fn list_detail(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let views: Vec<Value> = nodes(&up, &headers)
        .await?
        .iter()
        .map(detail_view)
        .collect();
    Ok(versioned(Json(json!({ "hypervisors": views }))))
}

async fn show(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let n = nodes(&up, &headers)
        .await?
        .into_iter()
        .find(|n| node_id(&n.name).to_string() == id || n.name == id)
        .ok_or_else(|| {
            ApiError::not_found(S, format!("Hypervisor with ID {id} could not be found."))
        })?;
    Ok(versioned(Json(json!({"hypervisor": detail_view(&n)}))))
}

/// `host` and `binary` of a service list (other parameters are ignored,
/// as Nova below 2.75).
#[derive(Debug, Default, serde::Deserialize)]
pub struct ServiceQuery {
    /// Only the service of this node.
    pub host: Option<String>,
    /// Only services of this binary (nubo has `nova-compute` only).
    pub binary: Option<String>,
}

/// Whether `n`'s `nova-compute` service passes `q`. Pure.
pub fn service_selected(n: &pb::Node, q: &ServiceQuery) -> bool {
    q.host.as_ref().is_none_or(|h| *h == n.name)
        && q.binary.as_ref().is_none_or(|b| b == "nova-compute")
}

async fn services(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(q): Query<ServiceQuery>,
) -> Result<Response, ApiError> {
    let views: Vec<Value> = nodes(&up, &headers)
        .await?
        .iter()
        .filter(|n| service_selected(n, &q))
        .map(service_view)
        .collect();
    Ok(versioned(Json(json!({ "services": views }))))
}

/// `PUT /os-services/{enable|disable|disable-log-reason}` body (2.1).
#[derive(Debug, serde::Deserialize)]
struct ServiceUpdate {
    host: String,
    binary: String,
    #[serde(default)]
    disabled_reason: Option<String>,
}

/// `PUT /os-services/enable|disable|disable-log-reason` (Nova 2.1):
/// `Nodes.SetEnabled` of the node `host` (only `nova-compute`: nubo has
/// no other service). A reason is not kept by nubo (400 rather than
/// silently dropped).
async fn set_service(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(action): Path<String>,
    body: Result<Json<ServiceUpdate>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let b = crate::error::json_body(S, body)?;
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        "disable-log-reason" => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "nubo keeps no reason for a disabled node ({:?}): use os-services/disable",
                    b.disabled_reason.unwrap_or_default()
                ),
            ))
        }
        other => {
            return Err(ApiError::not_found(
                S,
                format!("os-services/{other} is not a service action"),
            ))
        }
    };
    if b.binary != "nova-compute" {
        return Err(ApiError::not_found(
            S,
            format!(
                "Service {} on host {} not found (nubo's only service is nova-compute)",
                b.binary, b.host
            ),
        ));
    }
    let n = up
        .nodes(&headers)?
        .set_enabled(pb::SetNodeEnabledRequest {
            name: b.host,
            enabled,
        })
        .await
        .api(S)?
        .into_inner();
    let status = if enabled { "enabled" } else { "disabled" };
    Ok(versioned(Json(
        json!({"service": {"host": n.name, "binary": "nova-compute", "status": status}}),
    )))
}

/// The sums of the nodes' detailed views (`/os-hypervisors/statistics`).
/// Pure.
pub fn statistics_view(nodes: &[pb::Node]) -> Value {
    const KEYS: [&str; 11] = [
        "current_workload",
        "disk_available_least",
        "free_disk_gb",
        "free_ram_mb",
        "local_gb",
        "local_gb_used",
        "memory_mb",
        "memory_mb_used",
        "running_vms",
        "vcpus",
        "vcpus_used",
    ];
    let mut sums = serde_json::Map::new();
    sums.insert("count".into(), json!(nodes.len()));
    for k in KEYS {
        let total: i64 = nodes
            .iter()
            .map(|n| detail_view(n)[k].as_i64().unwrap_or(0))
            .sum();
        sums.insert(k.into(), json!(total));
    }
    Value::Object(sums)
}

async fn statistics(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let nodes = nodes(&up, &headers).await?;
    Ok(versioned(Json(
        json!({"hypervisor_statistics": statistics_view(&nodes)}),
    )))
}

/// The node whose id or name is `id` (404 in Nova's words).
async fn node_by_id(up: &Upstream, headers: &HeaderMap, id: &str) -> Result<pb::Node, ApiError> {
    nodes(up, headers)
        .await?
        .into_iter()
        .find(|n| node_id(&n.name).to_string() == id || n.name == id)
        .ok_or_else(|| {
            ApiError::not_found(S, format!("Hypervisor with ID {id} could not be found."))
        })
}

/// `GET /os-hypervisors/{id}/uptime`: since when the node's agent is
/// registered (nubo does not run `uptime` on its hosts).
async fn uptime(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let n = node_by_id(&up, &headers, &id).await?;
    let mut v = short_view(&n);
    v["uptime"] = json!(format!("nubo agent registered since {}", n.registered_at));
    Ok(versioned(Json(json!({ "hypervisor": v }))))
}

/// The nodes whose name contains `name` (Nova's hypervisor search); none
/// is a 404, as Nova.
async fn matching(
    up: &Upstream,
    headers: &HeaderMap,
    name: &str,
) -> Result<Vec<pb::Node>, ApiError> {
    let found: Vec<pb::Node> = nodes(up, headers)
        .await?
        .into_iter()
        .filter(|n| n.name.contains(name))
        .collect();
    if found.is_empty() {
        return Err(ApiError::not_found(
            S,
            format!("No hypervisor matching '{name}' could be found."),
        ));
    }
    Ok(found)
}

async fn search(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let views: Vec<Value> = matching(&up, &headers, &name)
        .await?
        .iter()
        .map(short_view)
        .collect();
    Ok(versioned(Json(json!({ "hypervisors": views }))))
}

/// `GET /os-hypervisors/{name}/servers`: each matching node with the
/// servers on it (every project's: `Servers.List(all_projects, node)`).
async fn servers_on(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let client = up.servers(&headers)?;
    let mut views = Vec::new();
    for n in matching(&up, &headers, &name).await? {
        let node = n.name.clone();
        let servers = crate::upstream::all_pages(|token| {
            let mut c = client.clone();
            let node = node.clone();
            async move {
                let r = c
                    .list(pb::ListServersRequest {
                        page_size: crate::upstream::PAGE_SIZE,
                        page_token: token,
                        all_projects: true,
                        node,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok((r.servers, r.next_page_token))
            }
        })
        .await
        .api(S)?;
        let mut v = short_view(&n);
        if !servers.is_empty() {
            v["servers"] = servers
                .iter()
                .map(|s| json!({"uuid": s.id, "name": s.name}))
                .collect();
        }
        views.push(v);
    }
    Ok(versioned(Json(json!({ "hypervisors": views }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_a_hypervisor_and_a_compute_service() {
        let n = pb::Node {
            name: "hv1".into(),
            alive: true,
            enabled: false,
            instances: 3,
            capacity: Some(pb::Resources {
                vcpus: 8,
                ram_mb: 4096,
                disk_gb: 100,
            }),
            usage: Some(pb::Resources {
                vcpus: 2,
                ram_mb: 1024,
                disk_gb: 10,
            }),
            ..Default::default()
        };
        let d = detail_view(&n);
        assert_eq!(
            (
                d["state"].as_str(),
                d["status"].as_str(),
                d["free_ram_mb"].as_i64(),
                d["running_vms"].as_u64()
            ),
            (Some("up"), Some("disabled"), Some(3072), Some(3))
        );
        assert_eq!(d["id"], json!(node_id("hv1")));
        assert!(node_id("hv1") <= 0x7fff_ffff && node_id("hv1") != node_id("hv2"));
        assert_eq!(service_view(&n)["binary"], "nova-compute");
        let stats = statistics_view(&[n.clone(), n.clone()]);
        assert_eq!(
            (
                stats["count"].as_i64(),
                stats["free_ram_mb"].as_i64(),
                stats["running_vms"].as_i64()
            ),
            (Some(2), Some(6144), Some(6))
        );
        let q = |host: Option<&str>, binary: Option<&str>| ServiceQuery {
            host: host.map(String::from),
            binary: binary.map(String::from),
        };
        assert!(service_selected(&n, &q(None, None)));
        assert!(service_selected(&n, &q(Some("hv1"), Some("nova-compute"))));
        assert!(!service_selected(&n, &q(Some("hv1"), Some("xxx"))));
        assert!(!service_selected(&n, &q(Some("xxx"), Some("nova-compute"))));
    }
}
