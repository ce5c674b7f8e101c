//! Server groups: affinity and anti-affinity of their members.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, ServerGroup, ServerGroupPolicy};
use nubo_common::{ProjectId, ServerGroupId};
use nubo_store::kv::{absent, prefix_empty, put, unchanged};

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// Creates server group `name` of `project` with `policy` (`affinity` or
/// `anti-affinity`). Several groups of a project may share a name.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
    policy: &str,
) -> ApiResult<ServerGroup> {
    let project = project.clone();
    validate::name("server group", name)?;
    let policy = match policy.to_ascii_lowercase().as_str() {
        "affinity" => ServerGroupPolicy::Affinity,
        "anti-affinity" | "anti_affinity" => ServerGroupPolicy::AntiAffinity,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "server group policy {other:?} must be \"affinity\" or \"anti-affinity\""
            )))
        }
    };
    let g = ServerGroup {
        id: ServerGroupId::new_random(),
        name: name.to_string(),
        project: project.clone(),
        policy,
        created_at: model::now(),
    };
    // Names need not be unique (as in Nova; ids tell groups apart): no
    // name index, a name is looked up by scanning the project's groups.
    let key = keys::server_group(&g.id);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &g)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::Unavailable(
            "a fresh server group id was taken; retry".into(),
        ));
    }
    Ok(g)
}

/// The server group `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerGroup> {
    Ok(super::lookup::server_group(ctx, project, r).await?.value)
}

/// One page of the server groups `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<ServerGroup>> {
    super::lookup::list_scoped(ctx, &keys::server_groups_prefix(), scope, page).await
}

/// Deletes the server group `r` of `project`; refused while it has
/// members.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    let g = super::lookup::server_group(ctx, project, r).await?;
    let key = keys::server_group(&g.value.id);
    let members = keys::server_group_members_prefix(&g.value.id);
    // Groups made before names could repeat have a name index: gone too.
    let idx = keys::name_index(NameKind::ServerGroup, project, &g.value.name);
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([unchanged(&key, g.mod_rev), prefix_empty(&members)])
                .and_then([
                    TxnOp::delete(key.as_str(), None),
                    TxnOp::delete(idx.as_str(), None),
                ]),
        )
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::FailedPrecondition(format!(
            "server group {:?} still has members; delete its servers first",
            g.value.name
        )));
    }
    Ok(())
}
