//! Nova's flavor management (cloud admins, as in Nova): `POST /flavors`
//! (`Flavors.Create`), `DELETE /flavors/{id}` (`Flavors.Delete`) and the
//! access lists of private flavors (`os-flavor-access`,
//! `addTenantAccess`/`removeTenantAccess`: `Flavors.AddAccess` /
//! `RemoveAccess`).
//!
//! A nubo flavor is keyed by its name, which is its OpenStack id; a
//! flavor made here keeps Nova's `id` as that name (a generated UUID when
//! the body has none, as Nova) and Nova's `name` as its display name.
//! What nubo flavors do not have is refused with a 400 naming it, never
//! dropped: swap, ephemeral disks and an `rxtx_factor` other than 1.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// An integer field of a flavor body: a JSON integer or a string of one,
/// as Nova's schema. Pure.
fn int_field(o: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    let bad = |v: &Value| {
        ApiError::bad_request(
            S,
            format!("Invalid input for field/attribute {key}. Value: {v}. is not a non-negative integer"),
        )
    };
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(v)),
        Some(v @ Value::String(t)) => t.trim().parse::<u64>().map(Some).map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// The `Flavors.Create` request of a Nova `POST /flavors` body; `new_id`
/// is the id given to a flavor whose body has none. Pure.
pub fn create_request(body: &Value, new_id: &str) -> Result<pb::CreateFlavorRequest, ApiError> {
    let o = body
        .get("flavor")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request(S, "the body needs a flavor object"))?;
    let name = match o.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        other => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "a flavor needs a name, got {}",
                    other.unwrap_or(&Value::Null)
                ),
            ))
        }
    };
    let id = match o.get("id") {
        None | Some(Value::Null) => new_id.to_string(),
        Some(Value::String(i)) if !i.trim().is_empty() => i.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(v) => {
            return Err(ApiError::bad_request(
                S,
                format!("Invalid input for field/attribute id. Value: {v}."),
            ))
        }
    };
    let need = |key: &str| -> Result<u64, ApiError> {
        int_field(o, key)?.ok_or_else(|| ApiError::bad_request(S, format!("a flavor needs {key}")))
    };
    let (ram, vcpus, disk) = (need("ram")?, need("vcpus")?, need("disk")?);
    let vcpus = u32::try_from(vcpus)
        .map_err(|_| ApiError::bad_request(S, format!("vcpus {vcpus} is too large")))?;
    for key in ["swap", "OS-FLV-EXT-DATA:ephemeral"] {
        let given = match o.get(key) {
            Some(Value::String(s)) if s.is_empty() => None,
            _ => int_field(o, key)?,
        };
        if given.unwrap_or(0) != 0 {
            return Err(ApiError::bad_request(
                S,
                format!("{key}: nubo flavors have no swap or ephemeral disk (only the root disk)"),
            ));
        }
    }
    if let Some(r) = o.get("rxtx_factor").filter(|v| !v.is_null()) {
        if r.as_f64() != Some(1.0) {
            return Err(ApiError::bad_request(
                S,
                format!("rxtx_factor {r}: nubo flavors have no bandwidth factor (only 1.0)"),
            ));
        }
    }
    let private = match o.get("os-flavor-access:is_public").filter(|v| !v.is_null()) {
        None => false,
        Some(p) => !crate::compute::truthy(p).ok_or_else(|| {
            ApiError::bad_request(
                S,
                format!("os-flavor-access:is_public {p} is not a boolean"),
            )
        })?,
    };
    if let Some(k) = o.keys().find(|k| {
        !matches!(
            k.as_str(),
            "name"
                | "id"
                | "ram"
                | "vcpus"
                | "disk"
                | "swap"
                | "OS-FLV-EXT-DATA:ephemeral"
                | "rxtx_factor"
                | "os-flavor-access:is_public"
                | "description"
        )
    }) {
        return Err(ApiError::bad_request(
            S,
            format!("Additional properties are not allowed ({k} was unexpected)"),
        ));
    }
    Ok(pb::CreateFlavorRequest {
        display_name: if name == id { String::new() } else { name },
        name: id,
        vcpus,
        ram_mb: ram,
        disk_gb: disk,
        private,
    })
}

