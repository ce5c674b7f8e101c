//! Block Storage v3 (Cinder): version discovery and quotas so far; every
//! other call answers 404 naming the path
//! (docs/openstack-compatibility.md).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::versions;
use crate::Upstream;

/// `/volume/…`.
pub fn router() -> Router<Upstream> {
    Router::new().route("/", get(versions_doc)).route(
        "/v3/{project}/os-quota-sets/{target}",
        get(crate::quota::volume_quota),
    )
}

async fn versions_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"versions": [versions::volume_v3(&up.public_url)]}))
}
