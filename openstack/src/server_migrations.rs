//! Nova's migrations over nubo's `Migrations` (cloud admins only, in nubo
//! as in Nova): the server actions `migrate` (cold) and `os-migrateLive`
//! (`Migrations.Create`, the destination `host` or the scheduler's
//! choice) and `GET /os-migrations` (`Migrations.List`, newest first).
//! Nova 2.1 gives migrations integer ids; nubo's are UUIDs, so the id is a
//! stable 31-bit hash of it (as [`crate::hypervisors::node_id`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::error::{ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// The routes (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new().route("/v2.1/os-migrations", get(list))
}

/// Nova's status of a nubo migration state. Pure.
pub fn nova_status(state: &str) -> &'static str {
    match state {
        "preparing" => "preparing",
        "migrating" | "switching" => "running",
        "completed" => "completed",
        "aborting" => "cancelling",
        "aborted" => "cancelled",
        _ => "error",
    }
}

/// A migration as Nova 2.1 lists it. Pure.
pub fn migration_view(m: &pb::Migration) -> Value {
    let updated = if m.updated_at.is_empty() {
        Value::Null
    } else {
        json!(crate::time::iso_utc(&m.updated_at))
    };
    json!({
        "id": crate::hypervisors::node_id(&m.id),
        "status": nova_status(&m.state),
        "instance_uuid": m.server_id,
        "source_node": m.source,
        "source_compute": m.source,
        "dest_node": m.destination,
        "dest_compute": m.destination,
        "dest_host": m.destination,
        "old_instance_type_id": Value::Null,
        "new_instance_type_id": Value::Null,
        "created_at": crate::time::iso_utc(&m.created_at),
        "updated_at": updated,
    })
}

/// `GET /os-migrations`: every migration (`Migrations.List` to the end).
async fn list(State(up): State<Upstream>, headers: HeaderMap) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let client = up.migrations(&headers)?;
    let all = crate::upstream::all_pages(|token| {
        let mut c = client.clone();
        async move {
            let r = c
                .list(pb::ListMigrationsRequest {
                    page_size: crate::upstream::PAGE_SIZE,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.migrations, r.next_page_token))
        }
    })
    .await
    .api(S)?;
    let views: Vec<Value> = all.iter().map(migration_view).collect();
    Ok(versioned(Json(json!({ "migrations": views }))))
}

/// The `Migrations.Create` request of a `migrate` (`null`, `{}` or
/// `{"host": …}`) or `os-migrateLive` (`host` null or a node;
/// `block_migration` and `disk_over_commit` are taken and left to nubo,
/// which copies local disks when the server has any) body. Pure.
pub fn create_request(
    server: &str,
    live: bool,
    args: &Value,
) -> Result<pb::CreateMigrationRequest, ApiError> {
    let mut host = String::new();
    match args {
        Value::Null => {}
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("host", Value::Null) => {}
                    ("host", Value::String(h)) => host = h.clone(),
                    ("block_migration" | "disk_over_commit", _) if live => {}
                    (k, v) => {
                        return Err(ApiError::bad_request(
                            S,
                            format!("{k} = {v} is not supported by nubo's migrations (host is)"),
                        ))
                    }
                }
            }
        }
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("a migration takes null or an object, got {other}"),
            ))
        }
    }
    if live && !matches!(args, Value::Object(o) if o.contains_key("host")) {
        return Err(ApiError::bad_request(
            S,
            "os-migrateLive needs host (a node, or null for the scheduler's choice)",
        ));
    }
    Ok(pb::CreateMigrationRequest {
        r#ref: server.to_string(),
        project: String::new(),
        live,
        host,
    })
}

/// Runs a `migrate` / `os-migrateLive` action (202 when started).
pub(crate) async fn migrate(
    up: &Upstream,
    headers: &HeaderMap,
    server: &str,
    live: bool,
    args: &Value,
) -> Result<(), ApiError> {
    let req = create_request(server, live, args)?;
    up.migrations(headers)?.create(req).await.api(S)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_bodies_become_migrations() {
        let r = create_request("s1", false, &Value::Null).unwrap();
        assert_eq!((r.live, r.host.as_str()), (false, ""));
        let r = create_request(
            "s1",
            true,
            &json!({"host": "hv2", "block_migration": "auto", "disk_over_commit": false}),
        )
        .unwrap();
        assert_eq!((r.live, r.host.as_str()), (true, "hv2"));
        assert!(create_request("s1", true, &json!({"block_migration": false})).is_err());
        assert!(create_request("s1", false, &json!({"block_migration": false})).is_err());
        assert!(create_request("s1", false, &json!([1])).is_err());
        let m = pb::Migration {
            id: "m".into(),
            state: "switching".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        let v = migration_view(&m);
        assert_eq!(
            (v["status"].as_str(), v["updated_at"].is_null()),
            (Some("running"), true)
        );
    }
}
