//! `Tokens.Issue` (password authentication) and the cloud bootstrap.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{
    AppCredId, ApplicationCredential, Project, RoleAssignment, User, UserName,
};
use nubo_common::proto::{self as pb, tokens_server::Tokens};
use nubo_common::ProjectId;
use nubo_identity::authz::effective_roles;
use nubo_identity::bootstrap::ADMIN_PROJECT;
use nubo_identity::token::{generate_key, DEFAULT_TTL_SECS, MAX_TTL_SECS};
use nubo_identity::{Claims, Passwords};
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::error::{ApiError, ApiResult};
use nubo_store::kv::decode_or_skip;
use nubo_store::Etcd;

type R<T> = Result<Response<T>, Status>;

fn bad_login() -> ApiError {
    ApiError::Unauthenticated("invalid user name or password".into())
}

impl Ctx {
    async fn issue_token(&self, r: pb::IssueTokenRequest) -> ApiResult<pb::Token> {
        let signer = self.signer.get().cloned().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "this coordinator runs with auth = \"none\" and issues no tokens".into(),
            )
        })?;
        if !r.application_credential_id.is_empty() {
            return self.issue_for_app_cred(&signer, &r).await;
        }
        let user = UserName::new(r.user.as_str()).map_err(|_| bad_login())?;
        let rec: User = self
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
        let resp = self
            .store
            .get(
                keys::user_roles_prefix(&user),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let assignments: Vec<RoleAssignment> =
            resp.kvs().iter().filter_map(decode_or_skip).collect();
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
        match self.store.read::<Project>(&keys::project(&project)).await? {
            Some(p) if p.value.enabled => {}
            _ => return Err(no_role()),
        }
        sign_token(&signer, user, project, roles, r.ttl_secs, None)
    }

    /// `Tokens.Issue` with an application credential: the token carries
    /// the credential's roles that the user still holds in its project.
    async fn issue_for_app_cred(
        &self,
        signer: &nubo_identity::auth::SignerHandle,
        r: &pb::IssueTokenRequest,
    ) -> ApiResult<pb::Token> {
        let bad = || ApiError::Unauthenticated("invalid application credential".into());
        let id: AppCredId = r.application_credential_id.parse().map_err(|_| bad())?;
        let cred: ApplicationCredential = self
            .store
            .read(&keys::app_cred(&id))
            .await?
            .ok_or_else(bad)?
            .value;
        nubo_identity::appcred::verify(&cred, &r.application_credential_secret, chrono::Utc::now())
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        match self.store.read::<User>(&keys::user(&cred.user)).await? {
            Some(u) if u.value.enabled => {}
            _ => return Err(bad()),
        }
        let resp = self
            .store
            .get(
                keys::user_roles_prefix(&cred.user),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let assignments: Vec<RoleAssignment> =
            resp.kvs().iter().filter_map(decode_or_skip).collect();
        let held = effective_roles(&assignments, &cred.user, &cred.project);
        let roles: Vec<_> = cred
            .roles
            .iter()
            .copied()
            .filter(|r| held.contains(r))
            .collect();
        let enabled = matches!(
            self.store.read::<Project>(&keys::project(&cred.project)).await?,
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
}

fn sign_token(
    signer: &nubo_identity::auth::SignerHandle,
    user: UserName,
    project: ProjectId,
    roles: Vec<nubo_common::model::Role>,
    ttl_secs: u32,
    app_cred: Option<String>,
) -> ApiResult<pb::Token> {
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
        let ts = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        };
        tracing::info!(user = %claims.user, project = %claims.project, token_id = %claims.token_id, "token issued");
        Ok(pb::Token {
            token,
            user: claims.user.to_string(),
            project: claims.project.to_string(),
            roles: claims
                .roles
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            issued_at: ts(claims.issued_at),
            expires_at: ts(claims.expires_at),
        })
    }
}

#[tonic::async_trait]
impl Tokens for Ctx {
    async fn issue(&self, r: Request<pb::IssueTokenRequest>) -> R<pb::Token> {
        reply(self.issue_token(r.into_inner()).await)
    }
}

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
/// its keys exists yet (see `nubo_identity::bootstrap`).
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

// ------------------------------------------------------------ Identity

fn project_pb(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.to_string(),
        name: p.name.clone(),
        description: p.description.clone(),
        enabled: p.enabled,
        created_at: p.created_at.to_rfc3339(),
    }
}

fn user_pb(u: &User) -> pb::User {
    pb::User {
        name: u.name.to_string(),
        enabled: u.enabled,
        created_at: u.created_at.to_rfc3339(),
    }
}

fn assignment_pb(a: &RoleAssignment) -> pb::RoleAssignment {
    pb::RoleAssignment {
        user: a.user.to_string(),
        project: a
            .project
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        role: a.role.as_str().to_string(),
    }
}

