//! Server actions of Compute v2.1: `POST /servers/{id}/action` (start,
//! stop, reboot, rebuild, resize, confirmResize, revertResize (nubo's
//! `Servers.Resize`/`ConfirmResize`/`RevertResize`), lock, unlock,
//! os-getConsoleOutput; forceDelete
//! and restore answered for what nubo is: no soft delete) and
//! `os-instance-actions` (what was done to a server, from nubo's
//! per-server record, `Servers.ListActions`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use nubo_common::proto as pb;
use serde_json::{json, Value};

use crate::compute::{get_server, last_segment, update_view};
use crate::error::{json_body, ApiError, Service, StatusExt};
use crate::microversion::{microversion, versioned};
use crate::Upstream;

const S: Service = Service::Compute;

/// `/compute/v2.1/servers/{id}/action` and `…/os-instance-actions…`
/// (merged into the compute router).
pub fn router() -> Router<Upstream> {
    Router::new()
        .route("/v2.1/servers/{id}/action", post(server_action))
        .route("/v2.1/servers/{id}/os-instance-actions", get(list_actions))
        .route(
            "/v2.1/servers/{id}/os-instance-actions/{request_id}",
            get(show_action),
        )
}

/// One action as Nova 2.1 lists it (no events: nubo records none). Pure.
pub fn action_view(server_id: &str, a: &pb::ServerAction) -> Value {
    json!({
        "action": a.action,
        "instance_uuid": server_id,
        "message": Value::Null,
        "project_id": a.project,
        "request_id": a.request_id,
        "start_time": a.start_time,
        "user_id": a.user,
    })
}

async fn actions_of(
    up: &Upstream,
    headers: &HeaderMap,
    id: String,
) -> Result<pb::ListServerActionsResponse, ApiError> {
    microversion(headers)?;
    Ok(up
        .servers(headers)?
        .list_actions(crate::upstream::get_req(id))
        .await
        .api(S)?
        .into_inner())
}

/// `GET /servers/{id}/os-instance-actions`: newest first, as Nova.
async fn list_actions(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = actions_of(&up, &headers, id).await?;
    let views: Vec<Value> = r
        .actions
        .iter()
        .rev()
        .map(|a| action_view(&r.server_id, a))
        .collect();
    Ok(versioned(Json(json!({"instanceActions": views}))))
}

/// `GET /servers/{id}/os-instance-actions/{request_id}`: 404 when the
/// server has no action of that request.
async fn show_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let r = actions_of(&up, &headers, id).await?;
    let a = r
        .actions
        .iter()
        .find(|a| a.request_id == request_id)
        .ok_or_else(|| {
            ApiError::not_found(
                S,
                format!(
                    "Action for request_id {request_id} on instance {} not found",
                    r.server_id
                ),
            )
        })?;
    Ok(versioned(Json(
        json!({"instanceAction": action_view(&r.server_id, a)}),
    )))
}

