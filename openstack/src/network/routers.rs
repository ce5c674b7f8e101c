//! Neutron routers over nubo's `Routers`: create (with
//! `external_gateway_info`), list, show, update (name, `admin_state_up`),
//! delete, and interfaces by `subnet_id`.
//!
//! nubo's routers are distributed: a router answers on each of its
//! networks' gateway address, on every node hosting a port of it. Neutron
//! shows that as an interface port per network; nubo has no port record for
//! it, so the interface port is the router's leg on that network, shown
//! with the network's id (which is also its one subnet's id): `GET
//! /v2.0/ports/{id}` and `?device_id=<router>` answer it (see
//! [`interface_ports`]). A router's gateway is likewise shown as a
//! `network:router_gateway` port on the external network (its address,
//! an id derived from the router's: [`gateway_port_view`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nubo_common::proto as pb;
use nubo_netid::MacAddr;
use serde::Deserialize;
use serde_json::{json, Value};

use super::S;
use crate::error::{ApiError, StatusExt};
use crate::Upstream;

/// The Neutron view of a router. Pure.
pub fn router_view(r: &pb::Router) -> Value {
    let gw = if r.gateway_network_id.is_empty() {
        Value::Null
    } else {
        json!({
            "network_id": r.gateway_network_id,
            "enable_snat": true,
            "external_fixed_ips": [{"subnet_id": r.gateway_network_id, "ip_address": r.gateway_ip}],
        })
    };
    json!({
        "id": r.id,
        "name": r.name,
        "tenant_id": r.project,
        "project_id": r.project,
        "status": "ACTIVE",
        "admin_state_up": !r.disabled,
        "external_gateway_info": gw,
        "routes": [],
        "distributed": true,
        "ha": false,
        "description": "",
        "availability_zones": [],
        "availability_zone_hints": [],
        "created_at": r.created_at,
        "tags": [],
    })
}

/// The interface port of router `r` on its network `net` (see the module
/// documentation): id and subnet are the network's, the address its
/// gateway, the MAC the one nubo's agents answer with there. Pure.
pub fn interface_port_view(r: &pb::Router, net: &pb::Network) -> Value {
    let mac = MacAddr::router_mac(&[&r.id, &net.id]);
    json!({
        "id": net.id,
        "name": "",
        "network_id": net.id,
        "tenant_id": r.project,
        "project_id": r.project,
        "mac_address": mac.to_string(),
        "fixed_ips": [{"subnet_id": net.id, "ip_address": net.gateway}],
        "security_groups": [],
        "port_security_enabled": false,
        "device_id": r.id,
        "device_owner": "network:router_interface_distributed",
        "binding:host_id": "",
        "binding:vif_type": "distributed",
        "binding:vnic_type": "normal",
        "status": if r.disabled { "DOWN" } else { "ACTIVE" },
        "admin_state_up": !r.disabled,
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "description": "",
        "created_at": r.created_at,
        "tags": [],
    })
}

/// The id of router `router`'s gateway port: a UUID derived from the
/// router's id (stable, never another resource's). Pure.
pub fn gateway_port_id(router: &str) -> String {
    let a = nubo_netid::stable_hash(&[router, "router_gateway"]).to_be_bytes();
    let b = nubo_netid::stable_hash(&[router, "router_gateway", "2"]).to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a);
    bytes[8..].copy_from_slice(&b);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The gateway port of router `r` (None without a gateway): on the
/// external network, with the router's address there. Pure.
pub fn gateway_port_view(r: &pb::Router) -> Option<Value> {
    if r.gateway_network_id.is_empty() {
        return None;
    }
    Some(json!({
        "id": gateway_port_id(&r.id),
        "name": "",
        "network_id": r.gateway_network_id,
        "tenant_id": "",
        "project_id": "",
        "mac_address": MacAddr::router_mac(&[&r.id, &r.gateway_network_id]).to_string(),
        "fixed_ips": [{"subnet_id": r.gateway_network_id, "ip_address": r.gateway_ip}],
        "security_groups": [],
        "port_security_enabled": false,
        "device_id": r.id,
        "device_owner": "network:router_gateway",
        "binding:host_id": "",
        "binding:vif_type": "distributed",
        "binding:vnic_type": "normal",
        "status": if r.disabled { "DOWN" } else { "ACTIVE" },
        "admin_state_up": !r.disabled,
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "description": "",
        "created_at": r.created_at,
        "tags": [],
    }))
}

/// The first request of a Neutron list: every project's items for a cloud
/// admin, as Neutron (the coordinator honours `all_projects` for cloud
/// admins only; a member gets its own).
pub(crate) fn every_project() -> pb::ListRequest {
    pb::ListRequest {
        all_projects: true,
        ..Default::default()
    }
}

