//! Block Storage v3 (Cinder) over nubo's `Volumes` and `VolumeTypes`:
//! volumes (create blank or from an image, list, detail, show, delete),
//! volume types (list, show) and quotas. Errors use Cinder's fault
//! format, which is Nova's (`{"itemNotFound": {"code", "message"}}`).
//! Snapshots, backups, transfers, the attachments API (3.27+) and volume
//! updates answer 404/501 (docs/openstack-compatibility.md).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::compute::Paging;
use crate::error::{ApiError, Service, StatusExt};
use crate::versions;
use crate::Upstream;

/// Cinder's faults are formatted as Nova's.
const S: Service = Service::Compute;

/// `/volume/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v3", get(v3_doc))
        .route("/v3/", get(v3_doc))
        .route("/v3/{project}/os-availability-zone", get(zones))
        .route(
            "/v3/{project}/os-quota-sets/{target}",
            get(crate::quota::volume_quota),
        )
        .route(
            "/v3/{project}/volumes",
            get(list_volumes_brief).post(create_volume),
        )
        .route("/v3/{project}/volumes/detail", get(list_volumes))
        .route(
            "/v3/{project}/volumes/{id}/action",
            axum::routing::post(volume_action),
        )
        .route(
            "/v3/{project}/volumes/{id}",
            get(show_volume)
                .delete(delete_volume)
                .put(update_unsupported),
        )
        .route("/v3/{project}/limits", get(crate::limits::volume_limits))
        .route("/v3/{project}/types", get(list_types))
        .route("/v3/{project}/types/{id}", get(show_type))
}

/// The version document (also at `/volume/`).
pub(crate) async fn versions_doc(State(up): State<Upstream>) -> Response {
    // 300 Multiple Choices, as Cinder answers its root.
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": [versions::volume_v3(&up.public_url)]})),
    )
        .into_response()
}

/// `GET /v3/`: the one version's document (200, as Cinder).
async fn v3_doc(State(up): State<Upstream>) -> Response {
    Json(json!({"versions": [versions::volume_v3(&up.public_url)]})).into_response()
}

/// `GET /v3/{project}/os-availability-zone`: the one zone every volume
/// shows (`nova`: nubo's volumes live in one Ceph cluster, not in zones).
async fn zones() -> Response {
    Json(json!({"availabilityZoneInfo": [
        {"zoneName": "nova", "zoneState": {"available": true}}
    ]}))
    .into_response()
}

/// The `status` filter of a volume list (Cinder's status names; a status
/// no volume can have gives an empty list, as Cinder).
#[derive(Debug, Default, Deserialize)]
pub struct StatusFilter {
    status: Option<String>,
}

/// Cinder's status of a nubo volume status. Pure.
fn cinder_status(s: &str) -> &str {
    match s {
        "creating" | "available" | "in-use" | "detaching" | "deleting" | "reverting" => s,
        _ => "error",
    }
}

/// The Cinder view of a volume (one attachment at most; its id is the
/// volume's, as Nova's 2.1 attachments use). `user_id` is the creating
/// user's name (nubo's Keystone user id), empty when nubo recorded none
/// (volumes made before it recorded creators, or with `auth = "none"`).
/// Pure.
pub fn volume_view(v: &pb::Volume) -> Value {
    let attachments: Vec<Value> = if v.attached_to.is_empty() {
        Vec::new()
    } else {
        vec![json!({
            "id": v.id,
            "attachment_id": v.id,
            "volume_id": v.id,
            "server_id": v.attached_to,
            "host_name": null,
            "device": null,
            "attached_at": null,
        })]
    };
    let mut out = json!({
        "id": v.id,
        "name": v.name,
        "size": v.size_gb,
        "user_id": v.created_by,
        "status": cinder_status(&v.status),
        "volume_type": if v.volume_type.is_empty() { Value::Null } else { json!(v.volume_type) },
        "attachments": attachments,
        "bootable": if v.source_image.is_empty() { "false" } else { "true" },
        "availability_zone": "nova",
        "created_at": v.created_at,
        "updated_at": null,
        "description": null,
        "metadata": {},
        "multiattach": false,
        "encrypted": false,
        "replication_status": null,
        "snapshot_id": null,
        "source_volid": null,
        "consistencygroup_id": null,
        "links": [],
    });
    if !v.source_image.is_empty() {
        out["volume_image_metadata"] = json!({"image_id": v.source_image});
    }
    out
}

/// The view a create answers: Cinder's create response has no
/// `volume_image_metadata` (only shows do). Pure.
pub fn created_view(v: &pb::Volume) -> Value {
    let mut view = volume_view(v);
    if let Some(o) = view.as_object_mut() {
        o.remove("volume_image_metadata");
    }
    view
}

/// The brief view of `GET /volumes`: id, name and links only. Pure.
pub fn volume_brief(v: &pb::Volume) -> Value {
    json!({"id": v.id, "name": v.name, "links": []})
}