async fn server_action(
    State(up): State<Upstream>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    microversion(&headers)?;
    let body = json_body(S, body)?;
    let action = body
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .ok_or_else(|| ApiError::bad_request(S, "an action body is an object with one key"))?;
    let mut c = up.servers(&headers)?;
    if action == "os-getConsoleOutput" {
        let length = console_length(&body[action.as_str()])?;
        let mut stream = c
            .console(pb::ConsoleRequest {
                r#ref: id,
                project: String::new(),
                follow: false,
            })
            .await
            .api(S)?
            .into_inner();
        let mut log: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.message().await.api(S)? {
            log.extend_from_slice(&chunk.data);
            // Keep the tail only: the output is the log's last lines.
            if log.len() > 2 * MAX_CONSOLE_OUTPUT {
                log.drain(..log.len() - MAX_CONSOLE_OUTPUT);
            }
        }
        let text = String::from_utf8_lossy(&log);
        return Ok(versioned(Json(
            json!({"output": last_lines(&text, length)}),
        )));
    }
    let req = pb::ServerActionRequest {
        r#ref: id.clone(),
        project: String::new(),
    };
    match action.as_str() {
        "os-start" => c.start(req).await.api(S).map(drop),
        "os-stop" => c.stop(req).await.api(S).map(drop),
        "reboot" => c.reboot(req).await.api(S).map(drop),
        "lock" => {
            let reason = lock_reason(&body["lock"])?;
            c.lock(pb::LockServerRequest {
                r#ref: id,
                project: String::new(),
                reason,
            })
            .await
            .api(S)
            .map(drop)
        }
        "unlock" => c.unlock(req).await.api(S).map(drop),
        // Cloud admins: the coordinator checks the caller and the state.
        "os-resetState" => {
            let state = reset_state_of(&body["os-resetState"])?;
            c.reset_state(pb::ResetServerStateRequest {
                r#ref: id,
                project: String::new(),
                state,
            })
            .await
            .api(S)
            .map(drop)
        }
        // Nothing to inject: agents serve a server's network from DHCP and
        // metadata, always current (Servers.InjectNetworkInfo checks the
        // caller and the server, and changes nothing).
        "injectNetworkInfo" => c.inject_network_info(req).await.api(S).map(drop),
        "resize" => {
            let flavor = resize_flavor(&body["resize"])?;
            // A missing server is a 404; a missing flavor a 400 (Nova).
            get_server(&up, &headers, id.clone()).await?;
            match c
                .resize(pb::ResizeServerRequest {
                    r#ref: id,
                    project: String::new(),
                    flavor,
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code() == tonic::Code::NotFound => {
                    Err(ApiError::bad_request(S, e.message().to_string()))
                }
                Err(e) => Err::<(), _>(e).api(S),
            }
        }
        // Nova answers 204 to confirmResize and 202 to revertResize.
        "confirmResize" => {
            c.confirm_resize(req).await.api(S)?;
            return Ok(versioned(StatusCode::NO_CONTENT));
        }
        "revertResize" => c.revert_resize(req).await.api(S).map(drop),
        "addSecurityGroup" | "removeSecurityGroup" => {
            let add = action == "addSecurityGroup";
            crate::server_secgroups::change(&mut c, id, add, &body[action.as_str()]).await
        }
        "createImage" => {
            return crate::server_image::create_image(
                &mut c,
                &up.public_url,
                &id,
                &body[action.as_str()],
            )
            .await;
        }
        "rebuild" => {
            let rb = rebuild_request(&id, &body["rebuild"])?;
            let s = c.rebuild(rb).await.api(S)?.into_inner();
            return Ok(versioned((
                StatusCode::ACCEPTED,
                Json(json!({"server": update_view(&up.public_url, &s)})),
            )));
        }
        "migrate" | "os-migrateLive" => {
            let live = action == "os-migrateLive";
            crate::server_migrations::migrate(&up, &headers, &id, live, &body[action.as_str()])
                .await
        }
        // nubo deletes at once (no soft delete): nothing to force or to
        // restore. The server must exist (404 otherwise, as Nova).
        "forceDelete" | "restore" => {
            get_server(&up, &headers, id).await?;
            Err(ApiError::new(
                S,
                StatusCode::CONFLICT,
                format!("{action}: nubo has no soft delete (a deleted server is gone at once), so there is no deleted server to force or restore"),
            ))
        }
        other => {
            // An action on a server that does not exist is a 404 first.
            get_server(&up, &headers, id).await?;
            Err(ApiError::new(
                S,
                StatusCode::NOT_IMPLEMENTED,
                format!("server action {other:?} is not supported (os-start, os-stop, reboot, rebuild, resize, confirmResize, revertResize, lock, unlock, addSecurityGroup, removeSecurityGroup, os-getConsoleOutput, createImage, migrate, os-migrateLive, os-resetState, injectNetworkInfo are; docs/openstack-compatibility.md)"),
            ))
        }
    }?;
    Ok(versioned(StatusCode::ACCEPTED))
}

/// The `state` of an `os-resetState` body: a string (Nova's schema; the
/// coordinator says which values it takes), anything else 400. Pure.
fn reset_state_of(v: &Value) -> Result<String, ApiError> {
    v.get("state")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(S, "os-resetState takes {\"state\": \"error\" | \"active\"}")
        })
}

/// The `Servers.Rebuild` request of a Nova `rebuild` action: `imageRef`
/// (required), `name`, `metadata` (replaces the server's); `adminPass` is
/// accepted and not applied (nubo sets no guest passwords, as Nova without
/// password injection); `OS-DCF:diskConfig` only `MANUAL`; anything else
/// nubo cannot honour (personality, key_name, user_data, …) is a 400.
/// Pure.
fn rebuild_request(id: &str, args: &Value) -> Result<pb::RebuildServerRequest, ApiError> {
    let o = args
        .as_object()
        .ok_or_else(|| ApiError::bad_request(S, "rebuild takes an object"))?;
    let mut req = pb::RebuildServerRequest {
        r#ref: id.to_string(),
        ..Default::default()
    };
    for (k, v) in o {
        match (k.as_str(), v) {
            ("imageRef", Value::String(i)) => req.image = last_segment(i),
            ("name", Value::String(n)) => req.name = Some(n.clone()),
            ("metadata", Value::Object(m)) => {
                req.metadata = crate::server_metadata::string_map("metadata", m)?
                    .into_iter()
                    .collect();
                req.replace_metadata = true;
            }
            ("adminPass", Value::String(_)) | ("preserve_ephemeral", Value::Bool(false)) => {}
            ("OS-DCF:diskConfig", Value::String(d)) if d == "MANUAL" => {}
            ("accessIPv4" | "accessIPv6", Value::String(a)) if a.is_empty() => {}
            (k, v) => {
                return Err(ApiError::bad_request(
                    S,
                    format!("rebuild: {k} = {v} is not supported by nubo (imageRef, name, metadata and adminPass are)"),
                ))
            }
        }
    }
    if req.image.is_empty() {
        return Err(ApiError::bad_request(S, "rebuild needs imageRef"));
    }
    Ok(req)
}

