//! Image v2 (Glance): images (list, show, create, upload, download,
//! update, delete), tags, deactivation, members
//! ([`crate::image_members`]) and schemas ([`crate::image_schemas`]).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::versions;
use crate::Upstream;

const S: Service = Service::Image;

/// `/image/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/versions", get(versions_list))
        .route("/v2/images", get(list_images).post(create_image))
        .route(
            "/v2/images/{id}",
            get(show_image).delete(delete_image).patch(update_image),
        )
        .route(
            "/v2/images/{id}/file",
            axum::routing::put(upload).get(download),
        )
        .route(
            "/v2/images/{id}/tags/{tag}",
            axum::routing::put(add_tag).delete(delete_tag),
        )
        .route(
            "/v2/images/{id}/actions/{action}",
            axum::routing::post(image_action),
        )
        .merge(crate::image_members::router())
        .merge(crate::image_schemas::router())
}

/// Glance's version document at its root (also at `/image/`, see
/// [`crate::router`]): 300 Multiple Choices, as Glance answers there.
pub(crate) async fn versions_doc(State(up): State<Upstream>) -> Response {
    (StatusCode::MULTIPLE_CHOICES, versions_list(State(up)).await).into_response()
}

/// `GET /image/versions`: the same document, 200 (as Glance).
async fn versions_list(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::image_v2(&up.public_url)]}))
}

/// The Glance view of an image: its attributes, then its free
/// properties at the top level (as Glance; they never shadow an
/// attribute: nubo refuses those names). Pure.
pub fn image_view(base: &str, i: &pb::Image) -> Value {
    let mut v = json!({
        "id": i.id,
        "name": if i.name.is_empty() { Value::Null } else { json!(i.name) },
        "status": glance_status(i),
        "visibility": i.visibility,
        "owner": i.project,
        "disk_format": i.disk_format,
        "container_format": "bare",
        "size": if i.status == "active" { json!(i.size_bytes) } else { Value::Null },
        "virtual_size": Value::Null,
        "checksum": Value::Null,
        "os_hash_algo": if i.checksum_sha256.is_empty() { Value::Null } else { json!("sha256") },
        "os_hash_value": if i.checksum_sha256.is_empty() { Value::Null } else { json!(i.checksum_sha256) },
        "min_disk": i.min_disk_gb,
        "min_ram": i.min_ram_mb,
        "protected": i.protected,
        "os_hidden": i.hidden,
        "tags": i.tags,
        "created_at": i.created_at,
        "updated_at": i.created_at,
        "self": format!("/v2/images/{}", i.id),
        "file": format!("/v2/images/{}/file", i.id),
        "schema": "/v2/schemas/image",
        "direct_url": format!("{base}/image/v2/images/{}", i.id),
    });
    if let Some(o) = v.as_object_mut() {
        for (k, val) in &i.properties {
            o.entry(k.clone()).or_insert_with(|| json!(val));
        }
    }
    v
}

/// Glance's status of an image: nubo's, `deactivated` while deactivated.
/// Pure.
fn glance_status(i: &pb::Image) -> &str {
    if i.deactivated {
        "deactivated"
    } else {
        &i.status
    }
}

/// Glance's list parameters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// Exact name.
    pub name: Option<String>,
    /// Status (`queued`, `active`, …).
    pub status: Option<String>,
    /// `raw` or `qcow2`.
    pub disk_format: Option<String>,
    /// Exact size in bytes.
    pub size: Option<u64>,
    /// Smallest size in bytes.
    pub size_min: Option<u64>,
    /// Largest size in bytes.
    pub size_max: Option<u64>,
    /// Images carrying this tag.
    pub tag: Option<String>,
    /// `private`, `shared`, `community`, `public` or `all` (default: the
    /// project's own, public ones and those shared with it and accepted).
    pub visibility: Option<String>,
    /// For images shared with the caller: `accepted` (default),
    /// `pending`, `rejected` or `all`.
    pub member_status: Option<String>,
    /// `true`: hidden images only; `false` (default): visible ones only.
    pub os_hidden: Option<bool>,
    /// Images of this project.
    pub owner: Option<String>,
    /// Most images answered (a `next` link follows when more remain).
    pub limit: Option<usize>,
    /// List after this image id.
    pub marker: Option<String>,
    /// Sort key (`name`, `size`, `created_at`, `id`, `status`,
    /// `disk_format`, `min_disk`, `min_ram`; default `created_at`).
    pub sort_key: Option<String>,
    /// `asc` or `desc` (default `desc`, as Glance).
    pub sort_dir: Option<String>,
    /// `key[:dir]` (the first one is used).
    pub sort: Option<String>,
}

