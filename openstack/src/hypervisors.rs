//! Nova's admin views of the hosts: `os-hypervisors` and `os-services`
//! over `Nodes.List` (admin only in nubo too: a member gets 403). Each
//! nubo node is one hypervisor and one `nova-compute` service (its agent).
//! Nova 2.1 gives hypervisors and services integer ids; nubo's are names,
//! so the id is a stable 31-bit hash of the node name.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// The routes (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/v2.1/os-hypervisors", get(list_short))
        .route("/v2.1/os-hypervisors/detail", get(list_detail))
        .route("/v2.1/os-hypervisors/{id}", get(show))
        .route("/v2.1/os-services", get(services))
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
        "forced_down": false,
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

async fn services(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let views: Vec<Value> = nodes(&up, &headers)
        .await?
        .iter()
        .map(service_view)
        .collect();
    Ok(versioned(Json(json!({ "services": views }))))
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
    }
}
