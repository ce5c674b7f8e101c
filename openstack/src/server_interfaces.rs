//! `os-interface` of Compute v2.1: a server's ports as interface
//! attachments — list, show, attach (an existing port by `port_id`, or a
//! new port on `net_id` with an optional `fixed_ips` address) and detach,
//! over `Servers.AddPort` / `Servers.RemovePort` (the node's agent
//! hot-plugs the NIC). Each attachment is the port's own record: its
//! fixed IPs on their subnets, and `port_state` its Neutron status
//! (`ACTIVE` once up and bound to the server's node, `DOWN` while
//! administratively down).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::compute::get_server;
use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::network::ports::{fixed_ips_view, port_status};
use crate::upstream::get_req;
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/os-interface[/{port_id}]` (merged into the
/// compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/v2.1/servers/{id}/os-interface", get(list).post(attach))
        .route(
            "/v2.1/servers/{id}/os-interface/{port_id}",
            get(show).delete(detach),
        )
}

/// An interface attachment: a port of a server. Pure.
pub fn attachment_view(p: &pb::Port) -> Value {
    json!({
        "port_id": p.id,
        "net_id": p.network_id,
        "mac_addr": p.mac,
        "fixed_ips": fixed_ips_view(p),
        "port_state": port_status(p),
    })
}

/// The port `id` of server `s` (by the server's addresses, so a port the
/// server does not have is Nova's 404 naming it).
async fn server_port(
    up: &Upstream,
    headers: &HeaderMap,
    s: &pb::Server,
    port_id: &str,
) -> Result<pb::Port, ApiError> {
    if !s.addresses.iter().any(|a| a.port_id == port_id) {
        return Err(ApiError::not_found(
            S,
            format!(
                "Instance {} has no interface attached to port {port_id}",
                s.id
            ),
        ));
    }
    Ok(up
        .ports(headers)?
        .get(get_req(port_id.to_string()))
        .await
        .api(S)?
        .into_inner())
}

/// What an attach body asks for. Pure: `port_id` or `net_id` (with at
/// most one `fixed_ips` address), or neither (the one network the
/// project may use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachRequest {
    /// An existing port.
    Port(String),
    /// A new port on a network, at an address if given.
    Network(String, Option<String>),
    /// A new port on the project's only network.
    Any,
}

/// Parses the body of `POST …/os-interface`. Pure.
pub fn attach_request(body: &Value) -> Result<AttachRequest, ApiError> {
    let a = match body.get("interfaceAttachment") {
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::bad_request(
                S,
                "interfaceAttachment must be an object",
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                S,
                "the body needs an interfaceAttachment object",
            ))
        }
    };
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match a.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(ApiError::bad_request(
                S,
                format!("{k} must be a non-empty string"),
            )),
        }
    };
    let port = text("port_id")?;
    let net = text("net_id")?;
    let fixed = match a.get("fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ips)) => match ips.as_slice() {
            [] => None,
            [one] => Some(
                one.get("ip_address")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        ApiError::bad_request(S, "fixed_ips entries need an ip_address")
                    })?,
            ),
            _ => {
                return Err(ApiError::bad_request(
                    S,
                    "fixed_ips takes at most one address",
                ))
            }
        },
        Some(_) => return Err(ApiError::bad_request(S, "fixed_ips must be a list")),
    };
    match (port, net, fixed) {
        (Some(_), Some(_), _) => Err(ApiError::bad_request(
            S,
            "give either port_id or net_id, not both",
        )),
        (Some(_), None, Some(_)) | (None, None, Some(_)) => Err(ApiError::bad_request(
            S,
            "fixed_ips needs net_id (a port has its addresses already)",
        )),
        (Some(p), None, None) => Ok(AttachRequest::Port(p)),
        (None, Some(n), ip) => Ok(AttachRequest::Network(n, ip)),
        (None, None, None) => Ok(AttachRequest::Any),
    }
}

/// The network an attach without `net_id` uses: the project's only
/// internal network, else the only shared one. Pure.
pub fn only_network(project: &str, nets: &[pb::Network]) -> Result<String, ApiError> {
    let internal = |n: &&pb::Network| !n.external;
    let own: Vec<&pb::Network> = nets
        .iter()
        .filter(internal)
        .filter(|n| n.project == project)
        .collect();
    let shared: Vec<&pb::Network> = nets.iter().filter(internal).filter(|n| n.shared).collect();
    match (own.as_slice(), shared.as_slice()) {
        ([one], _) | ([], [one]) => Ok(one.id.clone()),
        ([], []) => Err(ApiError::bad_request(
            S,
            "No networks are available to attach an interface to.",
        )),
        _ => Err(ApiError::bad_request(
            S,
            "Multiple possible networks found, use a Network ID to be more specific.",
        )),
    }
}

async fn list(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    let mut ids: Vec<&str> = Vec::new();
    for a in &s.addresses {
        if !ids.contains(&a.port_id.as_str()) {
            ids.push(&a.port_id);
        }
    }
    let mut v = Vec::with_capacity(ids.len());
    for id in ids {
        v.push(attachment_view(&server_port(&up, &headers, &s, id).await?));
    }
    Ok(versioned(Json(json!({"interfaceAttachments": v}))))
}

async fn show(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, port_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    let p = server_port(&up, &headers, &s, &port_id).await?;
    Ok(versioned(Json(
        json!({"interfaceAttachment": attachment_view(&p)}),
    )))
}

async fn attach(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let what = attach_request(&body)?;
    let mut req = pb::ServerPortRequest {
        r#ref: id.clone(),
        ..Default::default()
    };
    match what {
        AttachRequest::Port(p) => req.port = p,
        AttachRequest::Network(n, ip) => {
            req.network = n;
            req.fixed_ip = ip.unwrap_or_default();
        }
        AttachRequest::Any => {
            let s = get_server(&up, &headers, id).await?;
            let nets = crate::list_all!(up.networks(&headers)?, networks, S)?;
            req.network = only_network(&s.project, &nets)?;
        }
    }
    let p = up
        .servers(&headers)?
        .add_port(req)
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(json!({
        "interfaceAttachment": attachment_view(&p)
    }))))
}

async fn detach(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, port_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.servers(&headers)?
        .remove_port(pb::ServerPortRequest {
            r#ref: id,
            port: port_id,
            ..Default::default()
        })
        .await
        .api(S)?;
    Ok(versioned(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_bodies_are_parsed_as_nova_does() {
        let p = |v: Value| attach_request(&v);
        assert_eq!(
            p(json!({"interfaceAttachment": {"port_id": "p1"}})).unwrap(),
            AttachRequest::Port("p1".into())
        );
        assert_eq!(
            p(json!({"interfaceAttachment": {"net_id": "n1",
                "fixed_ips": [{"ip_address": "10.0.0.9"}]}}))
            .unwrap(),
            AttachRequest::Network("n1".into(), Some("10.0.0.9".into()))
        );
        assert_eq!(
            p(json!({"interfaceAttachment": {}})).unwrap(),
            AttachRequest::Any
        );
        for bad in [
            json!({}),
            json!({"interfaceAttachment": "x"}),
            json!({"interfaceAttachment": {"port_id": "p", "net_id": "n"}}),
            json!({"interfaceAttachment": {"port_id": "p", "fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
            json!({"interfaceAttachment": {"fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
            json!({"interfaceAttachment": {"net_id": "n", "fixed_ips": [{"ip_address": "a"}, {"ip_address": "b"}]}}),
            json!({"interfaceAttachment": {"net_id": 5}}),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_attachment_shows_the_port_and_its_state() {
        let mut p = pb::Port {
            id: "p1".into(),
            network_id: "n1".into(),
            mac: "fa:16:3e:00:00:01".into(),
            ip: "10.0.0.5".into(),
            fixed_ips: vec![
                pb::FixedIp {
                    subnet_id: "s1".into(),
                    ip: "10.0.0.5".into(),
                },
                pb::FixedIp {
                    subnet_id: "s2".into(),
                    ip: "10.1.0.5".into(),
                },
            ],
            device_id: "srv".into(),
            node: "hv-1".into(),
            admin_state_up: true,
            ..Default::default()
        };
        let v = attachment_view(&p);
        assert_eq!(
            (v["port_id"].as_str(), v["net_id"].as_str()),
            (Some("p1"), Some("n1"))
        );
        assert_eq!(v["fixed_ips"][1]["subnet_id"], "s2");
        assert_eq!(v["fixed_ips"][1]["ip_address"], "10.1.0.5");
        assert_eq!(v["port_state"], "ACTIVE");
        // Administratively down, or not bound to a node yet: DOWN.
        p.admin_state_up = false;
        assert_eq!(attachment_view(&p)["port_state"], "DOWN");
        p.admin_state_up = true;
        p.node.clear();
        assert_eq!(attachment_view(&p)["port_state"], "DOWN");
    }

    #[test]
    fn without_a_network_the_only_one_is_used() {
        let net = |id: &str, project: &str, external: bool, shared: bool| pb::Network {
            id: id.into(),
            project: project.into(),
            external,
            shared,
            ..Default::default()
        };
        let ext = net("ext", "admin", true, true);
        let own = net("own", "p", false, false);
        assert_eq!(
            only_network("p", &[ext.clone(), own.clone()]).unwrap(),
            "own"
        );
        let shared = net("sh", "admin", false, true);
        assert_eq!(
            only_network("p", &[ext.clone(), shared.clone()]).unwrap(),
            "sh"
        );
        let own2 = net("own2", "p", false, false);
        assert!(only_network("p", &[own, own2]).is_err());
        assert!(only_network("p", &[ext]).is_err());
    }
}
