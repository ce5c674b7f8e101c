//! `Ports`: the gRPC adapter of [`crate::operations::ports`].

use nubo_common::proto::{self as pb, ports_server};
use tonic::Request;

use super::{convert, owner, page, reply, scope, R};
use crate::error::ApiResult;
use crate::operations::fixed_ips::{self, FixedIpRequest};
use crate::operations::lookup::ById;
use crate::operations::ports::{self, NewPort, PortChanges};
use crate::state::Ctx;

fn fixed_ips(f: Vec<pb::FixedIp>) -> Vec<FixedIpRequest> {
    f.into_iter()
        .map(|x| FixedIpRequest {
            subnet: x.subnet_id,
            ip: x.ip,
        })
        .collect()
}

impl Ctx {
    /// `p` with the subnet of each of its addresses.
    async fn port_view(&self, p: nubo_common::model::Port) -> ApiResult<pb::Port> {
        let nets = fixed_ips::networks_of(self, std::slice::from_ref(&p)).await?;
        Ok(convert::port_on(&p, nets.get(&p.network)))
    }
}

#[tonic::async_trait]
impl ports_server::Ports for Ctx {
    type CaptureStream = super::streams::Relay;

    async fn capture(
        &self,
        r: Request<pb::CaptureRequest>,
    ) -> Result<tonic::Response<Self::CaptureStream>, tonic::Status> {
        let r = r.into_inner();
        let stream = crate::operations::node_streams::capture(
            self,
            &owner(self, &r.project, ById::Port, &r.r#ref).await?,
            &r.r#ref,
            r.count,
        )
        .await?;
        Ok(tonic::Response::new(super::streams::relay(stream)))
    }

    async fn create(&self, r: Request<pb::CreatePortRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let new = NewPort {
                name: r.name,
                network: r.network_ref,
                ip: r.ip,
                fixed_ips: fixed_ips(r.fixed_ips),
                security_groups: r.security_groups,
                no_security_groups: r.no_security_groups,
                no_port_security: r.no_port_security,
                description: r.description,
                disabled: r.disabled,
                mac: r.mac,
                host: r.host,
            };
            let p =
                crate::operations::lookup::new_port_project(self, &r.project, &new.network).await?;
            let p = ports::create(self, &p, new).await?;
            self.port_view(p).await
        };
        reply(go.await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let p = ports::get(
                self,
                &owner(self, &r.project, ById::Port, &r.r#ref).await?,
                &r.r#ref,
            )
            .await?;
            self.port_view(p).await
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListPortsResponse> {
        let r = r.into_inner();
        let go = async {
            let p = ports::list(self, &scope(&r)?, &page(&r)).await?;
            let nets = fixed_ips::networks_of(self, &p.items).await?;
            Ok(pb::ListPortsResponse {
                ports: p
                    .items
                    .iter()
                    .map(|x| convert::port_on(x, nets.get(&x.network)))
                    .collect(),
                next_page_token: p.next,
            })
        };
        reply(go.await)
    }
    async fn update(&self, r: Request<pb::UpdatePortRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Port, &r.r#ref).await?;
            let changes = PortChanges {
                name: r.name,
                description: r.description,
                admin_state_up: r.admin_state_up,
                security_groups: r.security_groups,
                no_security_groups: r.no_security_groups,
                host: r.host,
            };
            // Addresses first (their own guarded write), then the rest.
            let moved = match r.set_fixed_ips {
                true => Some(fixed_ips::set(self, &p, &r.r#ref, &fixed_ips(r.fixed_ips)).await?),
                false => None,
            };
            let port = match moved {
                Some(port) if changes.is_empty() => port,
                _ => ports::update(self, &p, &r.r#ref, changes).await?,
            };
            self.port_view(port).await
        };
        reply(go.await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            ports::delete(
                self,
                &owner(self, &r.project, ById::Port, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
