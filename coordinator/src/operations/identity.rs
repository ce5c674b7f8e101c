//! Identity: projects, users, role assignments, and the cloud bootstrap.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{Project, RoleAssignment, User, UserName};
use nubo_common::ProjectId;
use nubo_identity::bootstrap::ADMIN_PROJECT;
use nubo_identity::token::generate_key;
use nubo_identity::Passwords;
use nubo_store::kv::{absent, decode_or_skip, put};
use nubo_store::Etcd;

use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// What [`bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// The admin project, user, role, token key and default quota were
    /// created.
    Created,
    /// The cloud was bootstrapped before (these keys exist): nothing changed.
    AlreadyDone(Vec<String>),
}

/// Creates the first cloud admin in ONE etcd transaction, only if none of
/// its keys exists yet (see `nubo_identity::bootstrap`). The keys must be
/// in the current layout (`crate::api::bootstrap` moves them first).
pub async fn bootstrap(
    store: &Etcd,
    admin: &UserName,
    password: &str,
    passwords: &Passwords,
) -> Result<Bootstrapped, crate::ServeError> {
    let cfg_err = |e: String| crate::ServeError::Config(e);
    let hash = passwords
        .hash(password)
        .map_err(|e| cfg_err(format!("cannot hash the admin password: {e}")))?;
    let writes =
        nubo_identity::bootstrap::bootstrap(admin, &hash, &generate_key(), chrono::Utc::now())
            .map_err(|e| cfg_err(e.to_string()))?;
    let when: Vec<Compare> = writes
        .iter()
        .map(|w| Compare::create_revision(w.key.as_str(), CompareOp::Equal, 0))
        .collect();
    let puts: Vec<TxnOp> = writes
        .iter()
        .map(|w| TxnOp::put(w.key.as_str(), w.value.clone(), None))
        .collect();
    let resp = store
        .txn(Txn::new().when(when).and_then(puts))
        .await
        .map_err(|e| cfg_err(e.to_string()))?;
    if resp.succeeded() {
        return Ok(Bootstrapped::Created);
    }
    let keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
    let found = store
        .get_many(&keys)
        .await
        .map_err(|e| cfg_err(e.to_string()))?;
    Ok(Bootstrapped::AlreadyDone(
        keys.into_iter()
            .zip(found)
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect(),
    ))
}

fn user_name(s: &str) -> ApiResult<UserName> {
    UserName::new(s).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Creates project `id` (named `name`, or its id when empty).
pub async fn create_project(
    ctx: &Ctx,
    id: &str,
    name: String,
    description: String,
) -> ApiResult<Project> {
    let id = ProjectId::new(id)?;
    let p = Project {
        id: id.clone(),
        name: if name.is_empty() {
            id.to_string()
        } else {
            name
        },
        description,
        enabled: true,
        created_at: chrono::Utc::now(),
    };
    let key = keys::project(&id);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &p)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "project {id} already exists"
        )));
    }
    Ok(p)
}

/// One page of the projects.
pub async fn list_projects(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<Project>> {
    super::lookup::list_page(
        ctx,
        &keys::projects_prefix(),
        page,
        decode_or_skip::<Project>,
    )
    .await
}

/// Deletes project `id` (never the admin project) and its quota.
pub async fn delete_project(ctx: &Ctx, id: &str) -> ApiResult<()> {
    let id = ProjectId::new(id)?;
    if id.as_str() == ADMIN_PROJECT {
        return Err(ApiError::FailedPrecondition(
            "the admin project cannot be deleted".into(),
        ));
    }
    let key = keys::project(&id);
    let resp = ctx
        .store
        .txn(Txn::new().and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(keys::quota(&id), None),
        ]))
        .await?;
    let deleted = match resp.op_responses().first() {
        Some(etcd_client::TxnOpResponse::Delete(d)) => d.deleted(),
        _ => 0,
    };
    if deleted == 0 {
        return Err(ApiError::NotFound(format!("project {id} not found")));
    }
    Ok(())
}

