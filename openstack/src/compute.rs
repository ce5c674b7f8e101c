//! Compute v2.1 (Nova): flavors and servers, at microversion 2.1.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use axum::extract::rejection::JsonRejection;

use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::upstream::{all_pages, PAGE_SIZE};
use crate::versions;
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v2.1", get(v21_doc))
        .route("/v2.1/", get(v21_doc))
        .route("/v2.1/flavors", get(list_flavors))
        .route("/v2.1/flavors/detail", get(list_flavors_detail))
        .route("/v2.1/flavors/{id}", get(show_flavor))
        .route("/v2.1/servers", get(list_servers).post(create_server))
        .route("/v2.1/servers/detail", get(list_servers_detail))
        .route(
            "/v2.1/servers/{id}",
            get(show_server).delete(delete_server).put(update_server),
        )
        .route("/v2.1/servers/{id}/ips", get(server_ips))
        .route("/v2.1/servers/{id}/ips/{network}", get(server_ips_on))
        .route("/v2.1/os-keypairs", get(list_keypairs).post(create_keypair))
        .route(
            "/v2.1/os-keypairs/{name}",
            get(show_keypair).delete(delete_keypair),
        )
}

async fn versions_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::compute_v21(&up.public_url)]}))
}

async fn v21_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"version": versions::compute_v21(&up.public_url)}))
}

/// `limit` and `marker` of a list.
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    /// Most items to return.
    pub limit: Option<usize>,
    /// Return items after this id.
    pub marker: Option<String>,
    /// Only items with this name (servers: a regular expression in Nova;
    /// here an exact name or a prefix).
    pub name: Option<String>,
}

/// Applies `marker` and `limit` to items with ids. Pure. An unknown
/// marker is a 400, as in Nova (never a silently empty page).
pub fn page<T>(items: Vec<T>, p: &Paging, id: impl Fn(&T) -> &str) -> Result<Vec<T>, ApiError> {
    let start = match &p.marker {
        None => 0,
        Some(m) => {
            items
                .iter()
                .position(|i| id(i) == m)
                .ok_or_else(|| ApiError::bad_request(S, format!("marker [{m}] not found")))?
                + 1
        }
    };
    let end = p
        .limit
        .map_or(items.len(), |l| (start + l).min(items.len()));
    Ok(items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect())
}

/// A flavor as Nova shows it: nubo's name is its id, its display name
/// (else the name) its name. Pure.
pub fn flavor_view(base: &str, f: &pb::Flavor) -> Value {
    json!({
        "id": f.name,
        "name": if f.display_name.is_empty() { &f.name } else { &f.display_name },
        "vcpus": f.vcpus,
        "ram": f.ram_mb,
        "disk": f.disk_gb,
        "swap": "",
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "OS-FLV-DISABLED:disabled": false,
        "os-flavor-access:is_public": !f.private,
        "rxtx_factor": 1.0,
        "links": [{"rel": "self", "href": format!("{base}/compute/v2.1/flavors/{}", f.name)}],
    })
}

/// Nova's boolean strings (`is_public`). Pure.
pub(crate) fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `limit`, `marker`, `minDisk` and `minRam` of a flavor list.
#[derive(Debug, Default, Deserialize)]
pub struct FlavorQuery {
    /// Most flavors to return.
    pub limit: Option<usize>,
    /// Return flavors after this id.
    pub marker: Option<String>,
    /// Only flavors with at least this root disk (GiB).
    #[serde(rename = "minDisk")]
    pub min_disk: Option<u64>,
    /// Only flavors with at least this memory (MiB).
    #[serde(rename = "minRam")]
    pub min_ram: Option<u64>,
    /// Nova's `is_public`: absent or true = the flavors the caller's
    /// project may use (public, and private ones shared with it), false =
    /// the private ones, `none` = all (the last two: every flavor for
    /// cloud admins; others only ever see those they may use).
    pub is_public: Option<String>,
}

impl FlavorQuery {
    /// The `is_public` filter: `Some(true)` (the default), `Some(false)`
    /// or `None` (all); anything else 400, as Nova. Pure.
    pub fn visibility(&self) -> Result<Option<bool>, ApiError> {
        match self.is_public.as_deref().map(str::trim) {
            None => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(None),
            Some(v) => truthy(&Value::String(v.into()))
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(S, format!("Invalid is_public filter [{v}]"))),
        }
    }
}

/// The flavors `q` selects, paged. Pure.
pub fn select_flavors(
    flavors: Vec<pb::Flavor>,
    q: &FlavorQuery,
) -> Result<Vec<pb::Flavor>, ApiError> {
    let visibility = q.visibility()?;
    let kept: Vec<pb::Flavor> = flavors
        .into_iter()
        .filter(|f| q.min_disk.is_none_or(|d| f.disk_gb >= d))
        .filter(|f| q.min_ram.is_none_or(|r| f.ram_mb >= r))
        // `is_public=false`: the private ones of those listed.
        .filter(|f| visibility != Some(false) || f.private)
        .collect();
    let paging = Paging {
        limit: q.limit,
        marker: q.marker.clone(),
        name: None,
    };
    page(kept, &paging, |f| f.name.as_str())
}

async fn flavors_selected(
    up: &Upstream,
    headers: &HeaderMap,
    q: &FlavorQuery,
) -> Result<Vec<pb::Flavor>, ApiError> {
    microversion(headers)?;
    // By default the flavors the caller's project may use; `is_public`
    // false or none: every flavor the caller may see.
    let all_projects = q.visibility()? != Some(true);
    let client = up.flavors(headers)?;
    let flavors = crate::upstream::all_pages(|token| {
        let mut c = client.clone();
        async move {
            let r = c
                .list(pb::ListRequest {
                    page_size: crate::upstream::PAGE_SIZE,
                    page_token: token,
                    all_projects,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.flavors, r.next_page_token))
        }
    })
    .await
    .api(S)?;
    select_flavors(flavors, q)
}

/// `GET /flavors`: id, name and links only (as Nova; details at `/detail`).
async fn list_flavors(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(q): Query<FlavorQuery>,
) -> Result<Response, ApiError> {
    let flavors = flavors_selected(&up, &headers, &q).await?;
    let views: Vec<Value> = flavors
        .iter()
        .map(|f| {
            let v = flavor_view(&up.public_url, f);
            json!({"id": v["id"], "name": v["name"], "links": v["links"]})
        })
        .collect();
    Ok(versioned(Json(json!({"flavors": views}))))
}

async fn list_flavors_detail(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(q): Query<FlavorQuery>,
) -> Result<Response, ApiError> {
    let flavors = flavors_selected(&up, &headers, &q).await?;
    let views: Vec<Value> = flavors
        .iter()
        .map(|f| flavor_view(&up.public_url, f))
        .collect();
    Ok(versioned(Json(json!({"flavors": views}))))
}

async fn show_flavor(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let f = up
        .flavors(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(
        json!({"flavor": flavor_view(&up.public_url, &f)}),
    )))
}

