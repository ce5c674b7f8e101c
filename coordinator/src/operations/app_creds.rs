//! Application credentials: secrets a program uses instead of a password
//! (token issue with id + secret). A credential is bound to the user and
//! project of the token that created it, with at most that token's roles;
//! its secret is returned once and stored only as a hash
//! (`nubo_identity::appcred`). A token issued for an application credential
//! may not create more (a leaked credential cannot outlive its revocation).
//! Only with `auth = "token"`.

use etcd_client::{GetOptions, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{AppCredId, ApplicationCredential, Role};
use nubo_identity::Claims;
use nubo_store::kv::{absent, decode_or_skip, put};

use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Longest credential name.
const MAX_NAME: usize = 255;

/// The roles of a new credential: the token's (empty request) or a subset.
fn roles_for(claims: &Claims, requested: &[String]) -> ApiResult<Vec<Role>> {
    let mut roles = if requested.is_empty() {
        claims.roles.clone()
    } else {
        let mut out = Vec::new();
        for r in requested {
            let role: Role = r
                .parse()
                .map_err(|e: nubo_common::IdError| ApiError::InvalidArgument(e.to_string()))?;
            if !claims.has(role) {
                return Err(ApiError::PermissionDenied(format!(
                    "an application credential gets at most the creator's roles: user {} has no {role} role in project {}",
                    claims.user, claims.project
                )));
            }
            out.push(role);
        }
        out
    };
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// A new application credential.
#[derive(Debug, Clone, Default)]
pub struct NewAppCred {
    /// Its name (free text, at most 255 characters).
    pub name: String,
    /// Its roles: a subset of the caller's (empty: all of them).
    pub roles: Vec<String>,
    /// When it expires (RFC 3339; empty: never).
    pub expires_at: String,
}

/// Creates an application credential of the caller (`claims`) for its
/// project; returns it with its secret (shown once, stored as a hash).
pub async fn create(
    ctx: &Ctx,
    claims: &Claims,
    r: NewAppCred,
) -> ApiResult<(ApplicationCredential, String)> {
    if let Some(id) = &claims.app_cred {
        return Err(ApiError::PermissionDenied(format!(
            "this token comes from application credential {id}, which may not create application credentials; log in with a password"
        )));
    }
    if r.name.chars().count() > MAX_NAME || r.name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "name must be at most {MAX_NAME} characters without control characters"
        )));
    }
    let roles = roles_for(claims, &r.roles)?;
    let now = chrono::Utc::now();
    let expires_at = match r.expires_at.trim() {
        "" => None,
        t => {
            let t = chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    ApiError::InvalidArgument(format!(
                        "expires_at {t:?} is not an RFC 3339 time: {e}"
                    ))
                })?
                .with_timezone(&chrono::Utc);
            if t <= now {
                return Err(ApiError::InvalidArgument(format!(
                    "expires_at {} is in the past",
                    t.to_rfc3339()
                )));
            }
            Some(t)
        }
    };
    let (secret, secret_hash) = nubo_identity::appcred::new_secret();
    let cred = ApplicationCredential {
        id: AppCredId::new_random(),
        user: claims.user.clone(),
        project: claims.project.clone(),
        secret_hash,
        expires_at,
        roles,
        name: r.name,
        created_at: Some(now),
    };
    let key = keys::app_cred(&cred.id);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &cred)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::Unavailable(
            "application credential id collision; retry".into(),
        ));
    }
    tracing::info!(id = %cred.id, user = %cred.user, project = %cred.project, "application credential created");
    Ok((cred, secret))
}

/// The caller's credentials; a cloud admin's `all_projects` lists all.
/// The caller's credentials; a cloud admin asking for `all_projects`:
/// everyone's.
pub async fn list(
    ctx: &Ctx,
    claims: &Claims,
    all_projects: bool,
) -> ApiResult<Vec<ApplicationCredential>> {
    let all = all_projects && claims.has(Role::Admin);
    let resp = ctx
        .store
        .get(
            keys::app_creds_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut creds: Vec<ApplicationCredential> = resp
        .kvs()
        .iter()
        .filter_map(decode_or_skip::<ApplicationCredential>)
        .filter(|c| all || c.user == claims.user)
        .collect();
    creds.sort_by_key(|c| (c.created_at, c.id.to_string()));
    Ok(creds)
}

/// Deletes credential `r` of the caller (a cloud admin: anyone's);
/// another user's answers NotFound, exactly like a missing one.
pub async fn delete(ctx: &Ctx, claims: &Claims, r: &str) -> ApiResult<()> {
    let missing = || {
        ApiError::NotFound(format!(
            "application credential {:?} not found",
            r.chars().take(64).collect::<String>()
        ))
    };
    let id: AppCredId = r.trim().parse().map_err(|_| missing())?;
    let key = keys::app_cred(&id);
    let Some(cur) = ctx.store.read::<ApplicationCredential>(&key).await? else {
        return Err(missing());
    };
    if cur.value.user != claims.user && !claims.has(Role::Admin) {
        return Err(missing());
    }
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([etcd_client::Compare::mod_revision(
                    key.as_str(),
                    etcd_client::CompareOp::Equal,
                    cur.mod_rev,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await?;
    if !resp.succeeded() {
        return Err(missing());
    }
    tracing::info!(%id, by = %claims.user, "application credential deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::UserName;
    use nubo_common::ProjectId;

    #[test]
    fn roles_are_at_most_the_creators() {
        let c = Claims::new(
            UserName::new("u").unwrap(),
            ProjectId::new("p1").unwrap(),
            vec![Role::Reader],
            chrono::Utc::now(),
            60,
        );
        assert_eq!(roles_for(&c, &[]).unwrap(), vec![Role::Reader]);
        assert_eq!(
            roles_for(&c, &["reader".into(), "reader".into()]).unwrap(),
            vec![Role::Reader]
        );
        assert!(matches!(
            roles_for(&c, &["member".into()]),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(matches!(
            roles_for(&c, &["root".into()]),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
