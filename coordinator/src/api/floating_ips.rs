//! `FloatingIps`: the gRPC adapter of [`crate::operations::floating_ips`].

use nubo_common::proto::{self as pb, floating_ips_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::error::ApiError;
use crate::operations::floating_ips::{self, Target};
use crate::operations::lookup::ById;
use crate::state::Ctx;

fn target(r: &pb::SetFloatingIpRequest) -> Result<Target, ApiError> {
    let network = Some(r.network.clone()).filter(|n| !n.is_empty());
    match (r.port.is_empty(), r.server.is_empty()) {
        (false, true) if network.is_none() => Ok(Target::Port(r.port.clone())),
        (true, false) => Ok(Target::Server {
            server: r.server.clone(),
            network,
        }),
        (false, true) => Err(ApiError::InvalidArgument(
            "--network goes with --server, not --port".into(),
        )),
        _ => Err(ApiError::InvalidArgument(
            "give exactly one of a port or a server".into(),
        )),
    }
}

#[tonic::async_trait]
impl floating_ips_server::FloatingIps for Ctx {
    async fn create(&self, r: Request<pb::CreateFloatingIpRequest>) -> R<pb::FloatingIp> {
        let r = r.into_inner();
        let addr = Some(r.address.as_str()).filter(|a| !a.trim().is_empty());
        let go =
            async { floating_ips::create(self, &project(&r.project)?, &r.network, addr).await };
        reply(go.await.map(|f| convert::floating_ip(&f)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::FloatingIp> {
        let r = r.into_inner();
        let go = async {
            floating_ips::get(
                self,
                &owner(self, &r.project, ById::FloatingIp, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|f| convert::floating_ip(&f)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListFloatingIpsResponse> {
        let r = r.into_inner();
        let go = async { floating_ips::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListFloatingIpsResponse {
            floating_ips: p.items.iter().map(convert::floating_ip).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            floating_ips::delete(
                self,
                &owner(self, &r.project, ById::FloatingIp, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn set(&self, r: Request<pb::SetFloatingIpRequest>) -> R<pb::FloatingIp> {
        let r = r.into_inner();
        let go = async {
            let t = target(&r)?;
            let fixed = Some(r.fixed_ip.as_str()).filter(|f| !f.is_empty());
            floating_ips::associate(
                self,
                &owner(self, &r.project, ById::FloatingIp, &r.r#ref).await?,
                &r.r#ref,
                &t,
                fixed,
            )
            .await
        };
        reply(go.await.map(|f| convert::floating_ip(&f)))
    }
    async fn unset(&self, r: Request<pb::GetRequest>) -> R<pb::FloatingIp> {
        let r = r.into_inner();
        let go = async {
            floating_ips::disassociate(
                self,
                &owner(self, &r.project, ById::FloatingIp, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|f| convert::floating_ip(&f)))
    }
}
