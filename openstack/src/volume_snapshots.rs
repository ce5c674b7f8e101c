//! Cinder snapshots (`/volume/v3/{project}/snapshots`) over nubo's volume
//! snapshots (`Volumes.CreateSnapshot`, `GetSnapshot`,
//! `ListProjectSnapshots`, `UpdateSnapshot`, `DeleteSnapshot` by id): an
//! RBD snapshot of the volume, taken at once (so `available` as soon as
//! the create answers). As Cinder, a snapshot of an in-use volume needs
//! `force: true`. Lists take Cinder's filters, sorting and paging
//! ([`crate::cinder_list`]).

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
use crate::error::{ApiError, Service};
use crate::volume::{cinder_error, string_map};
use crate::Upstream;

const S: Service = Service::Compute;

/// The snapshot routes.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v3/{project}/snapshots",
            get(list_brief).post(create_snapshot),
        )
        .route("/v3/{project}/snapshots/detail", get(list_detail))
        .route(
            "/v3/{project}/snapshots/{id}",
            get(show_snapshot)
                .put(update_snapshot)
                .delete(delete_snapshot),
        )
        .route(
            "/v3/{project}/snapshots/{id}/action",
            axum::routing::post(snapshot_action),
        )
}

/// One parsed snapshot action. Pure data.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotAction {
    /// A cloud admin sets the recorded status (`Volumes.ResetSnapshotStatus`).
    ResetStatus(String),
    /// A cloud admin deletes it whatever its status.
    ForceDelete,
    /// The owner's progress report: status and progress.
    UpdateStatus(String, String),
}

/// Parses a snapshot action body (`{"<action>": {args}}`). Pure.
pub fn parse_action(body: &Value) -> Result<SnapshotAction, ApiError> {
    let bad = |m: String| ApiError::bad_request(S, format!("Invalid input received: {m}"));
    let Some((name, args)) = body
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Err(bad("an action body is an object with one key".into()));
    };
    let text = |k: &str| -> Result<String, ApiError> {
        match args.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("{name}: {k} {other} is not a string"))),
        }
    };
    let status = || -> Result<String, ApiError> {
        let s = text("status")?;
        if s.is_empty() {
            return Err(bad(format!("{name} needs status")));
        }
        Ok(s)
    };
    match name.as_str() {
        "os-reset_status" => Ok(SnapshotAction::ResetStatus(status()?)),
        "os-force_delete" => Ok(SnapshotAction::ForceDelete),
        "os-update_snapshot_status" => Ok(SnapshotAction::UpdateStatus(status()?, text("progress")?)),
        other => Err(bad(format!(
            "snapshot action {other:?} is not supported by nubo (os-reset_status, os-force_delete, os-update_snapshot_status are)"
        ))),
    }
}

/// `POST /v3/{project}/snapshots/{id}/action` (202 as Cinder).
async fn snapshot_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = crate::error::json_body(S, body)?;
    let mut c = up.volumes(&headers)?;
    match parse_action(&body)? {
        SnapshotAction::ResetStatus(status) => {
            c.reset_snapshot_status(pb::ResetSnapshotStatusRequest {
                r#ref: id,
                project: String::new(),
                status,
            })
            .await
            .map_err(cinder_error)?;
        }
        SnapshotAction::ForceDelete => {
            c.force_delete_snapshot(crate::upstream::delete_req(id))
                .await
                .map_err(cinder_error)?;
        }
        SnapshotAction::UpdateStatus(status, progress) => {
            c.update_snapshot_status(pb::UpdateSnapshotStatusRequest {
                r#ref: id,
                project: String::new(),
                status,
                progress,
            })
            .await
            .map_err(cinder_error)?;
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The Cinder view of a snapshot; `detail` adds the extended attributes.
/// Pure.
pub fn snapshot_view(s: &pb::VolumeSnapshot, detail: bool) -> Value {
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "description": if s.description.is_empty() { Value::Null } else { json!(s.description) },
        "volume_id": s.volume_id,
        "status": if s.status.is_empty() { "available" } else { s.status.as_str() },
        "size": s.size_gb,
        "created_at": s.created_at,
        "updated_at": null,
        "metadata": s.metadata,
    });
    if detail {
        let progress = match (s.progress.as_str(), s.status.as_str()) {
            ("", "" | "available") => "100%",
            ("", _) => "0%",
            (p, _) => p,
        };
        v["os-extended-snapshot-attributes:progress"] = json!(progress);
        v["os-extended-snapshot-attributes:project_id"] = json!(s.project);
    }
    v
}

