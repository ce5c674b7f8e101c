//! Errors in each OpenStack service's own format, and the mapping from
//! the gRPC API's status codes.

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Which service answers (each formats errors its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Keystone: `{"error": {"code", "title", "message"}}`.
    Identity,
    /// Nova: `{"itemNotFound": {"code", "message"}}` (the fault name as key).
    Compute,
    /// Neutron: `{"NeutronError": {"type", "message", "detail"}}`.
    Network,
    /// Glance: `{"code", "title", "message"}`.
    Image,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The service answering.
    pub service: Service,
    /// What went wrong, for the user.
    pub message: String,
}

impl ApiError {
    /// An error of `service` with `status`.
    pub fn new(service: Service, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            service,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(service: Service, message: impl Into<String>) -> Self {
        Self::new(service, StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(service: Service, message: impl Into<String>) -> Self {
        Self::new(service, StatusCode::NOT_FOUND, message)
    }

    /// 401: no or a bad token (Keystone's format: the client re-authenticates).
    pub fn unauthenticated() -> Self {
        Self::new(
            Service::Identity,
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    }

    /// The answer to a failed gRPC call.
    pub fn from_status(service: Service, s: &tonic::Status) -> Self {
        use tonic::Code;
        let status = match s.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            // Nova answers an exceeded quota with 403 overLimit.
            Code::ResourceExhausted => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let quota = s.code() == tonic::Code::ResourceExhausted;
        let mut e = Self::new(service, status, s.message().to_string());
        if quota {
            e.message = format!("Quota exceeded: {}", s.message());
        }
        e
    }

    /// Nova's fault name of this error.
    fn compute_fault(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "itemNotFound",
            StatusCode::BAD_REQUEST => "badRequest",
            StatusCode::CONFLICT => "conflictingRequest",
            StatusCode::FORBIDDEN | StatusCode::PAYLOAD_TOO_LARGE
                if self.message.starts_with("Quota exceeded") =>
            {
                "overLimit"
            }
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_IMPLEMENTED => "notImplemented",
            StatusCode::METHOD_NOT_ALLOWED => "methodNotAllowed",
            _ => "computeFault",
        }
    }
}

/// Converts gRPC failures of a service's handler.
pub trait StatusExt<T> {
    /// Maps the error to `service`'s format.
    fn api(self, service: Service) -> Result<T, ApiError>;
}

impl<T> StatusExt<T> for Result<T, tonic::Status> {
    fn api(self, service: Service) -> Result<T, ApiError> {
        self.map_err(|s| ApiError::from_status(service, &s))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = match self.service {
            Service::Identity => {
                json!({"error": {"code": code, "title": title, "message": self.message}})
            }
            Service::Compute => {
                json!({self.compute_fault(): {"code": code, "message": self.message}})
            }
            Service::Network => {
                let kind = match self.status {
                    StatusCode::NOT_FOUND => "NotFound",
                    StatusCode::BAD_REQUEST => "BadRequest",
                    StatusCode::CONFLICT => "Conflict",
                    StatusCode::FORBIDDEN => "Forbidden",
                    StatusCode::NOT_IMPLEMENTED => "NotImplemented",
                    _ => "NeutronError",
                };
                json!({"NeutronError": {"type": kind, "message": self.message, "detail": ""}})
            }
            Service::Image => json!({"code": code, "title": title, "message": self.message}),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Keystone uri=\"/identity\""),
            );
        }
        resp
    }
}

/// A request body as OpenStack answers a bad one: malformed JSON, a
/// wrong type or a missing field is a 400 `badRequest` in `service`'s
/// format (axum's own answer would be a 422); a body that is not JSON at
/// all keeps its 415.
pub fn json_body<T>(
    service: Service,
    body: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    use axum::extract::rejection::JsonRejection as R;
    body.map(|axum::Json(t)| t).map_err(|e| {
        let status = match &e {
            R::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            R::BytesRejection(_) => e.status(),
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(service, status, e.body_text())
    })
}

/// Anything not routed: 404 naming the path (never a silent empty answer).
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(
        Service::Compute,
        format!(
            "{} is not a resource of this API (see docs/openstack-compatibility.md)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_json_bodies_are_400_bad_request() {
        use axum::extract::FromRequest;
        #[derive(Debug, serde::Deserialize)]
        struct B {
            #[allow(dead_code)]
            n: u32,
        }
        let req = |body: &'static str| {
            axum::http::Request::builder()
                .method("POST")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        for bad in ["{\"n\": 2.5}", "{\"n\": ", "{}"] {
            let r = axum::Json::<B>::from_request(req(bad), &()).await;
            let e = json_body(Service::Compute, r).unwrap_err();
            assert_eq!(
                (e.status, e.compute_fault()),
                (StatusCode::BAD_REQUEST, "badRequest"),
                "{bad}"
            );
        }
        let ok = axum::Json::<B>::from_request(req("{\"n\": 2}"), &()).await;
        assert_eq!(json_body(Service::Compute, ok).unwrap().n, 2);
    }

    #[test]
    fn grpc_codes_map_to_openstack_faults() {
        let e = ApiError::from_status(
            Service::Compute,
            &tonic::Status::not_found("server \"x\" not found"),
        );
        assert_eq!(
            (e.status, e.compute_fault()),
            (StatusCode::NOT_FOUND, "itemNotFound")
        );
        let e = ApiError::from_status(
            Service::Compute,
            &tonic::Status::resource_exhausted("instances: 10 of 10 used"),
        );
        assert_eq!(
            (e.status, e.compute_fault()),
            (StatusCode::FORBIDDEN, "overLimit")
        );
        let e = ApiError::from_status(
            Service::Compute,
            &tonic::Status::failed_precondition("busy"),
        );
        assert_eq!(e.compute_fault(), "conflictingRequest");
        let e = ApiError::from_status(Service::Compute, &tonic::Status::invalid_argument("bad"));
        assert_eq!(e.compute_fault(), "badRequest");
    }
}
