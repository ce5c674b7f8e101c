//! `Flavors`: the gRPC adapter of [`crate::operations::flavors`].

use nubo_common::proto::{self as pb, flavors_server};
use tonic::Request;

use super::{convert, page, reply, R};
use crate::operations::flavors::{self, NewFlavor};
use crate::state::Ctx;

#[tonic::async_trait]
impl flavors_server::Flavors for Ctx {
    async fn create(&self, r: Request<pb::CreateFlavorRequest>) -> R<pb::Flavor> {
        let r = r.into_inner();
        let f = NewFlavor {
            name: r.name,
            vcpus: r.vcpus,
            ram_mb: r.ram_mb,
            disk_gb: r.disk_gb,
            display_name: r.display_name,
            private: r.private,
        };
        reply(flavors::create(self, f).await.map(|f| convert::flavor(&f)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Flavor> {
        let f = flavors::get(self, &r.into_inner().r#ref).await;
        reply(f.map(|f| convert::flavor(&f)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListFlavorsResponse> {
        let r = r.into_inner();
        let p = flavors::list(self, &page(&r), r.all_projects).await;
        reply(p.map(|p| pb::ListFlavorsResponse {
            flavors: p.items.iter().map(convert::flavor).collect(),
            next_page_token: p.next,
        }))
    }
    async fn add_access(&self, r: Request<pb::FlavorAccessRequest>) -> R<pb::Flavor> {
        let r = r.into_inner();
        let f = flavors::set_access(self, &r.flavor, &r.project, true).await;
        reply(f.map(|f| convert::flavor(&f)))
    }
    async fn remove_access(&self, r: Request<pb::FlavorAccessRequest>) -> R<pb::Flavor> {
        let r = r.into_inner();
        let f = flavors::set_access(self, &r.flavor, &r.project, false).await;
        reply(f.map(|f| convert::flavor(&f)))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(
            flavors::delete(self, &r.into_inner().r#ref)
                .await
                .map(|()| pb::Empty {}),
        )
    }
}
