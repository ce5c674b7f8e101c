//! Neutron's create bodies: one resource (`{"network": {...}}`) or a bulk
//! create (`{"networks": [...]}`), which Neutron makes all or nothing: the
//! items are created in order, and on the first failure the ones already
//! made are removed again before the failure is answered.

use std::future::Future;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::S;
use crate::error::ApiError;

/// The requests for the items of a create body holding `one` or `many`
/// (exactly one of them), each made by `request` (the first refusal is
/// answered), and whether it was a bulk create.
pub fn requests<T, R>(
    one: Option<T>,
    many: Option<Vec<T>>,
    what: &str,
    request: impl Fn(T) -> Result<R, ApiError>,
) -> Result<(Vec<R>, bool), ApiError> {
    let (items, bulk) = items(one, many, what)?;
    let requests = items.into_iter().map(request).collect::<Result<_, _>>()?;
    Ok((requests, bulk))
}

/// The items of a create body holding `one` or `many` (exactly one of
/// them), and whether it was a bulk create.
fn items<T>(one: Option<T>, many: Option<Vec<T>>, what: &str) -> Result<(Vec<T>, bool), ApiError> {
    match (one, many) {
        (Some(x), None) => Ok((vec![x], false)),
        (None, Some(v)) if !v.is_empty() => Ok((v, true)),
        _ => Err(ApiError::bad_request(
            S,
            format!("the body needs either \"{what}\" or a non-empty \"{what}s\""),
        )),
    }
}

/// Creates every item in order with `create`; on a failure, `undo`es the
/// ones made (a failed undo is logged) and answers the failure.
pub async fn create_all<I, T, C, CF, U, UF>(
    items: Vec<I>,
    mut create: C,
    mut undo: U,
) -> Result<Vec<T>, ApiError>
where
    C: FnMut(I) -> CF,
    CF: Future<Output = Result<T, ApiError>>,
    U: FnMut(&T) -> UF,
    UF: Future<Output = Result<(), ApiError>>,
{
    let mut made = Vec::with_capacity(items.len());
    for item in items {
        match create(item).await {
            Ok(t) => made.push(t),
            Err(e) => {
                for t in made.iter().rev() {
                    if let Err(u) = undo(t).await {
                        tracing::warn!(error = %u.message, "undoing a bulk create failed");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(made)
}

/// The 201 answer: `{what: view}` or `{whats: [views]}`.
pub fn created(what: &str, bulk: bool, mut views: Vec<Value>) -> Response {
    let body = if bulk {
        json!({ format!("{what}s"): views })
    } else {
        json!({ what: views.pop().unwrap_or(Value::Null) })
    };
    (StatusCode::CREATED, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_bulk_create_undoes_what_it_made() {
        let undone = std::sync::Mutex::new(Vec::new());
        let r = create_all(
            vec![1, 2, 3],
            |i| async move {
                if i == 3 {
                    Err(ApiError::bad_request(S, "three"))
                } else {
                    Ok(i * 10)
                }
            },
            |t| {
                undone.lock().unwrap().push(*t);
                async { Ok(()) }
            },
        )
        .await;
        assert_eq!(r.unwrap_err().message, "three");
        assert_eq!(*undone.lock().unwrap(), vec![20, 10]);
        let ok = create_all(
            vec![1, 2],
            |i| async move { Ok::<_, ApiError>(i) },
            |_| async { Ok(()) },
        )
        .await
        .unwrap();
        assert_eq!(ok, vec![1, 2]);
        assert!(items::<u8>(None, None, "network").is_err());
        assert_eq!(items(Some(1), None, "network").unwrap(), (vec![1], false));
    }
}