/// The images of a Glance list: filtered, sorted, after `marker`, at
/// most `limit`; with the marker of the next page when more remain. Pure.
pub fn select_images(
    mut images: Vec<pb::Image>,
    f: &Filters,
) -> Result<(Vec<pb::Image>, Option<String>), ApiError> {
    let size = |i: &pb::Image| {
        if i.status == "active" {
            Some(i.size_bytes)
        } else {
            None
        }
    };
    let visibility = f.visibility.as_deref();
    if let Some(v) = visibility {
        if !["private", "shared", "community", "public", "all"].contains(&v) {
            return Err(ApiError::bad_request(
                S,
                format!("visibility {v:?} must be private, shared, community, public or all"),
            ));
        }
    }
    let member_status = f.member_status.as_deref().unwrap_or("accepted");
    if !["accepted", "pending", "rejected", "all"].contains(&member_status) {
        return Err(ApiError::bad_request(
            S,
            format!("member_status {member_status:?} must be accepted, pending, rejected or all"),
        ));
    }
    let hidden = f.os_hidden.unwrap_or(false);
    images.retain(|i| {
        f.name.as_ref().is_none_or(|x| &i.name == x)
            && f.status.as_ref().is_none_or(|x| glance_status(i) == x)
            && f.disk_format.as_ref().is_none_or(|x| &i.disk_format == x)
            && f.size.is_none_or(|m| size(i) == Some(m))
            && f.size_min.is_none_or(|m| size(i).is_some_and(|s| s >= m))
            && f.size_max.is_none_or(|m| size(i).is_some_and(|s| s <= m))
            && f.tag.as_ref().is_none_or(|t| i.tags.contains(t))
            && f.owner.as_ref().is_none_or(|o| &i.project == o)
            && i.hidden == hidden
            && listed(i, visibility, member_status)
    });
    let (key, dir) = match &f.sort {
        Some(s) => {
            let first = s.split(',').next().unwrap_or_default();
            let (k, d) = first.split_once(':').unwrap_or((first, "desc"));
            (k.to_string(), d.to_string())
        }
        None => (
            f.sort_key.clone().unwrap_or_else(|| "created_at".into()),
            f.sort_dir.clone().unwrap_or_else(|| "desc".into()),
        ),
    };
    let desc = match dir.as_str() {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("sort direction {other:?} must be asc or desc"),
            ))
        }
    };
    let cmp: fn(&pb::Image, &pb::Image) -> std::cmp::Ordering = match key.as_str() {
        "name" => |a, b| a.name.cmp(&b.name),
        "size" => |a, b| a.size_bytes.cmp(&b.size_bytes),
        "created_at" => |a, b| a.created_at.cmp(&b.created_at),
        "id" => |a, b| a.id.cmp(&b.id),
        "status" => |a, b| a.status.cmp(&b.status),
        "disk_format" => |a, b| a.disk_format.cmp(&b.disk_format),
        "min_disk" => |a, b| a.min_disk_gb.cmp(&b.min_disk_gb),
        "min_ram" => |a, b| a.min_ram_mb.cmp(&b.min_ram_mb),
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("sort key {other:?} is not supported (name, size, created_at, id, status, disk_format, min_disk, min_ram are)"),
            ))
        }
    };
    // Ties broken by id, so pages never overlap.
    images.sort_by(|a, b| {
        let o = cmp(a, b).then_with(|| a.id.cmp(&b.id));
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let start = match &f.marker {
        None => 0,
        Some(m) => {
            images
                .iter()
                .position(|i| &i.id == m)
                .ok_or_else(|| ApiError::bad_request(S, format!("marker {m} not found")))?
                + 1
        }
    };
    let end = f
        .limit
        .map_or(images.len(), |l| start.saturating_add(l).min(images.len()));
    let next = (end < images.len() && end > start).then(|| images[end - 1].id.clone());
    let page = images.drain(start..end).collect();
    Ok((page, next))
}

/// Whether a Glance list with `visibility` (None: the default) and
/// `member_status` shows image `i` (as the caller sees it: `owned`, its
/// `member_status`). As Glance: by default the caller's own images, public
/// ones and those shared with it whose membership matches `member_status`;
/// community images only when asked for. Pure.
fn listed(i: &pb::Image, visibility: Option<&str>, member_status: &str) -> bool {
    let membership =
        !i.member_status.is_empty() && (member_status == "all" || i.member_status == member_status);
    let shared_ok = i.visibility == "shared" && (i.owned || membership);
    match visibility {
        None => i.owned || i.visibility == "public" || shared_ok,
        Some("all") => {
            i.owned || i.visibility == "public" || i.visibility == "community" || shared_ok
        }
        Some("shared") => shared_ok,
        Some("private") => i.owned && i.visibility == "private",
        Some(v) => i.visibility == v,
    }
}

async fn list_images(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    let images = crate::list_all!(up.images(&headers)?, images, S)?;
    let (page, next) = select_images(images, &f)?;
    let views: Vec<Value> = page.iter().map(|i| image_view(&up.public_url, i)).collect();
    let mut body = json!({"images": views, "first": "/v2/images", "schema": "/v2/schemas/images"});
    if let Some(m) = next {
        let limit = f.limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        body["next"] = json!(format!("/v2/images?marker={m}{limit}"));
    }
    Ok(Json(body).into_response())
}

async fn show_image(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = up
        .images(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(image_view(&up.public_url, &i)).into_response())
}

/// `POST /v2/images` body: Glance's attributes, and any other key a free
/// property (a string).
#[derive(Debug, Deserialize)]
pub struct NewImage {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disk_format: Option<String>,
    #[serde(default)]
    container_format: Option<String>,
    #[serde(default)]
    min_disk: Option<u64>,
    #[serde(default)]
    min_ram: Option<u64>,
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    protected: Option<bool>,
    #[serde(default)]
    os_hidden: Option<bool>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// Everything else: free properties.
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, Value>,
}

/// Attributes Glance's create takes that nubo does not (a 400 naming
/// them rather than a property of that name).
const NOT_AT_CREATE: &[&str] = &[
    "id",
    "locations",
    "location",
    "status",
    "size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "virtual_size",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
];

/// nubo's create request for a Glance one (visibility `shared` by
/// default, as Glance). Pure.
pub fn create_request(n: &NewImage) -> Result<pb::CreateImageRequest, ApiError> {
    // No name (or null): a nameless image, as Glance allows.
    let name = n.name.clone().unwrap_or_default();
    let disk_format = match n.disk_format.as_deref().unwrap_or("raw") {
        f @ ("raw" | "qcow2") => f.to_string(),
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("disk_format {other:?} is not supported (raw, qcow2 are)"),
            ))
        }
    };
    match n.container_format.as_deref().unwrap_or("bare") {
        "bare" => {}
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("container_format {other:?} is not supported (bare is)"),
            ))
        }
    }
    let mut properties = std::collections::HashMap::new();
    // `owner`: the project the image is made in (another one than the
    // caller's: cloud admins only, the coordinator checks).
    let mut project = String::new();
    for (k, v) in &n.extra {
        if k == "owner" {
            project = v
                .as_str()
                .filter(|o| !o.trim().is_empty())
                .ok_or_else(|| ApiError::bad_request(S, "owner must be a project id"))?
                .to_string();
            continue;
        }
        if NOT_AT_CREATE.contains(&k.as_str()) {
            return Err(ApiError::new(
                S,
                StatusCode::FORBIDDEN,
                format!("attribute {k:?} is not set at creation in nubo"),
            ));
        }
        let v = v
            .as_str()
            .ok_or_else(|| ApiError::bad_request(S, format!("property {k:?} must be a string")))?;
        properties.insert(k.clone(), v.to_string());
    }
    Ok(pb::CreateImageRequest {
        name,
        disk_format,
        min_disk_gb: n.min_disk.unwrap_or(0),
        min_ram_mb: n.min_ram.unwrap_or(0),
        visibility: n.visibility.clone().unwrap_or_else(|| "shared".into()),
        tags: n.tags.clone().unwrap_or_default(),
        properties,
        protected: n.protected.unwrap_or(false),
        hidden: n.os_hidden.unwrap_or(false),
        project,
        ..Default::default()
    })
}

