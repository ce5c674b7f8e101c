//! Cinder's metadata of volumes and snapshots
//! (`/volumes/{id}/metadata[/{key}]`, `/snapshots/{id}/metadata[/{key}]`)
//! on `Volumes.Update` / `Volumes.UpdateSnapshot`: `POST` merges keys in,
//! `PUT` replaces all, `PUT …/{key}` sets one (`{"meta": {key: value}}`,
//! the key as in the path), `DELETE …/{key}` removes one (404 when it is
//! not there). The volume's read-only mark, which Cinder shows in a
//! volume's `metadata`, is not part of these.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Service};
use crate::volume::{cinder_error, string_map};
use crate::Upstream;

const S: Service = Service::Compute;

/// The metadata routes of volumes and snapshots.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v3/{project}/volumes/{id}/metadata",
            get(show_meta::<false>)
                .post(merge_meta::<false>)
                .put(replace_meta::<false>),
        )
        .route(
            "/v3/{project}/volumes/{id}/metadata/{key}",
            get(show_meta_item::<false>)
                .put(set_meta_item::<false>)
                .delete(delete_meta_item::<false>),
        )
        .route(
            "/v3/{project}/snapshots/{id}/metadata",
            get(show_meta::<true>)
                .post(merge_meta::<true>)
                .put(replace_meta::<true>),
        )
        .route(
            "/v3/{project}/snapshots/{id}/metadata/{key}",
            get(show_meta_item::<true>)
                .put(set_meta_item::<true>)
                .delete(delete_meta_item::<true>),
        )
}

/// Whose metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Volume,
    Snapshot,
}

/// `{"metadata": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataBody {
    metadata: Map<String, Value>,
}

/// `{"meta": {key: value}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetaBody {
    meta: Map<String, Value>,
}

/// One change of metadata.
struct Edit {
    replace: bool,
    set: HashMap<String, String>,
    remove: Vec<String>,
}

async fn current(
    up: &Upstream,
    h: &HeaderMap,
    owner: Owner,
    id: String,
) -> Result<HashMap<String, String>, ApiError> {
    let mut c = up.volumes(h)?;
    let req = crate::upstream::get_req(id);
    Ok(match owner {
        Owner::Volume => {
            c.get(req)
                .await
                .map_err(cinder_error)?
                .into_inner()
                .metadata
        }
        Owner::Snapshot => {
            c.get_snapshot(req)
                .await
                .map_err(cinder_error)?
                .into_inner()
                .metadata
        }
    })
}

async fn edit(
    up: &Upstream,
    h: &HeaderMap,
    owner: Owner,
    id: String,
    e: Edit,
) -> Result<HashMap<String, String>, ApiError> {
    let mut c = up.volumes(h)?;
    Ok(match owner {
        Owner::Volume => {
            c.update(pb::UpdateVolumeRequest {
                r#ref: id,
                replace_metadata: e.replace,
                metadata: e.set,
                remove_metadata: e.remove,
                ..Default::default()
            })
            .await
            .map_err(cinder_error)?
            .into_inner()
            .metadata
        }
        Owner::Snapshot => {
            c.update_snapshot(pb::UpdateVolumeSnapshotRequest {
                id,
                replace_metadata: e.replace,
                metadata: e.set,
                remove_metadata: e.remove,
                ..Default::default()
            })
            .await
            .map_err(cinder_error)?
            .into_inner()
            .metadata
        }
    })
}

/// The one item of a `PUT …/metadata/{key}` body: exactly the path's key.
/// Pure.
fn one_item(key: &str, b: MetaBody) -> Result<HashMap<String, String>, ApiError> {
    if b.meta.len() != 1 || !b.meta.contains_key(key) {
        return Err(ApiError::bad_request(
            S,
            format!("Invalid input received: the request body must hold exactly one item, {key:?} as in the URI"),
        ));
    }
    string_map(Some(b.meta))
}

