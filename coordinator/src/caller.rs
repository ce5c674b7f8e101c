//! Who is calling: the authenticated caller of the operation being served
//! (`auth = "token"`), kept in a task-local for the duration of the call by
//! the front end that authenticated it (the gRPC layer in
//! [`crate::auth`]). Operations scope every request to a project with
//! [`scope`] (through [`crate::validate::project`]); with `auth = "none"`
//! there is no caller and nothing is checked.

use std::future::Future;
use std::sync::{Arc, Mutex};

use nubo_common::model::Role;
use nubo_common::ProjectId;
use nubo_identity::{authorize, Action, Claims, Denied};

use crate::error::{ApiError, ApiResult};

/// The authenticated caller of the current call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Verified token claims.
    pub claims: Claims,
    /// What the called method needs.
    pub action: Action,
    /// The call's request id (the audit record's; a front end may pass
    /// its own, see [`crate::api::auth::request_id_of`]).
    pub request_id: String,
}

tokio::task_local! {
    static CALLER: Caller;
    static ACTING_IN: Arc<Mutex<Option<ProjectId>>>;
}

/// The caller of the call being served (None with `auth = "none"`, and
/// outside request handling).
pub fn caller() -> Option<Caller> {
    CALLER.try_with(|c| c.clone()).ok()
}

/// The user name of the current caller, if any (for logs and audit).
pub fn caller_name() -> Option<String> {
    CALLER.try_with(|c| c.claims.user.to_string()).ok()
}

/// The request id of the current call, if any.
pub fn request_id() -> Option<String> {
    CALLER.try_with(|c| c.request_id.clone()).ok()
}

/// True when the current call may list across every project: always with
/// `auth = "none"`, otherwise only for a cloud admin.
pub fn may_see_all() -> bool {
    is_cloud_admin()
}

/// True when the current caller is a cloud admin (always with
/// `auth = "none"`): what admin-only fields of a request need (provider,
/// external and shared networks).
pub fn is_cloud_admin() -> bool {
    CALLER
        .try_with(|c| c.claims.has(Role::Admin))
        .unwrap_or(true)
}

/// Maps an authorization refusal onto the API error.
pub fn denied(d: Denied) -> ApiError {
    match d {
        Denied::Hidden { .. } => ApiError::NotFound(d.to_string()),
        _ => ApiError::PermissionDenied(d.to_string()),
    }
}

/// The project a request is scoped to. `requested` is the request's
/// `project` field (may be empty). Without a caller this is
/// `default_project` for an empty field; with one, the token's project,
/// and the caller must be allowed the call's action there.
pub fn scope(requested: &str, default_project: impl FnOnce() -> ProjectId) -> ApiResult<ProjectId> {
    let c = caller();
    let p = match (&c, requested.is_empty()) {
        (None, true) => return Ok(default_project()),
        (Some(c), true) => c.claims.project.clone(),
        (_, false) => {
            ProjectId::new(requested).map_err(|e| ApiError::InvalidArgument(e.to_string()))?
        }
    };
    if let Some(c) = c {
        authorize(&c.claims, c.action, &p, false).map_err(denied)?;
    }
    Ok(p)
}

/// Runs `f` as `c`: [`caller`] returns it inside.
pub async fn run_as<F: Future>(c: Caller, f: F) -> F::Output {
    CALLER.scope(c, f).await
}

/// Runs `f` as `c` like [`run_as`], and returns with its output the
/// project a cloud admin acted in for another project's resource (noted
/// by [`note_acting_in`]), for the audit record.
pub async fn run_as_noting<F: Future>(c: Caller, f: F) -> (F::Output, Option<ProjectId>) {
    let cell = Arc::new(Mutex::new(None));
    let out = ACTING_IN.scope(cell.clone(), run_as(c, f)).await;
    let acted = cell.lock().ok().and_then(|mut g| g.take());
    (out, acted)
}

/// Notes that the current call acts in `project`, another project's than
/// the caller's (a cloud admin acting on a resource by id; see
/// [`crate::operations::lookup::acting_project`]). Outside
/// [`run_as_noting`] it does nothing.
pub fn note_acting_in(project: &ProjectId) {
    let _ = ACTING_IN.try_with(|cell| {
        if let Ok(mut g) = cell.lock() {
            *g = Some(project.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_caller_means_no_checks() {
        assert!(may_see_all());
        assert_eq!(
            scope("", ProjectId::default_project).unwrap(),
            ProjectId::default_project()
        );
    }
}