/// Every router port the caller sees: interfaces (routers × their
/// networks) and gateways.
pub(crate) async fn interface_ports(
    up: &Upstream,
    headers: &HeaderMap,
) -> Result<Vec<Value>, ApiError> {
    let routers = crate::list_all!(up.routers(headers)?, routers, S, every_project())?;
    let gateways: Vec<Value> = routers.iter().filter_map(gateway_port_view).collect();
    if routers.iter().all(|r| r.subnet_ids.is_empty()) {
        return Ok(gateways);
    }
    let nets = crate::list_all!(up.networks(headers)?, networks, S, every_project())?;
    Ok(routers
        .iter()
        .flat_map(|r| {
            // A network joined by a port shows that (real) port instead.
            r.subnet_ids
                .iter()
                .filter(|id| !r.interface_ports.iter().any(|p| &p.network_id == *id))
                .filter_map(|id| nets.iter().find(|n| &n.id == id))
                .map(move |n| interface_port_view(r, n))
        })
        .chain(gateways)
        .collect())
}

/// The interface port `id`, if it is one.
pub(crate) async fn interface_port(
    up: &Upstream,
    headers: &HeaderMap,
    id: &str,
) -> Result<Option<Value>, ApiError> {
    Ok(interface_ports(up, headers)
        .await?
        .into_iter()
        .find(|p| p["id"] == id))
}

/// Neutron's router list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct RouterFilters {
    name: Option<String>,
    id: Option<String>,
}

/// `GET /v2.0/routers`.
pub(crate) async fn list_routers(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<RouterFilters>,
) -> Result<Response, ApiError> {
    let routers = crate::list_all!(up.routers(&headers)?, routers, S, every_project())?;
    let views: Vec<Value> = routers
        .iter()
        .filter(|r| f.name.as_ref().is_none_or(|x| &r.name == x))
        .filter(|r| f.id.as_ref().is_none_or(|x| &r.id == x))
        .map(router_view)
        .collect();
    Ok(Json(json!({"routers": views})).into_response())
}

async fn get_router(up: &Upstream, headers: &HeaderMap, id: &str) -> Result<pb::Router, ApiError> {
    match up
        .routers(headers)?
        .get(crate::upstream::get_req(id.to_string()))
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::not_found(
            S,
            format!("Router {id} could not be found"),
        )),
        Err(s) => Err(ApiError::from_status(S, &s)),
    }
}

/// `GET /v2.0/routers/{id}`.
pub(crate) async fn show_router(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = get_router(&up, &headers, &id).await?;
    Ok(Json(json!({"router": router_view(&r)})).into_response())
}

/// `POST /v2.0/routers` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouterBody {
    router: NewRouter,
}

/// A router's `external_gateway_info` as a client sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayInfo {
    network_id: Option<String>,
    enable_snat: Option<bool>,
    external_fixed_ips: Option<Vec<Value>>,
}

/// The attributes of a Neutron router nubo understands.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRouter {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    admin_state_up: Option<bool>,
    external_gateway_info: Option<GatewayInfo>,
    distributed: Option<bool>,
    ha: Option<bool>,
    #[serde(default)]
    availability_zone_hints: Vec<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
}

/// The external network of a gateway info ("" = none), or why nubo
/// cannot honour it. Pure.
fn gateway_network(g: Option<&GatewayInfo>) -> Result<String, ApiError> {
    let Some(g) = g else {
        return Ok(String::new());
    };
    if g.enable_snat == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "enable_snat false is not supported (nubo): a router with a gateway SNATs its networks' outbound traffic",
        ));
    }
    if g.external_fixed_ips.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "external_fixed_ips are not supported (nubo): the router's gateway address is allocated",
        ));
    }
    Ok(g.network_id.clone().unwrap_or_default())
}

/// nubo's request for a Neutron router. Pure.
fn router_request(r: NewRouter) -> Result<pb::CreateRouterRequest, ApiError> {
    if r.distributed.is_some() {
        // Neutron's policy: only an admin sets `distributed`; nubo's routers
        // are all distributed, so nobody chooses.
        return Err(ApiError::new(
            S,
            StatusCode::FORBIDDEN,
            "distributed is not settable: every nubo router is distributed",
        ));
    }
    if r.ha == Some(true) {
        return Err(ApiError::bad_request(
            S,
            "ha routers are not supported (nubo): routers are distributed, with no standby",
        ));
    }
    if !r.description.is_empty() || !r.availability_zone_hints.is_empty() {
        return Err(ApiError::bad_request(
            S,
            "a router description and availability_zone_hints are not supported (nubo)",
        ));
    }
    Ok(pb::CreateRouterRequest {
        name: r.name,
        project: r.project_id.unwrap_or_default(),
        external_gateway: gateway_network(r.external_gateway_info.as_ref())?,
        disabled: r.admin_state_up == Some(false),
    })
}