async fn create_image(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Json(body): Json<NewImage>,
) -> Result<Response, ApiError> {
    let req = create_request(&body)?;
    let i = up.images(&headers)?.create(req).await.api(S)?.into_inner();
    Ok((StatusCode::CREATED, Json(image_view(&up.public_url, &i))).into_response())
}

async fn delete_image(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    up.images(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Glance attributes an image PATCH may never change (403, as Glance).
const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "file",
    "self",
    "schema",
    "direct_url",
    "disk_format",
    "container_format",
];

/// The `Images.Update` request of a Glance JSON patch on image `cur`
/// (both Glance's `openstack-images-v2.1-json-patch` form `{"op", "path",
/// "value"}` and the 2.0 form `{"replace": path, "value"}`). Pure. `name`,
/// `min_disk`, `min_ram`, `visibility`, `protected`, `os_hidden` and
/// `tags` (the whole list) change; any other top-level path is a free
/// property (a string) set or removed; read-only attributes are a 403,
/// removing an attribute a 403, locations and nested paths a 400. All or
/// nothing: the first refusal answers and nothing changes.
pub fn patch_request(cur: &pb::Image, ops: &Value) -> Result<pb::UpdateImageRequest, ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request(S, "a JSON patch is a list of operations"))?;
    let mut req = pb::UpdateImageRequest {
        r#ref: cur.id.clone(),
        ..Default::default()
    };
    let mut tags: std::collections::BTreeSet<String> = cur.tags.iter().cloned().collect();
    let mut tags_changed = false;
    for o in ops {
        let (op, path) = match (o.get("op").and_then(Value::as_str), o.get("path")) {
            (Some(op), Some(Value::String(p))) => (op, p.as_str()),
            _ => ["replace", "add", "remove"]
                .into_iter()
                .find_map(|op| o.get(op).and_then(Value::as_str).map(|p| (op, p)))
                .ok_or_else(|| ApiError::bad_request(S, format!("not a patch operation: {o}")))?,
        };
        let attr = path.strip_prefix('/').unwrap_or(path);
        let value = o.get("value");
        if READ_ONLY.contains(&attr) {
            return Err(ApiError::new(
                S,
                StatusCode::FORBIDDEN,
                format!("attribute {attr:?} is read-only"),
            ));
        }
        let set = matches!(op, "replace" | "add");
        if !set && op != "remove" {
            return Err(ApiError::bad_request(
                S,
                format!("patch operation {op:?} is not supported (replace, add, remove are)"),
            ));
        }
        let count = |what: &str| -> Result<u64, ApiError> {
            value.and_then(Value::as_u64).ok_or_else(|| {
                ApiError::bad_request(S, format!("{what} must be a non-negative integer"))
            })
        };
        let boolean = |what: &str| -> Result<bool, ApiError> {
            value
                .and_then(Value::as_bool)
                .ok_or_else(|| ApiError::bad_request(S, format!("{what} must be true or false")))
        };
        match (attr, set) {
            ("name", true) => {
                let n = value
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| ApiError::bad_request(S, "nubo images need a name (a non-empty string)"))?;
                req.name = Some(n.to_string());
            }
            ("min_disk", true) => req.min_disk_gb = Some(count("min_disk")?),
            ("min_ram", true) => req.min_ram_mb = Some(count("min_ram")?),
            ("visibility", true) => {
                let v = value
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request(S, "visibility must be a string"))?;
                req.visibility = Some(v.to_string());
            }
            ("owner", true) => {
                let o = value
                    .and_then(Value::as_str)
                    .filter(|o| !o.trim().is_empty())
                    .ok_or_else(|| ApiError::bad_request(S, "owner must be a project id"))?;
                req.owner = Some(o.to_string());
            }
            ("owner", false) => {
                return Err(ApiError::new(
                    S,
                    StatusCode::FORBIDDEN,
                    "an image always has an owner: replace it",
                ))
            }
            ("protected", true) => req.protected = Some(boolean("protected")?),
            ("os_hidden", true) => req.hidden = Some(boolean("os_hidden")?),
            ("tags", true) => {
                let list = value.and_then(Value::as_array).ok_or_else(|| {
                    ApiError::bad_request(S, "tags must be a list of strings")
                })?;
                tags = list
                    .iter()
                    .map(|t| {
                        t.as_str().map(str::to_string).ok_or_else(|| {
                            ApiError::bad_request(S, "tags must be a list of strings")
                        })
                    })
                    .collect::<Result<_, _>>()?;
                tags_changed = true;
            }
            ("name" | "min_disk" | "min_ram" | "visibility" | "protected" | "os_hidden" | "tags", false) => {
                return Err(ApiError::new(
                    S,
                    StatusCode::FORBIDDEN,
                    format!("attribute {attr:?} cannot be removed"),
                ))
            }
            ("locations" | "location", _) => {
                return Err(ApiError::bad_request(
                    S,
                    "image locations are not supported by nubo (the data lives in the coordinator's image store; docs/openstack-compatibility.md)",
                ))
            }
            (other, _) if other.is_empty() || other.contains('/') => {
                return Err(ApiError::bad_request(
                    S,
                    format!("path {path:?} is not a top-level image attribute or property"),
                ))
            }
            (other, true) => {
                let v = value.and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(S, format!("property {other:?} must be a string"))
                })?;
                req.remove_properties.retain(|k| k != other);
                req.set_properties.insert(other.to_string(), v.to_string());
            }
            (other, false) => {
                if req.set_properties.remove(other).is_none()
                    && !cur.properties.contains_key(other)
                {
                    return Err(ApiError::new(
                        S,
                        StatusCode::CONFLICT,
                        format!("image {} has no property {other:?} to remove", cur.id),
                    ));
                }
                if cur.properties.contains_key(other) {
                    req.remove_properties.push(other.to_string());
                }
            }
        }
    }
    if tags_changed {
        let old: std::collections::BTreeSet<String> = cur.tags.iter().cloned().collect();
        req.add_tags = tags.difference(&old).cloned().collect();
        req.remove_tags = old.difference(&tags).cloned().collect();
    }
    Ok(req)
}

