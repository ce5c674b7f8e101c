//! Nova's `os-server-groups` (2.1) over nubo's `ServerGroups`, and
//! `os-availability-zone` over `Servers.ListZones` (everyone) and, for
//! its detail, the cloud admins' `Nodes.List`.
//!
//! A server group has one policy in nubo (`affinity` or `anti-affinity`),
//! shown as Nova 2.1's one-element `policies`; its `members` are the
//! caller's servers placed in it (`Server.server_group_id`). Group
//! metadata does not exist (always `{}`; a create with metadata is a 400).
//! A server joins a group at create, through the scheduler hint `group`
//! ([`crate::compute`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/os-server-groups…` and `/os-availability-zone…`
/// (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v2.1/os-server-groups",
            get(list_groups).post(create_group),
        )
        .route(
            "/v2.1/os-server-groups/{id}",
            get(show_group).delete(delete_group),
        )
        .route("/v2.1/os-availability-zone", get(list_zones))
        .route("/v2.1/os-availability-zone/detail", get(list_zones_detail))
}

/// Nova's 2.1 view of group `g` with its member servers' ids. Pure.
pub fn group_view(g: &pb::ServerGroup, members: Vec<String>) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "policies": [g.policy],
        "members": members,
        "metadata": {},
    })
}

/// The ids of `servers` placed in group `id`. Pure.
pub fn members_of(servers: &[pb::Server], id: &str) -> Vec<String> {
    servers
        .iter()
        .filter(|s| s.server_group_id == id)
        .map(|s| s.id.clone())
        .collect()
}

async fn list_groups(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let groups = crate::list_all!(up.server_groups(&headers)?, server_groups, S)?;
    let all = crate::compute::all_servers(&up, &headers).await?;
    let views: Vec<Value> = groups
        .iter()
        .map(|g| group_view(g, members_of(&all, &g.id)))
        .collect();
    Ok(versioned(Json(json!({"server_groups": views}))))
}

async fn show_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let g = up
        .server_groups(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let members = members_of(&crate::compute::all_servers(&up, &headers).await?, &g.id);
    Ok(versioned(Json(
        json!({"server_group": group_view(&g, members)}),
    )))
}

/// `POST /os-server-groups` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    server_group: NewGroup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    policies: Vec<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// nubo's request for a Nova 2.1 group create: exactly one policy,
/// `affinity` or `anti-affinity` (the soft ones need 2.15, as in Nova).
/// Pure.
fn group_request(b: CreateBody) -> Result<pb::CreateServerGroupRequest, ApiError> {
    let g = b.server_group;
    let policy = match g.policies.as_slice() {
        [p] if p == "affinity" || p == "anti-affinity" => p.clone(),
        [p] if p.starts_with("soft-") => {
            return Err(ApiError::bad_request(
                S,
                format!("Invalid input for field/attribute policies: {p} needs microversion 2.15; nubo serves 2.1 (affinity, anti-affinity)"),
            ))
        }
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("Invalid input for field/attribute policies: {other:?} is not one of [\"affinity\"] or [\"anti-affinity\"]"),
            ))
        }
    };
    if g.metadata.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "server group metadata is not supported (nubo)",
        ));
    }
    if g.name.trim().is_empty() || g.name.len() > 255 {
        return Err(ApiError::bad_request(
            S,
            "Invalid input for field/attribute name: 1 to 255 characters, not only blanks",
        ));
    }
    Ok(pb::CreateServerGroupRequest {
        name: g.name,
        project: String::new(),
        policy,
    })
}

async fn create_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let req = group_request(json_body(S, body)?)?;
    let g = up
        .server_groups(&headers)?
        .create(req)
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(
        json!({"server_group": group_view(&g, Vec::new())}),
    )))
}

