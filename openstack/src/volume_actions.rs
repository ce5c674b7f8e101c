//! `POST /volume/v3/{project}/volumes/{id}/action`: Cinder's volume
//! actions on nubo's volume operations — `os-extend` (`Volumes.Resize`),
//! `os-attach` / `os-detach` (`Volumes.Attach` / `Detach`: the server
//! named by `instance_uuid` gets the disk hot-plugged), `os-reserve` /
//! `os-unreserve` (`Volumes.Reserve` / `Unreserve`), `os-set_bootable`,
//! `os-update_readonly_flag`, `os-set_image_metadata`,
//! `os-unset_image_metadata` (`Volumes.Update`),
//! `os-show_image_metadata`, and the admin actions `os-reset_status`
//! (`Volumes.ResetStatus`), `os-force_delete` (`Volumes.ForceDelete`) and
//! `os-force_detach` (`Volumes.ForceDetach`). Any other action is a 400
//! naming it (as Cinder answers an action it does not know).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nubo_common::proto as pb;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Service};
use crate::volume::{cinder_error, string_map};
use crate::Upstream;

const S: Service = Service::Compute;

/// The actions served, named in the refusal of any other.
const SERVED: &str = "os-volume_upload_image, os-extend, os-attach, os-detach, os-reserve, os-unreserve, os-set_bootable, os-update_readonly_flag, os-set_image_metadata, os-unset_image_metadata, os-show_image_metadata, os-reset_status, os-force_delete, os-force_detach";

/// One parsed action. Pure data.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Grow to this many GiB.
    Extend(i64),
    /// Attach to a server.
    Attach {
        /// The server.
        server: String,
        /// Cinder's `mountpoint` (`/dev/vdc`): nubo's device hint.
        mountpoint: Option<String>,
    },
    /// Detach from its server.
    Detach,
    /// available → attaching.
    Reserve,
    /// attaching → available.
    Unreserve,
    /// An attribute change (`Volumes.Update`).
    Update(Box<pb::UpdateVolumeRequest>),
    /// Show the image metadata.
    ShowImageMetadata,
    /// A new image from the volume's data (`Volumes.UploadToImage`).
    UploadImage(Box<pb::UploadVolumeToImageRequest>),
    /// A cloud admin sets the recorded status (`Volumes.ResetStatus`).
    ResetStatus(pb::ResetVolumeStatusRequest),
    /// A cloud admin deletes it whatever its status.
    ForceDelete,
    /// A cloud admin detaches it whatever its status.
    ForceDetach,
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::bad_request(S, format!("Invalid input received: {}", m.into()))
}

/// A Cinder boolean: JSON `true`/`false` or the strings Cinder accepts
/// (`"true"`, `"False"`, `"1"`, …). Pure.
pub(crate) fn boolean(v: Option<&Value>, what: &str) -> Result<bool, ApiError> {
    match v {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
            "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
            _ => Err(bad(format!("{what} {s:?} is not a boolean"))),
        },
        Some(other) => Err(bad(format!("{what} {other} is not a boolean"))),
        None => Err(bad(format!("{what} is required"))),
    }
}

