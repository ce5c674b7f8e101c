//! Request bodies: JSON parsed into the handler's type, with a malformed
//! body, a wrong type or an unknown field answered 400 in the service's own
//! error format (axum's own extractor answers plain text, and 422 for a
//! wrong type, which no OpenStack service does).

use serde::de::DeserializeOwned;

use crate::error::{ApiError, Service};

/// `bytes` as a `T`, or a 400 of `service` saying what is wrong.
pub fn parse<T: DeserializeOwned>(service: Service, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON in the request body"
        } else {
            "invalid request body"
        };
        ApiError::bad_request(service, format!("{what}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Thing {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn bad_bodies_are_400_with_the_reason() {
        assert!(parse::<Thing>(Service::Network, br#"{"name": "a"}"#).is_ok());
        for (body, text) in [
            (&br#"{"name": "a""#[..], "malformed JSON"),
            (br#"{"name": 3}"#, "invalid type"),
            (br#"{"name": "a", "x": 1}"#, "unknown field `x`"),
            (br#"{}"#, "missing field `name`"),
        ] {
            let e = parse::<Thing>(Service::Network, body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(text), "{}", e.message);
        }
    }
}
