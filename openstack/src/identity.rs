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
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/{id}",
            get(show_project).delete(delete_project),
        )
        .route("/v3/domains", get(list_domains))
        .route("/v3/domains/{id}", get(show_domain))
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

/// nubo's one domain as Keystone shows it (`default`, named `Default`). Pure.
pub fn domain_view() -> Value {
    json!({"id": DOMAIN_ID, "name": DOMAIN_NAME, "description": "nubo has one domain: every project and user is in it",
        "enabled": true, "tags": [], "options": {}, "links": {"self": "/identity/v3/domains/default"}})
}

/// The id of nubo's one domain.
pub const DOMAIN_ID: &str = "default";
/// The name of nubo's one domain.
pub const DOMAIN_NAME: &str = "Default";

/// The caller's token, checked by the coordinators (`Tokens.Validate` of
/// itself): the domain calls answer nothing without a valid token.
async fn authenticated(up: &Upstream, headers: &HeaderMap) -> Result<(), ApiError> {
    let own = crate::upstream::caller_token(headers).ok_or_else(ApiError::unauthenticated)?;
    pb::tokens_client::TokensClient::new(up.with_token(headers)?)
        .validate(pb::SubjectTokenRequest {
            token: own.to_string(),
        })
        .await
        .map_err(|s| ApiError::from_status(Service::Identity, &s))?;
    Ok(())
}

/// `GET /v3/domains?name=` filter.
#[derive(Debug, Deserialize)]
pub struct DomainFilter {
    name: Option<String>,
}

/// `GET /v3/domains`: nubo's one domain (none when `name` names another;
/// names compare case-insensitively, as in Keystone's SQL backend).
async fn list_domains(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Query(f): Query<DomainFilter>,
) -> Result<Json<Value>, ApiError> {
    authenticated(&up, &headers).await?;
    let views: Vec<Value> = match f.name.as_deref() {
        Some(n) if !n.eq_ignore_ascii_case(DOMAIN_NAME) => Vec::new(),
        _ => vec![domain_view()],
    };
    Ok(Json(json!({"domains": views})))
}

/// `GET /v3/domains/{id}`: nubo's one domain; any other is 404.
async fn show_domain(
    State(up): State<Upstream>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticated(&up, &headers).await?;
    if id == DOMAIN_ID {
        Ok(Json(json!({"domain": domain_view()})))
    } else {
        Err(ApiError::not_found(
            Service::Identity,
            format!("Could not find domain: {id}."),
        ))
    }
}

/// `POST /v3/projects` body.
#[derive(Debug, Deserialize)]
pub struct NewProjectBody {
    project: NewProject,
}

/// The Keystone project attributes nubo keeps; any other is a 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    description: String,
    domain_id: Option<String>,
    enabled: Option<bool>,
    #[serde(default)]
    is_domain: bool,
    parent_id: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// nubo's `CreateProject` for a Keystone project: nubo's project id is
/// its name, in the one domain; disabled projects, projects acting as
/// domains, hierarchies and tags do not exist in nubo (400 naming them).
/// Pure.
fn project_request(p: NewProject) -> Result<pb::CreateProjectRequest, ApiError> {
    let bad = |m: String| {
        Err(ApiError::bad_request(
            Service::Identity,
            format!("{m} (nubo)"),
        ))
    };
    if let Some(d) = p.domain_id.as_deref().filter(|d| *d != DOMAIN_ID) {
        return Err(ApiError::not_found(
            Service::Identity,
            format!("Could not find domain: {d}. nubo has one domain, {DOMAIN_ID:?}"),
        ));
    }
    if p.parent_id.as_deref().is_some_and(|x| x != DOMAIN_ID) {
        return bad("projects have no parent project in nubo".into());
    }
    if p.is_domain {
        return bad("nubo has one domain: a project cannot be a domain".into());
    }
    if p.enabled == Some(false) {
        return bad("a nubo project is always enabled".into());
    }
    if !p.tags.is_empty() {
        return bad("project tags are not supported".into());
    }
    Ok(pb::CreateProjectRequest {
        id: p.name.clone(),
        name: p.name,
        description: p.description,
    })
}

/// A nubo project as Keystone shows it. Pure.
pub fn project_pb_view(p: &pb::Project) -> Value {
    let mut v = project_view(&p.id);
    v["description"] = json!(p.description);
    v
}

/// `POST /v3/projects` (cloud admins): `Identity.CreateProject`.
async fn create_project(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<NewProjectBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let b = crate::error::json_body(Service::Identity, body)?;
    let req = project_request(b.project)?;
    let p = pb::identity_client::IdentityClient::new(up.with_token(&headers)?)
        .create_project(req)
        .await
        .map_err(|s| ApiError::from_status(Service::Identity, &s))?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        Json(json!({"project": project_pb_view(&p)})),
    )
        .into_response())
}

/// `DELETE /v3/projects/{id}` (cloud admins): `Identity.DeleteProject`.
async fn delete_project(
    State(up): State<Upstream>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    pb::identity_client::IdentityClient::new(up.with_token(&headers)?)
        .delete_project(pb::DeleteRequest {
            r#ref: id,
            ..Default::default()
        })
        .await
        .map_err(|s| ApiError::from_status(Service::Identity, &s))?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
    fn keystone_projects_map_to_nubo_projects_in_the_one_domain() {
        let p = |v: Value| serde_json::from_value::<NewProjectBody>(v).unwrap().project;
        let r = project_request(p(
            json!({"project": {"name": "team-a", "description": "d", "domain_id": "default"}}),
        ))
        .unwrap();
        assert_eq!(
            (r.id.as_str(), r.name.as_str(), r.description.as_str()),
            ("team-a", "team-a", "d")
        );
        let e = project_request(p(json!({"project": {"name": "x", "domain_id": "other"}})))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        for bad in [
            json!({"name": "x", "enabled": false}),
            json!({"name": "x", "is_domain": true}),
            json!({"name": "x", "parent_id": "team-b"}),
            json!({"name": "x", "tags": ["t"]}),
        ] {
            let e = project_request(p(json!({"project": bad}))).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(serde_json::from_value::<NewProjectBody>(
            json!({"project": {"name": "x", "colour": 1}})
        )
        .is_err());
        assert_eq!(domain_view()["name"], "Default");
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
