//! Block Storage v3 (Cinder) over nubo's `Volumes` and `VolumeTypes`:
//! volumes (create blank, from an image, a snapshot or another volume;
//! list, detail, show, update, delete with `cascade`), their metadata
//! ([`crate::volume_metadata`]), actions ([`crate::volume_actions`]),
//! snapshots ([`crate::volume_snapshots`]), volume types (list, show),
//! quotas and the extension list. Errors use Cinder's fault format, which
//! is Nova's (`{"itemNotFound": {"code", "message"}}`). Backups,
//! transfers and the attachments API (3.27+) answer 404
//! (docs/openstack-compatibility.md).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cinder_list::{self, Accepts};
use crate::error::{ApiError, Service, StatusExt};
use crate::versions;
use crate::Upstream;

/// Cinder's faults are formatted as Nova's.
const S: Service = Service::Compute;

/// `/volume/…`: versions, volumes, zones, quotas, limits, types,
/// extensions (`lib.rs` merges the actions, metadata and snapshots, which
/// build on this module's formats).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v3", get(v3_doc))
        .route("/v3/", get(v3_doc))
        .route("/v3/{project}/os-availability-zone", get(zones))
        .route(
            "/v3/{project}/os-quota-sets/{target}",
            get(crate::quota::volume_quota)
                .put(crate::quota::update_volume_quota)
                .delete(crate::quota::reset_volume_quota),
        )
        .route(
            "/v3/{project}/volumes",
            get(list_volumes_brief).post(create_volume),
        )
        .route("/v3/{project}/volumes/detail", get(list_volumes))
        .route(
            "/v3/{project}/volumes/{id}",
            get(show_volume).delete(delete_volume).put(update_volume),
        )
        .route("/v3/{project}/extensions", get(extensions))
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

/// Cinder's status of a nubo volume status. Pure.
fn cinder_status(s: &str) -> &str {
    match s {
        "creating" | "available" | "in-use" | "attaching" | "detaching" | "deleting"
        | "awaiting-transfer" | "reverting" | "maintenance" | "error_deleting" => s,
        _ => "error",
    }
}

/// The guest device of an attached volume as OpenStack writes it
/// (`/dev/vdb`); null when nubo recorded none. Pure.
pub fn guest_device(v: &pb::Volume) -> Value {
    match v.device.as_str() {
        "" => Value::Null,
        d => json!(format!("/dev/{d}")),
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
            "device": guest_device(v),
            "attached_at": null,
        })]
    };
    let mut metadata: Map<String, Value> = v
        .metadata
        .iter()
        .map(|(k, x)| (k.clone(), json!(x)))
        .collect();
    if let Some(ro) = v.read_only {
        // Cinder shows the read-only mark in the metadata ("True"/"False").
        metadata.insert("readonly".into(), json!(if ro { "True" } else { "False" }));
    }
    let id_or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    let mut out = json!({
        "id": v.id,
        "name": v.name,
        "size": v.size_gb,
        "user_id": v.created_by,
        "os-vol-tenant-attr:tenant_id": v.project,
        "status": cinder_status(&v.status),
        "volume_type": if v.volume_type.is_empty() { Value::Null } else { json!(v.volume_type) },
        "attachments": attachments,
        "bootable": if v.bootable { "true" } else { "false" },
        "availability_zone": "nova",
        "created_at": v.created_at,
        "updated_at": null,
        "description": id_or_null(&v.description),
        "metadata": metadata,
        "multiattach": false,
        "encrypted": false,
        "replication_status": null,
        "snapshot_id": id_or_null(&v.source_snapshot),
        "source_volid": id_or_null(&v.source_volume),
        "consistencygroup_id": null,
        "links": [],
    });
    if !v.image_metadata.is_empty() {
        out["volume_image_metadata"] = json!(v.image_metadata);
    } else if !v.source_image.is_empty() {
        // Volumes made before nubo kept image metadata.
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
        o.remove("os-vol-tenant-attr:tenant_id");
    }
    view
}

/// What Cinder's volume lists accept.
const VOLUME_LIST: Accepts = Accepts {
    sort_keys: &[
        "id",
        "name",
        "display_name",
        "status",
        "size",
        "created_at",
        "updated_at",
        "bootable",
        "availability_zone",
        "volume_type",
    ],
    filters: &[
        "name",
        "display_name",
        "status",
        "metadata",
        "bootable",
        "availability_zone",
        "volume_type",
        "description",
    ],
};