/// `POST /v2.0/routers`.
pub(crate) async fn create_router(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<RouterBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let req = router_request(b.router)?;
    let r = up.routers(&headers)?.create(req).await.api(S)?.into_inner();
    Ok((
        StatusCode::CREATED,
        Json(json!({"router": router_view(&r)})),
    )
        .into_response())
}

/// `PUT /v2.0/routers/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouterUpdateBody {
    router: RouterUpdate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterUpdate {
    name: Option<String>,
    admin_state_up: Option<bool>,
    /// `null`/`{}`: no gateway; a network: set or change it.
    #[serde(default, deserialize_with = "super::subnets::present")]
    external_gateway_info: Option<Option<GatewayInfo>>,
    /// `null` or `[]`: accepted (nubo has no extra routes).
    #[serde(default)]
    routes: Option<Vec<Value>>,
    description: Option<String>,
}

/// `PUT /v2.0/routers/{id}`: name, `admin_state_up` and
/// `external_gateway_info` (set, change, clear: nubo's `Routers.Update`);
/// extra routes and a description are refused with the reason.
pub(crate) async fn update_router(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<RouterUpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let u = crate::error::json_body(S, body)?.router;
    let current = get_router(&up, &headers, &id).await?;
    if u.routes.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "extra routes are not supported (nubo): a router routes between its networks and out through its gateway",
        ));
    }
    if u.description.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "a router description is not supported (nubo)",
        ));
    }
    let external_gateway = u
        .external_gateway_info
        .as_ref()
        .map(|g| gateway_network(g.as_ref()))
        .transpose()?;
    let r = up
        .routers(&headers)?
        .update(pb::UpdateRouterRequest {
            r#ref: current.id.clone(),
            project: String::new(),
            name: u.name,
            disabled: u.admin_state_up.map(|up| !up),
            external_gateway,
        })
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"router": router_view(&r)})).into_response())
}

