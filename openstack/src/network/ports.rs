//! Neutron ports over nubo's `Ports`: list, show, create (name,
//! description, `admin_state_up`, a chosen `mac_address`, security groups
//! — `[]` = none — and fixed IPs), update of the same fields, delete. A
//! port's fixed addresses are each on a subnet of its network.

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

/// Neutron's status of a port: `ACTIVE` when administratively up and
/// either a router interface or plugged into a server and bound to its
/// node, else `DOWN`. Pure.
pub fn port_status(p: &pb::Port) -> &'static str {
    let plugged = !p.device_id.is_empty() && !p.node.is_empty();
    if p.admin_state_up && (plugged || !p.router_id.is_empty()) {
        "ACTIVE"
    } else {
        "DOWN"
    }
}

/// The Neutron view of a port. Pure.
pub fn port_view(p: &pb::Port) -> Value {
    let plugged = !p.device_id.is_empty();
    let routed = !p.router_id.is_empty();
    json!({
        "id": p.id,
        "name": p.name,
        "network_id": p.network_id,
        "tenant_id": p.project,
        "project_id": p.project,
        "mac_address": p.mac,
        // A port made while its network had no subnet has no address.
        "fixed_ips": fixed_ips_view(p),
        "security_groups": p.security_group_ids,
        "port_security_enabled": p.port_security,
        "device_id": if routed { &p.router_id } else { &p.device_id },
        "device_owner": match (plugged, routed) {
            (true, _) => "compute:nova",
            (false, true) => "network:router_interface_distributed",
            (false, false) => "",
        },
        // The server's node once plugged; before, the host an admin bound it to.
        "binding:host_id": if p.node.is_empty() { &p.requested_host } else { &p.node },
        "binding:vif_type": if p.node.is_empty() { "unbound" } else { "bridge" },
        "binding:vnic_type": "normal",
        // Neutron's linuxbridge details: the node's firewall filters the
        // port (port security), on a Linux bridge.
        "binding:vif_details": if p.node.is_empty() {
            json!({})
        } else {
            json!({"port_filter": p.port_security, "connectivity": "l2"})
        },
        "status": port_status(p),
        "admin_state_up": p.admin_state_up,
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "description": p.description,
        "created_at": p.created_at,
        "tags": [],
    })
}

/// A port's `fixed_ips` (a port from a reply without them: its one address
/// on the network's first subnet, whose id is the network's). Pure.
/// A port's `fixed_ips`: each address with its subnet. Pure.
pub fn fixed_ips_view(p: &pb::Port) -> Value {
    if !p.fixed_ips.is_empty() {
        return p
            .fixed_ips
            .iter()
            .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip}))
            .collect();
    }
    if p.ip.is_empty() {
        json!([])
    } else {
        json!([{"subnet_id": p.network_id, "ip_address": p.ip}])
    }
}

/// nubo's fixed IPs for Neutron's. Pure.
fn fixed_ips_request(f: &[FixedIp]) -> Vec<pb::FixedIp> {
    f.iter()
        .map(|x| pb::FixedIp {
            subnet_id: x.subnet_id.clone().unwrap_or_default(),
            ip: x.ip_address.clone().unwrap_or_default(),
        })
        .collect()
}

/// Neutron's port list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct PortFilters {
    name: Option<String>,
    id: Option<String>,
    network_id: Option<String>,
    device_id: Option<String>,
    device_owner: Option<String>,
    mac_address: Option<String>,
    /// `ip_address=A`, `ip_address_substr=S` or `subnet_id=N`.
    fixed_ips: Option<String>,
}

/// Whether port view `v` has a fixed IP matching Neutron's `fixed_ips`
/// filter `f` (`ip_address=A`, `ip_address_substr=S`, `subnet_id=N`; an
/// unknown form matches nothing). Pure.
fn fixed_ip_matches(v: &Value, f: &str) -> bool {
    let ips = v["fixed_ips"].as_array().cloned().unwrap_or_default();
    let field = |ip: &Value, k: &str| ip[k].as_str().unwrap_or_default().to_string();
    match f.split_once('=') {
        Some(("ip_address", a)) => ips.iter().any(|ip| field(ip, "ip_address") == a),
        Some(("ip_address_substr", s)) => ips.iter().any(|ip| field(ip, "ip_address").contains(s)),
        Some(("subnet_id", n)) => ips.iter().any(|ip| field(ip, "subnet_id") == n),
        _ => false,
    }
}

