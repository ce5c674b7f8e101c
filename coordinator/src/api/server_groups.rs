//! Server groups: affinity and anti-affinity of their members.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, ServerGroup, ServerGroupPolicy};
use nubo_common::proto::{self as pb, server_groups_server};
use nubo_common::ServerGroupId;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::validate;
use nubo_store::kv::{absent, prefix_empty, put, unchanged, Versioned};

type R<T> = Result<Response<T>, Status>;

impl Ctx {
    async fn create_server_group(
        &self,
        r: pb::CreateServerGroupRequest,
    ) -> ApiResult<pb::ServerGroup> {
        let project = validate::project(&r.project)?;
        validate::name("server group", &r.name)?;
        let policy = match r.policy.to_ascii_lowercase().as_str() {
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
            name: r.name.clone(),
            project: project.clone(),
            policy,
            created_at: model::now(),
        };
        let idx = keys::name_index(NameKind::ServerGroup, &project, &g.name);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([absent(&idx)])
                    .and_then([put(&idx, &g.id), put(&keys::server_group(&g.id), &g)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "server group {:?} already exists in project {project}",
                g.name
            )));
        }
        Ok(convert::server_group(&g))
    }

    pub(crate) async fn server_group(
        &self,
        project: &nubo_common::ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<ServerGroup>> {
        self.resolve(NameKind::ServerGroup, "server group", project, r, |u| {
            keys::server_group(&ServerGroupId::from_uuid(u))
        })
        .await
    }

    async fn delete_server_group(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        let g = self.server_group(&project, &r.r#ref).await?;
        let key = keys::server_group(&g.value.id);
        let members = keys::server_group_members_prefix(&g.value.id);
        let idx = keys::name_index(NameKind::ServerGroup, &project, &g.value.name);
        let resp = self
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
        Ok(pb::Empty {})
    }
}

#[tonic::async_trait]
impl server_groups_server::ServerGroups for Ctx {
    async fn create(&self, r: Request<pb::CreateServerGroupRequest>) -> R<pb::ServerGroup> {
        reply(self.create_server_group(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::ServerGroup> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::server_group(
                &self.server_group(&p, &r.r#ref).await?.value,
            ))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListServerGroupsResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::server_groups_prefix(), &r, convert::server_group)
            .await;
        reply(page.map(
            |(server_groups, next_page_token)| pb::ListServerGroupsResponse {
                server_groups,
                next_page_token,
            },
        ))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_server_group(r.into_inner()).await)
    }
}
