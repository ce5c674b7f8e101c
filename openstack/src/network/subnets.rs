//! Neutron networks (create, delete) and subnets. A nubo network holds
//! IPv4 subnets, each with its id (a network's first subnet may have the
//! network's id): created by `Networks.SetSubnet`, found by
//! `Networks.GetSubnet`, changed by `Networks.Update` and removed by
//! `Networks.DeleteSubnet`.

use std::net::Ipv4Addr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ipnet::Ipv4Net;
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{network_view, S};
use crate::error::{ApiError, StatusExt};
use crate::Upstream;

/// `POST /v2.0/networks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkBody {
    network: Option<NewNetwork>,
    networks: Option<Vec<NewNetwork>>,
}

/// The attributes of a Neutron network nubo understands; any other is a
/// 400, as Neutron answers an unrecognized attribute.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNetwork {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    admin_state_up: Option<bool>,
    #[serde(default)]
    shared: bool,
    #[serde(default, rename = "router:external")]
    external: bool,
    #[serde(rename = "provider:network_type")]
    network_type: Option<String>,
    #[serde(rename = "provider:physical_network")]
    physical_network: Option<String>,
    #[serde(rename = "provider:segmentation_id")]
    segmentation_id: Option<u32>,
    mtu: Option<u32>,
    port_security_enabled: Option<bool>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
    #[serde(default)]
    availability_zone_hints: Vec<String>,
}

/// nubo's request for a Neutron network (no subnet yet). Pure.
fn network_request(n: NewNetwork) -> Result<pb::CreateNetworkRequest, ApiError> {
    let unsupported = |what: &str| Err(ApiError::bad_request(S, format!("{what} (nubo)")));
    if n.admin_state_up == Some(false) {
        return unsupported("admin_state_up false is not supported: a nubo network is always up");
    }
    if n.port_security_enabled == Some(false) {
        return unsupported(
            "port_security_enabled is set per port in nubo, not per network: create the ports with port_security_enabled false",
        );
    }
    if !n.availability_zone_hints.is_empty() {
        return unsupported("availability_zone_hints are not supported: networks span every node");
    }
    if !n.description.is_empty() {
        return unsupported("a network description is not supported");
    }
    let (provider_type, segment) = match n.network_type.as_deref() {
        None | Some("vxlan") => {
            if n.segmentation_id.is_some() || n.physical_network.is_some() {
                return unsupported(
                    "an overlay (vxlan) network's VNI is chosen by nubo; provider:segmentation_id and provider:physical_network need network_type flat or vlan",
                );
            }
            ("", 0)
        }
        Some(t @ ("flat" | "vlan")) => (t, n.segmentation_id.unwrap_or(0)),
        Some(other) => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "provider:network_type {other:?} is not supported: use vxlan, flat or vlan"
                ),
            ))
        }
    };
    Ok(pb::CreateNetworkRequest {
        name: n.name,
        project: n.project_id.unwrap_or_default(),
        mtu: n.mtu.unwrap_or(0),
        provider_type: provider_type.into(),
        physical_network: n.physical_network.unwrap_or_default(),
        segment,
        external: n.external,
        shared: n.shared,
        ..Default::default()
    })
}

