//! The metrics layer in front of every gRPC service, applied once around
//! the whole router (outside authentication, so refused calls count too).
//!
//! A gRPC status travels in the response headers when the call fails before
//! any message (a "trailers-only" answer) and in the trailers otherwise, so
//! the response body is wrapped to read the trailers when they come. A body
//! dropped before its end (the client went away) counts as `Cancelled`; a
//! body that ends without a status as `Unknown`. Each request counts once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{CoordinatorMetrics, Method, MethodCode};
use crate::error::grpc_code_name;

/// Longest method label kept (longer paths are not ours: `unknown`).
const MAX_METHOD: usize = 128;

/// Puts the metrics layer in front of every route of `router`.
pub fn layer(router: axum::Router, metrics: Arc<CoordinatorMetrics>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, track))
}

async fn track(
    State(metrics): State<Arc<CoordinatorMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let method = if path.len() <= MAX_METHOD && is_method_path(path) {
        path.to_string()
    } else {
        "unknown".to_string()
    };
    let mut rec = Recorder {
        metrics,
        method,
        started: Instant::now(),
        done: false,
    };
    let resp = next.run(req).await;
    if let Some(code) = status_of(resp.headers()) {
        rec.finish(code);
        return resp;
    }
    resp.map(|body| Body::new(Tracked { inner: body, rec }))
}

/// `/package.Service/Method`, made of identifier characters.
fn is_method_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let Some((service, method)) = rest.split_once('/') else {
        return false;
    };
    let ident = |s: &str, dots: bool| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
    };
    ident(service, true) && ident(method, false)
}

/// The `grpc-status` of a header map, as a code name.
fn status_of(headers: &HeaderMap) -> Option<&'static str> {
    let v = headers.get("grpc-status")?;
    let n = v.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(grpc_code_name(tonic::Code::from_i32(n)))
}

/// Counts one request once, when its status is known or its body dropped.
struct Recorder {
    metrics: Arc<CoordinatorMetrics>,
    method: String,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A path no service answers is not a method: one label for all.
        let method = if code == "Unimplemented" {
            "unknown".to_string()
        } else {
            std::mem::take(&mut self.method)
        };
        self.metrics
            .api_duration
            .get_or_create(&Method {
                method: method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .api_requests
            .get_or_create(&MethodCode { method, code })
            .inc();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

/// A response body that records the status found in its trailers.
struct Tracked {
    inner: Body,
    rec: Recorder,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.rec.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.rec.finish("Unknown"),
            Poll::Ready(None) => this.rec.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_method_shaped_paths_are_labels() {
        assert!(is_method_path("/nubo.v1.Servers/Create"));
        for bad in ["/", "/x", "//Create", "/a.b/", "/a/b/c", "/a b/c", "nubo/x"] {
            assert!(!is_method_path(bad), "{bad}");
        }
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(grpc_code_name(tonic::Code::from_i32(0)), "OK");
        assert_eq!(grpc_code_name(tonic::Code::from_i32(5)), "NotFound");
        assert_eq!(grpc_code_name(tonic::Code::from_i32(99)), "Unknown");
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(status_of(&h), Some("Unauthenticated"));
    }
}
