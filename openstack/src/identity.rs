//! Identity v3 (Keystone): version discovery and password authentication
//! of nubo users, scoped to a project. The token is nubo's own (issued by
//! the coordinators' `Tokens.Issue`), returned in `X-Subject-Token`; the
//! catalog points every service at this front end.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::versions;
use crate::Upstream;

/// `/identity/…`.
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/", get(versions_doc))
        .route("/v3", get(v3_doc))
        .route("/v3/", get(v3_doc))
        .route("/v3/auth/tokens", post(issue).get(validate).delete(revoke))
        .route("/v3/projects", get(list_projects))
        .route("/v3/projects/{id}", get(show_project))
}

async fn versions_doc(State(up): State<Upstream>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [versions::identity_v3(&up.public_url)]}})),
    )
        .into_response()
}

async fn v3_doc(State(up): State<Upstream>) -> Json<Value> {
    Json(json!({"version": versions::identity_v3(&up.public_url)}))
}

/// `POST /v3/auth/tokens` body (the parts nubo uses).
#[derive(Debug, Deserialize)]
pub struct AuthRequest {
    auth: Auth,
}

#[derive(Debug, Deserialize)]
struct Auth {
    identity: Identity,
    #[serde(default)]
    scope: Option<Scope>,
}

#[derive(Debug, Deserialize)]
struct Identity {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordMethod>,
    #[serde(default)]
    application_credential: Option<AppCredMethod>,
}

#[derive(Debug, Deserialize)]
struct PasswordMethod {
    user: UserRef,
}

#[derive(Debug, Deserialize)]
struct UserRef {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    password: String,
}

#[derive(Debug, Deserialize)]
struct AppCredMethod {
    id: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
struct Scope {
    #[serde(default)]
    project: Option<ProjectRef>,
}

#[derive(Debug, Deserialize)]
struct ProjectRef {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// What an auth request asks the coordinators for. Pure.
pub fn issue_request(body: &AuthRequest) -> Result<pb::IssueTokenRequest, ApiError> {
    let id = &body.auth.identity;
    let bad = |m: &str| ApiError::bad_request(Service::Identity, m);
    let project = body
        .auth
        .scope
        .as_ref()
        .and_then(|s| s.project.as_ref())
        .and_then(|p| p.id.clone().or_else(|| p.name.clone()))
        .unwrap_or_default();
    if id.methods.iter().any(|m| m == "password") {
        let p = id
            .password
            .as_ref()
            .ok_or_else(|| bad("the password method needs a \"password\" object"))?;
        let user = p
            .user
            .name
            .clone()
            .or_else(|| p.user.id.clone())
            .ok_or_else(|| bad("the user needs a name or an id"))?;
        return Ok(pb::IssueTokenRequest {
            user,
            password: p.user.password.clone(),
            project,
            ..Default::default()
        });
    }
    if id.methods.iter().any(|m| m == "application_credential") {
        let a = id
            .application_credential
            .as_ref()
            .ok_or_else(|| bad("the application_credential method needs its object"))?;
        return Ok(pb::IssueTokenRequest {
            application_credential_id: a.id.clone(),
            application_credential_secret: a.secret.clone(),
            ..Default::default()
        });
    }
    Err(ApiError::new(
        Service::Identity,
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "authentication methods {:?} are not supported (password, application_credential are)",
            id.methods
        ),
    ))
}

/// The service catalog: every service this front end serves (Block
/// Storage is left out until it is served: clients then skip it instead of
/// failing on it). `project` is kept for the project-scoped endpoints to
/// come.
pub fn catalog(base: &str, project: &str) -> Value {
    let _ = project;
    let entry = |kind: &str, name: &str, url: String| {
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|i| {
                json!({
                    "id": format!("{kind}-{i}"),
                    "interface": i,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": url,
                })
            })
            .collect();
        json!({"type": kind, "name": name, "id": kind, "endpoints": endpoints})
    };
    json!([
        entry("identity", "keystone", format!("{base}/identity/v3")),
        entry("compute", "nova", format!("{base}/compute/v2.1")),
        entry("network", "neutron", format!("{base}/network")),
        entry("image", "glance", format!("{base}/image")),
        entry(
            "volumev3",
            "cinderv3",
            format!("{base}/volume/v3/{project}")
        ),
        entry(
            "block-storage",
            "cinder",
            format!("{base}/volume/v3/{project}")
        ),
    ])
}