/// Parses an action body (`{"<action>": {args}}`) for volume `id`. Pure.
pub fn parse(id: &str, body: &Value) -> Result<Action, ApiError> {
    let obj = body
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| bad("an action body is an object with one key"))?;
    let Some((name, args)) = obj.iter().next() else {
        return Err(bad("an action body is an object with one key"));
    };
    let empty = Map::new();
    let args_obj = args.as_object().unwrap_or(&empty);
    let update = |u: pb::UpdateVolumeRequest| {
        Ok(Action::Update(Box::new(pb::UpdateVolumeRequest {
            r#ref: id.to_string(),
            ..u
        })))
    };
    match name.as_str() {
        "os-extend" => args_obj
            .get("new_size")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()))
            .map(Action::Extend)
            .ok_or_else(|| bad("os-extend needs new_size, an integer (GiB)")),
        "os-attach" => match args_obj.get("instance_uuid").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(Action::Attach {
                server: s.to_string(),
                mountpoint: args_obj
                    .get("mountpoint")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }),
            _ => Err(bad(
                "os-attach needs instance_uuid: nubo attaches volumes to its servers only (no host_name attach)",
            )),
        },
        "os-detach" => Ok(Action::Detach),
        "os-reset_status" => {
            let text = |k: &str| match args_obj.get(k) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(format!("os-reset_status: {k} {other} is not a string"))),
            };
            Ok(Action::ResetStatus(pb::ResetVolumeStatusRequest {
                r#ref: id.to_string(),
                project: String::new(),
                status: text("status")?,
                attach_status: text("attach_status")?,
                migration_status: text("migration_status")?,
            }))
        }
        "os-force_delete" => Ok(Action::ForceDelete),
        "os-force_detach" => Ok(Action::ForceDetach),
        "os-reserve" => Ok(Action::Reserve),
        "os-unreserve" => Ok(Action::Unreserve),
        "os-set_bootable" => update(pb::UpdateVolumeRequest {
            bootable: Some(boolean(args_obj.get("bootable"), "bootable")?),
            ..Default::default()
        }),
        "os-update_readonly_flag" => update(pb::UpdateVolumeRequest {
            read_only: Some(boolean(args_obj.get("readonly"), "readonly")?),
            ..Default::default()
        }),
        "os-set_image_metadata" => {
            let m = args_obj
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .ok_or_else(|| bad("os-set_image_metadata needs metadata, an object"))?;
            update(pb::UpdateVolumeRequest {
                set_image_metadata: string_map(Some(m))?,
                ..Default::default()
            })
        }
        "os-unset_image_metadata" => {
            let key = args_obj
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("os-unset_image_metadata needs key, a string"))?;
            update(pb::UpdateVolumeRequest {
                unset_image_metadata: vec![key.to_string()],
                ..Default::default()
            })
        }
        "os-show_image_metadata" => Ok(Action::ShowImageMetadata),
        "os-volume_upload_image" => {
            let text = |k: &str| args_obj.get(k).and_then(Value::as_str).unwrap_or_default();
            let image_name = text("image_name");
            if image_name.is_empty() {
                return Err(bad("os-volume_upload_image needs image_name"));
            }
            match text("container_format") {
                "" | "bare" => {}
                other => {
                    return Err(bad(format!(
                        "container_format {other:?}: nubo images are bare"
                    )))
                }
            }
            let force = match args_obj.get("force") {
                None | Some(Value::Null) => false,
                v => boolean(v, "force")?,
            };
            Ok(Action::UploadImage(Box::new(pb::UploadVolumeToImageRequest {
                project: String::new(),
                volume: id.to_string(),
                image_name: image_name.to_string(),
                disk_format: text("disk_format").to_string(),
                visibility: text("visibility").to_string(),
                force,
                properties: Default::default(),
            })))
        }
        other => Err(bad(format!(
            "volume action {other:?} is not supported by nubo ({SERVED} are)"
        ))),
    }
}