async fn delete_group(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.server_groups(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(versioned(StatusCode::NO_CONTENT))
}

/// Nova's availability zones of `nodes`: one entry per zone (sorted),
/// available when one of its nodes is alive and enabled; with `detail`,
/// `hosts` maps each node to a `nova-compute` service. Pure.
pub fn zones_view(nodes: &[pb::Node], detail: bool) -> Value {
    if !detail {
        let zones: Vec<pb::Zone> = nodes
            .iter()
            .map(|n| pb::Zone {
                name: n.availability_zone.clone(),
                available: n.alive && n.enabled,
            })
            .collect();
        return zone_names_view(&zones);
    }
    let mut zones: std::collections::BTreeMap<&str, Vec<&pb::Node>> = Default::default();
    for n in nodes {
        let z = if n.availability_zone.is_empty() {
            "nova"
        } else {
            n.availability_zone.as_str()
        };
        zones.entry(z).or_default().push(n);
    }
    let info: Vec<Value> = zones
        .into_iter()
        .map(|(zone, nodes)| {
            let available = nodes.iter().any(|n| n.alive && n.enabled);
            let hosts = if detail {
                let m: Map<String, Value> = nodes
                    .iter()
                    .map(|n| {
                        let service = json!({"nova-compute": {
                            "available": n.alive,
                            "active": n.enabled,
                            "updated_at": Value::Null,
                        }});
                        (n.name.clone(), service)
                    })
                    .collect();
                Value::Object(m)
            } else {
                Value::Null
            };
            json!({"zoneName": zone, "zoneState": {"available": available}, "hosts": hosts})
        })
        .collect();
    json!({"availabilityZoneInfo": info})
}

async fn zones(up: &Upstream, headers: &HeaderMap, detail: bool) -> Result<Response, ApiError> {
    let nodes = crate::hypervisors::nodes(up, headers).await.map_err(|e| {
        if e.status == StatusCode::FORBIDDEN {
            ApiError::new(
                S,
                StatusCode::FORBIDDEN,
                "availability zones are listed from nubo's nodes, which only cloud admins may read (nubo)",
            )
        } else {
            e
        }
    })?;
    Ok(versioned(Json(zones_view(&nodes, detail))))
}

/// `GET /os-availability-zone`: the zone names for everyone
/// (`Servers.ListZones`), as Nova; `hosts` is null.
async fn list_zones(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let zones = up
        .servers(&headers)?
        .list_zones(pb::ListRequest::default())
        .await
        .api(S)?
        .into_inner()
        .zones;
    Ok(versioned(Json(zone_names_view(&zones))))
}

/// Nova's availability zone list (no hosts) of nubo's zones ("" is
/// `nova`, the zone of nodes registered without one). Pure.
pub fn zone_names_view(zones: &[pb::Zone]) -> Value {
    let mut merged: std::collections::BTreeMap<&str, bool> = Default::default();
    for z in zones {
        let name = if z.name.is_empty() {
            "nova"
        } else {
            z.name.as_str()
        };
        *merged.entry(name).or_default() |= z.available;
    }
    let info: Vec<Value> = merged
        .into_iter()
        .map(|(zone, available)| {
            json!({"zoneName": zone, "zoneState": {"available": available}, "hosts": Value::Null})
        })
        .collect();
    json!({"availabilityZoneInfo": info})
}

async fn list_zones_detail(
    State(up): State<Upstream>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    zones(&up, &headers, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<pb::CreateServerGroupRequest, ApiError> {
        group_request(
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?,
        )
    }

    #[test]
    fn groups_map_to_one_policy_and_list_their_members() {
        let r =
            parse(json!({"server_group": {"name": "g", "policies": ["anti-affinity"]}})).unwrap();
        assert_eq!((r.name.as_str(), r.policy.as_str()), ("g", "anti-affinity"));
        for (v, text) in [
            (
                json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}}),
                "2.15",
            ),
            (
                json!({"server_group": {"name": "g", "policies": ["affinity", "anti-affinity"]}}),
                "not one of",
            ),
            (
                json!({"server_group": {"name": "g", "policies": []}}),
                "not one of",
            ),
            (
                json!({"server_group": {"name": "", "policies": ["affinity"]}}),
                "name",
            ),
            (
                json!({"server_group": {"name": "g", "policies": ["affinity"], "metadata": {"a": "b"}}}),
                "metadata",
            ),
            (
                json!({"server_group": {"name": "g", "policy": "affinity"}}),
                "unknown field",
            ),
        ] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
        let g = pb::ServerGroup {
            id: "g1".into(),
            name: "g".into(),
            policy: "affinity".into(),
            ..Default::default()
        };
        let servers = [("s1", "g1"), ("s2", ""), ("s3", "g1")].map(|(id, g)| pb::Server {
            id: id.into(),
            server_group_id: g.into(),
            ..Default::default()
        });
        let v = group_view(&g, members_of(&servers, "g1"));
        assert_eq!(v["members"], json!(["s1", "s3"]));
        assert_eq!(v["policies"], json!(["affinity"]));
        assert_eq!(v["metadata"], json!({}));
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "members", "metadata", "name", "policies"]);
    }

    #[test]
    fn zones_are_available_when_one_node_is_up() {
        let node = |name: &str, zone: &str, alive: bool| pb::Node {
            name: name.into(),
            availability_zone: zone.into(),
            alive,
            enabled: true,
            ..Default::default()
        };
        let nodes = [
            node("hv1", "az-1", true),
            node("hv2", "az-2", false),
            node("hv3", "", true),
        ];
        let v = zones_view(&nodes, false);
        let info = v["availabilityZoneInfo"].as_array().unwrap();
        let names: Vec<&str> = info
            .iter()
            .map(|z| z["zoneName"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["az-1", "az-2", "nova"]);
        assert_eq!(info[0]["zoneState"]["available"], true);
        assert_eq!(info[1]["zoneState"]["available"], false);
        assert!(info[0]["hosts"].is_null());
        let d = zones_view(&nodes, true);
        assert_eq!(
            d["availabilityZoneInfo"][1]["hosts"]["hv2"]["nova-compute"]["available"],
            false
        );
    }
}
