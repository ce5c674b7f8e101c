//! Nova's `createImage` server action over nubo's `Servers.CreateImage`:
//! the server's root disk becomes a new image (crash-consistent at the
//! call, `queued` until copied, then `active` in Glance). Answered as Nova
//! 2.1: 202 with the image's `Location` and no body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nubo_common::proto as pb;
use serde_json::Value;

use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::versioned;
use crate::upstream::Chan;

const S: Service = Service::Compute;

/// The `Servers.CreateImage` request of a `createImage` body (`name`
/// required, `metadata` string values). Pure.
pub fn request(server: &str, args: &Value) -> Result<pb::CreateServerImageRequest, ApiError> {
    let bad = |m: String| {
        ApiError::bad_request(
            S,
            format!("Invalid input for field/attribute createImage. {m}"),
        )
    };
    let o = args
        .as_object()
        .ok_or_else(|| bad("createImage takes an object".into()))?;
    let name = match o.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => return Err(bad("'name' is a required non-empty string".into())),
    };
    let mut properties = std::collections::HashMap::new();
    match o.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(bad(format!("metadata value of {k:?} must be a string")));
                };
                properties.insert(k.clone(), s.clone());
            }
        }
        Some(other) => return Err(bad(format!("metadata must be an object, not {other}"))),
    }
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "metadata"))
    {
        return Err(bad(format!(
            "Additional properties are not allowed ({k:?} was unexpected)"
        )));
    }
    Ok(pb::CreateServerImageRequest {
        project: String::new(),
        server: server.to_string(),
        name,
        properties,
        disk_format: String::new(),
    })
}

/// Runs `createImage` on server `server`.
pub async fn create_image(
    c: &mut pb::servers_client::ServersClient<Chan>,
    public_url: &str,
    server: &str,
    args: &Value,
) -> Result<Response, ApiError> {
    let req = request(server, args)?;
    let img = c.create_image(req).await.api(S)?.into_inner();
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("{public_url}/compute/v2.1/images/{}", img.id))
    {
        r.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(versioned(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_image_bodies() {
        let r = request("s1", &json!({"name": "snap", "metadata": {"k": "v"}})).unwrap();
        assert_eq!((r.server.as_str(), r.name.as_str()), ("s1", "snap"));
        assert_eq!(r.properties["k"], "v");
        assert!(request("s1", &json!({})).is_err());
        assert!(request("s1", &json!({"name": ""})).is_err());
        assert!(request("s1", &json!({"name": "a", "metadata": {"k": 1}})).is_err());
        assert!(request("s1", &json!({"name": "a", "other": 1})).is_err());
    }
}