/// `POST /v2.0/networks`.
pub(crate) async fn create_network(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<NetworkBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let (requests, many) =
        super::bulk::requests(b.network, b.networks, "network", network_request)?;
    let client = up.networks(&headers)?;
    let made = super::bulk::create_all(
        requests,
        |r| {
            let mut c = client.clone();
            async move { Ok(c.create(r).await.api(S)?.into_inner()) }
        },
        |n| {
            let mut c = client.clone();
            let id = n.id.clone();
            async move {
                c.delete(crate::upstream::delete_req(id)).await.api(S)?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(super::bulk::created(
        "network",
        many,
        made.iter().map(network_view).collect(),
    ))
}

/// `DELETE /v2.0/networks/{id}` (its subnet goes with it, as in Neutron).
pub(crate) async fn delete_network(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    up.networks(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The address ranges ports get addresses from: the host addresses of
/// `cidr` without the gateway (nubo's IPAM hands out exactly these). Pure.
pub fn allocation_pools(cidr: Ipv4Net, gateway: Option<Ipv4Addr>) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let first = u32::from(cidr.network()).saturating_add(1);
    let last = u32::from(cidr.broadcast()).saturating_sub(1);
    if first > last {
        return Vec::new();
    }
    let ranges = match gateway.map(u32::from) {
        Some(g) if (first..=last).contains(&g) => vec![(first, g.wrapping_sub(1)), (g + 1, last)],
        _ => vec![(first, last)],
    };
    ranges
        .into_iter()
        .filter(|(a, b)| a <= b && *a >= first && *b <= last)
        .map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
        .collect()
}

/// The pools IPAM allocates from: the subnet's own, else the host
/// addresses without the gateway. Pure.
fn effective_pools(
    n: &pb::Subnet,
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let own: Vec<(Ipv4Addr, Ipv4Addr)> = n
        .allocation_pools
        .iter()
        .filter_map(|p| Some((p.start.parse().ok()?, p.end.parse().ok()?)))
        .collect();
    if own.is_empty() {
        allocation_pools(cidr, gateway)
    } else {
        own
    }
}

/// The Neutron views of a network's subnets. Pure.
pub fn subnet_views(n: &pb::Network) -> Vec<Value> {
    n.subnets.iter().filter_map(|s| subnet_view(n, s)).collect()
}

/// The Neutron view of subnet `s` of network `n`; `None` for an unreadable
/// one. Pure.
pub fn subnet_view(n: &pb::Network, s: &pb::Subnet) -> Option<Value> {
    let cidr: Ipv4Net = s.cidr.parse().ok()?;
    let gateway: Option<Ipv4Addr> = s.gateway.parse().ok();
    let pools: Vec<Value> = effective_pools(s, cidr, gateway)
        .into_iter()
        .map(|(a, b)| json!({"start": a.to_string(), "end": b.to_string()}))
        .collect();
    Some(json!({
        "id": s.id,
        "name": s.name,
        "network_id": n.id,
        "tenant_id": n.project,
        "project_id": n.project,
        "ip_version": 4,
        "cidr": cidr.to_string(),
        "gateway_ip": gateway.map(|g| g.to_string()),
        "enable_dhcp": !s.dhcp_disabled,
        "router:external": n.external,
        "dns_nameservers": s.dns,
        "allocation_pools": pools,
        "host_routes": s.host_routes.iter().map(|r| json!({"destination": r.destination, "nexthop": r.nexthop})).collect::<Vec<_>>(),
        "ipv6_ra_mode": null,
        "ipv6_address_mode": null,
        "subnetpool_id": null,
        "description": "",
        "created_at": n.created_at,
        "tags": [],
    }))
}

/// `POST /v2.0/subnets` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubnetBody {
    subnet: Option<NewSubnet>,
    subnets: Option<Vec<NewSubnet>>,
}

/// The attributes of a Neutron subnet nubo understands.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubnet {
    network_id: String,
    cidr: Option<String>,
    ip_version: Option<u8>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// Absent: the first host address; `null`: no gateway.
    #[serde(default, deserialize_with = "present")]
    gateway_ip: Option<Option<String>>,
    enable_dhcp: Option<bool>,
    #[serde(default)]
    dns_nameservers: Vec<String>,
    allocation_pools: Option<Vec<Pool>>,
    #[serde(default)]
    host_routes: Vec<HostRouteIn>,
    subnetpool_id: Option<String>,
    prefixlen: Option<u8>,
    ipv6_ra_mode: Option<String>,
    ipv6_address_mode: Option<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
}

/// A host route as a client sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRouteIn {
    destination: String,
    nexthop: String,
}

fn routes_request(r: &[HostRouteIn]) -> Vec<pb::HostRoute> {
    r.iter()
        .map(|h| pb::HostRoute {
            destination: h.destination.clone(),
            nexthop: h.nexthop.clone(),
        })
        .collect()
}

/// An allocation pool as a client sends it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Pool {
    start: Ipv4Addr,
    end: Ipv4Addr,
}