/// The servers of a `same_host` / `different_host` hint: one id or a
/// list of them (Nova's schema); anything else 400. Pure.
fn server_ids(hint: &str, v: &Value) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            S,
            format!("scheduler hint {hint:?} is a server id or a list of them"),
        )
    };
    match v {
        Value::String(id) => Ok(vec![id.clone()]),
        Value::Array(ids) => ids
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// Nova's status, vm_state and power_state for nubo's observed state and
/// desired power. Pure.
pub fn nova_status(state: &str, desired_power: &str) -> (&'static str, &'static str, u8) {
    match (state, desired_power) {
        ("running", "stopped") => ("ACTIVE", "active", 1),
        ("running", _) => ("ACTIVE", "active", 1),
        ("stopped", "running") => ("SHUTOFF", "stopped", 4),
        ("stopped", _) => ("SHUTOFF", "stopped", 4),
        ("error", _) => ("ERROR", "error", 0),
        ("deleting" | "deleted", _) => ("DELETED", "deleted", 0),
        ("rebuilding", "stopped") => ("REBUILD", "stopped", 4),
        ("rebuilding", _) => ("REBUILD", "active", 1),
        // pending, building, unknown: still being built.
        _ => ("BUILD", "building", 0),
    }
}

/// Nova's status, vm_state and power_state of a server: [`nova_status`],
/// except during a pending resize (unless in error or being deleted):
/// `RESIZE` while the coordinator's `resize_phase` is `resizing` (the
/// agent has not reported the new size applied; vm_state of the desired
/// power), then `VERIFY_RESIZE` (vm_state `resized`); after a revert
/// `REVERT_RESIZE` (vm_state `resized`) while `resize_phase` is
/// `reverting`. Pure.
pub fn server_status(s: &pb::Server) -> (&'static str, &'static str, u8) {
    let st = nova_status(&s.state, &s.desired_power);
    match (st.0, s.resize_phase.as_str()) {
        ("ERROR" | "DELETED", _) => st,
        (_, "verify") => ("VERIFY_RESIZE", "resized", st.2),
        (_, "reverting") => ("REVERT_RESIZE", "resized", st.2),
        (_, "resizing") if s.desired_power == "stopped" => ("RESIZE", "stopped", st.2),
        (_, "resizing") => ("RESIZE", "active", st.2),
        _ => st,
    }
}

/// Nova's task_state of a server: `resize_finish` while its status is
/// `RESIZE`, `resize_reverting` while `REVERT_RESIZE`, else none. Pure.
pub fn task_state(status: &str) -> Option<&'static str> {
    match status {
        "RESIZE" => Some("resize_finish"),
        "REVERT_RESIZE" => Some("resize_reverting"),
        _ => None,
    }
}

/// The Nova view of a server (`GET /servers/{id}`, `/servers/detail`),
/// as Nova 2.1's schema has it: `fault` only for a server in ERROR. Pure.
pub fn server_view(base: &str, s: &pb::Server) -> Value {
    let (status, vm_state, power) = server_status(s);
    let addresses = addresses(s, true);
    let link = |id: &str, kind: &str| json!([{"rel": "bookmark", "href": format!("{base}/compute/{kind}/{id}")}]);
    let mut view = json!({
        "id": s.id,
        "name": s.name,
        "status": status,
        "tenant_id": s.project,
        "user_id": "",
        "metadata": s.metadata.iter().collect::<BTreeMap<_, _>>(),
        "hostId": s.node,
        // A server booted from a volume shows no image, as Nova.
        "image": if s.image_id.is_empty() || !s.boot_volume_id.is_empty() { json!("") } else { json!({"id": s.image_id, "links": link(&s.image_id, "images")}) },
        "flavor": {"id": s.flavor, "links": link(&s.flavor, "flavors")},
        "created": crate::time::iso_utc(&s.created_at),
        "updated": crate::time::iso_utc(if s.updated_at.is_empty() { &s.created_at } else { &s.updated_at }),
        "addresses": addresses,
        "accessIPv4": s.access_ipv4,
        "accessIPv6": s.access_ipv6,
        "key_name": if s.key_name.is_empty() { Value::Null } else { json!(s.key_name) },
        "config_drive": "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:power_state": power,
        "OS-EXT-STS:task_state": task_state(status),
        "OS-EXT-AZ:availability_zone": s.availability_zone,
        "OS-EXT-SRV-ATTR:host": s.node,
        "OS-EXT-SRV-ATTR:hypervisor_hostname": s.node,
        "os-extended-volumes:volumes_attached": s.volume_ids.iter().map(|v| json!({"id": v})).collect::<Vec<_>>(),
        "links": server_links(base, &s.id),
    });
    // Nova shows `security_groups` (names) only when the server's ports
    // have some.
    if !s.security_groups.is_empty() {
        view["security_groups"] = s
            .security_groups
            .iter()
            .map(|g| json!({"name": g.name}))
            .collect();
    }
    // Nova shows `progress` only in the statuses that make progress.
    if matches!(
        status,
        "ACTIVE" | "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE"
    ) {
        view["progress"] = json!(0);
    }
    // Nova shows `fault` only for ERROR (and DELETED) servers, never null.
    if status == "ERROR" {
        let message = if s.last_error.is_empty() {
            "the server is in error (nubo recorded no reason)"
        } else {
            s.last_error.as_str()
        };
        let when = if s.updated_at.is_empty() {
            &s.created_at
        } else {
            &s.updated_at
        };
        view["fault"] =
            json!({"code": 500, "message": message, "created": crate::time::iso_utc(when)});
    }
    view
}

/// The server an update (`PUT /servers/{id}`) answers: Nova 2.1's common
/// view, without the extension attributes of `GET` (no `OS-EXT-*`,
/// `key_name`, volumes; addresses with `version` and `addr` only). Pure.
pub fn update_view(base: &str, s: &pb::Server) -> Value {
    let mut v = server_view(base, s);
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| COMMON_VIEW_KEYS.contains(&k.as_str()));
        o.insert("addresses".into(), json!(addresses(s, false)));
    }
    v
}

/// The keys of Nova 2.1's common server view (what an update answers;
/// `GET` adds the extension attributes).
const COMMON_VIEW_KEYS: &[&str] = &[
    "id",
    "name",
    "status",
    "image",
    "flavor",
    "fault",
    "user_id",
    "tenant_id",
    "created",
    "updated",
    "progress",
    "metadata",
    "links",
    "addresses",
    "hostId",
    "OS-DCF:diskConfig",
    "accessIPv4",
    "accessIPv6",
];

/// A server's addresses per network name, fixed then floating; with
/// `extended` the `OS-EXT-IPS` type and MAC (the server view), without
/// only `version` and `addr` (`/servers/{id}/ips`). Pure.
pub fn addresses(s: &pb::Server, extended: bool) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in &s.addresses {
        let list = out.entry(a.network_name.clone()).or_default();
        let mut ips = vec![("fixed", &a.ip)];
        if !a.floating_ip.is_empty() {
            ips.push(("floating", &a.floating_ip));
        }
        for (kind, ip) in ips {
            let mut v = json!({"version": 4, "addr": ip});
            if extended {
                v["OS-EXT-IPS:type"] = json!(kind);
                v["OS-EXT-IPS-MAC:mac_addr"] = json!(a.mac);
            }
            list.push(v);
        }
    }
    out
}