/// True when `req` changes nothing. Pure.
fn unchanged(req: &pb::UpdateImageRequest) -> bool {
    *req == pb::UpdateImageRequest {
        r#ref: req.r#ref.clone(),
        project: req.project.clone(),
        ..Default::default()
    }
}

/// `PATCH /v2/images/{id}`: a Glance JSON patch ([`patch_request`]).
async fn update_image(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/openstack-images-v2.1-json-patch")
        && !ctype.starts_with("application/openstack-images-v2.0-json-patch")
    {
        return Err(ApiError::new(
            S,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {ctype:?} is not a Glance JSON patch (application/openstack-images-v2.1-json-patch)"),
        ));
    }
    let ops: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(S, format!("the body is not JSON: {e}")))?;
    let mut c = up.images(&headers)?;
    let cur = c
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let req = patch_request(&cur, &ops)?;
    let i = if unchanged(&req) {
        cur
    } else {
        c.update(req).await.api(S)?.into_inner()
    };
    Ok(Json(image_view(&up.public_url, &i)).into_response())
}

/// `PUT /v2/images/{id}/tags/{tag}`: adds a tag (204; an existing one
/// stays).
async fn add_tag(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = pb::UpdateImageRequest {
        r#ref: id,
        add_tags: vec![tag],
        ..Default::default()
    };
    up.images(&headers)?.update(req).await.api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /v2/images/{id}/tags/{tag}`: removes a tag (404 when absent).
async fn delete_tag(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let req = pb::UpdateImageRequest {
        r#ref: id,
        remove_tags: vec![tag],
        ..Default::default()
    };
    up.images(&headers)?.update(req).await.api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v2/images/{id}/actions/deactivate|reactivate` (204).
async fn image_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let deactivated = match action.as_str() {
        "deactivate" => true,
        "reactivate" => false,
        other => {
            return Err(ApiError::not_found(
                S,
                format!("image action {other:?} does not exist (deactivate, reactivate do)"),
            ))
        }
    };
    let req = pb::UpdateImageRequest {
        r#ref: id,
        deactivated: Some(deactivated),
        ..Default::default()
    };
    up.images(&headers)?.update(req).await.api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Largest chunk nubo's upload accepts.
const CHUNK: usize = 1 << 20;

/// `PUT /v2/images/{id}/file`: the body streamed to `ImageData.Upload` in
/// chunks of at most 1 MiB (never held whole in memory). A
/// `Content-Length` is passed on as the declared size (the coordinator
/// refuses data that does not match it); a chunked body without one is
/// streamed as it comes, its end deciding the size. A body that breaks
/// off cancels the upload, so nothing partial is stored.
async fn upload(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let size: u64 = match headers.get("content-length") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad_request(S, "Content-Length is not a number"))?,
    };
    let mut client = up.image_data(&headers)?;
    let first = pb::ImageChunk {
        image: id,
        project: String::new(),
        part: "disk".into(),
        size_bytes: size,
        data: Vec::new(),
    };
    let (broken_tx, broken_rx) = tokio::sync::oneshot::channel::<String>();
    let data = body_chunks(body, broken_tx);
    let stream = futures::stream::iter([first]).chain(data);
    tokio::select! {
        r = client.upload(stream) => {
            r.api(S)?;
        }
        Ok(why) = broken_rx => {
            return Err(ApiError::bad_request(
                S,
                format!("the upload body broke off ({why}); nothing was stored"),
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `body` as upload chunks of at most 1 MiB. A broken body is reported on
/// `broken` and the stream then never ends (its end would read as a
/// complete upload): the caller cancels the call.
fn body_chunks(
    body: Body,
    broken: tokio::sync::oneshot::Sender<String>,
) -> impl futures::Stream<Item = pb::ImageChunk> + Send + 'static {
    use futures::future::Either;
    let mut broken = Some(broken);
    body.into_data_stream().flat_map(move |r| match r {
        Ok(bytes) => {
            let chunks: Vec<pb::ImageChunk> = bytes
                .chunks(CHUNK)
                .map(|c| pb::ImageChunk {
                    data: c.to_vec(),
                    ..Default::default()
                })
                .collect();
            Either::Left(futures::stream::iter(chunks))
        }
        Err(e) => {
            if let Some(tx) = broken.take() {
                let _ = tx.send(e.to_string());
            }
            Either::Right(futures::stream::pending())
        }
    })
}

/// `GET /v2/images/{id}/file`: `ImageData.Download` streamed out.
async fn download(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut images = up.images(&headers)?;
    // Resolve (and authorize) in the caller's project first: Download
    // takes an id and checks no project.
    let image = images
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    if image.status != "active" {
        return Err(ApiError::new(
            S,
            StatusCode::NO_CONTENT,
            "image has no data",
        ));
    }
    let stream = up
        .image_data(&headers)?
        .download(pb::DownloadImageRequest {
            image_id: image.id,
            part: "disk".into(),
        })
        .await
        .api(S)?
        .into_inner()
        .map(|c| {
            c.map(|c| bytes_of(c.data))
                .map_err(|s| std::io::Error::other(s.message().to_string()))
        });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lists_filter_sort_and_page() {
        let img = |id: &str, size: u64, status: &str| pb::Image {
            id: id.into(),
            name: id.into(),
            size_bytes: size,
            status: status.into(),
            disk_format: "raw".into(),
            owned: true,
            visibility: "private".into(),
            ..Default::default()
        };
        let all = vec![
            img("a", 30, "active"),
            img("b", 10, "active"),
            img("c", 0, "queued"),
        ];
        let ids = |f: Filters| -> (Vec<String>, Option<String>) {
            let (p, n) = select_images(all.clone(), &f).unwrap();
            (p.into_iter().map(|i| i.id).collect(), n)
        };
        let f = |q: &str| -> Filters { serde_urlencoded::from_str(q).unwrap() };
        assert_eq!(ids(f("sort=size:asc&status=active")).0, ["b", "a"]);
        assert_eq!(ids(f("sort_key=size&sort_dir=desc")).0, ["a", "b", "c"]);
        assert_eq!(ids(f("size_min=20")).0, ["a"]);
        assert_eq!(ids(f("size=10")).0, ["b"]);
        assert_eq!(ids(f("status=queued")).0, ["c"]);
        assert!(ids(f("tag=x")).0.is_empty());
        // Pages: limit, then the marker of the last one.
        let (p1, next) = ids(f("sort_key=id&sort_dir=asc&limit=2"));
        assert_eq!(
            (p1, next.as_deref()),
            (vec!["a".to_string(), "b".into()], Some("b"))
        );
        let (p2, next) = ids(f("sort_key=id&sort_dir=asc&limit=2&marker=b"));
        assert_eq!((p2, next), (vec!["c".to_string()], None));
        for q in ["marker=zz", "sort_key=color", "sort_dir=up"] {
            assert!(select_images(all.clone(), &f(q)).is_err(), "{q}");
        }
    }

    #[test]
    fn json_patches_map_onto_nubos_image_fields() {
        let cur = pb::Image {
            id: "i".into(),
            tags: vec!["old".into(), "keep".into()],
            properties: [("kernel_id".to_string(), "k".to_string())].into(),
            ..Default::default()
        };
        // Both Glance patch forms.
        let r = patch_request(
            &cur,
            &json!([
                {"op": "replace", "path": "/name", "value": "n2"},
                {"add": "/min_disk", "value": 3},
                {"replace": "/min_ram", "value": 512},
                {"op": "replace", "path": "/visibility", "value": "public"},
                {"op": "replace", "path": "/protected", "value": true},
                {"op": "replace", "path": "/os_hidden", "value": false},
                {"op": "replace", "path": "/tags", "value": ["keep", "new"]},
                {"op": "add", "path": "/ramdisk_id", "value": "r"},
                {"op": "remove", "path": "/kernel_id"},
            ]),
        )
        .unwrap();
        assert_eq!(
            (r.name.as_deref(), r.min_disk_gb, r.min_ram_mb),
            (Some("n2"), Some(3), Some(512))
        );
        assert_eq!(
            (r.visibility.as_deref(), r.protected, r.hidden),
            (Some("public"), Some(true), Some(false))
        );
        assert_eq!(
            (r.add_tags, r.remove_tags),
            (vec!["new".to_string()], vec!["old".to_string()])
        );
        assert_eq!(
            r.set_properties.get("ramdisk_id").map(String::as_str),
            Some("r")
        );
        assert_eq!(r.remove_properties, ["kernel_id"]);
        // Nothing asked: nothing changes.
        assert!(unchanged(&patch_request(&cur, &json!([])).unwrap()));
        for (ops, status, text) in [
            (
                json!([{"op": "replace", "path": "/status", "value": "active"}]),
                403,
                "read-only",
            ),
            (json!([{"remove": "/name"}]), 403, "cannot be removed"),
            (json!([{"remove": "/tags"}]), 403, "cannot be removed"),
            (
                json!([{"op": "add", "path": "/tags", "value": "t"}]),
                400,
                "list of strings",
            ),
            (
                json!([{"op": "add", "path": "/color", "value": 3}]),
                400,
                "must be a string",
            ),
            (json!([{"remove": "/color"}]), 409, "no property"),
            (
                json!([{"op": "add", "path": "/a/b", "value": "x"}]),
                400,
                "top-level",
            ),
            (
                json!([{"op": "add", "path": "/locations/-", "value": {}}]),
                400,
                "top-level",
            ),
            (
                json!([{"replace": "/locations", "value": []}]),
                400,
                "locations",
            ),
            (
                json!([{"replace": "/protected", "value": "yes"}]),
                400,
                "true or false",
            ),
            (
                json!([{"replace": "/min_disk", "value": -1}]),
                400,
                "non-negative",
            ),
            (
                json!([{"replace": "/name", "value": ""}]),
                400,
                "need a name",
            ),
            (
                json!([{"op": "move", "path": "/name", "from": "/x"}]),
                400,
                "move",
            ),
            (json!({"name": "x"}), 400, "list of operations"),
        ] {
            let e = patch_request(&cur, &ops).unwrap_err();
            assert_eq!(e.status.as_u16(), status, "{ops}");
            assert!(e.message.contains(text), "{ops}: {}", e.message);
        }
    }

    #[test]
    fn glance_lists_show_what_the_caller_may_see() {
        let img = |id: &str, vis: &str, owned: bool, member: &str| pb::Image {
            id: id.into(),
            name: id.into(),
            visibility: vis.into(),
            owned,
            member_status: member.into(),
            status: "active".into(),
            ..Default::default()
        };
        let all = vec![
            img("own-private", "private", true, ""),
            img("own-shared", "shared", true, ""),
            img("public", "public", false, ""),
            img("community", "community", false, ""),
            img("pending", "shared", false, "pending"),
            img("accepted", "shared", false, "accepted"),
            img("rejected", "shared", false, "rejected"),
            pb::Image {
                hidden: true,
                ..img("hidden", "private", true, "")
            },
        ];
        let ids = |q: &str| -> Vec<String> {
            let f: Filters =
                serde_urlencoded::from_str(&format!("sort_key=id&sort_dir=asc&{q}")).unwrap();
            select_images(all.clone(), &f)
                .unwrap()
                .0
                .into_iter()
                .map(|i| i.id)
                .collect()
        };
        assert_eq!(ids(""), ["accepted", "own-private", "own-shared", "public"]);
        assert_eq!(ids("visibility=community"), ["community"]);
        assert_eq!(
            ids("visibility=shared&member_status=pending"),
            ["own-shared", "pending"]
        );
        assert_eq!(
            ids("visibility=shared&member_status=all"),
            ["accepted", "own-shared", "pending", "rejected"]
        );
        assert_eq!(ids("visibility=private"), ["own-private"]);
        assert_eq!(ids("visibility=public"), ["public"]);
        assert_eq!(
            ids("visibility=all"),
            [
                "accepted",
                "community",
                "own-private",
                "own-shared",
                "public"
            ]
        );
        assert_eq!(ids("os_hidden=true"), ["hidden"]);
        for q in ["visibility=world", "member_status=maybe"] {
            let f: Filters = serde_urlencoded::from_str(q).unwrap();
            assert!(select_images(all.clone(), &f).is_err(), "{q}");
        }
    }

    #[test]
    fn the_view_carries_properties_tags_and_flags() {
        let i = pb::Image {
            id: "i".into(),
            status: "active".into(),
            visibility: "shared".into(),
            tags: vec!["t".into()],
            properties: [("ramdisk_id".to_string(), "r".to_string())].into(),
            protected: true,
            deactivated: true,
            ..Default::default()
        };
        let v = image_view("https://x", &i);
        assert_eq!(v["ramdisk_id"], "r");
        assert_eq!(v["tags"], json!(["t"]));
        assert_eq!(v["protected"], true);
        assert_eq!(v["os_hidden"], false);
        assert_eq!(v["visibility"], "shared");
        assert_eq!(v["status"], "deactivated");
        // Glance's default visibility at create is shared; properties are
        // strings.
        let n: NewImage = serde_json::from_value(json!({"name": "n", "kernel_id": "k"})).unwrap();
        let r = create_request(&n).unwrap();
        assert_eq!(
            (
                r.visibility.as_str(),
                r.properties.get("kernel_id").map(String::as_str)
            ),
            ("shared", Some("k"))
        );
        let n: NewImage = serde_json::from_value(json!({"name": null, "os_hidden": true})).unwrap();
        let r = create_request(&n).unwrap();
        assert_eq!((r.name.as_str(), r.hidden), ("", true));
        let v = image_view("https://x", &pb::Image::default());
        assert_eq!(v["name"], Value::Null);
        let n: NewImage = serde_json::from_value(json!({"name": "n", "kernel_id": 3})).unwrap();
        assert_eq!(create_request(&n).unwrap_err().status.as_u16(), 400);
        let n: NewImage = serde_json::from_value(json!({"name": "n", "owner": "p"})).unwrap();
        assert_eq!(create_request(&n).unwrap().project, "p");
        let n: NewImage = serde_json::from_value(json!({"name": "n", "owner": 1})).unwrap();
        assert_eq!(create_request(&n).unwrap_err().status.as_u16(), 400);
        let cur = pb::Image {
            id: "i".into(),
            ..Default::default()
        };
        let r = patch_request(
            &cur,
            &json!([{"op": "replace", "path": "/owner", "value": "p2"}]),
        )
        .unwrap();
        assert_eq!(r.owner.as_deref(), Some("p2"));
        let e = patch_request(&cur, &json!([{"op": "remove", "path": "/owner"}])).unwrap_err();
        assert_eq!(e.status.as_u16(), 403);
    }
}