/// `Some(v)` for a field that is present (even `null`), so that an absent
/// gateway and `"gateway_ip": null` differ.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// nubo's request for a Neutron subnet. Pure.
fn subnet_request(s: NewSubnet) -> Result<pb::SetSubnetRequest, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(S, m));
    if s.ip_version.unwrap_or(4) != 4 || s.ipv6_ra_mode.is_some() || s.ipv6_address_mode.is_some() {
        return bad("only IPv4 subnets are supported (nubo)".into());
    }
    if s.subnetpool_id.is_some() || s.prefixlen.is_some() {
        return bad("subnet pools are not supported (nubo): give the cidr".into());
    }
    let Some(cidr_text) = s.cidr else {
        return bad("a subnet needs a cidr".into());
    };
    let cidr: Ipv4Net = cidr_text
        .parse()
        .map_err(|_| ApiError::bad_request(S, format!("invalid cidr {cidr_text:?}")))?;
    if !s.description.is_empty() {
        return bad("a subnet description is not supported (nubo)".into());
    }
    let gateway = match &s.gateway_ip {
        None => String::new(),
        Some(None) => "none".into(),
        Some(Some(g)) => g.clone(),
    };
    Ok(pb::SetSubnetRequest {
        r#ref: s.network_id,
        project: s.project_id.unwrap_or_default(),
        cidr: cidr.to_string(),
        gateway,
        dns: s.dns_nameservers,
        name: s.name,
        dhcp_disabled: s.enable_dhcp == Some(false),
        host_routes: routes_request(&s.host_routes),
        // Checked by nubo: inside the CIDR, disjoint, not the gateway.
        allocation_pools: s
            .allocation_pools
            .unwrap_or_default()
            .iter()
            .map(|p| pb::IpRange {
                start: p.start.to_string(),
                end: p.end.to_string(),
            })
            .collect(),
    })
}

