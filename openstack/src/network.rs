//! Networking v2.0 (Neutron): networks, subnets ([`subnets`]), ports
//! ([`ports`]), security groups and rules, routers ([`routers`]) and
//! floating IPs ([`floating_ips`]).

pub mod bulk;
pub mod fields;
pub mod floating_ips;
pub mod ports;
pub mod routers;
pub mod subnets;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::versions;
use crate::Upstream;

/// Errors of this service are Neutron's.
pub(crate) const S: Service = Service::Network;

/// `/network/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v2.0", get(v20_doc))
        .route("/v2.0/", get(v20_doc))
        .route(
            "/v2.0/networks",
            get(list_networks).post(subnets::create_network),
        )
        .route(
            "/v2.0/networks/{id}",
            get(show_network)
                .delete(subnets::delete_network)
                .put(subnets::update_network),
        )
        .route(
            "/v2.0/subnets",
            get(subnets::list_subnets).post(subnets::create_subnet),
        )
        .route(
            "/v2.0/subnets/{id}",
            get(subnets::show_subnet)
                .delete(subnets::delete_subnet)
                .put(subnets::update_subnet),
        )
        .route(
            "/v2.0/routers",
            get(routers::list_routers).post(routers::create_router),
        )
        .route(
            "/v2.0/routers/{id}",
            get(routers::show_router)
                .put(routers::update_router)
                .delete(routers::delete_router),
        )
        .route(
            "/v2.0/routers/{id}/add_router_interface",
            put(routers::add_interface),
        )
        .route(
            "/v2.0/routers/{id}/remove_router_interface",
            put(routers::remove_interface),
        )
        .route(
            "/v2.0/floatingips",
            get(floating_ips::list_floating_ips).post(floating_ips::create_floating_ip),
        )
        .route(
            "/v2.0/floatingips/{id}",
            get(floating_ips::show_floating_ip)
                .put(floating_ips::update_floating_ip)
                .delete(floating_ips::delete_floating_ip),
        )
        .route("/v2.0/extensions", get(list_extensions))
        .route("/v2.0/extensions/{alias}", get(show_extension))
        .route(
            "/v2.0/ports",
            get(ports::list_ports).post(ports::create_port),
        )
        .route(
            "/v2.0/ports/{id}",
            get(ports::show_port)
                .put(ports::update_port)
                .delete(ports::delete_port),
        )
        .route("/v2.0/quotas/{project}", get(crate::quota::network_quota))
        .route(
            "/v2.0/quotas/{project}/details.json",
            get(crate::quota::network_quota_detail),
        )
        .route("/v2.0/security-groups", get(list_groups).post(create_group))
        .route(
            "/v2.0/security-groups/{id}",
            get(show_group).delete(delete_group).put(update_group),
        )
        .route(
            "/v2.0/security-group-rules",
            get(list_rules).post(create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(show_rule).delete(delete_rule),
        )
        .layer(axum::middleware::from_fn(fields::layer))
}

/// `GET /network/` (and `/network`): the version document.
pub async fn versions_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::network_v20(&up.public_url)]}))
}

async fn v20_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"resources": [
        {"name": "network", "collection": "networks", "links": [{"rel": "self", "href": format!("{}/network/v2.0/networks", up.public_url)}]},
        {"name": "subnet", "collection": "subnets", "links": [{"rel": "self", "href": format!("{}/network/v2.0/subnets", up.public_url)}]},
        {"name": "port", "collection": "ports", "links": [{"rel": "self", "href": format!("{}/network/v2.0/ports", up.public_url)}]},
        {"name": "router", "collection": "routers", "links": [{"rel": "self", "href": format!("{}/network/v2.0/routers", up.public_url)}]},
        {"name": "floatingip", "collection": "floatingips", "links": [{"rel": "self", "href": format!("{}/network/v2.0/floatingips", up.public_url)}]},
    ]}))
}