/// What Cinder's snapshot lists accept.
const SNAPSHOT_LIST: Accepts = Accepts {
    sort_keys: &[
        "id",
        "name",
        "display_name",
        "status",
        "size",
        "created_at",
        "updated_at",
        "volume_id",
    ],
    filters: &["name", "display_name", "status", "volume_id", "metadata"],
};

async fn listed(
    up: &Upstream,
    h: &HeaderMap,
    project: &str,
    raw: Vec<(String, String)>,
    detail: bool,
) -> Result<Response, ApiError> {
    let q = cinder_list::parse(raw, SNAPSHOT_LIST)?;
    if q.projects != cinder_list::Projects::Own {
        return Err(ApiError::bad_request(
            S,
            "Invalid input received: all_tenants and project_id are not supported on the \
             snapshot list (nubo lists the caller's project's snapshots)",
        ));
    }
    let all = up
        .volumes(h)?
        .list_project_snapshots(pb::ListRequest::default())
        .await
        .map_err(cinder_error)?
        .into_inner()
        .snapshots;
    let views: Vec<Value> = all.iter().map(|s| snapshot_view(s, detail)).collect();
    let path = if detail {
        "snapshots/detail"
    } else {
        "snapshots"
    };
    let url = format!("{}/volume/v3/{project}/{path}", up.public_url);
    crate::volume::list_answer("snapshots", &url, &q, views)
}

async fn list_brief(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path(project): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    listed(&up, &h, &project, raw, false).await
}

async fn list_detail(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path(project): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    listed(&up, &h, &project, raw, true).await
}

/// `POST /snapshots` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    snapshot: NewSnapshot,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSnapshot {
    volume_id: Option<String>,
    #[serde(alias = "display_name")]
    name: Option<String>,
    #[serde(alias = "display_description")]
    description: Option<String>,
    #[serde(default)]
    force: Option<Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Cinder's `force`: a boolean or its string; absent or null is false.
/// Pure.
fn forced(v: &Option<Value>) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(v) => crate::volume_actions::boolean(Some(v), "force"),
    }
}

async fn create_snapshot(
    State(up): State<Upstream>,
    h: HeaderMap,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?.snapshot;
    let force = forced(&b.force)?;
    // As Cinder: no volume named is a volume not found.
    let Some(volume_id) = b.volume_id.filter(|v| !v.is_empty()) else {
        return Err(ApiError::not_found(
            S,
            "Volume could not be found: no volume_id given",
        ));
    };
    let mut c = up.volumes(&h)?;
    let vol = c
        .get(crate::upstream::get_req(volume_id.clone()))
        .await
        .map_err(cinder_error)?
        .into_inner();
    if vol.status == "in-use" && !force {
        return Err(ApiError::bad_request(
            S,
            format!("Invalid volume: Volume {volume_id} is in-use; snapshot it with force=true"),
        ));
    }
    let s = c
        .create_snapshot(pb::VolumeSnapshotRequest {
            r#ref: vol.id,
            name: b.name.unwrap_or_default(),
            description: b.description.unwrap_or_default(),
            metadata: string_map(b.metadata)?,
            ..Default::default()
        })
        .await
        .map_err(cinder_error)?
        .into_inner();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"snapshot": snapshot_view(&s, false)})),
    )
        .into_response())
}

async fn show_snapshot(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let s = up
        .volumes(&h)?
        .get_snapshot(crate::upstream::get_req(id))
        .await
        .map_err(cinder_error)?
        .into_inner();
    Ok(Json(json!({"snapshot": snapshot_view(&s, true)})).into_response())
}

