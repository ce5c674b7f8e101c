//! Tokens: password or application-credential authentication, and the
//! signed token that carries the caller's roles in one project.

use etcd_client::GetOptions;
use nubo_common::keys;
use nubo_common::model::{
    AppCredId, ApplicationCredential, Project, RevokedToken, RoleAssignment, User, UserName,
};
use nubo_common::ProjectId;
use nubo_identity::authz::effective_roles;
use nubo_identity::bootstrap::ADMIN_PROJECT;
use nubo_identity::token::{DEFAULT_TTL_SECS, MAX_TTL_SECS};
use nubo_identity::{Claims, Passwords};
use nubo_store::kv::decode_or_skip;

use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// What a caller logs in with.
#[derive(Debug, Clone, Default)]
pub struct Login {
    /// Password login: the user ...
    pub user: String,
    /// ... its password ...
    pub password: String,
    /// ... and the project to scope the token to (empty: the user's only
    /// project, or an error naming the choices).
    pub project: String,
    /// Application-credential login (instead of a password): its id ...
    pub application_credential_id: String,
    /// ... and its secret.
    pub application_credential_secret: String,
    /// Requested lifetime (0: the default; capped).
    pub ttl_secs: u32,
}

/// A signed token and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bearer token.
    pub token: String,
    /// Its claims (user, project, roles, times).
    pub claims: Claims,
}

fn bad_login() -> ApiError {
    ApiError::Unauthenticated("invalid user name or password".into())
}

fn sign_token(
    signer: &nubo_identity::auth::SignerHandle,
    user: UserName,
    project: ProjectId,
    roles: Vec<nubo_common::model::Role>,
    ttl_secs: u32,
    app_cred: Option<String>,
) -> ApiResult<Issued> {
    {
        let ttl = match ttl_secs {
            0 => DEFAULT_TTL_SECS,
            t => i64::from(t).min(MAX_TTL_SECS),
        };
        let mut claims = Claims::new(user, project, roles, chrono::Utc::now(), ttl);
        claims.app_cred = app_cred;
        let token = signer
            .read()
            .map_err(|_| ApiError::Unavailable("the token signer is unavailable".into()))?
            .sign(&claims);
        tracing::info!(user = %claims.user, project = %claims.project, token_id = %claims.token_id, "token issued");
        Ok(Issued { token, claims })
    }
}