async fn issue(
    State(up): State<Upstream>,
    Json(body): Json<AuthRequest>,
) -> Result<Response, ApiError> {
    let req = issue_request(&body)?;
    let t = pb::tokens_client::TokensClient::new(up.anonymous())
        .issue(req)
        .await
        .map_err(|s| {
            // A refused login is 401 in Keystone, whatever the reason.
            let mut e = ApiError::from_status(Service::Identity, &s);
            if matches!(
                s.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ) {
                e.status = StatusCode::UNAUTHORIZED;
            }
            e
        })?
        .into_inner();
    token_response(&up.public_url, &t, StatusCode::CREATED, true)
}

/// Keystone's token document for `t`, with the token in `X-Subject-Token`
/// (and the catalog unless `catalog` is false). Its methods follow from
/// how nubo issued it: an application credential, else a password.
fn token_response(
    base: &str,
    t: &pb::Token,
    status: StatusCode,
    with_catalog: bool,
) -> Result<Response, ApiError> {
    let domain = json!({"id": "default", "name": "Default"});
    let methods = if t.application_credential_id.is_empty() {
        json!(["password"])
    } else {
        json!(["application_credential"])
    };
    let mut token = json!({
        "methods": methods,
        "user": {"id": t.user, "name": t.user, "domain": domain},
        "project": {"id": t.project, "name": t.project, "domain": domain},
        "roles": t.roles.iter().map(|r| json!({"id": r, "name": r})).collect::<Vec<_>>(),
        "issued_at": crate::time::keystone(&t.issued_at),
        "expires_at": crate::time::keystone(&t.expires_at),
    });
    if !t.application_credential_id.is_empty() {
        token["application_credential"] =
            json!({"id": t.application_credential_id, "restricted": true});
    }
    if with_catalog {
        token["catalog"] = catalog(base, &t.project);
    }
    let mut resp = (status, Json(json!({ "token": token }))).into_response();
    let header = t.token.parse().map_err(|_| {
        ApiError::new(
            Service::Identity,
            StatusCode::INTERNAL_SERVER_ERROR,
            "token is not a header value",
        )
    })?;
    resp.headers_mut().insert("x-subject-token", header);
    Ok(resp)
}

/// A project as Keystone shows it (nubo's project id is its name). Pure.
pub fn project_view(id: &str) -> Value {
    json!({"id": id, "name": id, "domain_id": "default", "enabled": true, "is_domain": false,
        "parent_id": "default", "description": "", "tags": [], "links": {"self": format!("/identity/v3/projects/{id}")}})
}