/// Nova's `flavor_access` list of a flavor: one entry per project it is
/// shared with. Pure.
pub fn access_view(f: &pb::Flavor) -> Value {
    let list: Vec<Value> = f
        .access_projects
        .iter()
        .map(|p| json!({"flavor_id": f.name, "tenant_id": p}))
        .collect();
    json!({"flavor_access": list})
}

/// `GET /flavors/{id}/os-flavor-access`: whom a private flavor is shared
/// with (`Flavors.Get`; only cloud admins see the list); a public flavor
/// has none: 404, as Nova.
pub async fn access_list(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let f = up
        .flavors(&headers)?
        .get(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner();
    if !f.private {
        return Err(ApiError::not_found(
            S,
            "Access list not available for public flavors.",
        ));
    }
    Ok(versioned(Json(access_view(&f))))
}

/// `POST /flavors/{id}/action` `addTenantAccess` / `removeTenantAccess`
/// (`{"tenant": project}`): `Flavors.AddAccess` / `RemoveAccess` (a
/// public flavor or a project added twice 409, one not there 404);
/// answers the new list.
pub async fn action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let (add, inner) = match (body.get("addTenantAccess"), body.get("removeTenantAccess")) {
        (Some(a), None) => (true, a),
        (None, Some(r)) => (false, r),
        _ => {
            return Err(ApiError::bad_request(
                S,
                "a flavor action is addTenantAccess or removeTenantAccess",
            ))
        }
    };
    let project = inner
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(S, "the action needs a tenant (a project id)"))?
        .to_string();
    let req = pb::FlavorAccessRequest {
        flavor: id,
        project,
    };
    let mut c = up.flavors(&headers)?;
    let f = if add {
        c.add_access(req).await
    } else {
        c.remove_access(req).await
    }
    .api(S)?
    .into_inner();
    Ok(versioned(Json(access_view(&f))))
}

/// `POST /flavors` (200 with the flavor, as Nova).
pub async fn create(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let req = create_request(&body, &uuid::Uuid::new_v4().to_string())?;
    let f = up.flavors(&headers)?.create(req).await.api(S)?.into_inner();
    Ok(versioned(Json(
        json!({"flavor": crate::compute::flavor_view(&up.public_url, &f)}),
    )))
}

/// `DELETE /flavors/{id}` (202, as Nova).
pub async fn delete(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    up.flavors(&headers)?
        .delete(crate::upstream::delete_req(id))
        .await
        .api(S)?;
    Ok(versioned(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_flavor_bodies_become_nubo_flavors() {
        let r = create_request(
            &json!({"flavor": {"name": "small", "id": 1234, "ram": "1024", "vcpus": 1, "disk": 10,
                "os-flavor-access:is_public": "True", "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0, "rxtx_factor": 1.0}}),
            "generated",
        )
        .unwrap();
        assert_eq!(
            (
                r.name.as_str(),
                r.display_name.as_str(),
                r.ram_mb,
                r.vcpus,
                r.disk_gb
            ),
            ("1234", "small", 1024, 1, 10)
        );
        let r = create_request(
            &json!({"flavor": {"name": "x", "id": null, "ram": 64, "vcpus": 1, "disk": 0}}),
            "generated",
        )
        .unwrap();
        assert_eq!(r.name, "generated");
        assert!(!r.private);
        let r = create_request(
            &json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 0, "os-flavor-access:is_public": "False"}}),
            "g",
        )
        .unwrap();
        assert!(r.private);
        let f = pb::Flavor {
            name: "g".into(),
            private: true,
            access_projects: vec!["p1".into()],
            ..Default::default()
        };
        assert_eq!(
            access_view(&f),
            json!({"flavor_access": [{"flavor_id": "g", "tenant_id": "p1"}]})
        );
        for bad in [
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 1, "swap": 1024}}),
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 1, "OS-FLV-EXT-DATA:ephemeral": 10}}),
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 1, "rxtx_factor": 2.0}}),
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 1, "os-flavor-access:is_public": "maybe"}}),
            json!({"flavor": {"name": "x", "ram": -1, "vcpus": 1, "disk": 1}}),
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1}}),
            json!({"flavor": {"ram": 64, "vcpus": 1, "disk": 1}}),
            json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 1, "bogus": 1}}),
        ] {
            let e = create_request(&bad, "g").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