/// The Neutron extensions whose attributes and calls nubo serves: (alias,
/// name, description). Clients probe these before using an attribute.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    (
        "security-group",
        "security-group",
        "Security groups and their rules",
    ),
    (
        "port-security",
        "Port Security",
        "port_security_enabled on ports",
    ),
    (
        "provider",
        "Provider Network",
        "provider:network_type, physical_network and segmentation_id",
    ),
    (
        "external-net",
        "Neutron external network",
        "router:external on networks",
    ),
    (
        "binding",
        "Port Binding",
        "binding:host_id (the server's node; before a server plugs the port, the host a cloud admin bound it to) and binding:vif_type on ports",
    ),
    (
        "quotas",
        "Quota management support",
        "Project quotas (read only)",
    ),
    (
        "router",
        "Neutron L3 Router",
        "Routers (distributed), their interfaces by subnet, and floating IPs",
    ),
    (
        "subnet-external-network",
        "Subnet External Network",
        "router:external on subnets: an external network's subnet is visible to every project",
    ),
    (
        "dvr",
        "Distributed Virtual Router",
        "Every nubo router is distributed (the distributed attribute is read only)",
    ),
];

fn extension_view(alias: &str, name: &str, description: &str) -> Value {
    json!({"alias": alias, "name": name, "description": description,
        "updated": "2013-01-01T00:00:00-00:00", "links": []})
}

async fn list_extensions() -> Json<Value> {
    let all: Vec<Value> = EXTENSIONS
        .iter()
        .map(|(a, n, d)| extension_view(a, n, d))
        .collect();
    Json(json!({ "extensions": all }))
}

async fn show_extension(Path(alias): Path<String>) -> Result<Response, ApiError> {
    EXTENSIONS
        .iter()
        .find(|(a, _, _)| *a == alias)
        .map(|(a, n, d)| Json(json!({"extension": extension_view(a, n, d)})).into_response())
        .ok_or_else(|| {
            ApiError::not_found(S, format!("Extension with alias {alias} does not exist"))
        })
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
        "subnets": n.subnets.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
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
    /// `router:external=True|False` (networks only).
    #[serde(rename = "router:external")]
    pub external: Option<String>,
    /// `shared=True|False` (networks only).
    pub shared: Option<String>,
}

/// Whether a boolean filter (`True`/`true`/`1`, `False`/…) keeps `value`.
pub fn bool_filter(filter: Option<&str>, value: bool) -> bool {
    filter.is_none_or(|f| matches!(f.to_ascii_lowercase().as_str(), "true" | "1") == value)
}

async fn list_networks(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    let nets = crate::list_all!(up.networks(&headers)?, networks, S)?;
    let views: Vec<Value> = nets
        .iter()
        .filter(|n| f.name.as_ref().is_none_or(|x| &n.name == x))
        .filter(|n| f.id.as_ref().is_none_or(|x| &n.id == x))
        .filter(|n| bool_filter(f.external.as_deref(), n.external))
        .filter(|n| bool_filter(f.shared.as_deref(), n.shared))
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
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"network": network_view(&n)})).into_response())
}

/// The Neutron view of a rule of `group`. Pure.
pub fn rule_view(group: &pb::SecurityGroup, r: &pb::SecurityGroupRule) -> Value {
    let opt = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    let port = |p: u32| if p == 0 { Value::Null } else { json!(p) };
    // An ICMP rule's type and code are Neutron's port_range_min and _max.
    let (min, max) = if r.protocol == "icmp" {
        (json!(r.icmp_type), json!(r.icmp_code))
    } else {
        (port(r.port_min), port(r.port_max))
    };
    json!({
        "id": r.id,
        "security_group_id": group.id,
        "direction": r.direction,
        "ethertype": if r.ethertype == "ipv6" { "IPv6" } else { "IPv4" },
        "protocol": if r.protocol == "any" { Value::Null } else { opt(&r.protocol) },
        "port_range_min": min,
        "port_range_max": max,
        "remote_ip_prefix": opt(&r.remote_cidr),
        "remote_group_id": opt(&r.remote_group_id),
        "tenant_id": group.project,
        "project_id": group.project,
        "description": "",
    })
}

/// The Neutron view of a security group. Pure.
pub fn group_view(g: &pb::SecurityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "tenant_id": g.project,
        "project_id": g.project,
        "stateful": true,
        "created_at": g.created_at,
        "security_group_rules": g.rules.iter().map(|r| rule_view(g, r)).collect::<Vec<_>>(),
        "tags": [],
    })
}

async fn all_groups(
    up: &Upstream,
    headers: &HeaderMap,
) -> Result<Vec<pb::SecurityGroup>, ApiError> {
    crate::list_all!(up.security_groups(headers)?, security_groups, S)
}

