//! Neutron floating IPs over nubo's `FloatingIps`: create on an external
//! network (with a port at once, or later by `PUT {"port_id": …}`), list
//! with filters, show, disassociate (`"port_id": null`), delete.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use super::S;
use crate::error::{ApiError, StatusExt};
use crate::Upstream;

/// The Neutron view of a floating IP. Pure.
pub fn floating_ip_view(f: &pb::FloatingIp) -> Value {
    let opt = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    json!({
        "id": f.id,
        "tenant_id": f.project,
        "project_id": f.project,
        "floating_network_id": f.network_id,
        "floating_ip_address": f.address,
        "port_id": opt(&f.port_id),
        "fixed_ip_address": opt(&f.fixed_ip),
        "router_id": opt(&f.router_id),
        "status": if f.port_id.is_empty() { "DOWN" } else { "ACTIVE" },
        "description": "",
        "dns_domain": "",
        "dns_name": "",
        "port_forwardings": [],
        "created_at": f.created_at,
        "tags": [],
    })
}

/// Neutron's floating IP list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct FloatingIpFilters {
    id: Option<String>,
    floating_ip_address: Option<String>,
    floating_network_id: Option<String>,
    port_id: Option<String>,
    fixed_ip_address: Option<String>,
    router_id: Option<String>,
    status: Option<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
}

impl FloatingIpFilters {
    /// Whether `v` (a [`floating_ip_view`]) passes every filter. Pure.
    fn keeps(&self, v: &Value) -> bool {
        [
            ("id", &self.id),
            ("floating_ip_address", &self.floating_ip_address),
            ("floating_network_id", &self.floating_network_id),
            ("port_id", &self.port_id),
            ("fixed_ip_address", &self.fixed_ip_address),
            ("router_id", &self.router_id),
            ("status", &self.status),
            ("project_id", &self.project_id),
        ]
        .iter()
        .all(|(k, want)| want.as_ref().is_none_or(|w| v[*k].as_str() == Some(w)))
    }
}

/// `GET /v2.0/floatingips`.
pub(crate) async fn list_floating_ips(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<FloatingIpFilters>,
) -> Result<Response, ApiError> {
    // As Neutron: an admin sees every project's floating IPs (the
    // coordinator honours `all_projects` for cloud admins only).
    let every = super::routers::every_project();
    let all = crate::list_all!(up.floating_ips(&headers)?, floating_ips, S, every)?;
    let views: Vec<Value> = all
        .iter()
        .map(floating_ip_view)
        .filter(|v| f.keeps(v))
        .collect();
    Ok(Json(json!({"floatingips": views})).into_response())
}

async fn get_fip(up: &Upstream, headers: &HeaderMap, id: &str) -> Result<pb::FloatingIp, ApiError> {
    match up
        .floating_ips(headers)?
        .get(crate::upstream::get_req(id.to_string()))
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::not_found(
            S,
            format!("Floating IP {id} could not be found"),
        )),
        Err(s) => Err(ApiError::from_status(S, &s)),
    }
}

/// `GET /v2.0/floatingips/{id}`.
pub(crate) async fn show_floating_ip(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = get_fip(&up, &headers, &id).await?;
    Ok(Json(json!({"floatingip": floating_ip_view(&f)})).into_response())
}

/// `POST /v2.0/floatingips` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FloatingIpBody {
    floatingip: NewFloatingIp,
}

/// The attributes of a Neutron floating IP nubo understands.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFloatingIp {
    floating_network_id: String,
    floating_ip_address: Option<String>,
    port_id: Option<String>,
    fixed_ip_address: Option<String>,
    subnet_id: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
}

/// nubo's request for a Neutron floating IP, and the port to associate it
/// with at once. Pure.
fn floating_ip_request(
    f: NewFloatingIp,
) -> Result<(pb::CreateFloatingIpRequest, Option<String>), ApiError> {
    if !f.description.is_empty() {
        return Err(ApiError::bad_request(
            S,
            "a floating IP description is not supported (nubo)",
        ));
    }
    if f.subnet_id
        .as_ref()
        .is_some_and(|s| *s != f.floating_network_id)
    {
        return Err(ApiError::bad_request(
            S,
            "subnet_id must be the external network's one subnet (same id as the network)",
        ));
    }
    Ok((
        pb::CreateFloatingIpRequest {
            network: f.floating_network_id,
            project: f.project_id.unwrap_or_default(),
            address: f.floating_ip_address.unwrap_or_default(),
        },
        f.port_id,
    ))
}

