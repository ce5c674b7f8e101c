//! `Networks`: the gRPC adapter of [`crate::operations::networks`].

use nubo_common::proto::{self as pb, networks_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::operations::lookup::ById;
use crate::operations::networks::{self, NetworkChanges, NewNetwork, NewSubnet};
use crate::state::Ctx;

#[tonic::async_trait]
impl networks_server::Networks for Ctx {
    async fn create(&self, r: Request<pb::CreateNetworkRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async {
            let new = NewNetwork {
                name: r.name,
                cidr: r.cidr,
                gateway: r.gateway,
                dns: r.dns,
                mtu: r.mtu,
                provider_type: r.provider_type,
                physical_network: r.physical_network,
                segment: r.segment,
                external: r.external,
                shared: r.shared,
            };
            networks::create(self, &project(&r.project)?, new).await
        };
        reply(go.await.map(|n| convert::network(&n)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async {
            networks::get(
                self,
                &owner(self, &r.project, ById::Network, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|n| convert::network(&n)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListNetworksResponse> {
        let r = r.into_inner();
        let go = async { networks::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListNetworksResponse {
            networks: p.items.iter().map(convert::network).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            networks::delete(
                self,
                &owner(self, &r.project, ById::Network, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn set_subnet(&self, r: Request<pb::SetSubnetRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async {
            let sn = NewSubnet {
                cidr: r.cidr,
                gateway: r.gateway,
                dns: r.dns,
                name: r.name,
                dhcp_disabled: r.dhcp_disabled,
                host_routes: routes(r.host_routes),
                allocation_pools: r
                    .allocation_pools
                    .into_iter()
                    .map(|p| (p.start, p.end))
                    .collect(),
            };
            networks::set_subnet(
                self,
                &owner(self, &r.project, ById::Network, &r.r#ref).await?,
                &r.r#ref,
                sn,
            )
            .await
        };
        reply(go.await.map(|n| convert::network(&n)))
    }
    async fn update(&self, r: Request<pb::UpdateNetworkRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async {
            let c = NetworkChanges {
                name: r.name,
                external: r.external,
                subnet: Some(r.subnet_id).filter(|s| !s.is_empty()),
                subnet_name: r.subnet_name,
                gateway: r.gateway,
                dns: r.set_dns.then_some(r.dns),
                host_routes: r.set_host_routes.then(|| routes(r.host_routes)),
                dhcp_disabled: r.dhcp_disabled,
            };
            networks::update(
                self,
                &owner(self, &r.project, ById::Network, &r.r#ref).await?,
                &r.r#ref,
                c,
            )
            .await
        };
        reply(go.await.map(|n| convert::network(&n)))
    }
    async fn delete_subnet(&self, r: Request<pb::DeleteRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async { networks::delete_subnet(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|n| convert::network(&n)))
    }
    async fn get_subnet(&self, r: Request<pb::GetRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async { networks::subnet_network(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|n| convert::network(&n)))
    }
}

/// `(destination, nexthop)` pairs of the API's routes (validated by the
/// operation).
fn routes(r: Vec<pb::HostRoute>) -> Vec<(String, String)> {
    r.into_iter().map(|h| (h.destination, h.nexthop)).collect()
}
