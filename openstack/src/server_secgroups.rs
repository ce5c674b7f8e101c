//! A server's security groups in Compute v2.1: `GET
//! /servers/{id}/os-security-groups` and the `addSecurityGroup` /
//! `removeSecurityGroup` actions, over `Servers.AddSecurityGroup` /
//! `RemoveSecurityGroup` (the groups of the server's ports).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::compute::get_server;
use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::versioned;
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/os-security-groups` (merged into the
/// compute router).
pub fn router() -> Router<Upstream> {
    Router::new().route(
        "/v2.1/servers/{id}/os-security-groups",
        get(list_server_groups),
    )
}

/// The group name of an `addSecurityGroup`/`removeSecurityGroup` body
/// (`{"name": …}`), 400 as Nova when it is missing or empty. Pure.
pub fn action_group(action: &str, args: &Value) -> Result<String, ApiError> {
    let name = args
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    if !args.is_object() {
        return Err(ApiError::bad_request(
            S,
            format!("Missing parameter dict: {action} takes {{\"name\": …}}"),
        ));
    }
    if name.is_empty() {
        return Err(ApiError::bad_request(
            S,
            "Security group name cannot be empty",
        ));
    }
    Ok(name.to_string())
}

/// `addSecurityGroup` / `removeSecurityGroup` on server `id`.
pub(crate) async fn change(
    c: &mut pb::servers_client::ServersClient<crate::upstream::Chan>,
    id: String,
    add: bool,
    args: &Value,
) -> Result<(), ApiError> {
    let action = if add {
        "addSecurityGroup"
    } else {
        "removeSecurityGroup"
    };
    let req = pb::ServerSecurityGroupRequest {
        r#ref: id,
        project: String::new(),
        security_group: action_group(action, args)?,
    };
    if add {
        c.add_security_group(req).await.api(S)?;
    } else {
        c.remove_security_group(req).await.api(S)?;
    }
    Ok(())
}

/// A nubo rule as Nova's (ingress only: Nova's proxy of Neutron skips
/// egress rules). Pure.
pub fn nova_rule(g: &pb::SecurityGroup, r: &pb::SecurityGroupRule) -> Option<Value> {
    if r.direction != "ingress" {
        return None;
    }
    let (from, to) = if r.protocol == "icmp" {
        (
            r.icmp_type.map_or(-1, i64::from),
            r.icmp_code.map_or(-1, i64::from),
        )
    } else if r.port_min == 0 && r.port_max == 0 {
        (-1, -1)
    } else {
        (i64::from(r.port_min), i64::from(r.port_max))
    };
    let (group, ip_range) = if r.remote_group_id.is_empty() {
        let cidr = if r.remote_cidr.is_empty() {
            if r.ethertype == "ipv6" {
                "::/0"
            } else {
                "0.0.0.0/0"
            }
        } else {
            r.remote_cidr.as_str()
        };
        (json!({}), json!({"cidr": cidr}))
    } else {
        // The remote group by id (its name needs another lookup; Nova's
        // schema allows either key to be absent).
        (json!({"tenant_id": g.project}), json!({}))
    };
    Some(json!({
        "id": r.id,
        "parent_group_id": g.id,
        "ip_protocol": if r.protocol == "any" { Value::Null } else { json!(r.protocol) },
        "from_port": from,
        "to_port": to,
        "group": group,
        "ip_range": ip_range,
    }))
}

/// A security group as Nova shows it. Pure.
pub fn nova_group(g: &pb::SecurityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "tenant_id": g.project,
        "rules": g.rules.iter().filter_map(|r| nova_rule(g, r)).collect::<Vec<_>>(),
    })
}

async fn list_server_groups(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    let mut c = up.security_groups(&headers)?;
    let mut out = Vec::with_capacity(s.security_groups.len());
    for g in &s.security_groups {
        let got = c
            .get(pb::GetRequest {
                r#ref: g.id.clone(),
                project: s.project.clone(),
            })
            .await;
        match got {
            Ok(g) => out.push(nova_group(&g.into_inner())),
            // Deleted since the server was read: not its group any more.
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(ApiError::from_status(S, &e)),
        }
    }
    Ok(versioned(Json(json!({"security_groups": out}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_bodies_need_a_name() {
        assert_eq!(
            action_group("addSecurityGroup", &json!({"name": " web "})).unwrap(),
            "web"
        );
        for bad in [json!({}), json!({"name": ""}), json!("web"), Value::Null] {
            assert_eq!(
                action_group("addSecurityGroup", &bad).unwrap_err().status,
                axum::http::StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn groups_show_their_ingress_rules_as_nova() {
        let g = pb::SecurityGroup {
            id: "g".into(),
            name: "web".into(),
            project: "p".into(),
            rules: vec![
                pb::SecurityGroupRule {
                    id: "r1".into(),
                    direction: "ingress".into(),
                    ethertype: "ipv4".into(),
                    protocol: "tcp".into(),
                    port_min: 22,
                    port_max: 22,
                    remote_cidr: "10.0.0.0/8".into(),
                    ..Default::default()
                },
                pb::SecurityGroupRule {
                    id: "r2".into(),
                    direction: "egress".into(),
                    protocol: "any".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v = nova_group(&g);
        assert_eq!(v["rules"].as_array().map(Vec::len), Some(1));
        let r = &v["rules"][0];
        assert_eq!(
            (
                r["from_port"].clone(),
                r["to_port"].clone(),
                r["ip_range"]["cidr"].clone()
            ),
            (json!(22), json!(22), json!("10.0.0.0/8"))
        );
        assert_eq!(
            (r["ip_protocol"].clone(), r["parent_group_id"].clone()),
            (json!("tcp"), json!("g"))
        );
    }
}