/// Whether the caller may see project `id`: the coordinators answer its
/// quota to its members and to cloud admins only (another project is
/// "not found", like every resource nubo hides).
async fn visible(up: &Upstream, headers: &HeaderMap, id: &str) -> Result<bool, ApiError> {
    let mut c = pb::quotas_client::QuotasClient::new(up.with_token(headers)?);
    match c
        .get(pb::GetRequest {
            r#ref: String::new(),
            project: id.to_string(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::NotFound | tonic::Code::PermissionDenied
            ) =>
        {
            Ok(false)
        }
        Err(s) => Err(ApiError::from_status(Service::Identity, &s)),
    }
}

async fn show_project(
    State(up): State<Upstream>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    if visible(&up, &headers, &id).await? {
        Ok(Json(json!({"project": project_view(&id)})))
    } else {
        Err(ApiError::not_found(
            Service::Identity,
            format!("Could not find project: {id}."),
        ))
    }
}

/// `GET /v3/projects?name=…` (what clients use to resolve a name).
#[derive(Debug, Deserialize)]
pub struct ProjectFilter {
    name: Option<String>,
}

async fn list_projects(
    State(up): State<Upstream>,
    headers: HeaderMap,
    axum::extract::Query(f): axum::extract::Query<ProjectFilter>,
) -> Result<Json<Value>, ApiError> {
    let Some(name) = f.name else {
        // The whole list is the admins' (Identity.ListProjects).
        let mut c = pb::identity_client::IdentityClient::new(up.with_token(&headers)?);
        let r = c
            .list_projects(pb::ListRequest {
                page_size: crate::upstream::PAGE_SIZE,
                ..Default::default()
            })
            .await
            .map_err(|s| ApiError::from_status(Service::Identity, &s))?
            .into_inner();
        let views: Vec<Value> = r.projects.iter().map(|p| project_view(&p.id)).collect();
        return Ok(Json(json!({"projects": views})));
    };
    let views: Vec<Value> = if visible(&up, &headers, &name).await? {
        vec![project_view(&name)]
    } else {
        Vec::new()
    };
    Ok(Json(json!({"projects": views})))
}

/// The `X-Subject-Token` of a validation or revocation.
fn subject_token(headers: &HeaderMap) -> Result<pb::SubjectTokenRequest, ApiError> {
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request(Service::Identity, "X-Subject-Token is required"))?;
    Ok(pb::SubjectTokenRequest {
        token: token.to_string(),
    })
}

/// Keystone's `nocatalog` query flag.
#[derive(Debug, Default, Deserialize)]
struct ValidateQuery {
    nocatalog: Option<String>,
}

/// A subject token nubo does not vouch for is 404 in Keystone.
fn subject_error(s: &tonic::Status) -> ApiError {
    let mut e = ApiError::from_status(Service::Identity, s);
    if s.code() == tonic::Code::NotFound {
        e.message = "Could not find token.".into();
    }
    e
}

/// `GET`/`HEAD /v3/auth/tokens`: `Tokens.Validate` with the caller's
/// `X-Auth-Token` (the subject's own user, or a cloud admin).
async fn validate(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(q): Query<ValidateQuery>,
) -> Result<Response, ApiError> {
    let subject = subject_token(&headers)?;
    let t = pb::tokens_client::TokensClient::new(up.with_token(&headers)?)
        .validate(subject)
        .await
        .map_err(|s| subject_error(&s))?
        .into_inner();
    token_response(&up.public_url, &t, StatusCode::OK, q.nocatalog.is_none())
}

/// `DELETE /v3/auth/tokens`: `Tokens.Revoke`; refused by every
/// coordinator from then on.
async fn revoke(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    let subject = subject_token(&headers)?;
    pb::tokens_client::TokensClient::new(up.with_token(&headers)?)
        .revoke(subject)
        .await
        .map_err(|s| subject_error(&s))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_scoped_to_a_project_by_name() {
        let body: AuthRequest = serde_json::from_value(json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "domain": {"name": "Default"}, "password": "pw"}}},
            "scope": {"project": {"name": "p1", "domain": {"name": "Default"}}}
        }}))
        .unwrap();
        let r = issue_request(&body).unwrap();
        assert_eq!(
            (r.user.as_str(), r.password.as_str(), r.project.as_str()),
            ("alice", "pw", "p1")
        );
    }

    #[test]
    fn unsupported_method_is_501() {
        let body: AuthRequest = serde_json::from_value(json!({"auth": {
            "identity": {"methods": ["totp"]}}}))
        .unwrap();
        assert_eq!(
            issue_request(&body).unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn catalog_points_at_this_front_end() {
        let c = catalog("http://10.0.0.1:5000", "p1");
        let compute = c
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "compute")
            .unwrap();
        assert_eq!(
            compute["endpoints"][0]["url"],
            "http://10.0.0.1:5000/compute/v2.1"
        );
    }
}
