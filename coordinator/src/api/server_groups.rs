//! `ServerGroups`: the gRPC adapter of [`crate::operations::server_groups`].

use nubo_common::proto::{self as pb, server_groups_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::operations::lookup::ById;
use crate::operations::server_groups;
use crate::state::Ctx;

#[tonic::async_trait]
impl server_groups_server::ServerGroups for Ctx {
    async fn create(&self, r: Request<pb::CreateServerGroupRequest>) -> R<pb::ServerGroup> {
        let r = r.into_inner();
        let go =
            async { server_groups::create(self, &project(&r.project)?, &r.name, &r.policy).await };
        reply(go.await.map(|g| convert::server_group(&g)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::ServerGroup> {
        let r = r.into_inner();
        let go = async {
            server_groups::get(
                self,
                &owner(self, &r.project, ById::ServerGroup, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|g| convert::server_group(&g)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListServerGroupsResponse> {
        let r = r.into_inner();
        let go = async { server_groups::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListServerGroupsResponse {
            server_groups: p.items.iter().map(convert::server_group).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            server_groups::delete(
                self,
                &owner(self, &r.project, ById::ServerGroup, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