/// `POST /v3/{project}/volumes/{id}/action`.
pub async fn volume_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = crate::error::json_body(S, body)?;
    let action = parse(&id, &body)?;
    let mut c = up.volumes(&headers)?;
    let accepted = StatusCode::ACCEPTED.into_response();
    match action {
        Action::Extend(size_gb) => {
            c.resize(pb::ResizeVolumeRequest {
                r#ref: id,
                project: String::new(),
                size_gb,
            })
            .await
            .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::Attach { server, mountpoint } => {
            c.attach(pb::AttachVolumeRequest {
                r#ref: id,
                project: String::new(),
                server_ref: server,
                delete_on_termination: false,
                device: mountpoint.unwrap_or_default(),
            })
            .await
            .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::Detach => {
            c.detach(pb::DetachVolumeRequest {
                r#ref: id,
                project: String::new(),
                if_attached: true,
            })
            .await
            .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::ResetStatus(r) => {
            c.reset_status(r).await.map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::ForceDelete => {
            c.force_delete(crate::upstream::delete_req(id))
                .await
                .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::ForceDetach => {
            c.force_detach(pb::DetachVolumeRequest {
                r#ref: id,
                project: String::new(),
                if_attached: false,
            })
            .await
            .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::Reserve => {
            c.reserve(crate::upstream::get_req(id))
                .await
                .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::Unreserve => {
            c.unreserve(crate::upstream::get_req(id))
                .await
                .map_err(cinder_error)?;
            Ok(accepted)
        }
        Action::Update(u) => {
            let set_image = !u.set_image_metadata.is_empty();
            let unset_image = !u.unset_image_metadata.is_empty();
            let readonly = u.read_only.is_some();
            let v = c.update(*u).await.map_err(cinder_error)?.into_inner();
            Ok(if set_image {
                Json(json!({"metadata": v.image_metadata})).into_response()
            } else if unset_image {
                StatusCode::OK.into_response()
            } else if readonly {
                accepted
            } else {
                // os-set_bootable: 200.
                StatusCode::OK.into_response()
            })
        }
        Action::UploadImage(r) => {
            let v = c
                .get(crate::upstream::get_req(id.clone()))
                .await
                .map_err(cinder_error)?
                .into_inner();
            let img = c
                .upload_to_image(*r)
                .await
                .map_err(cinder_error)?
                .into_inner();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"os-volume_upload_image": {
                    "id": v.id,
                    "updated_at": null,
                    "status": "uploading",
                    "display_description": if v.description.is_empty() { Value::Null } else { json!(v.description) },
                    "size": v.size_gb,
                    "volume_type": null,
                    "image_id": img.id,
                    "container_format": "bare",
                    "disk_format": img.disk_format,
                    "image_name": img.name,
                    "visibility": img.visibility,
                    "protected": img.protected,
                }})),
            )
                .into_response())
        }
        Action::ShowImageMetadata => {
            let v = c
                .get(crate::upstream::get_req(id))
                .await
                .map_err(cinder_error)?
                .into_inner();
            Ok(Json(json!({"metadata": v.image_metadata})).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_to_nubo_calls_and_unknown_ones_are_named() {
        assert_eq!(
            parse(
                "v",
                &json!({"os-reset_status": {"status": "maintenance", "attach_status": null}})
            )
            .unwrap(),
            Action::ResetStatus(pb::ResetVolumeStatusRequest {
                r#ref: "v".into(),
                status: "maintenance".into(),
                ..Default::default()
            })
        );
        assert!(parse("v", &json!({"os-reset_status": {"status": 1}})).is_err());
        assert_eq!(
            parse("v", &json!({"os-force_delete": {}})).unwrap(),
            Action::ForceDelete
        );
        assert_eq!(
            parse(
                "v",
                &json!({"os-force_detach": {"attachment_id": "a", "connector": null}})
            )
            .unwrap(),
            Action::ForceDetach
        );
        assert_eq!(
            parse("v", &json!({"os-extend": {"new_size": 3}})).unwrap(),
            Action::Extend(3)
        );
        assert_eq!(
            parse(
                "v",
                &json!({"os-attach": {"instance_uuid": "s", "mountpoint": "/dev/vdb"}})
            )
            .unwrap(),
            Action::Attach {
                server: "s".into(),
                mountpoint: Some("/dev/vdb".into())
            }
        );
        assert_eq!(
            parse("v", &json!({"os-reserve": {}})).unwrap(),
            Action::Reserve
        );
        assert_eq!(
            parse("v", &json!({"os-detach": {}})).unwrap(),
            Action::Detach
        );
        let Action::Update(u) =
            parse("v", &json!({"os-set_bootable": {"bootable": "False"}})).unwrap()
        else {
            panic!("not an update")
        };
        assert_eq!((u.r#ref.as_str(), u.bootable), ("v", Some(false)));
        let Action::Update(u) =
            parse("v", &json!({"os-update_readonly_flag": {"readonly": true}})).unwrap()
        else {
            panic!("not an update")
        };
        assert_eq!(u.read_only, Some(true));
        let Action::Update(u) = parse(
            "v",
            &json!({"os-set_image_metadata": {"metadata": {"image_id": "x"}}}),
        )
        .unwrap() else {
            panic!("not an update")
        };
        assert_eq!(u.set_image_metadata["image_id"], "x");
        for b in [
            json!({"os-extend": {"new_size": null}}),
            json!({"os-extend": {}}),
            json!({}),
            json!({"os-attach": {"host_name": "h"}}),
            json!({"os-set_bootable": {"bootable": "maybe"}}),
            json!({"os-set_image_metadata": {"metadata": {"k": 1}}}),
            json!({"os-migrate_volume": {}}),
        ] {
            let e = parse("v", &b).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{b}");
        }
        let e = parse("v", &json!({"os-migrate_volume": {}})).unwrap_err();
        assert!(
            e.message.contains("os-migrate_volume") && e.message.contains("os-force_detach"),
            "{}",
            e.message
        );
    }
}
