//! `SecurityGroups`: the gRPC adapter of
//! [`crate::operations::security_groups`].

use nubo_common::proto::{self as pb, security_groups_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::error::ApiError;
use crate::operations::lookup::ById;
use crate::operations::security_groups;
use crate::state::Ctx;

#[tonic::async_trait]
impl security_groups_server::SecurityGroups for Ctx {
    async fn create(&self, r: Request<pb::CreateSecurityGroupRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            security_groups::create(self, &p, &r.name, &r.description).await
        };
        reply(go.await.map(|g| convert::secgroup(&g)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            security_groups::get(
                self,
                &owner(self, &r.project, ById::SecurityGroup, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|g| convert::secgroup(&g)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListSecurityGroupsResponse> {
        let r = r.into_inner();
        let go = async { security_groups::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListSecurityGroupsResponse {
            security_groups: p.items.iter().map(convert::secgroup).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            security_groups::delete(
                self,
                &owner(self, &r.project, ById::SecurityGroup, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn add_rule(&self, r: Request<pb::AddRuleRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::SecurityGroup, &r.group_ref).await?;
            let Some(rule) = r.rule.as_ref() else {
                return Err(ApiError::InvalidArgument("rule is required".into()));
            };
            let rule = convert::rule_from_proto(rule)?;
            security_groups::add_rule(self, &p, &r.group_ref, rule).await
        };
        reply(go.await.map(|g| convert::secgroup(&g)))
    }
    async fn update(&self, r: Request<pb::UpdateSecurityGroupRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::SecurityGroup, &r.r#ref).await?;
            security_groups::update(
                self,
                &p,
                &r.r#ref,
                r.name.as_deref(),
                r.description.as_deref(),
            )
            .await
        };
        reply(go.await.map(|g| convert::secgroup(&g)))
    }
    async fn delete_rule(&self, r: Request<pb::DeleteRuleRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::SecurityGroup, &r.group_ref).await?;
            security_groups::delete_rule(self, &p, &r.group_ref, &r.rule_id).await
        };
        reply(go.await.map(|g| convert::secgroup(&g)))
    }
}
