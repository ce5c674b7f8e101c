//! `Routers`: the gRPC adapter of [`crate::operations::routers`].

use nubo_common::proto::{self as pb, routers_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::operations::lookup::ById;
use crate::operations::routers;
use crate::state::Ctx;

#[tonic::async_trait]
impl routers_server::Routers for Ctx {
    async fn create(&self, r: Request<pb::CreateRouterRequest>) -> R<pb::Router> {
        let r = r.into_inner();
        let gw = Some(r.external_gateway.as_str()).filter(|g| !g.trim().is_empty());
        let go = async {
            let r = routers::create(self, &project(&r.project)?, &r.name, gw, r.disabled).await?;
            routers::view(self, r).await
        };
        reply(go.await.map(|x| convert::router(&x)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Router> {
        let r = r.into_inner();
        let go = async {
            routers::get(
                self,
                &owner(self, &r.project, ById::Router, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|x| convert::router(&x)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListRoutersResponse> {
        let r = r.into_inner();
        let go = async { routers::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListRoutersResponse {
            routers: p.items.iter().map(convert::router).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            routers::delete(
                self,
                &owner(self, &r.project, ById::Router, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn add_subnet(&self, r: Request<pb::RouterSubnetRequest>) -> R<pb::Router> {
        let r = r.into_inner();
        let go = async {
            let by = interface(&r)?;
            let r = routers::add_subnet(
                self,
                &owner(self, &r.project, ById::Router, &r.r#ref).await?,
                &r.r#ref,
                by,
            )
            .await?;
            routers::view(self, r).await
        };
        reply(go.await.map(|x| convert::router(&x)))
    }
    async fn update(&self, r: Request<pb::UpdateRouterRequest>) -> R<pb::Router> {
        let r = r.into_inner();
        let go = async {
            let change = routers::RouterChange {
                name: r.name.as_deref(),
                disabled: r.disabled,
                gateway: r.external_gateway.as_deref(),
            };
            let rt = routers::update(
                self,
                &owner(self, &r.project, ById::Router, &r.r#ref).await?,
                &r.r#ref,
                change,
            )
            .await?;
            routers::view(self, rt).await
        };
        reply(go.await.map(|x| convert::router(&x)))
    }
    async fn remove_subnet(&self, r: Request<pb::RouterSubnetRequest>) -> R<pb::Router> {
        let r = r.into_inner();
        let go = async {
            let by = interface(&r)?;
            let r = routers::remove_subnet(
                self,
                &owner(self, &r.project, ById::Router, &r.r#ref).await?,
                &r.r#ref,
                by,
            )
            .await?;
            routers::view(self, r).await
        };
        reply(go.await.map(|x| convert::router(&x)))
    }
}

/// The network or the port an interface request names.
fn interface(
    r: &pb::RouterSubnetRequest,
) -> Result<routers::Interface<'_>, crate::error::ApiError> {
    match (r.network.trim(), r.port.trim()) {
        (n, "") => Ok(routers::Interface::Network(n)),
        ("", p) => Ok(routers::Interface::Port(p)),
        _ => Err(crate::error::ApiError::InvalidArgument(
            "give a network or a port, not both".into(),
        )),
    }
}