/// `GET /v2.0/ports`.
pub(crate) async fn list_ports(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<PortFilters>,
) -> Result<Response, ApiError> {
    let ports = crate::list_all!(
        up.ports(&headers)?,
        ports,
        S,
        super::routers::every_project()
    )?;
    let interfaces = super::routers::interface_ports(&up, &headers).await?;
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let views: Vec<Value> = ports
        .iter()
        .map(port_view)
        .chain(interfaces)
        .filter(|p| f.name.as_ref().is_none_or(|x| text(p, "name") == *x))
        .filter(|p| f.id.as_ref().is_none_or(|x| text(p, "id") == *x))
        .filter(|p| {
            f.network_id
                .as_ref()
                .is_none_or(|x| text(p, "network_id") == *x)
        })
        .filter(|p| {
            f.device_id
                .as_ref()
                .is_none_or(|x| text(p, "device_id") == *x)
        })
        .filter(|p| {
            f.device_owner
                .as_ref()
                .is_none_or(|x| text(p, "device_owner") == *x)
        })
        .filter(|p| {
            f.mac_address
                .as_ref()
                .is_none_or(|x| text(p, "mac_address").eq_ignore_ascii_case(x))
        })
        .filter(|p| f.fixed_ips.as_ref().is_none_or(|x| fixed_ip_matches(p, x)))
        .collect();
    Ok(Json(json!({"ports": views})).into_response())
}

/// `GET /v2.0/ports/{id}`.
pub(crate) async fn show_port(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match up
        .ports(&headers)?
        .get(crate::upstream::get_req(id.clone()))
        .await
    {
        Ok(p) => Ok(Json(json!({"port": port_view(&p.into_inner())})).into_response()),
        // A router's interface has no port record (module `routers`).
        Err(s) if s.code() == tonic::Code::NotFound => {
            match super::routers::interface_port(&up, &headers, &id).await? {
                Some(v) => Ok(Json(json!({"port": v})).into_response()),
                None => Err(ApiError::from_status(S, &s)),
            }
        }
        Err(s) => Err(ApiError::from_status(S, &s)),
    }
}

/// `POST /v2.0/ports` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PortBody {
    port: Option<NewPort>,
    ports: Option<Vec<NewPort>>,
}

/// A fixed address as a client asks for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedIp {
    ip_address: Option<String>,
    subnet_id: Option<String>,
}

/// The attributes of a Neutron port nubo understands.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPort {
    network_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    admin_state_up: Option<bool>,
    fixed_ips: Option<Vec<FixedIp>>,
    security_groups: Option<Vec<String>>,
    port_security_enabled: Option<bool>,
    mac_address: Option<String>,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    device_owner: String,
    #[serde(rename = "binding:host_id")]
    host_id: Option<String>,
    #[serde(rename = "binding:vnic_type")]
    vnic_type: Option<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
}

/// nubo's request for a Neutron port. Pure.
fn port_request(p: NewPort) -> Result<pb::CreatePortRequest, ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request(S, format!("{m} (nubo)")));
    if !p.device_id.is_empty() || !p.device_owner.is_empty() {
        return bad("device_id and device_owner are set by nubo when a server plugs the port");
    }
    if p.vnic_type.as_deref().is_some_and(|v| v != "normal") {
        return bad("only binding:vnic_type normal is supported");
    }
    let fixed_ips = fixed_ips_request(p.fixed_ips.as_deref().unwrap_or_default());
    let no_port_security = p.port_security_enabled == Some(false);
    // Absent: the project's default group; `[]`: no group at all.
    let no_security_groups = p.security_groups.as_ref().is_some_and(Vec::is_empty);
    let security_groups = p.security_groups.unwrap_or_default();
    if no_port_security && !security_groups.is_empty() {
        return Err(ApiError::bad_request(
            S,
            "Port has security group associated. Cannot disable port security or ip address until security group is removed",
        ));
    }
    Ok(pb::CreatePortRequest {
        name: p.name,
        project: p.project_id.unwrap_or_default(),
        network_ref: p.network_id,
        // The addresses are in `fixed_ips`.
        ip: String::new(),
        fixed_ips,
        security_groups,
        no_port_security,
        description: p.description,
        disabled: p.admin_state_up == Some(false),
        mac: p.mac_address.unwrap_or_default(),
        no_security_groups,
        host: p.host_id.unwrap_or_default(),
    })
}