/// `PUT /snapshots/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    snapshot: SnapshotChanges,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotChanges {
    #[serde(default, alias = "display_name")]
    name: Option<Option<String>>,
    #[serde(default, alias = "display_description")]
    description: Option<Option<String>>,
}

async fn update_snapshot(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    body: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?.snapshot;
    if b.name.is_none() && b.description.is_none() {
        return Err(ApiError::bad_request(
            S,
            "Invalid input received: a snapshot update names name or description",
        ));
    }
    let s = up
        .volumes(&h)?
        .update_snapshot(pb::UpdateVolumeSnapshotRequest {
            id,
            name: b.name.map(Option::unwrap_or_default),
            description: b.description.map(Option::unwrap_or_default),
            ..Default::default()
        })
        .await
        .map_err(cinder_error)?
        .into_inner();
    Ok(Json(json!({"snapshot": snapshot_view(&s, false)})).into_response())
}

async fn delete_snapshot(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    up.volumes(&h)?
        .delete_snapshot(pb::VolumeSnapshotRequest {
            id,
            ..Default::default()
        })
        .await
        .map_err(cinder_error)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_has_what_tempest_requires() {
        let s = pb::VolumeSnapshot {
            id: "s".into(),
            volume_id: "v".into(),
            name: "n".into(),
            project: "p".into(),
            size_gb: 2,
            ..Default::default()
        };
        let v = snapshot_view(&s, false);
        for k in [
            "status",
            "description",
            "created_at",
            "metadata",
            "name",
            "volume_id",
            "id",
            "size",
            "updated_at",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["description"].is_null());
        assert!(v
            .get("os-extended-snapshot-attributes:project_id")
            .is_none());
        assert_eq!(
            snapshot_view(&s, true)["os-extended-snapshot-attributes:project_id"],
            "p"
        );
    }

    #[test]
    fn force_is_a_boolean() {
        assert!(forced(&Some(json!(true))).unwrap());
        assert!(forced(&Some(json!("True"))).unwrap());
        assert!(!forced(&None).unwrap());
        assert!(forced(&Some(json!("perhaps"))).is_err());
        assert!(forced(&Some(json!(3))).is_err());
    }

    #[test]
    fn snapshot_actions_parse_and_unknown_ones_are_named() {
        assert_eq!(
            parse_action(&json!({"os-reset_status": {"status": "error_deleting"}})).unwrap(),
            SnapshotAction::ResetStatus("error_deleting".into())
        );
        assert_eq!(
            parse_action(&json!({"os-force_delete": {}})).unwrap(),
            SnapshotAction::ForceDelete
        );
        assert_eq!(
            parse_action(
                &json!({"os-update_snapshot_status": {"status": "error", "progress": "80%"}})
            )
            .unwrap(),
            SnapshotAction::UpdateStatus("error".into(), "80%".into())
        );
        for bad in [
            json!({"os-reset_status": {}}),
            json!({"os-reset_status": {"status": 3}}),
            json!({"os-unmanage": {}}),
            json!({"a": {}, "b": {}}),
        ] {
            assert_eq!(
                parse_action(&bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        let e = parse_action(&json!({"os-unmanage": {}})).unwrap_err();
        assert!(
            format!("{e:?}").contains("os-update_snapshot_status"),
            "{e:?}"
        );
    }

    #[test]
    fn the_view_shows_the_recorded_status_and_progress() {
        let mut s = pb::VolumeSnapshot {
            status: "creating".into(),
            ..Default::default()
        };
        let v = snapshot_view(&s, true);
        assert_eq!(
            (
                v["status"].as_str(),
                v["os-extended-snapshot-attributes:progress"].as_str()
            ),
            (Some("creating"), Some("0%"))
        );
        s.status = "error".into();
        s.progress = "80%".into();
        let v = snapshot_view(&s, true);
        assert_eq!(
            (
                v["status"].as_str(),
                v["os-extended-snapshot-attributes:progress"].as_str()
            ),
            (Some("error"), Some("80%"))
        );
        s.status = String::new();
        s.progress = String::new();
        assert_eq!(
            snapshot_view(&s, true)["os-extended-snapshot-attributes:progress"],
            "100%"
        );
    }
}