async fn list_groups(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    let views: Vec<Value> = all_groups(&up, &headers)
        .await?
        .iter()
        .filter(|g| f.name.as_ref().is_none_or(|x| &g.name == x))
        .filter(|g| f.id.as_ref().is_none_or(|x| &g.id == x))
        .map(group_view)
        .collect();
    Ok(Json(json!({"security_groups": views})).into_response())
}

async fn show_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let g = up
        .security_groups(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"security_group": group_view(&g)})).into_response())
}

/// `POST /security-groups` body.
#[derive(Debug, Deserialize)]
pub struct GroupBody {
    security_group: NewGroup,
}

#[derive(Debug, Deserialize)]
struct NewGroup {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<GroupBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = crate::error::json_body(S, body)?;
    let g = up
        .security_groups(&headers)?
        .create(pb::CreateSecurityGroupRequest {
            name: body.security_group.name,
            project: String::new(),
            description: body.security_group.description,
        })
        .await
        .api(S)?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(json!({"security_group": group_view(&g)})),
    )
        .into_response())
}

/// `PUT /security-groups/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdateBody {
    security_group: GroupUpdate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupUpdate {
    name: Option<String>,
    description: Option<String>,
}

/// `PUT /security-groups/{id}`: name and description (nubo's
/// `SecurityGroups.Update`).
async fn update_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<GroupUpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut c = up.security_groups(&headers)?;
    let current = c
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let u = crate::error::json_body(S, body)?.security_group;
    let g = c
        .update(pb::UpdateSecurityGroupRequest {
            r#ref: current.id,
            project: String::new(),
            name: u.name,
            description: u.description,
        })
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"security_group": group_view(&g)})).into_response())
}

async fn delete_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    up.security_groups(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_rules(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let groups = all_groups(&up, &headers).await?;
    let views: Vec<Value> = groups
        .iter()
        .flat_map(|g| g.rules.iter().map(move |r| rule_view(g, r)))
        .collect();
    Ok(Json(json!({"security_group_rules": views})).into_response())
}

/// The group holding rule `id`, and the rule.
async fn find_rule(
    up: &Upstream,
    headers: &HeaderMap,
    id: &str,
) -> Result<(pb::SecurityGroup, pb::SecurityGroupRule), ApiError> {
    all_groups(up, headers)
        .await?
        .into_iter()
        .find_map(|g| {
            let r = g.rules.iter().find(|r| r.id == id).cloned()?;
            Some((g, r))
        })
        .ok_or_else(|| {
            ApiError::not_found(S, format!("Security group rule {id} could not be found."))
        })
}

async fn show_rule(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (g, r) = find_rule(&up, &headers, &id).await?;
    Ok(Json(json!({"security_group_rule": rule_view(&g, &r)})).into_response())
}

/// `POST /security-group-rules` body.
#[derive(Debug, Deserialize)]
pub struct RuleBody {
    security_group_rule: NewRule,
}

/// A Neutron rule as created.
#[derive(Debug, Deserialize)]
pub struct NewRule {
    security_group_id: String,
    direction: String,
    #[serde(default)]
    ethertype: Option<String>,
    #[serde(default)]
    protocol: Option<Value>,
    // Wider than a port so that a negative or oversized value gets
    // Neutron's "Invalid value for port" rather than a parse error.
    #[serde(default)]
    port_range_min: Option<i64>,
    #[serde(default)]
    port_range_max: Option<i64>,
    #[serde(default)]
    remote_ip_prefix: Option<String>,
    #[serde(default)]
    remote_group_id: Option<String>,
}

/// Neutron's `port_range_min`/`_max` as nubo's ports or ICMP type and
/// code, with Neutron's checks and wording (400). Pure.
fn neutron_ports(
    protocol: &str,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<(u32, u32, Option<u32>, Option<u32>), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(S, m));
    // The attribute check Neutron applies to every protocol first.
    for v in [min, max].into_iter().flatten() {
        if !(0..=65535).contains(&v) {
            return bad(format!("Invalid value for port {v}"));
        }
    }
    // In range now: the conversions below cannot fail.
    let (min, max) = (
        min.and_then(|v| u32::try_from(v).ok()),
        max.and_then(|v| u32::try_from(v).ok()),
    );
    if protocol == "icmp" {
        for (field, attr, v) in [
            ("type", "port-range-min", min),
            ("code", "port-range-max", max),
        ] {
            if let Some(v) = v.filter(|v| *v > 255) {
                return bad(format!(
                    "Invalid value for ICMP {field} ({attr}): {v}. It must be 0 to 255."
                ));
            }
        }
        if let (None, Some(code)) = (min, max) {
            return bad(format!(
                "ICMP type (port-range-min) is missing when ICMP code (port-range-max) {code} is given."
            ));
        }
        return Ok((0, 0, min, max));
    }
    let ports_matter = matches!(protocol, "tcp" | "udp" | "6" | "17" | "33" | "132" | "136");
    if ports_matter {
        match (min, max) {
            (None, Some(_)) => {
                return bad(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max".into(),
                )
            }
            (Some(a), Some(b)) if a > b => {
                return bad(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max".into(),
                )
            }
            (Some(0), _) | (_, Some(0)) => return bad("Invalid value for port 0".into()),
            _ => {}
        }
    }
    let min = min.unwrap_or(0);
    Ok((min, max.unwrap_or(min), None, None))
}