/// `POST /v2.0/subnets`.
pub(crate) async fn create_subnet(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<SubnetBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let (requests, many) = super::bulk::requests(b.subnet, b.subnets, "subnet", subnet_request)?;
    let client = up.networks(&headers)?;
    let made = super::bulk::create_all(
        requests,
        |r| {
            let mut c = client.clone();
            async move {
                let cidr = r.cidr.clone();
                let n = c.set_subnet(r).await.api(S)?.into_inner();
                // The new subnet: the network's one with that CIDR (a
                // network's subnets never overlap).
                let sn = n
                    .subnets
                    .iter()
                    .find(|s| s.cidr == cidr)
                    .cloned()
                    .ok_or_else(|| {
                        ApiError::new(
                            S,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the new subnet is missing",
                        )
                    })?;
                Ok((n, sn))
            }
        },
        |(_, sn)| {
            let mut c = client.clone();
            let id = sn.id.clone();
            async move {
                c.delete_subnet(crate::upstream::delete_req(id))
                    .await
                    .api(S)?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(super::bulk::created(
        "subnet",
        many,
        made.iter().filter_map(|(n, s)| subnet_view(n, s)).collect(),
    ))
}

/// Neutron's subnet list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct SubnetFilters {
    name: Option<String>,
    id: Option<String>,
    network_id: Option<String>,
    cidr: Option<String>,
}

/// `GET /v2.0/subnets`.
pub(crate) async fn list_subnets(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<SubnetFilters>,
) -> Result<Response, ApiError> {
    let nets = crate::list_all!(up.networks(&headers)?, networks, S)?;
    let views: Vec<Value> = nets
        .iter()
        .filter(|n| f.network_id.as_ref().is_none_or(|x| &n.id == x))
        .flat_map(|n| n.subnets.iter().map(move |s| (n, s)))
        .filter(|(_, s)| f.name.as_ref().is_none_or(|x| &s.name == x))
        .filter(|(_, s)| f.id.as_ref().is_none_or(|x| &s.id == x))
        .filter(|(_, s)| f.cidr.as_ref().is_none_or(|x| &s.cidr == x))
        .filter_map(|(n, s)| subnet_view(n, s))
        .collect();
    Ok(Json(json!({"subnets": views})).into_response())
}

/// Subnet `id` and its network.
async fn network_with_subnet(
    up: &Upstream,
    headers: &HeaderMap,
    id: String,
) -> Result<(pb::Network, pb::Subnet), ApiError> {
    let missing = || ApiError::not_found(S, format!("Subnet {id} could not be found."));
    let n = match up
        .networks(headers)?
        .get_subnet(crate::upstream::get_req(id.clone()))
        .await
    {
        Ok(n) => n.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Err(missing()),
        Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(missing()),
        Err(s) => return Err(ApiError::from_status(S, &s)),
    };
    let sn = n
        .subnets
        .iter()
        .find(|s| s.id == id)
        .cloned()
        .ok_or_else(missing)?;
    Ok((n, sn))
}

/// `GET /v2.0/subnets/{id}`.
pub(crate) async fn show_subnet(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (n, sn) = network_with_subnet(&up, &headers, id).await?;
    Ok(Json(json!({"subnet": subnet_view(&n, &sn)})).into_response())
}

/// `DELETE /v2.0/subnets/{id}`.
pub(crate) async fn delete_subnet(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, sn) = network_with_subnet(&up, &headers, id).await?;
    up.networks(&headers)?
        .delete_subnet(crate::upstream::delete_req(sn.id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v2.0/networks/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkUpdateBody {
    network: NetworkUpdate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkUpdate {
    name: Option<String>,
    admin_state_up: Option<bool>,
    description: Option<String>,
    #[serde(rename = "router:external")]
    external: Option<bool>,
}

/// `PUT /v2.0/networks/{id}`: the name and `router:external` (nubo's
/// `Networks.Update`; the latter for cloud admins, 409 while in use);
/// `admin_state_up` true is what a nubo network always is.
pub(crate) async fn update_network(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<NetworkUpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut c = up.networks(&headers)?;
    let current = c
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let u = crate::error::json_body(S, body)?.network;
    if u.admin_state_up == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "admin_state_up false is not supported: a nubo network is always up (nubo)",
        ));
    }
    if u.description.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "a network description is not supported (nubo)",
        ));
    }
    let n = c
        .update(pb::UpdateNetworkRequest {
            r#ref: current.id,
            name: u.name,
            external: u.external,
            ..Default::default()
        })
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"network": network_view(&n)})).into_response())
}

/// `PUT /v2.0/subnets/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubnetUpdateBody {
    subnet: SubnetUpdate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetUpdate {
    name: Option<String>,
    /// `null`: no gateway.
    #[serde(default, deserialize_with = "present")]
    gateway_ip: Option<Option<String>>,
    dns_nameservers: Option<Vec<String>>,
    host_routes: Option<Vec<HostRouteIn>>,
    enable_dhcp: Option<bool>,
    allocation_pools: Option<Vec<Pool>>,
    description: Option<String>,
}