/// `DELETE /v2.0/routers/{id}`.
pub(crate) async fn delete_router(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = get_router(&up, &headers, &id).await?;
    up.routers(&headers)?
        .delete(crate::upstream::delete_req(r.id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v2.0/routers/{id}/add_router_interface` and `…/remove_…` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InterfaceBody {
    subnet_id: Option<String>,
    port_id: Option<String>,
}

/// The interface port id of router `r` on network `net`: the port it
/// joined by, or (joined by the subnet) the network's id. Pure.
fn interface_port_id<'a>(r: &'a pb::Router, net: &'a str) -> &'a str {
    r.interface_ports
        .iter()
        .find(|p| p.network_id == net)
        .map_or(net, |p| p.port_id.as_str())
}

fn interface_info(r: &pb::Router, net: &str) -> Value {
    json!({
        "id": r.id,
        "tenant_id": r.project,
        "project_id": r.project,
        "subnet_id": net,
        "subnet_ids": [net],
        "network_id": net,
        "port_id": interface_port_id(r, net),
    })
}

/// What an interface request names.
enum InterfaceRef {
    /// A subnet (nubo: the network's id).
    Subnet(String),
    /// A port to add as the interface, and its network.
    Port { port: String, network: String },
}

/// The target of an interface request: its subnet (nubo: the network's
/// id), a port to add (the router takes its address), or, when removing,
/// an interface port of this router (the network's id, or the port the
/// router joined by).
async fn interface_target(
    up: &Upstream,
    headers: &HeaderMap,
    router: &pb::Router,
    b: InterfaceBody,
    adding: bool,
) -> Result<InterfaceRef, ApiError> {
    match (b.subnet_id, b.port_id) {
        (Some(s), None) => Ok(InterfaceRef::Subnet(s)),
        (None, Some(p)) if adding => {
            let port = up
                .ports(headers)?
                .get(crate::upstream::get_req(p))
                .await
                .api(S)?
                .into_inner();
            Ok(InterfaceRef::Port {
                port: port.id,
                network: port.network_id,
            })
        }
        (None, Some(p)) => {
            if router.subnet_ids.contains(&p) {
                return Ok(InterfaceRef::Subnet(p));
            }
            match router.interface_ports.iter().find(|i| i.port_id == p) {
                Some(i) => Ok(InterfaceRef::Subnet(i.network_id.clone())),
                None => Err(ApiError::not_found(
                    S,
                    format!(
                        "Router {} does not have an interface with port {p}",
                        router.id
                    ),
                )),
            }
        }
        _ => Err(ApiError::bad_request(
            S,
            "give exactly one of subnet_id and port_id",
        )),
    }
}

/// `PUT /v2.0/routers/{id}/add_router_interface`.
pub(crate) async fn add_interface(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<InterfaceBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let router = get_router(&up, &headers, &id).await?;
    let (net, port) = match interface_target(&up, &headers, &router, b, true).await? {
        InterfaceRef::Subnet(net) => (net, String::new()),
        InterfaceRef::Port { port, network } => (network, port),
    };
    let r = match up
        .routers(&headers)?
        .add_subnet(pb::RouterSubnetRequest {
            r#ref: router.id.clone(),
            project: String::new(),
            network: if port.is_empty() {
                net.clone()
            } else {
                String::new()
            },
            port,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        // Neutron: an overlapping or unusable subnet is a 400, a subnet in
        // another router a 409 (nubo's FailedPrecondition).
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Err(ApiError::not_found(
                S,
                format!("Subnet {net} could not be found"),
            ))
        }
        Err(s) => return Err(ApiError::from_status(S, &s)),
    };
    Ok(Json(interface_info(&r, &net)).into_response())
}

/// `PUT /v2.0/routers/{id}/remove_router_interface`.
pub(crate) async fn remove_interface(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<InterfaceBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let router = get_router(&up, &headers, &id).await?;
    let (InterfaceRef::Subnet(net) | InterfaceRef::Port { network: net, .. }) =
        interface_target(&up, &headers, &router, b, false).await?;
    if !router.subnet_ids.contains(&net) {
        return Err(ApiError::not_found(
            S,
            format!("Router {} has no interface on subnet {net}", router.id),
        ));
    }
    // The answer names the interface as it was (a port interface's port
    // is deleted with it).
    let info = interface_info(&router, &net);
    up.routers(&headers)?
        .remove_subnet(pb::RouterSubnetRequest {
            r#ref: router.id.clone(),
            project: String::new(),
            network: net.clone(),
            port: String::new(),
        })
        .await
        .api(S)?;
    Ok(Json(info).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<pb::CreateRouterRequest, ApiError> {
        let b: RouterBody =
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?;
        router_request(b.router)
    }

    #[test]
    fn routers_map_to_nubo_or_are_refused_with_the_reason() {
        let r = parse(json!({"router": {"name": "r1", "admin_state_up": false,
            "external_gateway_info": {"network_id": "ext"}}}))
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.external_gateway.as_str(), r.disabled),
            ("r1", "ext", true)
        );
        let r = parse(json!({"router": {"name": "r2", "external_gateway_info": {}}})).unwrap();
        assert_eq!((r.external_gateway.as_str(), r.disabled), ("", false));
        for (v, status, text) in [
            (
                json!({"router": {"name": "r", "distributed": true}}),
                StatusCode::FORBIDDEN,
                "distributed",
            ),
            (
                json!({"router": {"name": "r", "external_gateway_info": {"network_id": "e", "enable_snat": false}}}),
                StatusCode::BAD_REQUEST,
                "enable_snat",
            ),
            (
                json!({"router": {"name": "r", "bogus": 1}}),
                StatusCode::BAD_REQUEST,
                "unknown field `bogus`",
            ),
        ] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.status, status);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }

    #[test]
    fn a_router_shows_its_gateway_state_and_interfaces() {
        let r = pb::Router {
            id: "r".into(),
            name: "r1".into(),
            gateway_network_id: "ext".into(),
            gateway_ip: "10.77.0.5".into(),
            subnet_ids: vec!["n".into()],
            disabled: true,
            ..Default::default()
        };
        let v = router_view(&r);
        assert_eq!(v["admin_state_up"], false);
        assert_eq!(v["external_gateway_info"]["network_id"], "ext");
        assert_eq!(
            v["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
            "10.77.0.5"
        );
        let up = router_view(&pb::Router::default());
        assert_eq!(up["admin_state_up"], true);
        assert!(up["external_gateway_info"].is_null());
        let net = pb::Network {
            id: "n".into(),
            gateway: "10.0.0.1".into(),
            ..Default::default()
        };
        let g = gateway_port_view(&r).unwrap();
        assert_eq!(
            (&g["device_owner"], &g["network_id"], &g["device_id"]),
            (&json!("network:router_gateway"), &json!("ext"), &json!("r"))
        );
        assert_eq!(g["fixed_ips"][0]["ip_address"], "10.77.0.5");
        assert_eq!(g["id"], gateway_port_id("r"));
        assert!(uuid::Uuid::parse_str(&gateway_port_id("r")).is_ok());
        assert_ne!(gateway_port_id("r"), gateway_port_id("r2"));
        assert!(gateway_port_view(&pb::Router::default()).is_none());
        let p = interface_port_view(&r, &net);
        assert_eq!(p["device_id"], "r");
        assert_eq!(p["fixed_ips"][0]["ip_address"], "10.0.0.1");
        assert_eq!(p["status"], "DOWN");
        assert_eq!(
            p["mac_address"],
            MacAddr::router_mac(&["r", "n"]).to_string()
        );
    }
}
