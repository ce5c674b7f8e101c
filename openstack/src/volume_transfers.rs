//! Cinder volume transfers (`/volume/v3/{project}/os-volume-transfer`,
//! and `/volume-transfers` as microversion 3.55 names it) over nubo's
//! `Volumes.CreateTransfer`, `GetTransfer`, `ListTransfers`,
//! `DeleteTransfer` and `AcceptTransfer`: the volume waits in
//! `awaiting-transfer` until another project accepts it with the auth key
//! (it then moves there with its snapshots and quota usage) or the
//! transfer is deleted.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::volume::cinder_error;
use crate::Upstream;

const S: Service = Service::Compute;

/// The transfer routes, under both names.
pub fn router() -> Router<Upstream> {
    let mut r = Router::new();
    for base in ["os-volume-transfer", "volume-transfers"] {
        r = r
            .route(
                &format!("/v3/{{project}}/{base}"),
                get(list_brief).post(create_transfer),
            )
            .route(&format!("/v3/{{project}}/{base}/detail"), get(list_detail))
            .route(
                &format!("/v3/{{project}}/{base}/{{id}}"),
                get(show_transfer).delete(delete_transfer),
            )
            .route(
                &format!("/v3/{{project}}/{base}/{{id}}/accept"),
                post(accept_transfer),
            );
    }
    r
}

/// The Cinder view of a transfer: brief (list), or with `created_at`.
/// Pure.
pub fn transfer_view(t: &pb::VolumeTransfer, url: &str, detail: bool) -> Value {
    let mut v = json!({
        "id": t.id,
        "name": if t.name.is_empty() { Value::Null } else { json!(t.name) },
        "volume_id": t.volume_id,
        "links": [{"rel": "self", "href": format!("{url}/{}", t.id)}],
    });
    if detail {
        v["created_at"] = json!(t.created_at);
    }
    v
}

fn base_url(up: &Upstream, project: &str) -> String {
    format!("{}/volume/v3/{project}/os-volume-transfer", up.public_url)
}

/// `POST /os-volume-transfer` body.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateBody {
    transfer: NewTransfer,
}

#[derive(Debug, Default, Deserialize)]
struct NewTransfer {
    volume_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// 3.55: nubo always moves a volume's snapshots with it.
    #[serde(default)]
    no_snapshots: Option<Value>,
}

async fn create_transfer(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path(project): Path<String>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?.transfer;
    if b.no_snapshots
        .as_ref()
        .is_some_and(|v| crate::volume_actions::boolean(Some(v), "no_snapshots").unwrap_or(true))
    {
        return Err(ApiError::bad_request(
            S,
            "Invalid input received: no_snapshots is not supported: nubo moves a volume's snapshots with it",
        ));
    }
    let Some(volume) = b.volume_id.filter(|v| !v.trim().is_empty()) else {
        return Err(ApiError::bad_request(
            S,
            "Invalid input received: volume_id is required",
        ));
    };
    let t = up
        .volumes(&h)?
        .create_transfer(pb::CreateVolumeTransferRequest {
            project: String::new(),
            volume,
            name: b.name.unwrap_or_default(),
        })
        .await
        .map_err(cinder_error)?
        .into_inner();
    let mut v = transfer_view(&t, &base_url(&up, &project), true);
    v["auth_key"] = json!(t.auth_key);
    Ok((StatusCode::ACCEPTED, Json(json!({"transfer": v}))).into_response())
}

async fn listed(up: &Upstream, h: &HeaderMap, project: &str, detail: bool) -> ApiResult {
    let mut c = up.volumes(h)?;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_transfers(pb::ListRequest {
                page_token: token,
                ..Default::default()
            })
            .await
            .map_err(cinder_error)?
            .into_inner();
        all.extend(r.transfers);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let url = base_url(up, project);
    let views: Vec<Value> = all.iter().map(|t| transfer_view(t, &url, detail)).collect();
    Ok(Json(json!({ "transfers": views })).into_response())
}

type ApiResult = Result<Response, ApiError>;

async fn list_brief(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path(project): Path<String>,
) -> ApiResult {
    listed(&up, &h, &project, false).await
}

async fn list_detail(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path(project): Path<String>,
) -> ApiResult {
    listed(&up, &h, &project, true).await
}

async fn show_transfer(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult {
    let t = up
        .volumes(&h)?
        .get_transfer(crate::upstream::get_req(id))
        .await
        .map_err(cinder_error)?
        .into_inner();
    Ok(
        Json(json!({"transfer": transfer_view(&t, &base_url(&up, &project), true)}))
            .into_response(),
    )
}

async fn delete_transfer(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_project, id)): Path<(String, String)>,
) -> ApiResult {
    up.volumes(&h)?
        .delete_transfer(pb::DeleteRequest {
            r#ref: id,
            project: String::new(),
        })
        .await
        .map_err(cinder_error)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST /os-volume-transfer/{id}/accept` body.
#[derive(Debug, Deserialize)]
pub(crate) struct AcceptBody {
    accept: AcceptArgs,
}

#[derive(Debug, Default, Deserialize)]
struct AcceptArgs {
    auth_key: Option<String>,
}

async fn accept_transfer(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((project, id)): Path<(String, String)>,
    body: Result<Json<AcceptBody>, JsonRejection>,
) -> ApiResult {
    let b = crate::error::json_body(S, body)?.accept;
    let Some(auth_key) = b.auth_key.filter(|k| !k.is_empty()) else {
        return Err(ApiError::bad_request(
            S,
            "Invalid input received: auth_key is required",
        ));
    };
    let r = up
        .volumes(&h)?
        .accept_transfer(pb::AcceptVolumeTransferRequest {
            project: String::new(),
            id,
            auth_key,
        })
        .await
        .map_err(cinder_error)?
        .into_inner();
    let t = r.transfer.unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"transfer": transfer_view(&t, &base_url(&up, &project), false)})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_carry_what_cinder_shows() {
        let t = pb::VolumeTransfer {
            id: "t1".into(),
            name: String::new(),
            volume_id: "v1".into(),
            project: "p".into(),
            created_at: "2026-12-05T00:00:00Z".into(),
            auth_key: "secret".into(),
        };
        let brief = transfer_view(&t, "https://x/volume/v3/p/os-volume-transfer", false);
        assert_eq!(brief["name"], Value::Null);
        assert_eq!(brief["volume_id"], "v1");
        assert!(brief.get("created_at").is_none());
        // The key never appears in a view (only the create answer adds it).
        assert!(brief.get("auth_key").is_none());
        assert_eq!(
            brief["links"][0]["href"],
            "https://x/volume/v3/p/os-volume-transfer/t1"
        );
        let detail = transfer_view(&t, "u", true);
        assert_eq!(detail["created_at"], "2026-12-05T00:00:00Z");
        assert!(detail.get("auth_key").is_none());
    }
}
