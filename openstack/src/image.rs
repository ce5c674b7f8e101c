//! Image v2 (Glance): images (list, show).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::upstream::{all_pages, PAGE_SIZE};
use crate::versions;
use crate::Upstream;

const S: Service = Service::Image;

/// `/image/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/versions", get(versions_doc))
        .route("/v2/images", get(list_images))
        .route("/v2/images/{id}", get(show_image))
}

async fn versions_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::image_v2(&up.public_url)]}))
}

/// The Glance view of an image. Pure.
pub fn image_view(base: &str, i: &pb::Image) -> Value {
    json!({
        "id": i.id,
        "name": i.name,
        "status": i.status,
        "visibility": "private",
        "owner": i.project,
        "disk_format": i.disk_format,
        "container_format": "bare",
        "size": if i.status == "active" { json!(i.size_bytes) } else { Value::Null },
        "checksum": Value::Null,
        "os_hash_algo": if i.checksum_sha256.is_empty() { Value::Null } else { json!("sha256") },
        "os_hash_value": if i.checksum_sha256.is_empty() { Value::Null } else { json!(i.checksum_sha256) },
        "min_disk": i.min_disk_gb,
        "min_ram": i.min_ram_mb,
        "protected": false,
        "tags": [],
        "created_at": i.created_at,
        "updated_at": i.created_at,
        "self": format!("/v2/images/{}", i.id),
        "file": format!("/v2/images/{}/file", i.id),
        "schema": "/v2/schemas/image",
        "direct_url": format!("{base}/image/v2/images/{}", i.id),
    })
}

/// Glance's list filters nubo serves.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// Exact name.
    pub name: Option<String>,
}

async fn list_images(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    let client = up.images(&headers)?;
    let images = all_pages(|token| {
        let mut c = client.clone();
        async move {
            let r = c
                .list(pb::ListRequest {
                    page_size: PAGE_SIZE,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.images, r.next_page_token))
        }
    })
    .await
    .api(S)?;
    let views: Vec<Value> = images
        .iter()
        .filter(|i| f.name.as_ref().is_none_or(|x| &i.name == x))
        .map(|i| image_view(&up.public_url, i))
        .collect();
    Ok(
        Json(json!({"images": views, "first": "/v2/images", "schema": "/v2/schemas/images"}))
            .into_response(),
    )
}

async fn show_image(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = up
        .images(&headers)?
        .get(pb::GetRequest {
            r#ref: id,
            project: String::new(),
        })
        .await
        .api(S)?
        .into_inner();
    Ok(Json(image_view(&up.public_url, &i)).into_response())
}