/// nubo's update of subnet `sn` of network `net`. Pure.
fn subnet_update_request(
    net: &pb::Network,
    sn: &pb::Subnet,
    u: SubnetUpdate,
) -> Result<pb::UpdateNetworkRequest, ApiError> {
    if u.description.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "a subnet description is not supported (nubo)",
        ));
    }
    if let Some(pools) = &u.allocation_pools {
        let cidr: Ipv4Net = sn
            .cidr
            .parse()
            .map_err(|_| ApiError::bad_request(S, "the subnet has no valid cidr"))?;
        let ours: Vec<Pool> = effective_pools(sn, cidr, sn.gateway.parse().ok())
            .into_iter()
            .map(|(start, end)| Pool { start, end })
            .collect();
        if *pools != ours {
            return Err(ApiError::bad_request(
                S,
                "changing allocation_pools is not supported (nubo)",
            ));
        }
    }
    Ok(pb::UpdateNetworkRequest {
        r#ref: net.id.clone(),
        project: String::new(),
        name: None,
        subnet_name: u.name,
        gateway: u.gateway_ip.map(|g| g.unwrap_or_else(|| "none".into())),
        set_dns: u.dns_nameservers.is_some(),
        dns: u.dns_nameservers.unwrap_or_default(),
        set_host_routes: u.host_routes.is_some(),
        host_routes: u
            .host_routes
            .as_deref()
            .map(routes_request)
            .unwrap_or_default(),
        dhcp_disabled: u.enable_dhcp.map(|on| !on),
        subnet_id: sn.id.clone(),
        external: None,
    })
}