fn user_name(s: &str) -> ApiResult<UserName> {
    UserName::new(s).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

impl Ctx {
    async fn create_project(&self, r: pb::CreateProjectRequest) -> ApiResult<pb::Project> {
        let id = ProjectId::new(r.id.as_str())?;
        let p = Project {
            id: id.clone(),
            name: if r.name.is_empty() {
                id.to_string()
            } else {
                r.name
            },
            description: r.description,
            enabled: true,
            created_at: chrono::Utc::now(),
        };
        let key = keys::project(&id);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([nubo_store::kv::absent(&key)])
                    .and_then([nubo_store::kv::put(&key, &p)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "project {id} already exists"
            )));
        }
        Ok(project_pb(&p))
    }

    async fn delete_project(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let id = ProjectId::new(r.r#ref.as_str())?;
        if id.as_str() == ADMIN_PROJECT {
            return Err(ApiError::FailedPrecondition(
                "the admin project cannot be deleted".into(),
            ));
        }
        let key = keys::project(&id);
        let resp = self
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
        Ok(pb::Empty {})
    }

    async fn create_user(&self, r: pb::CreateUserRequest) -> ApiResult<pb::User> {
        let name = user_name(&r.name)?;
        let password = r.password;
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
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([nubo_store::kv::absent(&key)])
                    .and_then([nubo_store::kv::put(&key, &u)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "user {name} already exists"
            )));
        }
        Ok(user_pb(&u))
    }

    async fn delete_user(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let name = user_name(&r.r#ref)?;
        let resp = self
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
        Ok(pb::Empty {})
    }

    fn assignment(r: &pb::RoleAssignment) -> ApiResult<RoleAssignment> {
        Ok(RoleAssignment {
            user: user_name(&r.user)?,
            project: if r.project.is_empty() {
                None
            } else {
                Some(ProjectId::new(r.project.as_str())?)
            },
            role: r.role.parse().map_err(|_| {
                ApiError::InvalidArgument(format!(
                    "role {:?} must be admin, member, reader or node",
                    r.role
                ))
            })?,
        })
    }

    async fn grant(&self, r: pb::RoleAssignment) -> ApiResult<pb::RoleAssignment> {
        let a = Self::assignment(&r)?;
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
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when(when)
                    .and_then([nubo_store::kv::put(&key, &a)]),
            )
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
        Ok(assignment_pb(&a))
    }

    async fn revoke(&self, r: pb::RoleAssignment) -> ApiResult<pb::Empty> {
        let a = Self::assignment(&r)?;
        let key = keys::role(&a.user, a.project.as_ref());
        let resp = self
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
        Ok(pb::Empty {})
    }

    async fn role_assignments(
        &self,
        r: pb::GetRequest,
    ) -> ApiResult<pb::ListRoleAssignmentsResponse> {
        let prefix = if r.r#ref.is_empty() {
            match crate::caller::caller() {
                Some(c) => keys::user_roles_prefix(&c.claims.user),
                None => keys::roles_prefix(),
            }
        } else {
            keys::user_roles_prefix(&user_name(&r.r#ref)?)
        };
        let resp = self
            .store
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(pb::ListRoleAssignmentsResponse {
            assignments: resp
                .kvs()
                .iter()
                .filter_map(decode_or_skip::<RoleAssignment>)
                .map(|a| assignment_pb(&a))
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Ctx {
    async fn create_project(&self, r: Request<pb::CreateProjectRequest>) -> R<pb::Project> {
        reply(Ctx::create_project(self, r.into_inner()).await)
    }
    async fn list_projects(&self, r: Request<pb::ListRequest>) -> R<pb::ListProjectsResponse> {
        let r = r.into_inner();
        reply(
            crate::paging::list_page(
                &self.store,
                &keys::projects_prefix(),
                r.page_size,
                &r.page_token,
                |kv| decode_or_skip::<Project>(kv).map(|p| project_pb(&p)),
            )
            .await
            .map(|(projects, next_page_token)| pb::ListProjectsResponse {
                projects,
                next_page_token,
            }),
        )
    }
    async fn delete_project(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(Ctx::delete_project(self, r.into_inner()).await)
    }
    async fn create_user(&self, r: Request<pb::CreateUserRequest>) -> R<pb::User> {
        reply(Ctx::create_user(self, r.into_inner()).await)
    }
    async fn list_users(&self, r: Request<pb::ListRequest>) -> R<pb::ListUsersResponse> {
        let r = r.into_inner();
        reply(
            crate::paging::list_page(
                &self.store,
                &keys::users_prefix(),
                r.page_size,
                &r.page_token,
                |kv| decode_or_skip::<User>(kv).map(|u| user_pb(&u)),
            )
            .await
            .map(|(users, next_page_token)| pb::ListUsersResponse {
                users,
                next_page_token,
            }),
        )
    }
    async fn delete_user(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(Ctx::delete_user(self, r.into_inner()).await)
    }
    async fn grant(&self, r: Request<pb::RoleAssignment>) -> R<pb::RoleAssignment> {
        reply(Ctx::grant(self, r.into_inner()).await)
    }
    async fn revoke(&self, r: Request<pb::RoleAssignment>) -> R<pb::Empty> {
        reply(Ctx::revoke(self, r.into_inner()).await)
    }
    async fn list_role_assignments(
        &self,
        r: Request<pb::GetRequest>,
    ) -> R<pb::ListRoleAssignmentsResponse> {
        reply(self.role_assignments(r.into_inner()).await)
    }
}