async fn volumes_listed(
    up: &Upstream,
    headers: &HeaderMap,
    p: &Paging,
    f: &StatusFilter,
    view: fn(&pb::Volume) -> Value,
) -> Result<Response, ApiError> {
    let all = crate::list_all!(up.volumes(headers)?, volumes, S)?;
    let named: Vec<pb::Volume> = all
        .into_iter()
        .filter(|v| p.name.as_ref().is_none_or(|n| &v.name == n))
        .filter(|v| {
            f.status
                .as_deref()
                .is_none_or(|s| cinder_status(&v.status) == s)
        })
        .collect();
    let views: Vec<Value> = crate::compute::page(named, p, |v| &v.id)?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({"volumes": views})).into_response())
}

/// `GET /volumes/detail`.
async fn list_volumes(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(p): Query<Paging>,
    Query(f): Query<StatusFilter>,
) -> Result<Response, ApiError> {
    volumes_listed(&up, &headers, &p, &f, volume_view).await
}

/// `GET /volumes`.
async fn list_volumes_brief(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(p): Query<Paging>,
    Query(f): Query<StatusFilter>,
) -> Result<Response, ApiError> {
    volumes_listed(&up, &headers, &p, &f, volume_brief).await
}

async fn show_volume(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = up
        .volumes(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"volume": volume_view(&v)})).into_response())
}

/// `POST /volumes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    volume: NewVolume,
    /// Scheduler hints (clients send an empty object): none are supported.
    #[serde(default, rename = "OS-SCH-HNT:scheduler_hints")]
    hints: Option<Map<String, Value>>,
}

/// The attributes of a Cinder volume create; the ones nubo has no use for
/// must be absent or null.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVolume {
    size: Option<i64>,
    /// `display_name`: the v1 spelling Cinder v3 still accepts (Tempest's
    /// compute tests send it).
    #[serde(alias = "display_name")]
    name: Option<String>,
    #[serde(alias = "display_description")]
    description: Option<String>,
    volume_type: Option<String>,
    #[serde(rename = "imageRef")]
    image_ref: Option<String>,
    availability_zone: Option<String>,
    /// openstackclient sends `null` when no `--property` is given.
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    snapshot_id: Option<String>,
    source_volid: Option<String>,
    backup_id: Option<String>,
    consistencygroup_id: Option<String>,
    group_id: Option<String>,
    multiattach: Option<bool>,
}

/// nubo's request for a Cinder volume. Pure.
fn volume_request(b: CreateBody) -> Result<pb::CreateVolumeRequest, ApiError> {
    let v = b.volume;
    let bad = |m: &str| Err(ApiError::bad_request(S, format!("{m} (nubo)")));
    if v.snapshot_id.is_some() || v.source_volid.is_some() || v.backup_id.is_some() {
        return bad("volumes from snapshots, other volumes or backups are not supported: create blank or from an image (imageRef)");
    }
    if v.consistencygroup_id.is_some() || v.group_id.is_some() {
        return bad("consistency groups and groups are not supported");
    }
    if v.multiattach == Some(true) {
        return bad("multiattach volumes are not supported");
    }
    if v.availability_zone.as_deref().is_some_and(|z| z != "nova") {
        return bad(
            "volumes have no availability zone other than nova: the Ceph pool serves every node",
        );
    }
    if v.metadata.as_ref().is_some_and(|m| !m.is_empty())
        || v.description.as_deref().is_some_and(|d| !d.is_empty())
    {
        return bad("volume metadata and descriptions are not supported");
    }
    if b.hints.as_ref().is_some_and(|h| !h.is_empty()) {
        return bad("scheduler hints are not supported");
    }
    let Some(size) = v.size else {
        return Err(ApiError::bad_request(
            S,
            "Invalid input for field/attribute size: a size in GiB is required",
        ));
    };
    Ok(pb::CreateVolumeRequest {
        name: v.name.unwrap_or_default(),
        project: String::new(),
        size_gb: size,
        volume_type: v.volume_type.unwrap_or_default(),
        image_ref: v.image_ref.unwrap_or_default(),
    })
}

async fn create_volume(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let v = up
        .volumes(&headers)?
        .create(volume_request(b)?)
        .await
        .api(S)?
        .into_inner();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"volume": created_view(&v)})),
    )
        .into_response())
}

async fn delete_volume(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    up.volumes(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The new size of a Cinder `os-extend` action body
/// (`{"os-extend": {"new_size": N}}`); other actions are named in the
/// refusal. Pure.
pub fn extend_size(body: &Value) -> Result<i64, ApiError> {
    let obj = body
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad_request(S, "an action body is an object with one key"))?;
    match obj.get("os-extend") {
        Some(args) => args
            .get("new_size")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request(S, "os-extend needs new_size, an integer (GiB)")),
        None => {
            let name = obj.keys().next().cloned().unwrap_or_default();
            Err(ApiError::new(
                S,
                StatusCode::NOT_IMPLEMENTED,
                format!("volume action {name:?} is not supported (os-extend is; attach through Nova's os-volume_attachments)"),
            ))
        }
    }
}

