//! `os-server-password` of Compute v2.1: the password a server's guest
//! posted to the metadata service (`Servers.GetPassword`), and clearing
//! it (`Servers.ClearPassword`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::json;

use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/os-server-password` (merged into the
/// compute router).
pub fn router() -> Router<Upstream> {
    Router::new().route(
        "/v2.1/servers/{id}/os-server-password",
        get(show).delete(clear),
    )
}

async fn show(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let p = up
        .servers(&headers)?
        .get_password(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(json!({"password": p.password}))))
}

async fn clear(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.servers(&headers)?
        .clear_password(pb::ServerActionRequest {
            r#ref: id,
            project: String::new(),
        })
        .await
        .api(S)?;
    Ok(versioned(StatusCode::NO_CONTENT))
}