/// `GET /servers/{id}/ips`.
async fn server_ips(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    Ok(versioned(Json(json!({"addresses": addresses(&s, false)}))))
}

/// `GET /servers/{id}/ips/{network}` (the network's name, as in
/// `addresses`): 404 when the server has no address there, as Nova.
async fn server_ips_on(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, network)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    let mut all = addresses(&s, false);
    let list = all.remove(&network).ok_or_else(|| {
        ApiError::not_found(S, format!("the server has no address on network {network}"))
    })?;
    Ok(versioned(Json(json!({ network: list }))))
}

/// The server `id` (name or id) as the caller sees it.
pub(crate) async fn get_server(
    up: &Upstream,
    headers: &HeaderMap,
    id: String,
) -> Result<pb::Server, ApiError> {
    microversion(headers)?;
    Ok(up
        .servers(headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner())
}

/// A server's `self` and `bookmark` links. Pure.
fn server_links(base: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/servers/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/servers/{id}")},
    ])
}

/// A server in `GET /servers` (not detail): `id`, `name` and `links`
/// only, as Nova. Pure.
pub fn server_brief(base: &str, s: &pb::Server) -> Value {
    json!({"id": s.id, "name": s.name, "links": server_links(base, &s.id)})
}

/// The query of a server list: paging and Nova's filters `name` and `ip`
/// (regular expressions searched in the name and the fixed addresses, as
/// Nova), `status`, `flavor` and `image`; `changes-since` (servers that
/// changed since, and those deleted since, `DELETED`) is passed to the
/// coordinators (see [`changes_since`]), as are the admin's
/// `all_tenants`, `tenant_id`/`project_id` (only with `all_tenants`, as
/// Nova) and `host` (the coordinators honour them for cloud admins only).
#[derive(Debug, Default, Deserialize)]
pub struct ServerQuery {
    // Paging's fields, not flattened: serde's flatten cannot read numbers
    // from a query string.
    limit: Option<usize>,
    marker: Option<String>,
    name: Option<String>,
    ip: Option<String>,
    status: Option<String>,
    flavor: Option<String>,
    image: Option<String>,
    #[serde(rename = "changes-since")]
    changes_since: Option<String>,
    all_tenants: Option<String>,
    tenant_id: Option<String>,
    project_id: Option<String>,
    host: Option<String>,
}

/// The scope of a server list's gRPC request: `(all_projects, project,
/// node)` from Nova's `all_tenants` (present and not false-ish),
/// `tenant_id`/`project_id` (only with `all_tenants`, as Nova 2.1) and
/// `host`. Pure.
pub fn list_scope(q: &ServerQuery) -> (bool, String, String) {
    let all = q.all_tenants.as_deref().is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "f" | "false" | "n" | "no" | "off"
        )
    });
    let project = match (all, q.tenant_id.as_ref().or(q.project_id.as_ref())) {
        (true, Some(p)) => p.clone(),
        _ => String::new(),
    };
    (
        all && project.is_empty(),
        project,
        q.host.clone().unwrap_or_default(),
    )
}

/// The servers `q` selects (before paging). Pure.
pub fn filter_servers(
    servers: Vec<pb::Server>,
    q: &ServerQuery,
) -> Result<Vec<pb::Server>, ApiError> {
    let pattern = |field: &str, p: &Option<String>| -> Result<Option<regex::Regex>, ApiError> {
        p.as_deref()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| {
                    ApiError::bad_request(
                        S,
                        format!("{field} is not a valid regular expression: {e}"),
                    )
                })
            })
            .transpose()
    };
    let (name, ip) = (pattern("name", &q.name)?, pattern("ip", &q.ip)?);
    Ok(servers
        .into_iter()
        .filter(|s| name.as_ref().is_none_or(|r| r.is_match(&s.name)))
        .filter(|s| {
            ip.as_ref()
                .is_none_or(|r| s.addresses.iter().any(|a| r.is_match(&a.ip)))
        })
        .filter(|s| {
            q.status
                .as_ref()
                .is_none_or(|st| server_status(s).0.eq_ignore_ascii_case(st))
        })
        .filter(|s| {
            q.flavor
                .as_ref()
                .is_none_or(|f| last_segment(f) == s.flavor)
        })
        .filter(|s| {
            q.image
                .as_ref()
                .is_none_or(|i| last_segment(i) == s.image_id)
        })
        .collect())
}

/// `changes-since` as RFC 3339 (what the coordinators take): an ISO 8601
/// time with an offset, or without one (UTC, as Nova reads it), or a date
/// (its midnight UTC); anything else is 400, as Nova. Pure.
pub fn changes_since(v: &str) -> Result<String, ApiError> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let v = v.trim();
    let utc = DateTime::parse_from_rfc3339(v)
        .map(|t| t.to_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .or_else(|_| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
        .map_err(|_| {
            ApiError::bad_request(
                S,
                format!("Invalid input for query parameters changes-since. Value: {v}. is not a valid ISO 8601 time"),
            )
        })?;
    Ok(utc.to_rfc3339())
}

/// Every server the caller may see, read from the gRPC API to the end.
pub(crate) async fn all_servers(
    up: &Upstream,
    headers: &HeaderMap,
) -> Result<Vec<pb::Server>, ApiError> {
    servers_changed_since(up, headers, String::new(), Default::default()).await
}

/// [`all_servers`] that changed at or after `since` (RFC 3339), and those
/// deleted since; empty: all.
async fn servers_changed_since(
    up: &Upstream,
    headers: &HeaderMap,
    since: String,
    scope: (bool, String, String),
) -> Result<Vec<pb::Server>, ApiError> {
    let client = up.servers(headers)?;
    all_pages(|token| {
        let mut c = client.clone();
        let since = since.clone();
        let (all_projects, project, node) = scope.clone();
        async move {
            let r = c
                .list(pb::ListServersRequest {
                    page_size: PAGE_SIZE,
                    page_token: token,
                    changes_since: since,
                    all_projects,
                    project,
                    node,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.servers, r.next_page_token))
        }
    })
    .await
    .api(S)
}

/// `GET /servers`: [`server_brief`] of each.
async fn list_servers(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(p): Query<ServerQuery>,
) -> Result<Response, ApiError> {
    servers_listed(&up, &headers, &p, server_brief).await
}

/// `GET /servers/detail`: [`server_view`] of each.
async fn list_servers_detail(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(p): Query<ServerQuery>,
) -> Result<Response, ApiError> {
    servers_listed(&up, &headers, &p, server_view).await
}

/// The answer of a server list: `view` of each selected server.
async fn servers_listed(
    up: &Upstream,
    headers: &HeaderMap,
    p: &ServerQuery,
    view: fn(&str, &pb::Server) -> Value,
) -> Result<Response, ApiError> {
    let servers = servers_selected(up, headers, p).await?;
    let views: Vec<Value> = servers.iter().map(|s| view(&up.public_url, s)).collect();
    Ok(versioned(Json(json!({"servers": views}))))
}

/// The servers a list asks for (`name` as a prefix, [`filter_servers`]),
/// paged.
async fn servers_selected(
    up: &Upstream,
    headers: &HeaderMap,
    q: &ServerQuery,
) -> Result<Vec<pb::Server>, ApiError> {
    microversion(headers)?;
    let p = &Paging {
        limit: q.limit,
        marker: q.marker.clone(),
        name: None,
    };
    let since = match &q.changes_since {
        Some(v) => changes_since(v)?,
        None => String::new(),
    };
    let servers = servers_changed_since(up, headers, since, list_scope(q)).await?;
    page(filter_servers(servers, q)?, p, |s| s.id.as_str())
}

async fn show_server(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = get_server(&up, &headers, id).await?;
    Ok(versioned(Json(
        json!({"server": server_view(&up.public_url, &s)}),
    )))
}

/// `POST /servers` body (the parts nubo maps).
#[derive(Debug, Deserialize)]
pub struct CreateBody {
    server: CreateServer,
    /// Scheduler hints: only `group` (a server group's id) is supported.
    #[serde(
        default,
        rename = "os:scheduler_hints",
        alias = "OS-SCH-HNT:scheduler_hints"
    )]
    scheduler_hints: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct CreateServer {
    name: String,
    #[serde(rename = "imageRef", default)]
    image_ref: String,
    #[serde(rename = "flavorRef")]
    flavor_ref: String,
    #[serde(default)]
    networks: Option<Value>,
    #[serde(default)]
    key_name: Option<String>,
    #[serde(default)]
    security_groups: Vec<NamedRef>,
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(default)]
    user_data: Option<String>,
    /// Server metadata (string values; limits checked by the coordinator).
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    /// Access addresses: not supported (non-empty: 400).
    #[serde(default, rename = "accessIPv4")]
    access_ipv4: Option<String>,
    #[serde(default, rename = "accessIPv6")]
    access_ipv6: Option<String>,
    /// Injected files: not supported (non-empty: 400).
    #[serde(default)]
    personality: Option<Vec<Value>>,
    #[serde(default)]
    min_count: Option<u32>,
    #[serde(default)]
    max_count: Option<u32>,
    /// Answer the batch's reservation id instead of the first server.
    #[serde(default)]
    return_reservation_id: bool,
    /// Block device mappings (v2): a boot volume, a boot volume made from
    /// an image, extra volumes ([`block_devices`]).
    #[serde(default)]
    block_device_mapping_v2: Option<Vec<serde_json::Map<String, Value>>>,
    /// The legacy (v1) form: refused (400), never ignored.
    #[serde(default)]
    block_device_mapping: Option<Vec<Value>>,
}

