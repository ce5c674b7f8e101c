//! Nova's request ids: every compute request gets one (`req-<uuid>`),
//! passed to the coordinators (as the call's request id: the audit record
//! and the instance actions carry it) and answered in
//! `x-openstack-request-id` and `x-compute-request-id`, so that
//! `os-instance-actions/{request_id}` finds what a call did.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The request header the id travels in to [`crate::upstream`].
pub const HEADER: &str = "x-openstack-request-id";

/// A fresh Nova request id. Pure but for the random part.
pub fn new_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

/// Middleware: assigns the request its id (whatever the client sent in
/// [`HEADER`] is replaced, as Nova makes its own) and answers with it.
pub async fn assign(mut req: Request, next: Next) -> Response {
    let id = new_id();
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        req.headers_mut().insert(HEADER, v.clone());
    }
    let mut resp = next.run(req).await;
    if let Some(v) = value {
        let h = resp.headers_mut();
        h.insert(HEADER, v.clone());
        h.insert("x-compute-request-id", v);
    }
    resp
}