/// Creates user `name` with `password` (stored as an argon2id hash).
pub async fn create_user(ctx: &Ctx, name: &str, password: String) -> ApiResult<User> {
    let name = user_name(name)?;
    let hash = tokio::task::spawn_blocking(move || Passwords::production().hash(&password))
        .await
        .map_err(|e| ApiError::Unavailable(format!("password hashing failed: {e}")))?
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let u = User {
        name: name.clone(),
        password_hash: hash,
        enabled: true,
        created_at: chrono::Utc::now(),
    };
    let key = keys::user(&name);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &u)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "user {name} already exists"
        )));
    }
    Ok(u)
}

/// One page of the users.
pub async fn list_users(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<User>> {
    super::lookup::list_page(ctx, &keys::users_prefix(), page, decode_or_skip::<User>).await
}

/// Deletes user `name` and its role assignments.
pub async fn delete_user(ctx: &Ctx, name: &str) -> ApiResult<()> {
    let name = user_name(name)?;
    let resp = ctx
        .store
        .txn(Txn::new().and_then([
            TxnOp::delete(keys::user(&name), None),
            TxnOp::delete(
                keys::user_roles_prefix(&name),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ]))
        .await?;
    let deleted = match resp.op_responses().first() {
        Some(etcd_client::TxnOpResponse::Delete(d)) => d.deleted(),
        _ => 0,
    };
    if deleted == 0 {
        return Err(ApiError::NotFound(format!("user {name} not found")));
    }
    Ok(())
}

/// A role assignment from its parts: `role` of `user` in `project`
/// (empty: cloud-wide).
pub fn assignment(user: &str, project: &str, role: &str) -> ApiResult<RoleAssignment> {
    Ok(RoleAssignment {
        user: user_name(user)?,
        project: if project.is_empty() {
            None
        } else {
            Some(ProjectId::new(project)?)
        },
        role: role.parse().map_err(|_| {
            ApiError::InvalidArgument(format!(
                "role {role:?} must be admin, member, reader or node"
            ))
        })?,
    })
}

/// Grants a role; NotFound when the user or the project does not exist.
pub async fn grant(ctx: &Ctx, a: RoleAssignment) -> ApiResult<RoleAssignment> {
    let ukey = keys::user(&a.user);
    let mut when = vec![Compare::create_revision(
        ukey.as_str(),
        CompareOp::Greater,
        0,
    )];
    if let Some(p) = &a.project {
        when.push(Compare::create_revision(
            keys::project(p),
            CompareOp::Greater,
            0,
        ));
    }
    let key = keys::role(&a.user, a.project.as_ref());
    let resp = ctx
        .store
        .txn(Txn::new().when(when).and_then([put(&key, &a)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::NotFound(format!(
            "user {} or project {} not found",
            a.user,
            a.project
                .as_ref()
                .map_or("(cloud)".to_string(), |p| p.to_string())
        )));
    }
    Ok(a)
}

/// Revokes a role; NotFound when it was not granted.
pub async fn revoke(ctx: &Ctx, a: &RoleAssignment) -> ApiResult<()> {
    let key = keys::role(&a.user, a.project.as_ref());
    let resp = ctx
        .store
        .txn(Txn::new().and_then([TxnOp::delete(key.as_str(), None)]))
        .await?;
    let deleted = match resp.op_responses().first() {
        Some(etcd_client::TxnOpResponse::Delete(d)) => d.deleted(),
        _ => 0,
    };
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "user {} has no role assignment there",
            a.user
        )));
    }
    Ok(())
}

/// The role assignments of user `user`; with `user` empty, those of
/// `caller` (every one without a caller).
pub async fn role_assignments(
    ctx: &Ctx,
    caller: Option<&UserName>,
    user: &str,
) -> ApiResult<Vec<RoleAssignment>> {
    let prefix = if user.is_empty() {
        match caller {
            Some(u) => keys::user_roles_prefix(u),
            None => keys::roles_prefix(),
        }
    } else {
        keys::user_roles_prefix(&user_name(user)?)
    };
    let resp = ctx
        .store
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(decode_or_skip::<RoleAssignment>)
        .collect())
}