/// A Cinder list answer: `{key: page, key_links: [next]}`. The views
/// are filtered, sorted and paged by [`cinder_list`]. `url` is the
/// list's own address (for the next link).
pub(crate) fn list_answer(
    key: &str,
    url: &str,
    q: &cinder_list::ListQuery,
    views: Vec<Value>,
) -> Result<Response, ApiError> {
    let page = cinder_list::apply(views, q)?;
    let mut out = Map::new();
    if let Some(l) = cinder_list::links(url, q, &page) {
        out.insert(format!("{key}_links"), l);
    }
    out.insert(key.to_string(), Value::Array(page));
    Ok(Json(Value::Object(out)).into_response())
}

async fn volumes_listed(
    up: &Upstream,
    headers: &HeaderMap,
    project: &str,
    raw: Vec<(String, String)>,
    detail: bool,
) -> Result<Response, ApiError> {
    let q = cinder_list::parse(raw, VOLUME_LIST)?;
    let all = crate::list_all!(up.volumes(headers)?, volumes, S, q.projects.request())?;
    // Filter and sort on the full views; the brief list shows less.
    let views: Vec<Value> = all.iter().map(volume_view).collect();
    let path = if detail { "volumes/detail" } else { "volumes" };
    let url = format!("{}/volume/v3/{project}/{path}", up.public_url);
    if detail {
        return list_answer("volumes", &url, &q, views);
    }
    let page = cinder_list::apply(views, &q)?;
    let links = cinder_list::links(&url, &q, &page);
    let brief: Vec<Value> = page
        .iter()
        .map(|v| json!({"id": v["id"], "name": v["name"], "links": []}))
        .collect();
    let mut out = json!({"volumes": brief});
    if let Some(l) = links {
        out["volumes_links"] = l;
    }
    Ok(Json(out).into_response())
}

/// `GET /volumes/detail`.
async fn list_volumes(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    volumes_listed(&up, &headers, &project, raw, true).await
}

/// `GET /volumes`.
async fn list_volumes_brief(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    volumes_listed(&up, &headers, &project, raw, false).await
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

/// Cinder metadata (string values only) as nubo's. Pure.
pub(crate) fn string_map(
    m: Option<Map<String, Value>>,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(ApiError::bad_request(
                S,
                format!(
                    "Invalid input received: metadata value of {k:?} must be a string, not {other}"
                ),
            )),
        })
        .collect()
}

/// nubo's request for a Cinder volume. Pure.
fn volume_request(b: CreateBody) -> Result<pb::CreateVolumeRequest, ApiError> {
    let v = b.volume;
    let bad = |m: &str| Err(ApiError::bad_request(S, format!("{m} (nubo)")));
    if v.backup_id.is_some() {
        return bad("volumes from backups are not supported: nubo has no backups");
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
    if b.hints.as_ref().is_some_and(|h| !h.is_empty()) {
        return bad("scheduler hints are not supported");
    }
    let copy = v.snapshot_id.is_some() || v.source_volid.is_some();
    let size = match v.size {
        Some(n) => n,
        // A copy without a size has its source's (0 tells nubo so).
        None if copy => 0,
        None => {
            return Err(ApiError::bad_request(
                S,
                "Invalid input for field/attribute size: a size in GiB is required",
            ))
        }
    };
    if copy && size <= 0 && v.size.is_some() {
        return Err(ApiError::bad_request(
            S,
            format!("Invalid input received: volume size {size} must be an integer greater than 0"),
        ));
    }
    Ok(pb::CreateVolumeRequest {
        name: v.name.unwrap_or_default(),
        project: String::new(),
        size_gb: size,
        volume_type: v.volume_type.unwrap_or_default(),
        image_ref: v.image_ref.unwrap_or_default(),
        description: v.description.unwrap_or_default(),
        metadata: string_map(v.metadata)?,
        snapshot_id: v.snapshot_id.unwrap_or_default(),
        source_volume: v.source_volid.unwrap_or_default(),
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
        .map_err(cinder_error)?
        .into_inner();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"volume": created_view(&v)})),
    )
        .into_response())
}

/// Cinder's answer to a failed nubo call: a volume in the wrong state
/// (nubo's FailedPrecondition, Nova's 409) is Cinder's 400 "Invalid
/// volume"; everything else as [`ApiError::from_status`].
pub(crate) fn cinder_error(s: tonic::Status) -> ApiError {
    if s.code() == tonic::Code::FailedPrecondition {
        return ApiError::bad_request(S, format!("Invalid volume: {}", s.message()));
    }
    let mut e = ApiError::from_status(S, &s);
    // Cinder answers an exceeded quota with 413 (Nova with 403).
    if s.code() == tonic::Code::ResourceExhausted {
        e.status = StatusCode::PAYLOAD_TOO_LARGE;
    }
    e
}

/// `?cascade=` of a volume delete.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    cascade: Option<String>,
}

