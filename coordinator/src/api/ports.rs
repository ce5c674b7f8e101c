//! `Ports`: the gRPC adapter of [`crate::operations::ports`].

use nubo_common::proto::{self as pb, ports_server};
use tonic::Request;

use super::{convert, page, project, reply, scope, R};
use crate::operations::ports::{self, NewPort, PortChanges};
use crate::state::Ctx;

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
            &project(&r.project)?,
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
                security_groups: r.security_groups,
                no_security_groups: r.no_security_groups,
                no_port_security: r.no_port_security,
                description: r.description,
                disabled: r.disabled,
                mac: r.mac,
            };
            ports::create(self, &project(&r.project)?, new).await
        };
        reply(go.await.map(|p| convert::port(&p)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async { ports::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|p| convert::port(&p)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListPortsResponse> {
        let r = r.into_inner();
        let go = async { ports::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListPortsResponse {
            ports: p.items.iter().map(convert::port).collect(),
            next_page_token: p.next,
        }))
    }
    async fn update(&self, r: Request<pb::UpdatePortRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let changes = PortChanges {
                name: r.name,
                description: r.description,
                admin_state_up: r.admin_state_up,
                security_groups: r.security_groups,
                no_security_groups: r.no_security_groups,
            };
            ports::update(self, &p, &r.r#ref, changes).await
        };
        reply(go.await.map(|p| convert::port(&p)))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { ports::delete(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