/// What nubo's create takes from Nova's block device mappings.
#[derive(Debug, Default, PartialEq)]
struct BlockDevices {
    /// Boot from this existing volume.
    boot_volume: Option<String>,
    /// Boot from a new volume of this size cloned from this image.
    boot_from_image: Option<(String, u64)>,
    /// Extra existing volumes, in order.
    volumes: Vec<String>,
    /// Delete the volumes with the server (one flag for all in nubo).
    delete_on_termination: bool,
}

/// Maps `block_device_mapping_v2` onto nubo's create: `volume` → `volume`
/// with boot index 0 is the boot volume, `image` → `volume` with boot
/// index 0 a boot volume made from the image (`volume_size` GiB), `image`
/// → `local` with boot index 0 the ordinary image boot, `volume` without
/// a boot index an attached volume. Anything else (blank, snapshot,
/// other destinations or boot indexes, differing
/// `delete_on_termination`) is a 400 naming it. Pure.
fn block_devices(bdms: &[serde_json::Map<String, Value>]) -> Result<BlockDevices, ApiError> {
    let mut out = BlockDevices::default();
    let mut delete: Option<bool> = None;
    for (n, b) in bdms.iter().enumerate() {
        let text = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or("");
        let boot_index = match b.get("boot_index") {
            None | Some(Value::Null) => None,
            Some(Value::Number(i)) => i.as_i64(),
            Some(Value::String(i)) => i.parse::<i64>().ok(),
            Some(_) => None,
        }
        .filter(|i| *i >= 0);
        let uuid = text("uuid").to_string();
        let bad = |why: &str| {
            ApiError::bad_request(
                S,
                format!("block_device_mapping_v2[{n}]: {why} (nubo maps a boot volume, a boot volume from an image, and extra volumes)"),
            )
        };
        let dest = match text("destination_type") {
            "" => {
                if text("source_type") == "image" {
                    "local"
                } else {
                    "volume"
                }
            }
            d => d,
        };
        let this_delete = b
            .get("delete_on_termination")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match (text("source_type"), dest, boot_index) {
            ("image", "local", Some(0)) => continue,
            ("image", "volume", Some(0)) => {
                let size = b
                    .get("volume_size")
                    .and_then(Value::as_u64)
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("a boot volume from an image needs volume_size (GiB)"))?;
                out.boot_from_image = Some((uuid, size));
            }
            ("volume", "volume", Some(0)) => out.boot_volume = Some(uuid),
            ("volume", "volume", None) => out.volumes.push(uuid),
            (src, dst, idx) => {
                return Err(bad(&format!(
                    "source_type {src:?} to destination_type {dst:?} with boot_index {idx:?} is not supported"
                )))
            }
        }
        if out.boot_volume.is_some() && out.boot_from_image.is_some() {
            return Err(bad("two boot devices"));
        }
        match delete {
            Some(d) if d != this_delete => {
                return Err(bad(
                    "nubo applies one delete_on_termination to all of a server's volumes",
                ))
            }
            _ => delete = Some(this_delete),
        }
    }
    out.delete_on_termination = delete.unwrap_or(false);
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
}

/// The last path segment of a reference (clients send ids or full URLs).
pub(crate) fn last_segment(r: &str) -> String {
    r.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(r)
        .to_string()
}

