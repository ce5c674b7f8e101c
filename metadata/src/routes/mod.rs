//! The HTTP router: pure request → response logic, testable without sockets.
//!
//! Every request must carry a [`CallerIdentity`] extension (the server adds
//! it from the connection; tests add it by hand). The router resolves it to
//! an instance and serves that instance's documents in the OpenStack and EC2
//! layouts. Nothing the guest sends (headers, `Host`, query) influences who
//! the caller is.

mod ec2;
mod openstack;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use tracing::{debug, warn};

use crate::caller::{self, CallerIdentity};
use crate::instance::{InstanceLookup, InstanceMeta};

pub use ec2::EC2_VERSIONS;
pub use openstack::OPENSTACK_VERSIONS;

/// Path of the IMDSv2 session-token endpoint (the only `PUT` route).
pub const TOKEN_PATH: &str = "/latest/api/token";

/// The resolved instance of the current request (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Arc<InstanceMeta>);

/// Builds the metadata router answering for the instances in `lookup`.
///
/// Requests without a [`CallerIdentity`] extension, from unknown callers or
/// with a mismatching MAC get `404`; methods other than `GET`/`HEAD` (and
/// `PUT` on [`TOKEN_PATH`], `POST` on `/openstack/<version>/password`) get
/// `405`. The password routes need a [`crate::PasswordStore`] extension
/// (`Arc<dyn PasswordStore>`, see [`crate::MetadataServer::with_passwords`]);
/// without one they answer 404.
pub fn router(lookup: Arc<dyn InstanceLookup>) -> Router {
    Router::new()
        .route("/", get(ec2::versions))
        .route("/openstack", get(openstack::versions))
        .route("/openstack/", get(openstack::versions))
        .route("/openstack/{version}", get(openstack::version_dir))
        .route("/openstack/{version}/", get(openstack::version_dir))
        .route(
            "/openstack/{version}/password",
            get(openstack::password).post(openstack::post_password),
        )
        .route("/openstack/{version}/{file}", get(openstack::file))
        .route(TOKEN_PATH, put(ec2::token))
        .route("/{version}", get(ec2::version_dir))
        .route("/{version}/", get(ec2::version_dir))
        .route("/{version}/meta-data", get(ec2::meta_data_root))
        .route("/{version}/meta-data/", get(ec2::meta_data_root))
        .route("/{version}/meta-data/{*path}", get(ec2::meta_data))
        .route("/{version}/user-data", get(ec2::user_data_file))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(lookup, identify))
        .layer(middleware::from_fn(only_allowed_methods))
}

/// Rejects every method but GET/HEAD (PUT on the token path, POST on an
/// OpenStack `password`) before any other processing.
async fn only_allowed_methods(req: Request, next: Next) -> Response {
    let method = req.method();
    let path = req.uri().path();
    let allowed = method == Method::GET
        || method == Method::HEAD
        || (method == Method::PUT && path == TOKEN_PATH)
        || (method == Method::POST
            && path.starts_with("/openstack/")
            && path.ends_with("/password"));
    if allowed {
        return next.run(req).await;
    }
    debug!(%method, path = req.uri().path(), "metadata request with unsupported method");
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
        "method not allowed\n",
    )
        .into_response()
}

/// Resolves the caller identity to an instance or answers 404.
async fn identify(
    State(lookup): State<Arc<dyn InstanceLookup>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(identity) = req.extensions().get::<CallerIdentity>().cloned() else {
        warn!(
            path = req.uri().path(),
            "metadata request without caller identity"
        );
        return not_found();
    };
    match caller::resolve(lookup.as_ref(), &identity) {
        Ok(meta) => {
            debug!(
                bridge = %identity.bridge,
                ip = %identity.ip,
                uuid = %meta.uuid,
                method = %req.method(),
                path = req.uri().path(),
                "metadata request"
            );
            req.extensions_mut().insert(Caller(meta));
            next.run(req).await
        }
        Err(rejection) => {
            // A guest can cause this at will: counted and summed up per
            // interval by the listener (see `server::report_refusals`),
            // which finds the reason on the response.
            debug!(
                bridge = %identity.bridge,
                ip = %identity.ip,
                mac = ?identity.mac.map(|m| m.to_string()),
                reason = %rejection,
                "metadata request refused"
            );
            let mut response = not_found();
            response.extensions_mut().insert(rejection);
            response
        }
    }
}

async fn fallback() -> Response {
    not_found()
}

/// The uniform 404 answer.
pub(crate) fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A `text/plain` answer.
pub(crate) fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// A directory listing: one entry per line, like Nova and EC2.
pub(crate) fn listing<I, S>(entries: I) -> Response
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let lines: Vec<S> = entries.into_iter().collect();
    let body = lines
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join("\n");
    text(body)
}

/// The instance's user data as an opaque byte stream, or 404 if it has none.
pub(crate) fn user_data(meta: &InstanceMeta) -> Response {
    match &meta.user_data {
        Some(data) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            data.clone(),
        )
            .into_response(),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests;