/// `POST /v2.0/ports`.
pub(crate) async fn create_port(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<PortBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let (requests, many) = super::bulk::requests(b.port, b.ports, "port", port_request)?;
    let client = up.ports(&headers)?;
    let made = super::bulk::create_all(
        requests,
        |r| {
            let mut c = client.clone();
            async move { Ok(c.create(r).await.api(S)?.into_inner()) }
        },
        |p| {
            let mut c = client.clone();
            let id = p.id.clone();
            async move {
                c.delete(crate::upstream::delete_req(id)).await.api(S)?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(super::bulk::created(
        "port",
        many,
        made.iter().map(port_view).collect(),
    ))
}

/// `PUT /v2.0/ports/{id}` body: nubo changes a port's name, description,
/// `admin_state_up` and security groups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    port: PortUpdate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortUpdate {
    security_groups: Option<Vec<String>>,
    name: Option<String>,
    description: Option<String>,
    admin_state_up: Option<bool>,
    /// Accepted when it names the addresses the port has.
    fixed_ips: Option<Vec<FixedIp>>,
    /// Cloud admins: the host it is bound to before a server plugs it.
    #[serde(rename = "binding:host_id")]
    host_id: Option<String>,
}

/// Whether `asked` names exactly the fixed IPs of port view `v` (each by its
/// subnet, its address or both). Pure.
fn same_fixed_ips(v: &Value, asked: &[FixedIp]) -> bool {
    let have = v["fixed_ips"].as_array().cloned().unwrap_or_default();
    have.len() == asked.len()
        && have.iter().zip(asked).all(|(h, a)| {
            a.subnet_id.as_ref().is_none_or(|s| h["subnet_id"] == *s)
                && a.ip_address
                    .as_ref()
                    .is_none_or(|ip| h["ip_address"] == *ip)
        })
}

/// `PUT /v2.0/ports/{id}`.
pub(crate) async fn update_port(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut c = up.ports(&headers)?;
    let b = match crate::error::json_body(S, body) {
        Ok(b) => b,
        Err(e) => {
            // A port that does not exist is a 404 whatever the body asks.
            c.get(crate::upstream::get_req(id)).await.api(S)?;
            return Err(ApiError::bad_request(
                S,
                format!(
                    "{} (nubo updates a port's name, description, admin_state_up, security_groups and fixed_ips)",
                    e.message
                ),
            ));
        }
    };
    let current = match c.get(crate::upstream::get_req(id.clone())).await {
        Ok(p) => Some(p.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(ApiError::from_status(S, &s)),
    };
    let view = match &current {
        Some(p) => port_view(p),
        // A router's interface on a network joined by its subnet.
        None => super::routers::interface_port(&up, &headers, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(S, format!("Port {id} could not be found")))?,
    };
    let fixed_ips = b
        .port
        .fixed_ips
        .as_deref()
        .filter(|asked| !same_fixed_ips(&view, asked));
    if fixed_ips.is_some() && current.is_none() {
        return Err(ApiError::bad_request(
            S,
            "a router interface port's address is the router's (nubo)",
        ));
    }
    let fixed_ips = fixed_ips.map(fixed_ips_request);
    let u = b.port;
    let changes = u.security_groups.is_some()
        || u.name.is_some()
        || u.description.is_some()
        || u.admin_state_up.is_some()
        || u.host_id.is_some()
        || fixed_ips.is_some();
    let p = match (changes, current) {
        (true, Some(_)) => {
            let groups = u.security_groups;
            c.update(pb::UpdatePortRequest {
                r#ref: id,
                project: String::new(),
                no_security_groups: groups.as_ref().is_some_and(Vec::is_empty),
                security_groups: groups.unwrap_or_default(),
                name: u.name,
                description: u.description,
                admin_state_up: u.admin_state_up,
                set_fixed_ips: fixed_ips.is_some(),
                fixed_ips: fixed_ips.unwrap_or_default(),
                host: u.host_id,
            })
            .await
            .api(S)?
            .into_inner()
        }
        (true, None) => {
            return Err(ApiError::bad_request(
                S,
                "a router interface port's name, description, state and security groups are the router's (nubo)",
            ))
        }
        (false, Some(p)) => p,
        (false, None) => return Ok(Json(json!({"port": view})).into_response()),
    };
    Ok(Json(json!({"port": port_view(&p)})).into_response())
}

/// `DELETE /v2.0/ports/{id}`.
pub(crate) async fn delete_port(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    up.ports(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<pb::CreatePortRequest, ApiError> {
        let b: PortBody =
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?;
        port_request(b.port.expect("one port"))
    }

    #[test]
    fn binding_host_id_is_the_requested_host_until_a_server_plugs_the_port() {
        let r = parse(json!({"port": {"network_id": "n", "binding:host_id": "hv-1"}})).unwrap();
        assert_eq!(r.host, "hv-1");
        let mut p = pb::Port {
            requested_host: "hv-1".into(),
            ..Default::default()
        };
        assert_eq!(port_view(&p)["binding:host_id"], "hv-1");
        assert_eq!(port_view(&p)["binding:vif_type"], "unbound");
        p.node = "hv-2".into();
        p.device_id = "i".into();
        assert_eq!(port_view(&p)["binding:host_id"], "hv-2");
    }

    #[test]
    fn ports_map_to_nubo_or_are_refused_with_the_reason() {
        let r = parse(json!({"port": {"network_id": "n", "name": "p1",
            "fixed_ips": [{"ip_address": "10.0.0.9", "subnet_id": "n"}],
            "security_groups": ["web"]}}))
        .unwrap();
        assert_eq!(
            (
                r.network_ref.as_str(),
                r.fixed_ips.clone(),
                r.security_groups.clone(),
                r.no_port_security
            ),
            (
                "n",
                vec![pb::FixedIp {
                    subnet_id: "n".into(),
                    ip: "10.0.0.9".into()
                }],
                vec!["web".to_string()],
                false
            )
        );
        let r = parse(json!({"port": {"network_id": "n",
            "fixed_ips": [{"subnet_id": "s1"}, {"ip_address": "10.1.0.9"}]}}))
        .unwrap();
        assert_eq!(
            r.fixed_ips
                .iter()
                .map(|f| (f.subnet_id.as_str(), f.ip.as_str()))
                .collect::<Vec<_>>(),
            vec![("s1", ""), ("", "10.1.0.9")]
        );
        let r =
            parse(json!({"port": {"network_id": "n", "port_security_enabled": false}})).unwrap();
        assert!(r.no_port_security);
        assert!(!r.no_security_groups && !r.disabled && r.mac.is_empty());
        let r = parse(json!({"port": {"network_id": "n", "security_groups": [],
            "admin_state_up": false, "mac_address": "fa:16:3e:00:00:07", "description": "d"}}))
        .unwrap();
        assert!(r.no_security_groups && r.disabled, "{r:?}");
        assert_eq!(
            (r.mac.as_str(), r.description.as_str()),
            ("fa:16:3e:00:00:07", "d")
        );
        for (v, text) in [
            (
                json!({"port": {"network_id": "n", "device_id": "x"}}),
                "set by nubo",
            ),
            (
                json!({"port": {"network_id": "n", "device_owner": "compute:nova"}}),
                "set by nubo",
            ),
            (
                json!({"port": {"network_id": "n", "port_security_enabled": false, "security_groups": ["a"]}}),
                "Cannot disable port security",
            ),
            (
                json!({"port": {"network_id": "n", "nope": true}}),
                "unknown field `nope`",
            ),
        ] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }

    #[test]
    fn the_fixed_ips_filter_matches_address_substring_or_subnet() {
        let v = port_view(&pb::Port {
            network_id: "n".into(),
            ip: "10.0.0.13".into(),
            ..Default::default()
        });
        assert!(fixed_ip_matches(&v, "ip_address=10.0.0.13"));
        assert!(!fixed_ip_matches(&v, "ip_address=10.0.0.1"));
        assert!(fixed_ip_matches(&v, "ip_address_substr=0.0.1"));
        assert!(!fixed_ip_matches(&v, "ip_address_substr=10.1"));
        assert!(fixed_ip_matches(&v, "subnet_id=n"));
        assert!(!fixed_ip_matches(&v, "subnet_id=m"));
        assert!(!fixed_ip_matches(&v, "nonsense"));
        let bare = port_view(&pb::Port::default());
        assert!(!fixed_ip_matches(&bare, "subnet_id="));
    }

    #[test]
    fn a_plugged_bound_port_is_active() {
        let p = pb::Port {
            id: "p".into(),
            network_id: "n".into(),
            ip: "10.0.0.5".into(),
            device_id: "vm".into(),
            node: "n1".into(),
            admin_state_up: true,
            ..Default::default()
        };
        let v = port_view(&p);
        assert_eq!(v["status"], "ACTIVE");
        assert_eq!(v["fixed_ips"][0]["subnet_id"], "n");
        assert_eq!(v["device_owner"], "compute:nova");
        let down = port_view(&pb::Port {
            admin_state_up: false,
            ..p.clone()
        });
        assert_eq!(
            (&down["status"], &down["admin_state_up"]),
            (&json!("DOWN"), &json!(false))
        );
        let two = port_view(&pb::Port {
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
            ..p
        });
        assert_eq!(
            two["fixed_ips"],
            json!([{"subnet_id": "s1", "ip_address": "10.0.0.5"},
                   {"subnet_id": "s2", "ip_address": "10.1.0.5"}])
        );
        let free = port_view(&pb::Port::default());
        assert_eq!(free["status"], "DOWN");
        assert_eq!(free["fixed_ips"], json!([]), "an address-less port");
    }
}
