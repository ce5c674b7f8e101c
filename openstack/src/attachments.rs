//! Nova's `os-volume_attachments` (2.1) over nubo's `Volumes.Attach` and
//! `Volumes.Detach`: a volume is attached to one server at a time, and its
//! attachment's id is the volume's id, as in Nova 2.1.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/os-volume_attachments…` (merged into the
/// compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v2.1/servers/{id}/os-volume_attachments",
            get(list_attachments).post(attach),
        )
        .route(
            "/v2.1/servers/{id}/os-volume_attachments/{volume}",
            get(show_attachment).delete(detach).put(swap_unsupported),
        )
}

/// Nova's view of the attachment of volume `v` to `server`. Pure.
pub fn attachment_view(server: &str, v: &pb::Volume) -> Value {
    json!({"id": v.id, "serverId": server, "volumeId": v.id, "device": crate::volume::guest_device(v)})
}

/// The server `r` (name or id) as the caller sees it.
async fn server(up: &Upstream, headers: &HeaderMap, r: String) -> Result<pb::Server, ApiError> {
    Ok(up
        .servers(headers)?
        .get(crate::upstream::get_req(r))
        .await
        .api(S)?
        .into_inner())
}

async fn attached_to(
    up: &Upstream,
    headers: &HeaderMap,
    server_id: &str,
) -> Result<Vec<pb::Volume>, ApiError> {
    Ok(crate::list_all!(up.volumes(headers)?, volumes, S)?
        .into_iter()
        .filter(|v| v.attached_to == server_id)
        .collect())
}

async fn list_attachments(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let s = server(&up, &headers, id).await?;
    let views: Vec<Value> = attached_to(&up, &headers, &s.id)
        .await?
        .iter()
        .map(|v| attachment_view(&s.id, v))
        .collect();
    Ok(versioned(Json(json!({"volumeAttachments": views}))))
}

async fn show_attachment(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, volume)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let s = server(&up, &headers, id).await?;
    let v = attached_to(&up, &headers, &s.id)
        .await?
        .into_iter()
        .find(|v| v.id == volume)
        .ok_or_else(|| {
            ApiError::not_found(S, format!("volume {volume} is not attached to the server"))
        })?;
    Ok(versioned(Json(
        json!({"volumeAttachment": attachment_view(&s.id, &v)}),
    )))
}

/// `POST …/os-volume_attachments` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachBody {
    #[serde(rename = "volumeAttachment")]
    attachment: NewAttachment,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAttachment {
    #[serde(rename = "volumeId")]
    volume_id: String,
    /// A device name hint (`/dev/vdc`): taken when free, else the lowest
    /// free device, as nubo's attach does.
    device: Option<String>,
}

async fn attach(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<AttachBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let b = crate::error::json_body(S, body)?;
    let s = server(&up, &headers, id).await?;
    let volume = b.attachment.volume_id;
    let attached = up
        .volumes(&headers)?
        .attach(pb::AttachVolumeRequest {
            r#ref: volume.clone(),
            project: String::new(),
            server_ref: s.id.clone(),
            delete_on_termination: false,
            device: b.attachment.device.unwrap_or_default(),
        })
        .await;
    let v = match attached {
        Ok(v) => v.into_inner(),
        // Nova answers an attach of a volume in use (to this server or
        // another) with 400 "Invalid volume", not 409: nubo refused it;
        // the volume tells whether that was why.
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            let v = up
                .volumes(&headers)?
                .get(crate::upstream::get_req(volume))
                .await
                .ok()
                .map(tonic::Response::into_inner);
            return Err(match v {
                Some(v) if !v.attached_to.is_empty() => ApiError::bad_request(
                    S,
                    format!(
                        "Invalid volume: volume {} is already attached to server {}",
                        v.id, v.attached_to
                    ),
                ),
                _ => ApiError::from_status(S, &e),
            });
        }
        Err(e) => return Err(ApiError::from_status(S, &e)),
    };
    Ok(versioned(Json(
        json!({"volumeAttachment": attachment_view(&s.id, &v)}),
    )))
}

async fn detach(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, volume)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let s = server(&up, &headers, id).await?;
    if !attached_to(&up, &headers, &s.id)
        .await?
        .iter()
        .any(|v| v.id == volume)
    {
        return Err(ApiError::not_found(
            S,
            format!("volume {volume} is not attached to the server"),
        ));
    }
    up.volumes(&headers)?
        .detach(pb::DetachVolumeRequest {
            r#ref: volume,
            project: String::new(),
            if_attached: false,
        })
        .await
        .api(S)?;
    Ok(versioned(StatusCode::ACCEPTED))
}

async fn swap_unsupported() -> ApiError {
    ApiError::new(
        S,
        StatusCode::NOT_IMPLEMENTED,
        "swapping a server's volume is not supported by nubo",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attachment_id_is_the_volume_id() {
        let v = pb::Volume {
            id: "v1".into(),
            ..Default::default()
        };
        let a = attachment_view("s1", &v);
        assert_eq!(
            (a["id"].as_str(), a["serverId"].as_str()),
            (Some("v1"), Some("s1"))
        );
        let b: Result<AttachBody, _> =
            serde_json::from_value(json!({"volumeAttachment": {"volumeId": "v1", "tag": "x"}}));
        assert!(b.unwrap_err().to_string().contains("unknown field `tag`"));
    }
}