/// The gRPC create request for a Nova create body. Pure.
pub fn create_request(body: &CreateBody) -> Result<pb::CreateServerRequest, ApiError> {
    let s = &body.server;
    let (mut networks, mut ports) = (Vec::new(), Vec::new());
    match &s.networks {
        None => {}
        Some(Value::String(v)) if v == "none" => {}
        Some(Value::String(v)) if v == "auto" => {
            return Err(ApiError::bad_request(
                S,
                "networks \"auto\" (auto-allocated topology) is not supported: name a network",
            ));
        }
        Some(Value::Array(list)) => {
            for n in list {
                if let Some(port) = n.get("port").and_then(Value::as_str) {
                    ports.push(port.to_string());
                } else if let Some(uuid) = n.get("uuid").and_then(Value::as_str) {
                    if n.get("fixed_ip").is_some() {
                        return Err(ApiError::bad_request(S, "networks[].fixed_ip is not supported: create a port with the address and pass it"));
                    }
                    networks.push(uuid.to_string());
                } else {
                    return Err(ApiError::bad_request(
                        S,
                        format!("a network entry needs \"uuid\" or \"port\": {n}"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid networks: {other}"),
            ))
        }
    }
    let min = s.min_count.unwrap_or(1);
    let max = s.max_count.unwrap_or(min);
    if min == 0 || max < min {
        return Err(ApiError::bad_request(
            S,
            format!("min_count {min} / max_count {max} are not valid"),
        ));
    }
    let metadata = match &s.metadata {
        None => Default::default(),
        Some(m) => crate::server_metadata::string_map("metadata", m)?,
    };
    if s.personality.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::bad_request(
            S,
            "personality (injected files) is not supported by nubo: pass files in user_data",
        ));
    }
    let mut server_group = String::new();
    let (mut same_host, mut different_host) = (Vec::new(), Vec::new());
    for (hint, v) in body.scheduler_hints.iter().flatten() {
        match (hint.as_str(), v) {
            ("group", Value::String(g)) => server_group = g.clone(),
            ("same_host", v) => same_host = server_ids(hint, v)?,
            ("different_host", v) => different_host = server_ids(hint, v)?,
            _ => {
                return Err(ApiError::bad_request(
                    S,
                    format!("scheduler hint {hint:?} is not supported: only \"group\" (a server group id), \"same_host\" and \"different_host\" (server ids) are"),
                ))
            }
        }
    }
    if s.block_device_mapping
        .as_ref()
        .is_some_and(|b| !b.is_empty())
    {
        return Err(ApiError::bad_request(
            S,
            "block_device_mapping (v1) is not supported: use block_device_mapping_v2",
        ));
    }
    let bd = block_devices(s.block_device_mapping_v2.as_deref().unwrap_or_default())?;
    let mut image_ref = last_segment(&s.image_ref);
    let mut boot_from_volume_size_gb = 0;
    if let Some((img, size)) = &bd.boot_from_image {
        if !image_ref.is_empty() && &image_ref != img {
            return Err(ApiError::bad_request(
                S,
                "imageRef and the image of the boot volume's block device mapping differ",
            ));
        }
        image_ref.clone_from(img);
        boot_from_volume_size_gb = *size;
    }
    let user_data = match &s.user_data {
        None => Vec::new(),
        Some(b64) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::bad_request(S, format!("user_data is not valid base64: {e}"))
                })?
        }
    };
    Ok(pb::CreateServerRequest {
        name: s.name.clone(),
        flavor: last_segment(&s.flavor_ref),
        image_ref,
        boot_volume: bd.boot_volume.unwrap_or_default(),
        boot_from_volume_size_gb,
        volumes: bd.volumes,
        delete_on_termination: bd.delete_on_termination,
        networks,
        ports,
        security_groups: s.security_groups.iter().map(|g| g.name.clone()).collect(),
        key_name: s.key_name.clone().unwrap_or_default(),
        user_data,
        count: max,
        // Between min_count and max_count as capacity and quota allow
        // (nubo's minimum: fewer created is a failure, none kept).
        min_count: min,
        // The reservation id names the batch: its idempotency token.
        client_token: if s.return_reservation_id {
            format!("r-{}", uuid::Uuid::new_v4().simple())
        } else {
            String::new()
        },
        availability_zone: s.availability_zone.clone().unwrap_or_default(),
        server_group,
        same_host,
        different_host,
        metadata,
        access_ipv4: s.access_ipv4.clone().unwrap_or_default(),
        access_ipv6: s.access_ipv6.clone().unwrap_or_default(),
        ..Default::default()
    })
}

async fn create_server(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let req = create_request(&body)?;
    let req_token = req.client_token.clone();
    // A create naming a flavor, image, network, keypair or security group
    // that does not exist is a bad request in Nova (400), not a 404.
    let resp = up
        .servers(&headers)?
        .create(req)
        .await
        .map_err(not_found_is_bad_request)?
        .into_inner();
    let created: Vec<&pb::Server> = resp
        .results
        .iter()
        .filter_map(|r| r.server.as_ref())
        .collect();
    if let Some(failed) = resp.results.iter().find(|r| r.server.is_none()) {
        let code = match failed.code.as_str() {
            "ResourceExhausted" => tonic::Code::ResourceExhausted,
            "NotFound" => tonic::Code::InvalidArgument,
            "InvalidArgument" => tonic::Code::InvalidArgument,
            _ => tonic::Code::FailedPrecondition,
        };
        if created.is_empty() {
            return Err(ApiError::from_status(
                S,
                &tonic::Status::new(code, failed.error.clone()),
            ));
        }
    }
    if !req_token.is_empty() {
        return Ok(versioned((
            StatusCode::ACCEPTED,
            Json(json!({"reservation_id": req_token})),
        )));
    }
    let first = created
        .first()
        .ok_or_else(|| ApiError::new(S, StatusCode::INTERNAL_SERVER_ERROR, "no server created"))?;
    let body = json!({"server": {
        "id": first.id,
        "links": [{"rel": "self", "href": format!("{}/compute/v2.1/servers/{}", up.public_url, first.id)}],
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": body.server.security_groups.iter().map(|g| json!({"name": g.name})).collect::<Vec<_>>(),
    }});
    Ok(versioned((StatusCode::ACCEPTED, Json(body))))
}

/// A create's failure: what it references and does not exist (NotFound)
/// is Nova's 400; anything else as every call.
fn not_found_is_bad_request(s: tonic::Status) -> ApiError {
    let mut e = ApiError::from_status(S, &s);
    if s.code() == tonic::Code::NotFound {
        e.status = StatusCode::BAD_REQUEST;
    }
    e
}

/// `PUT /servers/{id}` body: Nova 2.1's updatable fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    server: UpdateServer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateServer {
    #[serde(default)]
    name: Option<String>,
    /// Access addresses (informational; "" clears).
    #[serde(default, rename = "accessIPv4")]
    access_ipv4: Option<String>,
    #[serde(default, rename = "accessIPv6")]
    access_ipv6: Option<String>,
    /// Only `MANUAL`, what every nubo server is.
    #[serde(default, rename = "OS-DCF:diskConfig")]
    disk_config: Option<String>,
}

/// The `Servers.Update` request of a Nova update body (`None`: nothing
/// to change). Pure.
fn update_request(id: &str, b: &UpdateBody) -> Result<Option<pb::UpdateServerRequest>, ApiError> {
    let s = &b.server;
    if s.disk_config.as_deref().is_some_and(|d| d != "MANUAL") {
        return Err(ApiError::bad_request(
            S,
            "OS-DCF:diskConfig AUTO is not supported (nubo servers are MANUAL)",
        ));
    }
    if s.name.is_none() && s.access_ipv4.is_none() && s.access_ipv6.is_none() {
        return Ok(None);
    }
    Ok(Some(pb::UpdateServerRequest {
        r#ref: id.to_string(),
        project: String::new(),
        name: s.name.clone(),
        access_ipv4: s.access_ipv4.clone(),
        access_ipv6: s.access_ipv6.clone(),
    }))
}

/// `PUT /servers/{id}`: name and access addresses (`Servers.Update`);
/// answers the server.
async fn update_server(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let s = match update_request(&id, &body)? {
        Some(req) => up.servers(&headers)?.update(req).await.api(S)?.into_inner(),
        None => get_server(&up, &headers, id).await?,
    };
    Ok(versioned(Json(
        json!({"server": update_view(&up.public_url, &s)}),
    )))
}

