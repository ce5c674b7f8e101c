//! Image v2 (Glance) image members: the projects a `shared` image is
//! shared with, over `Images.ListMembers/GetMember/AddMember/
//! SetMemberStatus/RemoveMember`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::Upstream;

const S: Service = Service::Image;

/// `/image/v2/images/{id}/members…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route(
            "/v2/images/{id}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/v2/images/{id}/members/{member}",
            get(show_member).put(update_member).delete(delete_member),
        )
}

/// The Glance view of an image member. Pure.
pub fn member_view(m: &pb::ImageMember) -> Value {
    json!({
        "image_id": m.image,
        "member_id": m.member,
        "status": m.status,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "schema": "/v2/schemas/member",
    })
}

fn member_req(image: String, member: String, status: String) -> pb::ImageMemberRequest {
    pb::ImageMemberRequest {
        image,
        project: String::new(),
        member,
        status,
    }
}

async fn list_members(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = up
        .images(&headers)?
        .list_members(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    let members: Vec<Value> = r.members.iter().map(member_view).collect();
    Ok(Json(json!({"members": members, "schema": "/v2/schemas/members"})).into_response())
}

/// `POST …/members` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    member: String,
}

async fn add_member(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<NewMember>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = json_body(S, body)?;
    let m = up
        .images(&headers)?
        .add_member(member_req(id, b.member, String::new()))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(member_view(&m)).into_response())
}

async fn show_member(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let m = up
        .images(&headers)?
        .get_member(member_req(id, member, String::new()))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(member_view(&m)).into_response())
}

/// `PUT …/members/{member}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberStatus {
    status: String,
}

async fn update_member(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, member)): Path<(String, String)>,
    body: Result<Json<MemberStatus>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = json_body(S, body)?;
    let m = up
        .images(&headers)?
        .set_member_status(member_req(id, member, b.status))
        .await
        .api(S)?
        .into_inner();
    Ok(Json(member_view(&m)).into_response())
}

async fn delete_member(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    up.images(&headers)?
        .remove_member(member_req(id, member, String::new()))
        .await
        .api(S)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
