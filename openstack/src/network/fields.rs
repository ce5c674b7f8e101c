//! Neutron's `fields` query parameter (`?fields=id&fields=name`): the
//! answer keeps only those attributes of each resource. Applied once, as
//! a layer over every Networking route, to the JSON each handler answers.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::S;
use crate::error::ApiError;

/// Largest answer reshaped (a larger one is a 500 saying so).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The `fields` of a query string, in order.
pub fn requested(query: Option<&str>) -> Vec<String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    pairs
        .into_iter()
        .filter(|(k, v)| k == "fields" && !v.is_empty())
        .map(|(_, v)| v)
        .collect()
}

/// Keeps only `fields` in the resource(s) of a Neutron answer
/// (`{"network": {...}}` or `{"networks": [{...}, ...]}`). Pure.
pub fn select(answer: &mut Value, fields: &[String]) {
    let keep = |o: &mut serde_json::Map<String, Value>| o.retain(|k, _| fields.contains(k));
    let Some(top) = answer.as_object_mut() else {
        return;
    };
    for v in top.values_mut() {
        match v {
            Value::Object(o) => keep(o),
            Value::Array(items) => items
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(keep),
            _ => {}
        }
    }
}

/// The layer: answers of requests with `fields` are reshaped.
pub async fn layer(req: Request, next: Next) -> Response {
    let fields = requested(req.uri().query());
    let resp = next.run(req).await;
    if fields.is_empty() || !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        // Never an empty success: say what failed.
        return ApiError::new(
            S,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer is too large to select fields from: ask without fields",
        )
        .into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    select(&mut v, &fields);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_asked_fields_stay() {
        let f = requested(Some("fields=id&name=x&fields=router%3Aexternal"));
        assert_eq!(f, vec!["id".to_string(), "router:external".to_string()]);
        let mut one = json!({"network": {"id": "a", "name": "n", "router:external": false}});
        select(&mut one, &f);
        assert_eq!(
            one,
            json!({"network": {"id": "a", "router:external": false}})
        );
        let mut many = json!({"networks": [{"id": "a", "name": "n"}, {"id": "b", "mtu": 1}]});
        select(&mut many, &f);
        assert_eq!(many, json!({"networks": [{"id": "a"}, {"id": "b"}]}));
        assert!(requested(None).is_empty());
    }
}