/// The flavor of a `resize` action body (`{"flavorRef": "…"}`, an id or
/// a link; `OS-DCF:diskConfig` only `MANUAL`, as nubo's servers are).
/// Pure.
fn resize_flavor(args: &Value) -> Result<String, ApiError> {
    let o = args
        .as_object()
        .ok_or_else(|| ApiError::bad_request(S, "resize takes an object with flavorRef"))?;
    for (k, v) in o {
        match (k.as_str(), v) {
            ("flavorRef", _) => {}
            ("OS-DCF:diskConfig", Value::String(d)) if d == "MANUAL" => {}
            (k, v) => {
                return Err(ApiError::bad_request(
                    S,
                    format!("resize: {k} = {v} is not supported by nubo (flavorRef is)"),
                ))
            }
        }
    }
    match o.get("flavorRef") {
        Some(Value::String(f)) if !f.trim().is_empty() => Ok(last_segment(f.trim())),
        Some(Value::Number(n)) => Ok(n.to_string()),
        other => Err(ApiError::bad_request(
            S,
            format!(
                "resize needs flavorRef (a flavor id), got {}",
                other.unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// The reason of a `lock` action body (`null`, `{}` or
/// `{"locked_reason": "…"}`; the reason is Nova 2.73's, taken at any
/// microversion). Pure.
fn lock_reason(args: &Value) -> Result<String, ApiError> {
    match args {
        Value::Null => Ok(String::new()),
        Value::Object(o) => match o.get("locked_reason") {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(r)) => Ok(r.clone()),
            Some(other) => Err(ApiError::bad_request(
                S,
                format!("locked_reason must be a string, got {other}"),
            )),
        },
        other => Err(ApiError::bad_request(
            S,
            format!("lock takes null or an object, got {other}"),
        )),
    }
}

/// Most console log bytes `os-getConsoleOutput` answers (its tail).
const MAX_CONSOLE_OUTPUT: usize = 1 << 20;

/// The `length` of an `os-getConsoleOutput` body (`{"length": N}`; N an
/// integer or a string of one, as Nova's schema; absent, null or -1: all).
/// Pure.
fn console_length(args: &Value) -> Result<Option<usize>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            S,
            format!("os-getConsoleOutput length must be an integer (-1: all), got {args}"),
        )
    };
    let n: i64 = match args.get("length") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad)?,
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    match n {
        -1 => Ok(None),
        n if n < 0 => Err(bad()),
        n => Ok(Some(usize::try_from(n).map_err(|_| bad())?)),
    }
}