/// `Set`: floating IP `fip` to `port`, at its address `fixed` (one of the
/// port's, checked by nubo; `None`: its first).
async fn associate(
    up: &Upstream,
    headers: &HeaderMap,
    fip: &str,
    port: String,
    fixed: Option<String>,
) -> Result<pb::FloatingIp, ApiError> {
    Ok(up
        .floating_ips(headers)?
        .set(pb::SetFloatingIpRequest {
            r#ref: fip.to_string(),
            project: String::new(),
            port,
            server: String::new(),
            network: String::new(),
            fixed_ip: fixed.unwrap_or_default(),
        })
        .await
        .api(S)?
        .into_inner())
}

/// `POST /v2.0/floatingips`: `Create`, then `Set` when a port is given
/// (the address is released again if the association is refused).
pub(crate) async fn create_floating_ip(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<FloatingIpBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?.floatingip;
    let fixed = b.fixed_ip_address.clone();
    let (req, port) = floating_ip_request(b)?;
    let mut f = up
        .floating_ips(&headers)?
        .create(req)
        .await
        .api(S)?
        .into_inner();
    if let Some(p) = port {
        match associate(&up, &headers, &f.id, p, fixed).await {
            Ok(done) => f = done,
            Err(e) => {
                if let Err(undo) = up
                    .floating_ips(&headers)?
                    .delete(crate::upstream::delete_req(f.id.clone()))
                    .await
                {
                    tracing::warn!(floating_ip = %f.id, error = %undo, "could not release a floating IP whose association failed");
                }
                return Err(e);
            }
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"floatingip": floating_ip_view(&f)})),
    )
        .into_response())
}

/// `PUT /v2.0/floatingips/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FloatingIpUpdateBody {
    floatingip: FloatingIpUpdate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatingIpUpdate {
    /// Absent: unchanged; `null`: disassociate; an id: associate.
    #[serde(default, deserialize_with = "super::subnets::present")]
    port_id: Option<Option<String>>,
    fixed_ip_address: Option<String>,
    description: Option<String>,
}

/// `PUT /v2.0/floatingips/{id}`: associate (`Set`) or disassociate
/// (`Unset`).
pub(crate) async fn update_floating_ip(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<FloatingIpUpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let u = crate::error::json_body(S, body)?.floatingip;
    if u.description.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "a floating IP description is not supported (nubo)",
        ));
    }
    let current = get_fip(&up, &headers, &id).await?;
    let f = match u.port_id {
        None => current,
        Some(None) => up
            .floating_ips(&headers)?
            .unset(crate::upstream::get_req(current.id))
            .await
            .api(S)?
            .into_inner(),
        Some(Some(port)) => associate(&up, &headers, &current.id, port, u.fixed_ip_address).await?,
    };
    Ok(Json(json!({"floatingip": floating_ip_view(&f)})).into_response())
}

/// `DELETE /v2.0/floatingips/{id}`.
pub(crate) async fn delete_floating_ip(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = get_fip(&up, &headers, &id).await?;
    up.floating_ips(&headers)?
        .delete(crate::upstream::delete_req(f.id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_ips_map_to_nubo_and_filter_on_their_view() {
        let b: FloatingIpBody = serde_json::from_value(json!({"floatingip": {
            "floating_network_id": "ext", "port_id": "p", "floating_ip_address": "10.77.0.9"}}))
        .unwrap();
        let (req, port) = floating_ip_request(b.floatingip).unwrap();
        assert_eq!(
            (req.network.as_str(), req.address.as_str(), port.as_deref()),
            ("ext", "10.77.0.9", Some("p"))
        );
        let b: FloatingIpBody = serde_json::from_value(json!({"floatingip": {
            "floating_network_id": "ext", "subnet_id": "other"}}))
        .unwrap();
        assert_eq!(
            floating_ip_request(b.floatingip).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let f = pb::FloatingIp {
            id: "f".into(),
            network_id: "ext".into(),
            address: "10.77.0.9".into(),
            port_id: "p".into(),
            fixed_ip: "10.0.0.5".into(),
            router_id: "r".into(),
            ..Default::default()
        };
        let v = floating_ip_view(&f);
        assert_eq!(v["status"], "ACTIVE");
        let free = floating_ip_view(&pb::FloatingIp::default());
        assert!(free["port_id"].is_null());
        assert_eq!(free["status"], "DOWN");
        let by_port: FloatingIpFilters = serde_urlencoded::from_str("port_id=p").unwrap();
        assert!(by_port.keeps(&v));
        assert!(!by_port.keeps(&free));
        let other: FloatingIpFilters =
            serde_urlencoded::from_str("floating_ip_address=10.77.0.8").unwrap();
        assert!(!other.keeps(&v));
        assert!(FloatingIpFilters::default().keeps(&free));
    }
}
