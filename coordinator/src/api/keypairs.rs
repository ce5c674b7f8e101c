//! `Keypairs`: the gRPC adapter of [`crate::operations::keypairs`].

use nubo_common::proto::{self as pb, keypairs_server};
use tonic::Request;

use super::{convert, page, project, reply, R};
use crate::operations::keypairs;
use crate::state::Ctx;

#[tonic::async_trait]
impl keypairs_server::Keypairs for Ctx {
    async fn create(&self, r: Request<pb::CreateKeypairRequest>) -> R<pb::Keypair> {
        let r = r.into_inner();
        let go =
            async { keypairs::create(self, &project(&r.project)?, &r.name, &r.public_key).await };
        reply(go.await.map(|k| convert::keypair(&k)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Keypair> {
        let r = r.into_inner();
        let go = async { keypairs::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|k| convert::keypair(&k)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListKeypairsResponse> {
        let r = r.into_inner();
        let go = async { keypairs::list(self, &project(&r.project)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListKeypairsResponse {
            keypairs: p.items.iter().map(convert::keypair).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { keypairs::delete(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
