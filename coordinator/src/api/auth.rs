//! Authentication and authorization of API calls (`auth = "token"`).
//!
//! With `auth = "token"` every gRPC call except `Tokens.Issue` passes
//! through [`layer`]: the bearer token is verified (missing, expired or
//! forged → `Unauthenticated`), the [`Action`] is derived from the gRPC
//! method (Get/List/Status/Download read; everything else mutates;
//! flavors/nodes/cluster/identity mutations and every `Nodes` and `Migrations` call are
//! cloud-admin only), the caller's role is checked against it
//! (`PermissionDenied`), and the claims are kept in a task-local for the
//! duration of the call. Handlers then scope every request to a project
//! with [`crate::validate::project`], which (under a caller) defaults an
//! empty project to the token's project and hides other projects
//! (`NotFound`, exactly like a missing resource). Listing across projects
//! (`all_projects`) is only honoured for cloud admins ([`may_see_all`]).
//!
//! With `auth = "none"` (development only: it needs `--insecure`) nothing
//! is checked.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use nubo_common::model::{AuditOutcome, UserName};
use nubo_common::ProjectId;
use nubo_identity::auth::{bearer_from_metadata, verify_token, SignerHandle};
use nubo_identity::{authorize, Action, TokenSigner};

use crate::caller::{self, Caller};
use nubo_store::Etcd;

