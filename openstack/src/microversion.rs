//! Nova's microversion handshake, shared by every compute route: the
//! version a request asks for (only 2.1 is served) and the headers every
//! answer carries.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Service};
use crate::versions::COMPUTE_MAX_MICROVERSION;

const S: Service = Service::Compute;

/// The microversion a request asks for (`OpenStack-API-Version: compute
/// X.Y` or `X-OpenStack-Nova-API-Version`); only up to
/// [`COMPUTE_MAX_MICROVERSION`] is served (406 beyond, as Nova does).
pub fn microversion(headers: &HeaderMap) -> Result<(), ApiError> {
    let asked = headers
        .get("openstack-api-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("compute "))
        .or_else(|| {
            headers
                .get("x-openstack-nova-api-version")
                .and_then(|v| v.to_str().ok())
        })
        .map(str::trim);
    match asked {
        None | Some("2.1") | Some("2.0") => Ok(()),
        Some("latest") => Ok(()),
        Some(v) => Err(ApiError::new(
            S,
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {v} is not supported by the API. Minimum is 2.1 and maximum is {COMPUTE_MAX_MICROVERSION}."),
        )),
    }
}

/// Adds the microversion headers Nova answers with, and its request id
/// (`x-openstack-request-id`, `x-compute-request-id`: Tempest's clients
/// read it from every answer).
pub fn versioned(resp: impl IntoResponse) -> Response {
    let mut r = resp.into_response();
    let h = r.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&format!("req-{}", uuid::Uuid::new_v4())) {
        h.insert("x-openstack-request-id", id.clone());
        h.insert("x-compute-request-id", id);
    }
    h.insert(
        "openstack-api-version",
        HeaderValue::from_static("compute 2.1"),
    );
    h.insert(
        "x-openstack-nova-api-version",
        HeaderValue::from_static("2.1"),
    );
    h.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microversions_beyond_the_maximum_are_refused() {
        let mut h = HeaderMap::new();
        assert!(microversion(&h).is_ok());
        h.insert(
            "openstack-api-version",
            HeaderValue::from_static("compute 2.79"),
        );
        assert_eq!(
            microversion(&h).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
    }
}