/// `PUT /v2.0/subnets/{id}`: name, gateway, DNS servers, host routes,
/// DHCP (nubo's `Networks.Update`).
pub(crate) async fn update_subnet(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<SubnetUpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (net, sn) = network_with_subnet(&up, &headers, id).await?;
    let u = crate::error::json_body(S, body)?.subnet;
    let req = subnet_update_request(&net, &sn, u)?;
    let n = up
        .networks(&headers)?
        .update(req)
        .await
        .api(S)?
        .into_inner();
    let view = n
        .subnets
        .iter()
        .find(|s| s.id == sn.id)
        .and_then(|s| subnet_view(&n, s));
    Ok(Json(json!({"subnet": view})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_leave_out_the_gateway() {
        let c: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            allocation_pools(c, Some(ip("10.0.0.1"))),
            vec![(ip("10.0.0.2"), ip("10.0.0.254"))]
        );
        assert_eq!(
            allocation_pools(c, Some(ip("10.0.0.254"))),
            vec![(ip("10.0.0.1"), ip("10.0.0.253"))]
        );
        assert_eq!(
            allocation_pools(c, Some(ip("10.0.0.100"))),
            vec![
                (ip("10.0.0.1"), ip("10.0.0.99")),
                (ip("10.0.0.101"), ip("10.0.0.254"))
            ]
        );
        assert_eq!(
            allocation_pools(c, None),
            vec![(ip("10.0.0.1"), ip("10.0.0.254"))]
        );
    }

    fn subnet(v: Value) -> Result<pb::SetSubnetRequest, ApiError> {
        let b: SubnetBody =
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?;
        subnet_request(b.subnet.expect("one subnet"))
    }

    #[test]
    fn subnets_map_to_nubo_or_are_refused_with_the_reason() {
        let r = subnet(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
            "ip_version": 4, "name": "s1", "dns_nameservers": ["10.0.0.53"]}}))
        .unwrap();
        assert_eq!(
            (
                r.r#ref.as_str(),
                r.cidr.as_str(),
                r.gateway.as_str(),
                r.name.as_str()
            ),
            ("n", "10.0.0.0/24", "", "s1")
        );
        let r = subnet(
            json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "gateway_ip": null}}),
        )
        .unwrap();
        assert_eq!(r.gateway, "none");
        let r = subnet(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
            "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.254"}]}}))
        .unwrap();
        assert_eq!(r.gateway, "");
        let r = subnet(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
            "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.20"}]}}))
        .unwrap();
        assert_eq!(
            (
                r.allocation_pools[0].start.as_str(),
                r.allocation_pools[0].end.as_str()
            ),
            ("10.0.0.10", "10.0.0.20")
        );
        let r = subnet(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
            "enable_dhcp": false,
            "host_routes": [{"destination": "10.20.0.0/32", "nexthop": "10.0.0.9"}]}}))
        .unwrap();
        assert!(r.dhcp_disabled);
        assert_eq!(
            (
                r.host_routes[0].destination.as_str(),
                r.host_routes[0].nexthop.as_str()
            ),
            ("10.20.0.0/32", "10.0.0.9")
        );
        for (v, text) in [
            (
                json!({"subnet": {"network_id": "n", "cidr": "fd00::/64", "ip_version": 6}}),
                "only IPv4",
            ),
            (json!({"subnet": {"network_id": "n"}}), "needs a cidr"),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "bogus": 1}}),
                "unknown field `bogus`",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "nope"}}),
                "invalid cidr",
            ),
        ] {
            let e = subnet(v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }

    #[test]
    fn subnet_updates_say_what_changes() {
        let sn = pb::Subnet {
            id: "s2".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            ..Default::default()
        };
        let net = pb::Network {
            id: "n".into(),
            subnets: vec![sn.clone()],
            ..Default::default()
        };
        let parse = |v: Value| -> Result<pb::UpdateNetworkRequest, ApiError> {
            let b: SubnetUpdateBody =
                serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?;
            subnet_update_request(&net, &sn, b.subnet)
        };
        let r = parse(json!({"subnet": {"name": "s2", "gateway_ip": "10.0.0.2",
            "dns_nameservers": [], "enable_dhcp": true,
            "host_routes": [{"destination": "10.9.0.0/16", "nexthop": "10.0.0.5"}]}}))
        .unwrap();
        assert_eq!(r.subnet_name.as_deref(), Some("s2"));
        assert_eq!(r.gateway.as_deref(), Some("10.0.0.2"));
        assert!(r.set_dns && r.dns.is_empty());
        assert!(r.set_host_routes);
        assert_eq!(r.dhcp_disabled, Some(false));
        assert_eq!(r.name, None);
        assert_eq!((r.r#ref.as_str(), r.subnet_id.as_str()), ("n", "s2"));
        let r = parse(json!({"subnet": {"gateway_ip": null}})).unwrap();
        assert_eq!(r.gateway.as_deref(), Some("none"));
        assert!(!r.set_dns && !r.set_host_routes);
        let e = parse(
            json!({"subnet": {"allocation_pools": [{"start": "10.0.0.9", "end": "10.0.0.20"}]}}),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn networks_map_to_nubo_or_are_refused_with_the_reason() {
        let parse = |v: Value| -> Result<pb::CreateNetworkRequest, ApiError> {
            let b: NetworkBody =
                serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?;
            network_request(b.network.expect("one network"))
        };
        let r = parse(json!({"network": {"name": "n1", "admin_state_up": true}})).unwrap();
        assert_eq!(
            (r.name.as_str(), r.cidr.as_str(), r.provider_type.as_str()),
            ("n1", "", "")
        );
        let r = parse(json!({"network": {"name": "ext", "router:external": true,
            "provider:network_type": "vlan", "provider:physical_network": "physnet1",
            "provider:segmentation_id": 120}}))
        .unwrap();
        assert_eq!(
            (r.provider_type.as_str(), r.segment, r.external),
            ("vlan", 120, true)
        );
        for (v, text) in [
            (
                json!({"network": {"name": "n", "admin_state_up": false}}),
                "admin_state_up",
            ),
            (
                json!({"network": {"name": "n", "provider:network_type": "gre"}}),
                "not supported",
            ),
            (
                json!({"network": {"name": "n", "provider:segmentation_id": 5}}),
                "VNI is chosen by nubo",
            ),
            (
                json!({"network": {"name": "n", "x": 1}}),
                "unknown field `x`",
            ),
        ] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }
}
