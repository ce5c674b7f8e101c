//! The OpenStack layout: `/openstack/<version>/meta_data.json` etc.

use axum::extract::{Extension, Path};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{listing, not_found, user_data, Caller};
use crate::instance::InstanceMeta;

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
