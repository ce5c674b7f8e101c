//! The OpenStack layout: `/openstack/<version>/meta_data.json` etc.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::{listing, not_found, user_data, Caller};
use crate::instance::InstanceMeta;
use crate::password::{PasswordError, PasswordStore, MAX_PASSWORD_BYTES};

/// The password store, when the daemon gave one.
type Passwords = Option<Extension<Arc<dyn PasswordStore>>>;

/// Dated OpenStack metadata versions served (as Nova lists them), oldest
/// first; `latest` is served in addition.
pub const OPENSTACK_VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
];

fn is_version(version: &str) -> bool {
    version == "latest" || OPENSTACK_VERSIONS.contains(&version)
}

/// `GET /openstack`: the supported versions.
pub(super) async fn versions() -> Response {
    listing(OPENSTACK_VERSIONS.iter().copied().chain(["latest"]))
}

/// `GET /openstack/<version>/`: the documents of one version.
pub(super) async fn version_dir(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    let mut files = vec!["meta_data.json", "network_data.json"];
    if meta.user_data.is_some() {
        files.push("user_data");
    }
    files.extend(["vendor_data.json", "vendor_data2.json"]);
    listing(files)
}

/// `GET /openstack/<version>/<file>`.
pub(super) async fn file(
    Extension(Caller(meta)): Extension<Caller>,
    Path((version, file)): Path<(String, String)>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    match file.as_str() {
        "meta_data.json" => Json(meta_data_json(&meta)).into_response(),
        "network_data.json" => Json(object_or_empty(&meta.network_data)).into_response(),
        "vendor_data.json" => Json(object_or_empty(&meta.vendor_data)).into_response(),
        "vendor_data2.json" => Json(object_or_empty(&meta.vendor_data2)).into_response(),
        "user_data" => user_data(&meta),
        _ => not_found(),
    }
}

/// `GET /openstack/<version>/password`: the password the guest posted
/// ("" when none).
pub(super) async fn password(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
    store: Passwords,
) -> Response {
    let Some(Extension(store)) = store.filter(|_| is_version(&version)) else {
        return not_found();
    };
    match store.get(&meta.uuid).await {
        Ok(p) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            p,
        )
            .into_response(),
        Err(e) => {
            warn!(uuid = %meta.uuid, error = %e, "could not read an instance password");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
    }
}

/// `POST /openstack/<version>/password`: stores the guest's password once
/// (at most [`MAX_PASSWORD_BYTES`]: 400 beyond; 409 when it has one), as
/// Nova's metadata service.
pub(super) async fn post_password(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
    store: Passwords,
    body: Body,
) -> Response {
    let Some(Extension(store)) = store.filter(|_| is_version(&version)) else {
        return not_found();
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PASSWORD_BYTES).await else {
        return (StatusCode::BAD_REQUEST, "Request is too large.\n").into_response();
    };
    match store.set(&meta.uuid, bytes.to_vec()).await {
        Ok(()) => {
            info!(uuid = %meta.uuid, bytes = bytes.len(), "instance password stored");
            StatusCode::OK.into_response()
        }
        Err(PasswordError::AlreadySet) => {
            (StatusCode::CONFLICT, "the password is already set\n").into_response()
        }
        Err(e) => {
            warn!(uuid = %meta.uuid, error = %e, "could not store an instance password");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
    }
}

/// `null` documents are served as `{}`.
fn object_or_empty(value: &Value) -> Value {
    match value {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    }
}

/// The `meta_data.json` document, with the fields Nova serves and
/// cloud-init reads.
pub(crate) fn meta_data_json(meta: &InstanceMeta) -> Value {
    let public_keys: Map<String, Value> = meta
        .public_keys
        .iter()
        .map(|(name, key)| (name.clone(), Value::String(key.clone())))
        .collect();
    let keys: Vec<Value> = meta
        .public_keys
        .iter()
        .map(|(name, key)| json!({"name": name, "type": "ssh", "data": key}))
        .collect();
    json!({
        "uuid": meta.uuid,
        "name": meta.name,
        "hostname": meta.hostname,
        "project_id": meta.project_id,
        "availability_zone": meta.availability_zone,
        "launch_index": meta.launch_index,
        "public_keys": public_keys,
        "keys": keys,
        "meta": meta.meta,
        "devices": [],
    })
}