async fn show_all(
    up: Upstream,
    h: HeaderMap,
    owner: Owner,
    id: String,
) -> Result<Response, ApiError> {
    let m = current(&up, &h, owner, id).await?;
    Ok(Json(json!({"metadata": m})).into_response())
}

async fn change_all(
    up: Upstream,
    h: HeaderMap,
    owner: Owner,
    id: String,
    replace: bool,
    body: Result<Json<MetadataBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let set = string_map(Some(b.metadata))?;
    let m = edit(
        &up,
        &h,
        owner,
        id,
        Edit {
            replace,
            set,
            remove: Vec::new(),
        },
    )
    .await?;
    Ok(Json(json!({"metadata": m})).into_response())
}

async fn show_item(
    up: Upstream,
    h: HeaderMap,
    owner: Owner,
    id: String,
    key: String,
) -> Result<Response, ApiError> {
    let m = current(&up, &h, owner, id.clone()).await?;
    match m.get(&key) {
        Some(v) => Ok(Json(json!({"meta": {key: v}})).into_response()),
        None => Err(ApiError::not_found(
            S,
            format!("Metadata item was not found: {id} has no key {key:?}"),
        )),
    }
}

async fn set_item(
    up: Upstream,
    h: HeaderMap,
    owner: Owner,
    id: String,
    key: String,
    body: Result<Json<MetaBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(S, body)?;
    let set = one_item(&key, b)?;
    let m = edit(
        &up,
        &h,
        owner,
        id,
        Edit {
            replace: false,
            set,
            remove: Vec::new(),
        },
    )
    .await?;
    Ok(Json(json!({"meta": {key.clone(): m.get(&key)}})).into_response())
}

async fn delete_item(
    up: Upstream,
    h: HeaderMap,
    owner: Owner,
    id: String,
    key: String,
) -> Result<Response, ApiError> {
    edit(
        &up,
        &h,
        owner,
        id,
        Edit {
            replace: false,
            set: HashMap::new(),
            remove: vec![key],
        },
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}

type Id = Path<(String, String)>;
type Item = Path<(String, String, String)>;

/// Whose metadata a route serves: a snapshot's when `SNAP`.
const fn owner<const SNAP: bool>() -> Owner {
    if SNAP {
        Owner::Snapshot
    } else {
        Owner::Volume
    }
}

async fn show_meta<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id)): Id,
) -> Result<Response, ApiError> {
    show_all(up, h, owner::<SNAP>(), id).await
}
async fn merge_meta<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id)): Id,
    body: Result<Json<MetadataBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    change_all(up, h, owner::<SNAP>(), id, false, body).await
}
async fn replace_meta<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id)): Id,
    body: Result<Json<MetadataBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    change_all(up, h, owner::<SNAP>(), id, true, body).await
}
async fn show_meta_item<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id, key)): Item,
) -> Result<Response, ApiError> {
    show_item(up, h, owner::<SNAP>(), id, key).await
}
async fn set_meta_item<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id, key)): Item,
    body: Result<Json<MetaBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    set_item(up, h, owner::<SNAP>(), id, key, body).await
}
async fn delete_meta_item<const SNAP: bool>(
    State(up): State<Upstream>,
    h: HeaderMap,
    Path((_, id, key)): Item,
) -> Result<Response, ApiError> {
    delete_item(up, h, owner::<SNAP>(), id, key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_body_holds_exactly_the_uri_key() {
        let body = |v: Value| serde_json::from_value::<MetaBody>(v).unwrap();
        assert_eq!(
            one_item("k", body(json!({"meta": {"k": "v"}}))).unwrap()["k"],
            "v"
        );
        for b in [
            json!({"meta": {"other": "v"}}),
            json!({"meta": {"k": "v", "j": "w"}}),
            json!({"meta": {}}),
            json!({"meta": {"k": 3}}),
        ] {
            assert_eq!(
                one_item("k", body(b.clone())).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{b}"
            );
        }
    }
}