/// `DELETE /volumes/{id}`: nubo deletes a volume with its snapshots; as
/// Cinder, that takes `cascade=true` (without it a volume that has
/// snapshots is a 400).
async fn delete_volume(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let cascade = match q.cascade.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                S,
                format!("Invalid input received: cascade {other:?} is not a boolean"),
            ))
        }
    };
    let mut c = up.volumes(&headers)?;
    if !cascade {
        let snaps = c
            .list_snapshots(crate::upstream::get_req(id.clone()))
            .await
            .map_err(cinder_error)?
            .into_inner()
            .snapshots;
        if !snaps.is_empty() {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "Invalid volume: Volume {id} still has {} dependent snapshots (delete with cascade=true)",
                    snaps.len()
                ),
            ));
        }
    }
    c.delete(crate::upstream::delete_req(id))
        .await
        .map_err(cinder_error)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `PUT /volumes/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    volume: VolumeChanges,
}

/// What a Cinder volume update may change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeChanges {
    #[serde(default, alias = "display_name")]
    name: Option<Option<String>>,
    #[serde(default, alias = "display_description")]
    description: Option<Option<String>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// nubo's update of a Cinder `PUT /volumes/{id}` (metadata given
/// replaces all of it, as Cinder). Pure.
fn update_request(id: String, b: UpdateBody) -> Result<pb::UpdateVolumeRequest, ApiError> {
    let v = b.volume;
    let replace = v.metadata.is_some();
    Ok(pb::UpdateVolumeRequest {
        r#ref: id,
        name: v.name.map(Option::unwrap_or_default),
        description: v.description.map(Option::unwrap_or_default),
        replace_metadata: replace,
        metadata: string_map(v.metadata)?,
        ..Default::default()
    })
}

/// `PUT /volumes/{id}`: name, description, metadata (200 with the volume).
async fn update_volume(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let v = up
        .volumes(&headers)?
        .update(update_request(id, b)?)
        .await
        .map_err(cinder_error)?
        .into_inner();
    Ok(Json(json!({"volume": created_view(&v)})).into_response())
}

/// `GET /extensions`: what of Cinder's extension list nubo serves (the
/// aliases Cinder gives them).
async fn extensions() -> Response {
    let ext = |alias: &str, name: &str, description: &str| {
        json!({"alias": alias, "name": name, "description": description,
            "updated": "2026-12-05T00:00:00+00:00", "links": []})
    };
    Json(json!({"extensions": [
        ext("os-availability-zone", "AvailabilityZones", "The one availability zone, nova."),
        ext("os-extended-snapshot-attributes", "ExtendedSnapshotAttributes", "Snapshot progress and project."),
        ext("os-quota-sets", "Quotas", "Quotas (show; changed through nubo's own API)."),
        ext("os-vol-image-meta", "VolumeImageMetadata", "Volume image metadata."),
        ext("os-volume-actions", "VolumeActions", "Extend, attach, detach, reserve, unreserve, set bootable, read-only flag, image metadata."),
    ]}))
    .into_response()
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
        // Metadata, descriptions and copies of snapshots or volumes (no
        // size: the source's, told to nubo as 0).
        let r = parse(json!({"volume": {"size": 1, "metadata": {"k": "v"},
            "description": "d"}}))
        .unwrap();
        assert_eq!(
            (r.metadata["k"].as_str(), r.description.as_str()),
            ("v", "d")
        );
        let r = parse(json!({"volume": {"snapshot_id": "s"}})).unwrap();
        assert_eq!((r.snapshot_id.as_str(), r.size_gb), ("s", 0));
        let r = parse(json!({"volume": {"source_volid": "v", "size": 3}})).unwrap();
        assert_eq!((r.source_volume.as_str(), r.size_gb), ("v", 3));
        for (v, text) in [
            (json!({"volume": {"size": 1, "backup_id": "b"}}), "backups"),
            (
                json!({"volume": {"size": 1, "metadata": {"k": 1}}}),
                "must be a string",
            ),
            (
                json!({"volume": {"size": 0, "snapshot_id": "s"}}),
                "greater than 0",
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
        // The owning project (a transferred volume's new one).
        let owned = pb::Volume {
            project: "p2".into(),
            ..pb::Volume::default()
        };
        assert_eq!(volume_view(&owned)["os-vol-tenant-attr:tenant_id"], "p2");
        assert!(created_view(&owned)
            .get("os-vol-tenant-attr:tenant_id")
            .is_none());
        let from_image = pb::Volume {
            source_image: "img".into(),
            bootable: true,
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
        let offered = pb::Volume {
            status: "awaiting-transfer".into(),
            ..pb::Volume::default()
        };
        assert_eq!(volume_view(&offered)["status"], "awaiting-transfer");
    }
}