/// Get/List/Status/Download methods only read.
fn is_read_method(method: &str) -> bool {
    ["Get", "List", "Status", "Download"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// The action a gRPC method path (`/nubo.v1.Servers/Create`) needs; `None`
/// for the unauthenticated `Tokens.Issue`.
pub fn action_for(path: &str) -> Option<Action> {
    let rest = path.trim_start_matches('/');
    let (service, method) = rest.split_once('/').unwrap_or((rest, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    if service == "Tokens" && method == "Issue" {
        return None;
    }
    let read = is_read_method(method);
    let kind: &'static str = match service {
        "Servers" => "servers",
        "Networks" => "networks",
        "Ports" => "ports",
        "SecurityGroups" => "security groups",
        "Keypairs" => "keypairs",
        "ServerGroups" => "server groups",
        "Routers" => "routers",
        "FloatingIps" => "floating ips",
        "Images" => "images",
        // Its own kind: the only thing the `node` role may read.
        "ImageData" => "image data",
        "ApplicationCredentials" => "application credentials",
        "Flavors" => "flavors",
        "Volumes" => "volumes",
        "VolumeTypes" => "volume types",
        "Nodes" => "nodes",
        "Migrations" => "migrations",
        "Cluster" => "cluster",
        "Identity" => "identity",
        "Quotas" => "quotas",
        "Audit" => "audit records",
        // Validate/Revoke: any authenticated user, on its own tokens (the
        // handler checks; admins on anyone's).
        "Tokens" => "tokens",
        // Anything unknown is treated as cloud administration.
        _ => "cloud",
    };
    let admin_only = match service {
        "Nodes" | "Migrations" | "Identity" | "Audit" => true,
        "Flavors" | "Cluster" | "Quotas" | "VolumeTypes" => !read,
        // The operator's tools to unstick a record (ResetStatus,
        // ResetSnapshotStatus, ForceDelete, ForceDeleteSnapshot,
        // ForceDetach).
        "Volumes" => method.starts_with("Reset") || method.starts_with("Force"),
        "Servers" | "Networks" | "Ports" | "SecurityGroups" | "Keypairs" | "ServerGroups"
        | "Images" | "ImageData" | "Routers" | "FloatingIps" => false,
        // Any authenticated user manages its own (handlers check the owner).
        "ApplicationCredentials" | "Tokens" => false,
        _ => true,
    };
    Some(if admin_only {
        Action::admin(kind)
    } else if read || service == "ApplicationCredentials" || service == "Tokens" {
        // A reader may make a credential with its (reader) role: creating
        // one is audited but needs no write role.
        Action::read(kind)
    } else {
        Action::mutate(kind)
    })
}

fn status_response(s: tonic::Status) -> Response {
    s.into_http::<axum::body::Body>()
}

/// What the authentication layer needs.
#[derive(Clone, Debug)]
pub struct AuthState {
    /// Verifies tokens.
    pub signer: SignerHandle,
    /// Where audit records go.
    pub store: Etcd,
    /// Tokens revoked before their expiry.
    pub revoked: nubo_identity::revocation::RevokedHandle,
}

/// "servers.create" for `/nubo.v1.Servers/Create`.
pub fn audit_action(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    let (service, method) = rest.split_once('/').unwrap_or((rest, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!(
        "{}.{}",
        service.to_ascii_lowercase(),
        method.to_ascii_lowercase()
    )
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Field 1 of an uncompressed unary gRPC message when it is a string (the
/// `ref` of get/delete/action requests, the `name` of creates).
pub fn first_string_field(frame: &[u8]) -> Option<String> {
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    let msg = &frame[5..];
    let mut i = 0;
    while i < msg.len() {
        let (key, n) = varint(&msg[i..])?;
        i += n;
        match key & 7 {
            0 => i += varint(&msg[i..])?.1,
            1 => i += 8,
            5 => i += 4,
            2 => {
                let (len, n) = varint(&msg[i..])?;
                i += n;
                let end = i.checked_add(usize::try_from(len).ok()?)?;
                if end > msg.len() {
                    return None;
                }
                if key >> 3 == 1 {
                    return String::from_utf8(msg[i..end].to_vec())
                        .ok()
                        .filter(|s| !s.is_empty());
                }
                i = end;
            }
            _ => return None,
        }
    }
    None
}

/// The outcome of a response (unary errors are "trailers-only": the
/// status is in the headers).
fn outcome_of(resp: &Response) -> AuditOutcome {
    let h = resp.headers();
    match h.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => AuditOutcome::Ok,
        Some(code) => {
            let code = code
                .parse::<i32>()
                .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                .unwrap_or_else(|_| code.to_string());
            let message = h
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            AuditOutcome::Error { code, message }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC metadata a front end passes its own request id in (the
/// OpenStack front end: what it answers in `x-openstack-request-id`).
pub const REQUEST_ID_HEADER: &str = "x-nubo-request-id";

/// The request id of a call: the caller's [`REQUEST_ID_HEADER`] when it
/// is a plausible id (1 to 64 of `[A-Za-z0-9_-]`), else a fresh one. Pure
/// but for the random id.
pub fn request_id_of(md: &tonic::metadata::MetadataMap) -> String {
    md.get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
}

/// Largest unary request buffered to read the resource name for the audit.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// Verifies one call, runs it with its [`Caller`] in scope and audits it
/// when it mutates.
async fn check(State(st): State<AuthState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(action) = action_for(&path) else {
        return next.run(req).await;
    };
    // Reads (also the admin-only ones) are not audited.
    let mutating = !is_read_method(path.rsplit('/').next().unwrap_or(""));
    // Unary mutations are small: read the name/ref for the audit record.
    let (req, resource) = if mutating && !path.ends_with("/Upload") {
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, MAX_BUFFERED).await {
            Ok(bytes) => {
                let name = first_string_field(&bytes);
                (
                    Request::from_parts(parts, axum::body::Body::from(bytes)),
                    name,
                )
            }
            Err(e) => {
                return status_response(tonic::Status::invalid_argument(format!(
                    "cannot read the request: {e}"
                )))
            }
        }
    } else {
        (req, None)
    };
    let md = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
    let request_id = request_id_of(&md);
    let claims = bearer_from_metadata(&md)
        .and_then(|t| verify_token(&st.signer, &st.revoked, t, chrono::Utc::now()));
    let audit = |user: Option<UserName>,
                 project: Option<ProjectId>,
                 acted_in: Option<ProjectId>,
                 outcome: AuditOutcome| {
        crate::operations::audit::record(
            &st.store,
            user,
            project,
            acted_in,
            audit_action(&path),
            action.kind,
            resource.clone(),
            outcome,
            request_id.clone(),
        )
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            let status: tonic::Status = e.into();
            if mutating {
                audit(
                    None,
                    None,
                    None,
                    AuditOutcome::Error {
                        code: format!("{:?}", status.code()),
                        message: status.message().to_string(),
                    },
                )
                .await;
            }
            return status_response(status);
        }
    };
    // The role check in the token's own project; the project of the
    // resource itself is checked by the handler (`validate::project`).
    if let Err(d) = authorize(&claims, action, &claims.project, false) {
        let status: tonic::Status = d.into();
        if mutating {
            audit(
                Some(claims.user.clone()),
                Some(claims.project.clone()),
                None,
                AuditOutcome::Error {
                    code: format!("{:?}", status.code()),
                    message: status.message().to_string(),
                },
            )
            .await;
        }
        return status_response(status);
    }
    let (user, project) = (claims.user.clone(), claims.project.clone());
    let c = Caller {
        claims,
        action,
        request_id: request_id.clone(),
    };
    let (resp, acted_in) = caller::run_as_noting(c, next.run(req)).await;
    if mutating {
        audit(Some(user), Some(project), acted_in, outcome_of(&resp)).await;
    }
    resp
}

/// Puts the authentication of [`check`] in front of every route.
pub fn layer(router: axum::Router, state: AuthState) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(state, check))
}

/// A new signer handle from a key set.
pub fn handle(signer: TokenSigner) -> SignerHandle {
    Arc::new(RwLock::new(signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_identity::Verb;

    #[test]
    fn first_field_and_names() {
        // field 1 (len-delimited) "vm", field 2 "p1"
        let msg = [0x0a, 2, b'v', b'm', 0x12, 2, b'p', b'1'];
        let mut frame = vec![0, 0, 0, 0, msg.len() as u8];
        frame.extend_from_slice(&msg);
        assert_eq!(first_string_field(&frame).as_deref(), Some("vm"));
        assert_eq!(first_string_field(&frame[..3]), None);
        assert_eq!(audit_action("/nubo.v1.Servers/Create"), "servers.create");
        assert_eq!(percent_decode("a%20b"), "a b");
    }

    #[test]
    fn actions_of_methods() {
        assert_eq!(action_for("/nubo.v1.Tokens/Issue"), None);
        assert!(action_for("/nubo.v1.Tokens/Revoke").is_some());
        let a = action_for("/nubo.v1.Servers/Create").unwrap();
        assert_eq!((a.verb, a.kind), (Verb::Mutate, "servers"));
        let a = action_for("/nubo.v1.Servers/List").unwrap();
        assert_eq!(a.verb, Verb::Read);
        assert_eq!(
            action_for("/nubo.v1.Flavors/Create").unwrap().verb,
            Verb::Admin
        );
        assert_eq!(action_for("/nubo.v1.Flavors/Get").unwrap().verb, Verb::Read);
        assert_eq!(action_for("/nubo.v1.Nodes/List").unwrap().verb, Verb::Admin);
        assert_eq!(
            action_for("/nubo.v1.Migrations/Get").unwrap().verb,
            Verb::Admin
        );
        assert_eq!(action_for("/x.Unknown/Get").unwrap().verb, Verb::Admin);
    }
}