/// nubo's rule for a Neutron one. Pure.
pub fn rule_request(r: &NewRule) -> Result<pb::SecurityGroupRule, ApiError> {
    let protocol = match &r.protocol {
        None | Some(Value::Null) => "any".to_string(),
        Some(Value::String(p)) => p.to_ascii_lowercase(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid protocol {other}"),
            ))
        }
    };
    let ethertype = match r.ethertype.as_deref().unwrap_or("IPv4") {
        "IPv4" => "ipv4",
        "IPv6" => "ipv6",
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid ethertype {other:?}"),
            ))
        }
    };
    if r.remote_ip_prefix.is_some() && r.remote_group_id.is_some() {
        return Err(ApiError::bad_request(
            S,
            "remote_ip_prefix and remote_group_id are exclusive",
        ));
    }
    // ICMP: port_range_min is the type, port_range_max the code.
    let protocol = match protocol.as_str() {
        "ipv6-icmp" | "icmpv6" if ethertype == "ipv6" => "icmp".to_string(),
        _ => protocol,
    };
    let (port_min, port_max, icmp_type, icmp_code) =
        neutron_ports(&protocol, r.port_range_min, r.port_range_max)?;
    Ok(pb::SecurityGroupRule {
        id: String::new(),
        direction: r.direction.clone(),
        ethertype: ethertype.into(),
        protocol,
        port_min,
        port_max,
        remote_cidr: r.remote_ip_prefix.clone().unwrap_or_default(),
        remote_group_id: r.remote_group_id.clone().unwrap_or_default(),
        icmp_type,
        icmp_code,
    })
}

async fn create_rule(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<RuleBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = crate::error::json_body(S, body)?;
    let r = &body.security_group_rule;
    let mut rule = rule_request(r)?;
    let mut c = up.security_groups(&headers)?;
    // The remote group, resolved as `nubo security group rule create
    // --remote-group` does: one that does not exist (whatever its
    // spelling) is Neutron's 404.
    if !rule.remote_group_id.is_empty() {
        let g = c
            .get(pb::GetRequest {
                r#ref: rule.remote_group_id.clone(),
                project: String::new(),
            })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::NotFound => ApiError::not_found(
                    S,
                    format!("Security group {} does not exist", rule.remote_group_id),
                ),
                _ => ApiError::from_status(S, &e),
            })?
            .into_inner();
        rule.remote_group_id = g.id;
    }
    let before = c
        .get(pb::GetRequest {
            r#ref: r.security_group_id.clone(),
            project: String::new(),
        })
        .await
        .api(S)?
        .into_inner();
    let after = c
        .add_rule(pb::AddRuleRequest {
            group_ref: r.security_group_id.clone(),
            project: String::new(),
            rule: Some(rule),
        })
        .await
        .api(S)?
        .into_inner();
    let added = after
        .rules
        .iter()
        .find(|x| !before.rules.iter().any(|b| b.id == x.id))
        .ok_or_else(|| {
            ApiError::new(
                S,
                StatusCode::CONFLICT,
                "Security group rule already exists.",
            )
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"security_group_rule": rule_view(&after, added)})),
    )
        .into_response())
}