async fn delete_server(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.servers(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(versioned(StatusCode::NO_CONTENT))
}

/// A keypair as Nova 2.1 shows it (`GET /os-keypairs/{name}`). Pure.
fn keypair_view(k: &pb::Keypair) -> Value {
    json!({
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "user_id": "",
        "created_at": k.created_at,
        "updated_at": Value::Null,
        "deleted_at": Value::Null,
        "deleted": false,
        "id": 0,
    })
}

/// A keypair in a list or a create answer (Nova 2.1: no dates, no id). Pure.
fn keypair_brief(k: &pb::Keypair, with_user: bool) -> Value {
    let mut v = json!({
        "name": k.name,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
    });
    if with_user {
        v["user_id"] = json!("");
    }
    v
}

async fn list_keypairs(
    State(up): State<Upstream>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let keys = crate::list_all!(up.keypairs(&headers)?, keypairs, S)?;
    let views: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keypair": keypair_brief(k, false)}))
        .collect();
    Ok(versioned(Json(json!({"keypairs": views}))))
}

async fn show_keypair(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let k = up
        .keypairs(&headers)?
        .get(crate::upstream::get_req(name))
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(json!({"keypair": keypair_view(&k)}))))
}

/// `POST /os-keypairs` body.
#[derive(Debug, Deserialize)]
pub struct KeypairBody {
    keypair: NewKeypair,
}

#[derive(Debug, Deserialize)]
struct NewKeypair {
    name: String,
    #[serde(default)]
    public_key: Option<String>,
}

async fn create_keypair(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<KeypairBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    // Generating a private key for the caller would put a secret in an
    // API answer and in this process: nubo only imports public keys.
    let public_key = body.keypair.public_key.ok_or_else(|| {
        ApiError::bad_request(
            S,
            "nubo imports public keys only: pass public_key (e.g. `openstack keypair create --public-key ~/.ssh/id_ed25519.pub NAME`)",
        )
    })?;
    let k = up
        .keypairs(&headers)?
        .create(pb::CreateKeypairRequest {
            name: body.keypair.name,
            project: String::new(),
            public_key,
        })
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(json!({"keypair": keypair_brief(&k, true)}))))
}