/// `POST /v3/{project}/volumes/{id}/action`: `os-extend` is
/// `Volumes.Resize` (202; a smaller size is nubo's 400).
async fn volume_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = crate::error::json_body(S, body)?;
    let size_gb = extend_size(&body)?;
    up.volumes(&headers)?
        .resize(pb::ResizeVolumeRequest {
            r#ref: id,
            project: String::new(),
            size_gb,
        })
        .await
        .api(S)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn update_unsupported() -> ApiError {
    ApiError::new(
        S,
        StatusCode::NOT_IMPLEMENTED,
        "updating a volume's name, description or metadata is not supported by nubo (see docs/openstack-compatibility.md)",
    )
}

/// The Cinder view of a volume type (its id is its name). Pure.
pub fn type_view(t: &pb::VolumeType) -> Value {
    let q = t.qos.unwrap_or_default();
    let specs: Map<String, Value> = [
        ("read_iops_sec", q.read_iops_sec),
        ("write_iops_sec", q.write_iops_sec),
        ("read_bytes_sec", q.read_bytes_sec),
        ("write_bytes_sec", q.write_bytes_sec),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), json!(v?.to_string()))))
    .collect();
    json!({
        "id": t.name,
        "name": t.name,
        "description": null,
        "is_public": true,
        "extra_specs": {},
        "qos_specs": specs,
        "os-volume-type-access:is_public": true,
    })
}

async fn list_types(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let all = crate::list_all!(up.volume_types(&headers)?, volume_types, S)?;
    let views: Vec<Value> = all.iter().map(type_view).collect();
    Ok(Json(json!({"volume_types": views})).into_response())
}

async fn show_type(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t = up
        .volume_types(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(json!({"volume_type": type_view(&t)})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<pb::CreateVolumeRequest, ApiError> {
        volume_request(
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(S, e.to_string()))?,
        )
    }

    #[test]
    fn what_openstackclient_sends_maps_to_a_nubo_volume() {
        let r = parse(json!({"volume": {"size": 1, "consistencygroup_id": null,
            "snapshot_id": null, "name": "vol1", "description": null, "volume_type": null,
            "availability_zone": null, "metadata": {}, "imageRef": null,
            "source_volid": null, "backup_id": null}}))
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.size_gb, r.image_ref.as_str()),
            ("vol1", 1, "")
        );
        let r = parse(json!({"volume": {"size": 1, "display_name": "old-style"}})).unwrap();
        assert_eq!(r.name, "old-style");
        // python-openstackclient 10.5 without --property: metadata null.
        let r = parse(
            json!({"volume": {"size": 1, "name": "vol1", "metadata": null,
            "description": null}}),
        )
        .unwrap();
        assert_eq!(r.name, "vol1");
        let e = parse(json!({"volume": {"size": 1, "metadata": {"k": "v"}}})).unwrap_err();
        assert!(e.message.contains("metadata"), "{}", e.message);
        for (v, text) in [
            (
                json!({"volume": {"size": 1, "snapshot_id": "s"}}),
                "not supported",
            ),
            (json!({"volume": {"name": "x"}}), "size"),
            (
                json!({"volume": {"size": 1, "multiattach": true}}),
                "multiattach",
            ),
            (
                json!({"volume": {"size": 1, "bogus": 1}}),
                "unknown field `bogus`",
            ),
            (json!({"volume": {"size": "big"}}), "invalid type"),
        ] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }

    #[test]
    fn os_extend_is_a_resize_and_other_actions_are_named() {
        assert_eq!(
            extend_size(&json!({"os-extend": {"new_size": 3}})).unwrap(),
            3
        );
        for (b, status) in [
            (
                json!({"os-extend": {"new_size": null}}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"os-extend": {"new_size": "big"}}),
                StatusCode::BAD_REQUEST,
            ),
            (json!({"os-extend": {}}), StatusCode::BAD_REQUEST),
            (json!({}), StatusCode::BAD_REQUEST),
            (json!({"os-reserve": {}}), StatusCode::NOT_IMPLEMENTED),
        ] {
            assert_eq!(extend_size(&b).unwrap_err().status, status, "{b}");
        }
    }

    #[test]
    fn an_attached_volume_lists_its_server() {
        let v = pb::Volume {
            id: "v".into(),
            status: "in-use".into(),
            attached_to: "s".into(),
            size_gb: 2,
            ..Default::default()
        };
        let view = volume_view(&v);
        assert_eq!(view["attachments"][0]["server_id"], "s");
        // No recorded creator: an empty user_id, never an invented one.
        assert_eq!(view["user_id"], "");
        let mine = pb::Volume {
            created_by: "alice".into(),
            ..v.clone()
        };
        assert_eq!(volume_view(&mine)["user_id"], "alice");
        let from_image = pb::Volume {
            source_image: "img".into(),
            ..v.clone()
        };
        assert_eq!(
            volume_view(&from_image)["volume_image_metadata"]["image_id"],
            "img"
        );
        assert!(created_view(&from_image)
            .get("volume_image_metadata")
            .is_none());
        assert_eq!(view["size"], 2);
        assert_eq!(volume_view(&pb::Volume::default())["status"], "error");
    }
}
