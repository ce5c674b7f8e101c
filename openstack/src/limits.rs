//! Nova's and Cinder's `limits`: the caller's project's quota and usage
//! as each service's absolute limits (nubo has no rate limits).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::quota::{absolute_limits, fetch, volume_absolute_limits};
use crate::Upstream;

/// `GET /compute/v2.1/limits`: the caller's project's quota as Nova's
/// absolute limits (no rate limits).
pub async fn compute_limits(
    State(up): State<Upstream>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::microversion::microversion(&headers)?;
    let q = fetch(&up, &headers, String::new(), Service::Compute).await?;
    Ok(crate::microversion::versioned(axum::Json(
        json!({"limits": {"rate": [], "absolute": absolute_limits(&q)}}),
    )))
}

/// `GET /volume/v3/{project}/limits`: the caller's project's volume quota.
pub async fn volume_limits(
    State(up): State<Upstream>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    let q = fetch(&up, &headers, String::new(), Service::Compute).await?;
    Ok(axum::Json(
        json!({"limits": {"rate": [], "absolute": volume_absolute_limits(&q)}}),
    ))
}