async fn delete_keypair(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.keypairs(&headers)?
        .delete(crate::upstream::delete_req(name))
        .await
        .api(S)?;
    Ok(versioned(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_and_limit() {
        let items: Vec<String> = (1..=5).map(|i| i.to_string()).collect();
        let p = Paging {
            limit: Some(2),
            marker: Some("2".into()),
            name: None,
        };
        assert_eq!(page(items.clone(), &p, |s| s.as_str()).unwrap(), ["3", "4"]);
        let p = Paging {
            marker: Some("9".into()),
            ..Default::default()
        };
        assert_eq!(
            page(items, &p, |s| s.as_str()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn create_maps_networks_ports_and_counts() {
        let body: CreateBody = serde_json::from_value(json!({"server": {
            "name": "vm", "imageRef": "http://x/images/img-1", "flavorRef": "m1",
            "networks": [{"uuid": "net-1"}, {"port": "port-2"}],
            "security_groups": [{"name": "web"}], "min_count": 2, "max_count": 2,
            "user_data": "aGVsbG8=",
        }}))
        .unwrap();
        let r = create_request(&body).unwrap();
        assert_eq!(
            (r.image_ref.as_str(), r.flavor.as_str(), r.count),
            ("img-1", "m1", 2)
        );
        assert_eq!(
            (r.networks, r.ports),
            (vec!["net-1".to_string()], vec!["port-2".to_string()])
        );
        assert_eq!(r.user_data, b"hello");
        let some: CreateBody = serde_json::from_value(json!({"server": {
            "name": "vm", "imageRef": "i", "flavorRef": "f", "min_count": 1, "max_count": 3,
            "return_reservation_id": true}}))
        .unwrap();
        let r = create_request(&some).unwrap();
        assert_eq!((r.min_count, r.count), (1, 3));
        assert!(r.client_token.starts_with("r-"), "{}", r.client_token);
        let bad: CreateBody = serde_json::from_value(json!({"server": {
            "name": "vm", "imageRef": "i", "flavorRef": "f", "min_count": 3, "max_count": 1}}))
        .unwrap();
        assert_eq!(
            create_request(&bad).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn lists_filter_by_status_flavor_and_image_and_ips_are_per_network() {
        let mut a = server("running", "");
        a.id = "a".into();
        a.addresses = vec![pb::ServerAddress {
            network_name: "n1".into(),
            ip: "10.0.0.5".into(),
            mac: "fa:16:3e:00:00:01".into(),
            floating_ip: "192.0.2.9".into(),
            ..Default::default()
        }];
        let mut b = server("stopped", "");
        b.id = "b".into();
        b.flavor = "big".into();
        let q = |v: Value| -> ServerQuery { serde_json::from_value(v).unwrap() };
        let ids = |q: ServerQuery| -> Vec<String> {
            filter_servers(vec![a.clone(), b.clone()], &q)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids(q(json!({}))), ["a", "b"]);
        // As axum reads it from a query string (numbers too).
        let uri: axum::http::Uri = "/servers/detail?limit=5&status=ACTIVE&marker=a"
            .parse()
            .unwrap();
        let Query(from_uri) = Query::<ServerQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(
            (from_uri.limit, from_uri.status.as_deref()),
            (Some(5), Some("ACTIVE"))
        );
        assert_eq!(ids(q(json!({"status": "SHUTOFF"}))), ["b"]);
        assert_eq!(ids(q(json!({"status": "active"}))), ["a"]);
        assert!(ids(q(json!({"status": "NONEXISTENT"}))).is_empty());
        assert_eq!(ids(q(json!({"flavor": "http://x/flavors/big"}))), ["b"]);
        assert!(ids(q(json!({"image": "no-such-image"}))).is_empty());
        assert_eq!(ids(q(json!({"image": "i"}))), ["a", "b"]);
        b.name = "web-2".into();
        let ids = |q: ServerQuery| -> Vec<String> {
            filter_servers(vec![a.clone(), b.clone()], &q)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids(q(json!({"name": "eb-"}))), ["b"]);
        assert_eq!(ids(q(json!({"name": "^vm$"}))), ["a"]);
        assert_eq!(ids(q(json!({"ip": "10\\.0\\.0\\.5"}))), ["a"]);
        assert!(ids(q(json!({"ip": "10.9.9.9"}))).is_empty());
        let e = filter_servers(vec![], &q(json!({"name": "("}))).unwrap_err();
        assert!(e.message.contains("regular expression"), "{}", e.message);
        for (given, rfc) in [
            ("2026-01-01", "2026-01-01T00:00:00+00:00"),
            ("2051-01-01T12:34:00Z", "2051-01-01T12:34:00+00:00"),
            ("2026-12-05T12:00:00", "2026-12-05T12:00:00+00:00"),
            ("2026-12-05T13:00:00+01:00", "2026-12-05T12:00:00+00:00"),
        ] {
            assert_eq!(changes_since(given).unwrap(), rfc, "{given}");
        }
        let e = changes_since("2011/01/01").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        // ips: version and addr only; the detail view adds type and MAC.
        let ips = addresses(&a, false);
        assert_eq!(
            ips["n1"],
            [
                json!({"version": 4, "addr": "10.0.0.5"}),
                json!({"version": 4, "addr": "192.0.2.9"})
            ]
        );
        assert_eq!(addresses(&a, true)["n1"][1]["OS-EXT-IPS:type"], "floating");
    }

    #[test]
    fn bad_metadata_and_personality_are_refused_not_ignored() {
        for extra in [
            json!({"metadata": {"k": 1}}),
            json!({"personality": [{"path": "/etc/motd", "contents": "aGk="}]}),
        ] {
            let mut server = json!({"name": "vm", "imageRef": "i", "flavorRef": "f"});
            for (k, v) in extra.as_object().unwrap() {
                server[k] = v.clone();
            }
            let body: CreateBody = serde_json::from_value(json!({ "server": server })).unwrap();
            let e = create_request(&body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{extra}");
        }
        let ok: CreateBody = serde_json::from_value(json!({"server": {"name": "vm",
            "imageRef": "i", "flavorRef": "f", "metadata": {}, "accessIPv4": ""}}))
        .unwrap();
        assert!(create_request(&ok).is_ok());
        // Metadata reaches the coordinator (which checks its limits).
        let with: CreateBody = serde_json::from_value(json!({"server": {"name": "vm",
            "imageRef": "i", "flavorRef": "f", "metadata": {"role": "web"}}}))
        .unwrap();
        let r = create_request(&with).unwrap();
        assert_eq!(r.metadata.get("role").map(String::as_str), Some("web"));
    }

    #[test]
    fn block_device_mappings_map_or_are_refused() {
        let create = |bdm: Value, image: &str| {
            let body: CreateBody = serde_json::from_value(json!({"server": {"name": "vm",
                "imageRef": image, "flavorRef": "f", "block_device_mapping_v2": bdm}}))
            .unwrap();
            create_request(&body)
        };
        let r = create(
            json!([{"uuid": "v1", "source_type": "volume", "destination_type": "volume",
                "boot_index": 0, "delete_on_termination": true},
                {"uuid": "v2", "source_type": "volume", "destination_type": "volume",
                "delete_on_termination": true}]),
            "",
        )
        .unwrap();
        assert_eq!(
            (
                r.boot_volume.as_str(),
                r.volumes.clone(),
                r.delete_on_termination
            ),
            ("v1", vec!["v2".to_string()], true)
        );
        let r = create(
            json!([{"uuid": "img", "source_type": "image", "destination_type": "volume",
                "boot_index": "0", "volume_size": 2}]),
            "",
        )
        .unwrap();
        assert_eq!(
            (r.image_ref.as_str(), r.boot_from_volume_size_gb),
            ("img", 2)
        );
        let r = create(
            json!([{"uuid": "img", "source_type": "image", "destination_type": "local",
                "boot_index": 0}]),
            "img",
        )
        .unwrap();
        assert_eq!((r.image_ref.as_str(), r.boot_volume.as_str()), ("img", ""));
        for bad in [
            json!([{"uuid": "img", "source_type": "image", "destination_type": "local", "boot_index": 0},
                {"uuid": "v", "source_type": "volume", "destination_type": "invalid"}]),
            json!([{"source_type": "blank", "destination_type": "volume", "boot_index": 0}]),
            json!([{"uuid": "img", "source_type": "image", "destination_type": "volume", "boot_index": 0}]),
            json!([{"uuid": "v1", "source_type": "volume", "boot_index": 0, "delete_on_termination": true},
                {"uuid": "v2", "source_type": "volume"}]),
        ] {
            assert_eq!(
                create(bad.clone(), "img").unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let legacy: CreateBody = serde_json::from_value(json!({"server": {"name": "vm",
            "imageRef": "i", "flavorRef": "f", "block_device_mapping": [{"volume_id": "v"}]}}))
        .unwrap();
        assert!(create_request(&legacy).is_err());
    }

    #[test]
    fn missing_references_at_create_are_bad_requests() {
        let e = not_found_is_bad_request(tonic::Status::not_found("keypair \"k\" not found"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        // Positive control: other failures keep their mapping.
        let e = not_found_is_bad_request(tonic::Status::failed_precondition("busy"));
        assert_eq!(e.status, StatusCode::CONFLICT);
    }

    #[test]
    fn an_update_renames_and_refuses_what_nubo_lacks() {
        let parse = |v: Value| serde_json::from_value::<UpdateBody>(v);
        let b = parse(json!({"server": {"name": "new", "accessIPv4": "10.0.0.1"}})).unwrap();
        let r = update_request("s", &b).unwrap().unwrap();
        assert_eq!(
            (r.name.as_deref(), r.access_ipv4.as_deref(), r.access_ipv6),
            (Some("new"), Some("10.0.0.1"), None)
        );
        let b = parse(json!({"server": {}})).unwrap();
        assert!(update_request("s", &b).unwrap().is_none());
        let b = parse(json!({"server": {"OS-DCF:diskConfig": "AUTO"}})).unwrap();
        assert_eq!(
            update_request("s", &b).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(parse(json!({"server": {"color": "red"}})).is_err());
        // Booted from a volume: no image, as Nova.
        let bfv = pb::Server {
            image_id: "img".into(),
            boot_volume_id: "v".into(),
            ..Default::default()
        };
        assert_eq!(server_view("https://x", &bfv)["image"], "");
        // The answer is Nova's common view: no extension attributes.
        let s = pb::Server {
            id: "s".into(),
            access_ipv4: "192.0.2.1".into(),
            ..Default::default()
        };
        let v = update_view("https://x", &s);
        assert_eq!(v["accessIPv4"], "192.0.2.1");
        assert!(v.get("OS-EXT-AZ:availability_zone").is_none(), "{v}");
        assert!(v.get("key_name").is_none(), "{v}");
        assert!(server_view("https://x", &s).get("key_name").is_some());
    }

    #[test]
    fn scheduler_hints_group_same_host_and_different_host() {
        let with = |hints: Value| -> CreateBody {
            serde_json::from_value(json!({"server": {"name": "vm", "imageRef": "i",
                "flavorRef": "f"}, "os:scheduler_hints": hints}))
            .unwrap()
        };
        let r = create_request(&with(json!({"group": "g-1"}))).unwrap();
        assert_eq!(r.server_group, "g-1");
        let plain: CreateBody =
            serde_json::from_value(json!({"server": {"name": "vm", "flavorRef": "f"}})).unwrap();
        assert_eq!(create_request(&plain).unwrap().server_group, "");
        let r = create_request(&with(
            json!({"same_host": "s-1", "different_host": ["s-2", "s-3"]}),
        ))
        .unwrap();
        assert_eq!(r.same_host, ["s-1"]);
        assert_eq!(r.different_host, ["s-2", "s-3"]);
        let e = create_request(&with(json!({"same_host": [1]}))).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("same_host"), "{}", e.message);
        let e = create_request(&with(json!({"query": "[]"}))).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("query"), "{}", e.message);
    }

    #[test]
    fn flavors_filter_by_min_disk_and_ram() {
        let f = |name: &str, ram_mb, disk_gb| pb::Flavor {
            name: name.into(),
            ram_mb,
            disk_gb,
            ..Default::default()
        };
        let all = vec![f("a", 64, 1), f("b", 128, 10), f("c", 512, 5)];
        let q: FlavorQuery = serde_json::from_value(json!({"minDisk": 5, "minRam": 256})).unwrap();
        let names = |v: Vec<pb::Flavor>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(names(select_flavors(all.clone(), &q).unwrap()), ["c"]);
        // As axum's Query decodes it (strings, not JSON numbers).
        let uri: axum::http::Uri = "/flavors/detail?minDisk=2&limit=5".parse().unwrap();
        let Query(q) = Query::<FlavorQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(names(select_flavors(all.clone(), &q).unwrap()), ["b", "c"]);
        assert_eq!(
            names(select_flavors(all.clone(), &FlavorQuery::default()).unwrap()),
            ["a", "b", "c"]
        );
        // is_public: false keeps the private ones; true and none keep all
        // (the coordinator chose which to list); anything else is 400.
        let mut all = all;
        all[1].private = true;
        let q = |v: &str| FlavorQuery {
            is_public: Some(v.into()),
            ..Default::default()
        };
        for v in ["f", "false", "No", "0"] {
            assert_eq!(
                names(select_flavors(all.clone(), &q(v)).unwrap()),
                ["b"],
                "{v}"
            );
            assert_eq!(q(v).visibility().unwrap(), Some(false));
        }
        for v in ["t", "true", "yes", "1"] {
            assert_eq!(q(v).visibility().unwrap(), Some(true));
        }
        assert_eq!(q("None").visibility().unwrap(), None);
        assert_eq!(
            names(select_flavors(all.clone(), &q("none")).unwrap()).len(),
            3
        );
        assert_eq!(
            select_flavors(all, &q("maybe")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            flavor_view(
                "https://x",
                &pb::Flavor {
                    private: true,
                    ..Default::default()
                }
            )["os-flavor-access:is_public"],
            false
        );
    }

    #[test]
    fn keypair_lists_and_creates_answer_nova_21_fields_only() {
        let k = pb::Keypair {
            name: "k".into(),
            public_key: "ssh-ed25519 AAA".into(),
            fingerprint: "fp".into(),
            created_at: "t".into(),
            ..Default::default()
        };
        let keys = |v: Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<String>>()
        };
        assert_eq!(
            keys(keypair_brief(&k, false)),
            ["fingerprint", "name", "public_key"]
        );
        assert_eq!(
            keys(keypair_brief(&k, true)),
            ["fingerprint", "name", "public_key", "user_id"]
        );
        assert!(keypair_view(&k)["created_at"] == "t" && keypair_view(&k)["deleted"] == false);
    }

    #[test]
    fn answers_carry_a_request_id() {
        let r = versioned(StatusCode::ACCEPTED);
        let id = r.headers()["x-openstack-request-id"].to_str().unwrap();
        assert!(id.starts_with("req-") && id.len() == 40, "{id}");
        assert_eq!(r.headers()["x-compute-request-id"], id);
        assert_eq!(r.headers()["openstack-api-version"], "compute 2.1");
    }

    #[test]
    fn states_map_to_nova_statuses() {
        assert_eq!(nova_status("running", "running").0, "ACTIVE");
        assert_eq!(nova_status("stopped", "stopped").0, "SHUTOFF");
        assert_eq!(nova_status("pending", "running").0, "BUILD");
        assert_eq!(nova_status("error", "running").0, "ERROR");
    }

    /// The keys Tempest's Nova 2.1 `server_detail` schema allows
    /// (`additionalProperties: false`) beyond the common view's, and the
    /// ones that may be null.
    const DETAIL_KEYS: &[&str] = &[
        "key_name",
        "security_groups",
        "OS-SRV-USG:launched_at",
        "OS-SRV-USG:terminated_at",
        "OS-EXT-AZ:availability_zone",
        "OS-EXT-STS:task_state",
        "OS-EXT-STS:vm_state",
        "OS-EXT-STS:power_state",
        "OS-EXT-SRV-ATTR:host",
        "OS-EXT-SRV-ATTR:instance_name",
        "OS-EXT-SRV-ATTR:hypervisor_hostname",
        "os-extended-volumes:volumes_attached",
        "config_drive",
    ];
    const NULLABLE: &[&str] = &[
        "image",
        "key_name",
        "OS-SRV-USG:launched_at",
        "OS-SRV-USG:terminated_at",
        "OS-EXT-STS:task_state",
        "OS-EXT-SRV-ATTR:host",
        "OS-EXT-SRV-ATTR:hypervisor_hostname",
    ];

    fn server(state: &str, last_error: &str) -> pb::Server {
        pb::Server {
            id: "3f0c6b5e-0000-4000-8000-000000000001".into(),
            name: "vm".into(),
            state: state.into(),
            desired_power: "running".into(),
            project: "p".into(),
            flavor: "t".into(),
            image_id: "i".into(),
            node: "n1".into(),
            last_error: last_error.into(),
            created_at: "2026-12-05T10:00:00Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn server_views_follow_the_nova_21_schema() {
        // A running server that failed once: no `fault` (Nova shows it
        // only in ERROR), nothing null but what the schema allows, no
        // key the schema does not know.
        let v = server_view("http://h", &server("running", "an old failure"));
        let o = v.as_object().unwrap();
        assert!(!o.contains_key("fault"), "{v}");
        for (k, val) in o {
            assert!(
                COMMON_VIEW_KEYS.contains(&k.as_str()) || DETAIL_KEYS.contains(&k.as_str()),
                "unknown key {k}"
            );
            assert!(
                !val.is_null() || NULLABLE.contains(&k.as_str()),
                "{k} is null"
            );
        }
        assert_eq!(v["status"], "ACTIVE");
        assert_eq!(v["progress"], 0);
        // SHUTOFF makes no progress: none shown, as Nova.
        let off = server_view("http://h", &server("stopped", ""));
        assert!(off.get("progress").is_none(), "{off}");
        // In ERROR: a fault with code, message and an ISO date.
        let e = server_view("http://h", &server("error", "no host has room"));
        assert_eq!(e["status"], "ERROR");
        assert_eq!(e["fault"]["code"], 500);
        assert_eq!(e["fault"]["message"], "no host has room");
        assert_eq!(e["fault"]["created"], "2026-12-05T10:00:00Z");
        let e = server_view("http://h", &server("error", ""));
        assert!(e["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("no reason"));
        // `GET /servers`: id, name, links only.
        let b = server_brief("http://h", &server("running", ""));
        let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "links", "name"]);
        assert_eq!(b["links"][0]["rel"], "self");
    }

    #[test]
    fn security_groups_show_by_name_only_when_the_ports_have_some() {
        let mut s = server("running", "");
        assert!(server_view("http://h", &s).get("security_groups").is_none());
        s.security_groups = vec![pb::ServerSecurityGroup {
            id: "g1".into(),
            name: "default".into(),
        }];
        let v = server_view("http://h", &s);
        assert_eq!(v["security_groups"], json!([{"name": "default"}]));
        // Not in an update's common view.
        assert!(update_view("http://h", &s).get("security_groups").is_none());
    }
}