/// The tail of `text` as Nova's `length` takes it (all with `None`): the
/// last `n` pieces of `text` split at newlines, joined again — a log
/// ending in a newline gives its last `n - 1` lines and that newline, so
/// the answer always splits into `n` pieces. Pure.
fn last_lines(text: &str, n: Option<usize>) -> String {
    match n {
        None => text.to_string(),
        Some(0) => String::new(),
        Some(n) => {
            let pieces: Vec<&str> = text.split('\n').collect();
            pieces[pieces.len().saturating_sub(n)..].join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::nova_status;

    #[test]
    fn a_rebuild_maps_image_name_and_metadata_and_refuses_the_rest() {
        let r = rebuild_request(
            "s",
            &json!({"imageRef": "http://x/images/img-2", "name": "n",
                "metadata": {"k": "v"}, "adminPass": "p"}),
        )
        .unwrap();
        assert_eq!(
            (r.image.as_str(), r.name.as_deref(), r.replace_metadata),
            ("img-2", Some("n"), true)
        );
        assert_eq!(r.metadata.get("k").map(String::as_str), Some("v"));
        let r = rebuild_request("s", &json!({"imageRef": "i"})).unwrap();
        assert!(!r.replace_metadata && r.name.is_none());
        for bad in [
            json!({}),
            json!({"imageRef": "i", "personality": []}),
            json!({"imageRef": "i", "preserve_ephemeral": true}),
            json!("i"),
        ] {
            assert_eq!(
                rebuild_request("s", &bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(nova_status("rebuilding", "running").0, "REBUILD");
    }

    #[test]
    fn a_resize_takes_a_flavor_ref_and_refuses_the_rest() {
        assert_eq!(resize_flavor(&json!({"flavorRef": "m2"})).unwrap(), "m2");
        assert_eq!(
            resize_flavor(
                &json!({"flavorRef": "https://h/compute/flavors/m2", "OS-DCF:diskConfig": "MANUAL"})
            )
            .unwrap(),
            "m2"
        );
        assert_eq!(resize_flavor(&json!({"flavorRef": 7})).unwrap(), "7");
        for bad in [
            json!({"flavorRef": null}),
            json!({"flavorRef": ""}),
            json!({}),
            json!(null),
            json!({"flavorRef": "m2", "OS-DCF:diskConfig": "AUTO"}),
        ] {
            let e = resize_flavor(&bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn a_pending_resize_shows_resize_then_verify_resize_unless_in_error() {
        use crate::compute::{server_status, server_view, task_state};
        let mut s = pb::Server {
            state: "running".into(),
            desired_power: "running".into(),
            ..Default::default()
        };
        assert_eq!(server_status(&s).0, "ACTIVE");
        assert_eq!(task_state(server_status(&s).0), None);
        // Not applied yet: RESIZE (task resize_finish), also while the
        // guest is shut down for its redefinition.
        s.resized_from = "m1".into();
        s.resize_phase = "resizing".into();
        assert_eq!(server_status(&s), ("RESIZE", "active", 1));
        s.state = "stopped".into();
        assert_eq!(server_status(&s), ("RESIZE", "active", 4));
        let v = server_view("https://x", &s);
        assert_eq!(v["status"], "RESIZE");
        assert_eq!(v["OS-EXT-STS:task_state"], "resize_finish");
        // Applied: VERIFY_RESIZE, no task.
        s.state = "running".into();
        s.resize_phase = "verify".into();
        assert_eq!(server_status(&s), ("VERIFY_RESIZE", "resized", 1));
        let v = server_view("https://x", &s);
        assert_eq!(v["OS-EXT-STS:task_state"], Value::Null);
        s.state = "stopped".into();
        s.desired_power = "stopped".into();
        assert_eq!(server_status(&s), ("VERIFY_RESIZE", "resized", 4));
        s.resize_phase = "resizing".into();
        assert_eq!(server_status(&s), ("RESIZE", "stopped", 4));
        // Reverted, the old size not back yet: REVERT_RESIZE.
        s.resized_from = String::new();
        s.resize_phase = "reverting".into();
        assert_eq!(server_status(&s), ("REVERT_RESIZE", "resized", 4));
        let v = server_view("https://x", &s);
        assert_eq!(v["OS-EXT-STS:task_state"], "resize_reverting");
        s.state = "error".into();
        assert_eq!(server_status(&s).0, "ERROR");
    }

    #[test]
    fn lock_reasons_are_null_or_a_string() {
        assert_eq!(lock_reason(&Value::Null).unwrap(), "");
        assert_eq!(lock_reason(&json!({})).unwrap(), "");
        assert_eq!(
            lock_reason(&json!({"locked_reason": "audit"})).unwrap(),
            "audit"
        );
        assert!(lock_reason(&json!({"locked_reason": 3})).is_err());
        assert!(lock_reason(&json!("x")).is_err());
    }

    #[test]
    fn console_output_is_the_logs_last_lines() {
        // As Nova: the last pieces between newlines.
        let log = "one\ntwo\nthree\n";
        assert_eq!(last_lines(log, Some(3)), "two\nthree\n");
        assert_eq!(last_lines(log, Some(3)).split('\n').count(), 3);
        assert_eq!(last_lines(log, Some(2)), "three\n");
        assert_eq!(last_lines("one\ntwo", Some(1)), "two");
        assert_eq!(last_lines(log, Some(0)), "");
        assert_eq!(last_lines(log, Some(9)), log);
        assert_eq!(last_lines(log, None), log);
        assert_eq!(console_length(&json!({"length": 3})).unwrap(), Some(3));
        assert_eq!(console_length(&json!({"length": "3"})).unwrap(), Some(3));
        assert_eq!(console_length(&json!({"length": -1})).unwrap(), None);
        assert_eq!(console_length(&json!({})).unwrap(), None);
        assert_eq!(console_length(&Value::Null).unwrap(), None);
        for bad in [
            json!({"length": -2}),
            json!({"length": "x"}),
            json!({"length": [1]}),
        ] {
            assert!(console_length(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn actions_show_as_nova_lists_them() {
        let a = pb::ServerAction {
            action: "create".into(),
            request_id: "req-1".into(),
            user: "alice".into(),
            project: "p".into(),
            start_time: "2026-12-05T10:00:00Z".into(),
        };
        let v = action_view("s-1", &a);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "action",
                "instance_uuid",
                "message",
                "project_id",
                "request_id",
                "start_time",
                "user_id"
            ]
        );
        assert_eq!(
            (v["instance_uuid"].as_str(), v["message"].is_null()),
            (Some("s-1"), true)
        );
    }
}