/// Authenticates `r` and signs a token (FailedPrecondition with
/// `auth = "none"`).
pub async fn issue(ctx: &Ctx, r: &Login) -> ApiResult<Issued> {
    let signer = ctx.signer.get().cloned().ok_or_else(|| {
        ApiError::FailedPrecondition(
            "this coordinator runs with auth = \"none\" and issues no tokens".into(),
        )
    })?;
    if !r.application_credential_id.is_empty() {
        return issue_for_app_cred(ctx, &signer, r).await;
    }
    let user = UserName::new(r.user.as_str()).map_err(|_| bad_login())?;
    let rec: User = ctx
        .store
        .read::<User>(&keys::user(&user))
        .await?
        .ok_or_else(bad_login)?
        .value;
    let (password, hash) = (r.password.clone(), rec.password_hash.clone());
    let verified =
        tokio::task::spawn_blocking(move || Passwords::production().verify(&password, &hash))
            .await
            .map_err(|e| ApiError::Unavailable(format!("password check failed: {e}")))?;
    if verified.is_err() || !rec.enabled {
        return Err(bad_login());
    }
    let resp = ctx
        .store
        .get(
            keys::user_roles_prefix(&user),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let assignments: Vec<RoleAssignment> = resp.kvs().iter().filter_map(decode_or_skip).collect();
    let project = if r.project.is_empty() {
        let mut projects: Vec<ProjectId> = assignments
            .iter()
            .filter_map(|a| a.project.clone())
            .collect();
        projects.sort();
        projects.dedup();
        match projects.len() {
            0 if !assignments.is_empty() => ProjectId::new(ADMIN_PROJECT)?,
            1 => projects.remove(0),
            0 => {
                return Err(ApiError::PermissionDenied(format!(
                    "user {user} has no role in any project"
                )))
            }
            _ => {
                let names: Vec<String> = projects.iter().map(|p| p.to_string()).collect();
                return Err(ApiError::InvalidArgument(format!(
                    "user {user} has roles in several projects; choose one of: {}",
                    names.join(", ")
                )));
            }
        }
    } else {
        ProjectId::new(r.project.as_str())?
    };
    let no_role = || {
        ApiError::PermissionDenied(format!(
            "user {user} has no role in project {project} (or it is disabled)"
        ))
    };
    let roles = effective_roles(&assignments, &user, &project);
    if roles.is_empty() {
        return Err(no_role());
    }
    match ctx.store.read::<Project>(&keys::project(&project)).await? {
        Some(p) if p.value.enabled => {}
        _ => return Err(no_role()),
    }
    sign_token(&signer, user, project, roles, r.ttl_secs, None)
}

/// `Tokens.Issue` with an application credential: the token carries
/// the credential's roles that the user still holds in its project.
async fn issue_for_app_cred(
    ctx: &Ctx,
    signer: &nubo_identity::auth::SignerHandle,
    r: &Login,
) -> ApiResult<Issued> {
    let bad = || ApiError::Unauthenticated("invalid application credential".into());
    let id: AppCredId = r.application_credential_id.parse().map_err(|_| bad())?;
    let cred: ApplicationCredential = ctx
        .store
        .read(&keys::app_cred(&id))
        .await?
        .ok_or_else(bad)?
        .value;
    nubo_identity::appcred::verify(&cred, &r.application_credential_secret, chrono::Utc::now())
        .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    match ctx.store.read::<User>(&keys::user(&cred.user)).await? {
        Some(u) if u.value.enabled => {}
        _ => return Err(bad()),
    }
    let resp = ctx
        .store
        .get(
            keys::user_roles_prefix(&cred.user),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let assignments: Vec<RoleAssignment> = resp.kvs().iter().filter_map(decode_or_skip).collect();
    let held = effective_roles(&assignments, &cred.user, &cred.project);
    let roles: Vec<_> = cred
        .roles
        .iter()
        .copied()
        .filter(|r| held.contains(r))
        .collect();
    let enabled = matches!(
        ctx.store.read::<Project>(&keys::project(&cred.project)).await?,
        Some(p) if p.value.enabled
    );
    if roles.is_empty() || !enabled {
        return Err(ApiError::PermissionDenied(format!(
            "application credential {id}: user {} no longer holds its roles in project {}",
            cred.user, cred.project
        )));
    }
    sign_token(
        signer,
        cred.user,
        cred.project,
        roles,
        r.ttl_secs,
        Some(id.to_string()),
    )
}

/// The claims of `subject` if it is valid now: signed by a current key,
/// not expired, not revoked. The caller must be a cloud admin or the
/// subject's own user; anything else — and an invalid subject — is
/// `NotFound`, so a caller learns nothing of other users' tokens.
pub fn validate(ctx: &Ctx, subject: &str) -> ApiResult<Claims> {
    let not_found = || ApiError::NotFound("the token is not valid".into());
    let signer = ctx.signer.get().ok_or_else(|| {
        ApiError::FailedPrecondition("this coordinator runs with auth = \"none\"".into())
    })?;
    let claims =
        nubo_identity::auth::verify_token(signer, &ctx.revoked, subject, chrono::Utc::now())
            .map_err(|e| match e {
                nubo_identity::auth::AuthError::SignerUnavailable => {
                    ApiError::Unavailable("the token verifier is unavailable".into())
                }
                _ => not_found(),
            })?;
    let caller = crate::caller::caller();
    let allowed =
        crate::caller::is_cloud_admin() || caller.is_some_and(|c| c.claims.user == claims.user);
    if !allowed {
        return Err(not_found());
    }
    Ok(claims)
}

/// Revokes `subject` (see [`validate`] for who may): a record leased until
/// the token's expiry, which every coordinator watches; this one refuses
/// the token at once.
pub async fn revoke(ctx: &Ctx, subject: &str) -> ApiResult<()> {
    let claims = validate(ctx, subject)?;
    let now = chrono::Utc::now();
    // The lease outlives the token by the tolerated clock skew.
    let ttl =
        (claims.expires_at - now.timestamp()).max(0) + nubo_identity::token::MAX_CLOCK_SKEW_SECS;
    let by = crate::caller::caller()
        .map(|c| c.claims.user)
        .unwrap_or_else(|| claims.user.clone());
    let rec = RevokedToken {
        user: claims.user.clone(),
        expires_at: claims.expires_at,
        revoked_by: by,
        revoked_at: now,
    };
    let lease = ctx.store.lease_grant(ttl).await?;
    ctx.store
        .put(
            keys::revoked_token(&claims.token_id),
            nubo_common::model::encode(&rec),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await?;
    ctx.revoked
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(claims.token_id.clone(), claims.expires_at);
    tracing::info!(user = %claims.user, token = %claims.token_id, "token revoked");
    Ok(())
}