async fn delete_rule(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (g, _) = find_rule(&up, &headers, &id).await?;
    up.security_groups(&headers)?
        .delete_rule(pb::DeleteRuleRequest {
            group_ref: g.id,
            project: String::new(),
            rule_id: id,
        })
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boolean_filters_read_python_and_json_spellings() {
        assert!(bool_filter(None, false));
        assert!(bool_filter(Some("True"), true));
        assert!(!bool_filter(Some("True"), false));
        assert!(bool_filter(Some("false"), false));
        assert!(bool_filter(Some("1"), true));
    }

    #[test]
    fn neutron_rules_map_to_nubo_rules() {
        let r: NewRule = serde_json::from_value(json!({
            "security_group_id": "g", "direction": "ingress", "ethertype": "IPv4",
            "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
            "remote_ip_prefix": "0.0.0.0/0"}))
        .unwrap();
        let n = rule_request(&r).unwrap();
        assert_eq!(
            (
                n.protocol.as_str(),
                n.port_min,
                n.port_max,
                n.remote_cidr.as_str()
            ),
            ("tcp", 22, 22, "0.0.0.0/0")
        );
        let any: NewRule =
            serde_json::from_value(json!({"security_group_id": "g", "direction": "egress"}))
                .unwrap();
        assert_eq!(rule_request(&any).unwrap().protocol, "any");
        let echo: NewRule = serde_json::from_value(json!({"security_group_id": "g",
            "direction": "ingress", "protocol": "icmp", "port_range_min": 0, "port_range_max": 0}))
        .unwrap();
        let n = rule_request(&echo).unwrap();
        assert_eq!(
            (n.icmp_type, n.icmp_code, n.port_min, n.port_max),
            (Some(0), Some(0), 0, 0)
        );
        let g = pb::SecurityGroup::default();
        let v = rule_view(&g, &n);
        assert_eq!(
            (v["port_range_min"].clone(), v["port_range_max"].clone()),
            (json!(0), json!(0))
        );
        let t11: NewRule = serde_json::from_value(json!({"security_group_id": "g",
            "direction": "ingress", "protocol": "icmp", "port_range_min": 11}))
        .unwrap();
        let v = rule_view(&g, &rule_request(&t11).unwrap());
        assert_eq!(
            (v["port_range_min"].clone(), v["port_range_max"].clone()),
            (json!(11), Value::Null)
        );
        let udp: NewRule = serde_json::from_value(json!({"security_group_id": "g",
            "direction": "ingress", "protocol": 17}))
        .unwrap();
        let v = rule_view(&g, &rule_request(&udp).unwrap());
        assert_eq!(v["protocol"], "17");
        let both: NewRule =
            serde_json::from_value(json!({"security_group_id": "g", "direction": "ingress",
            "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "x"}))
            .unwrap();
        assert_eq!(
            rule_request(&both).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn bad_ports_get_neutrons_wording() {
        let msg = |proto: &str, min: Value, max: Value| {
            let r: NewRule = serde_json::from_value(json!({"security_group_id": "g",
                "direction": "ingress", "protocol": proto,
                "port_range_min": min, "port_range_max": max}))
            .unwrap();
            rule_request(&r).map_err(|e| (e.status, e.message))
        };
        for (proto, min, max, want) in [
            ("tcp", json!(-16), json!(80), "Invalid value for port -16"),
            (
                "tcp",
                json!(80),
                json!(79),
                "port_range_min must be <= port_range_max",
            ),
            (
                "tcp",
                json!(80),
                json!(65536),
                "Invalid value for port 65536",
            ),
            (
                "tcp",
                Value::Null,
                json!(6),
                "port_range_min must be <= port_range_max",
            ),
            ("icmp", json!(1), json!(256), "Invalid value for ICMP code"),
            ("icmp", json!(-1), json!(25), "Invalid value for port -1"),
            (
                "icmp",
                Value::Null,
                json!(6),
                "ICMP type (port-range-min) is missing",
            ),
            ("icmp", json!(300), json!(1), "Invalid value for ICMP type"),
        ] {
            let (status, m) = msg(proto, min.clone(), max.clone()).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{proto} {min} {max}");
            assert!(m.contains(want), "{proto} {min} {max}: {m}");
        }
        // Positive controls: the edges are accepted.
        let ok = msg("tcp", json!(1), json!(65535)).unwrap();
        assert_eq!((ok.port_min, ok.port_max), (1, 65535));
        let ok = msg("icmp", json!(255), json!(255)).unwrap();
        assert_eq!((ok.icmp_type, ok.icmp_code), (Some(255), Some(255)));
    }
}
