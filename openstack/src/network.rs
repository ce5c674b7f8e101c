//! Networking v2.0 (Neutron): networks (list, show).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::upstream::{all_pages, PAGE_SIZE};
use crate::versions;
use crate::Upstream;

const S: Service = Service::Network;

/// `/network/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v2.0", get(v20_doc))
        .route("/v2.0/", get(v20_doc))
        .route("/v2.0/networks", get(list_networks))
        .route("/v2.0/networks/{id}", get(show_network))
}

async fn versions_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::network_v20(&up.public_url)]}))
}

async fn v20_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"resources": [
        {"name": "network", "collection": "networks", "links": [{"rel": "self", "href": format!("{}/network/v2.0/networks", up.public_url)}]},
    ]}))
}

/// The Neutron view of a network (its one subnet is named after it). Pure.
pub fn network_view(n: &pb::Network) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "tenant_id": n.project,
        "project_id": n.project,
        "status": "ACTIVE",
        "admin_state_up": true,
        "shared": n.shared,
        "router:external": n.external,
        "mtu": n.mtu,
        "subnets": [n.id],
        "provider:network_type": if n.provider_type.is_empty() { "vxlan" } else { n.provider_type.as_str() },
        "provider:physical_network": if n.physical_network.is_empty() { Value::Null } else { json!(n.physical_network) },
        "provider:segmentation_id": if n.provider_type.is_empty() { json!(n.vni) } else if n.segment == 0 { Value::Null } else { json!(n.segment) },
        "port_security_enabled": true,
        "availability_zones": [],
        "created_at": n.created_at,
        "tags": [],
    })
}

/// Neutron's list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// Exact name.
    pub name: Option<String>,
    /// Exact id.
    pub id: Option<String>,
}

async fn list_networks(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    let client = up.networks(&headers)?;
    let nets = all_pages(|token| {
        let mut c = client.clone();
        async move {
            let r = c
                .list(pb::ListRequest {
                    page_size: PAGE_SIZE,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.networks, r.next_page_token))
        }
    })
    .await
    .api(S)?;
    let views: Vec<Value> = nets
        .iter()
        .filter(|n| f.name.as_ref().is_none_or(|x| &n.name == x))
        .filter(|n| f.id.as_ref().is_none_or(|x| &n.id == x))
        .map(network_view)
        .collect();
    Ok(Json(json!({"networks": views})).into_response())
}

async fn show_network(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let n = up
        .networks(&headers)?
        .get(pb::GetRequest {
            r#ref: id,
            project: String::new(),
        })
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"network": network_view(&n)})).into_response())
}
