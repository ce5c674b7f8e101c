//! Nova's server metadata (2.1) over nubo's `Servers.SetMetadata` /
//! `UnsetMetadata`: `GET`/`PUT`/`POST /servers/{id}/metadata` and
//! `GET`/`PUT`/`DELETE /servers/{id}/metadata/{key}`.
//!
//! The limits are the coordinator's (Nova's): keys 1-255 characters,
//! values at most 255, at most 128 items per server (beyond: 403
//! overLimit, as Nova's `metadata_items` quota). Bodies are checked here
//! as Nova's JSON schema does: an object of string values under
//! `metadata` (or `meta` for one item), nothing else.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Map, Value};

use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/metadata…` (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v2.1/servers/{id}/metadata",
            get(list).put(replace).post(update),
        )
        .route(
            "/v2.1/servers/{id}/metadata/{key}",
            get(show_item).put(set_item).delete(delete_item),
        )
}

/// The string map of a metadata object: every value a string (Nova's
/// schema), keys checked by the coordinator. Pure.
pub fn string_map(
    what: &str,
    m: &Map<String, Value>,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(ApiError::bad_request(
                S,
                format!("{what}: the value of {k:?} must be a string, not {other}"),
            )),
        })
        .collect()
}

/// The object under the one key `field` of `body` (nothing else allowed).
/// Pure.
fn only_field<'a>(body: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request(S, "the body must be a JSON object"))?;
    if let Some(other) = obj.keys().find(|k| k.as_str() != field) {
        return Err(ApiError::bad_request(
            S,
            format!("unexpected field {other:?}: the body is {{\"{field}\": {{…}}}}"),
        ));
    }
    obj.get(field)
        .ok_or_else(|| ApiError::bad_request(S, format!("\"{field}\" is required")))?
        .as_object()
        .ok_or_else(|| ApiError::bad_request(S, format!("\"{field}\" must be an object")))
}

/// The `{"metadata": {…}}` answer of a server. Pure.
fn metadata_doc(s: &pb::Server) -> Value {
    let sorted: std::collections::BTreeMap<_, _> = s.metadata.iter().collect();
    json!({ "metadata": sorted })
}

async fn list(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let s = up
        .servers(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(metadata_doc(&s))))
}

/// `PUT` (replace) and `POST` (merge) of `{"metadata": {…}}`.
async fn set(
    up: Upstream,
    headers: HeaderMap,
    id: String,
    body: Result<Json<Value>, JsonRejection>,
    replace: bool,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let metadata = string_map("metadata", only_field(&body, "metadata")?)?;
    let s = up
        .servers(&headers)?
        .set_metadata(pb::SetServerMetadataRequest {
            r#ref: id,
            project: String::new(),
            metadata,
            replace,
        })
        .await
        .api(S)?
        .into_inner();
    Ok(versioned(Json(metadata_doc(&s))))
}

async fn replace(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    set(up, headers, id, body, true).await
}

async fn update(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    set(up, headers, id, body, false).await
}

async fn show_item(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let s = up
        .servers(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let v = s
        .metadata
        .get(&key)
        .ok_or_else(|| ApiError::not_found(S, format!("the server has no metadata key {key:?}")))?;
    Ok(versioned(Json(json!({"meta": {key: v}}))))
}

/// The one item of a `PUT /metadata/{key}` body `{"meta": {key: value}}`
/// (its key must be the path's). Pure.
pub fn item_request(key: &str, body: &Value) -> Result<(String, String), ApiError> {
    let meta = string_map("meta", only_field(body, "meta")?)?;
    if meta.len() != 1 {
        return Err(ApiError::bad_request(
            S,
            format!("\"meta\" must hold exactly one item (got {})", meta.len()),
        ));
    }
    let (k, v) = meta.into_iter().next().unwrap_or_default();
    if k != key {
        return Err(ApiError::bad_request(
            S,
            format!("the body's key {k:?} is not the path's key {key:?}"),
        ));
    }
    Ok((k, v))
}

async fn set_item(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let (k, v) = item_request(&key, &body)?;
    up.servers(&headers)?
        .set_metadata(pb::SetServerMetadataRequest {
            r#ref: id,
            project: String::new(),
            metadata: [(k.clone(), v.clone())].into(),
            replace: false,
        })
        .await
        .api(S)?;
    Ok(versioned(Json(json!({"meta": {k: v}}))))
}

async fn delete_item(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.servers(&headers)?
        .unset_metadata(pb::UnsetServerMetadataRequest {
            r#ref: id,
            project: String::new(),
            keys: vec![key],
        })
        .await
        .api(S)?;
    Ok(versioned(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_bodies_are_checked_as_nova_does() {
        let ok = item_request("k", &json!({"meta": {"k": "v"}})).unwrap();
        assert_eq!(ok, ("k".to_string(), "v".to_string()));
        for (body, text) in [
            (json!({"meta": {"other": "v"}}), "not the path's key"),
            (json!({"meta": {"k": "v", "j": "w"}}), "exactly one item"),
            (json!({"meta": {}}), "exactly one item"),
            (json!({"meta": {"k": 1}}), "must be a string"),
            (json!({"metadata": {"k": "v"}}), "unexpected field"),
            (json!({}), "\"meta\" is required"),
            (json!({"meta": "k=v"}), "must be an object"),
            (json!([1]), "JSON object"),
        ] {
            let e = item_request("k", &body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(text), "{body}: {}", e.message);
        }
    }

    #[test]
    fn metadata_values_must_be_strings() {
        let m = json!({"a": "1", "b": ""});
        let got = string_map("metadata", m.as_object().unwrap()).unwrap();
        assert_eq!(got.len(), 2);
        let m = json!({"a": null});
        assert!(string_map("metadata", m.as_object().unwrap()).is_err());
    }
}
