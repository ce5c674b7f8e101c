//! `Migrations`: the gRPC adapter of [`crate::operations::migrations`]
//! (cloud admin only, see [`super::auth`]).

use nubo_common::proto::{self as pb, migrations_server};
use tonic::Request;

use super::{convert, owner, project, reply, R};
use crate::operations::lookup::ById;
use crate::operations::migrations::{self, ListMigrations, NewMigration};
use crate::operations::PageRequest;
use crate::state::Ctx;

#[tonic::async_trait]
impl migrations_server::Migrations for Ctx {
    async fn create(&self, r: Request<pb::CreateMigrationRequest>) -> R<pb::Migration> {
        let r = r.into_inner();
        let go = async {
            let req = NewMigration {
                project: owner(self, &r.project, ById::Server, &r.r#ref).await?,
                server: r.r#ref,
                live: r.live,
                host: Some(r.host).filter(|h| !h.trim().is_empty()),
            };
            let m = migrations::migrate(self, req).await?;
            migrations::get(self, &m.id.to_string()).await
        };
        reply(go.await.map(|v| convert::migration(&v)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Migration> {
        let r = r.into_inner();
        reply(
            migrations::get(self, &r.r#ref)
                .await
                .map(|v| convert::migration(&v)),
        )
    }
    async fn list(&self, r: Request<pb::ListMigrationsRequest>) -> R<pb::ListMigrationsResponse> {
        let r = r.into_inner();
        let go = async {
            let l = ListMigrations {
                server: Some(r.server).filter(|s| !s.trim().is_empty()),
                project: Some(project(&r.project)?),
                active_only: r.active_only,
                page: PageRequest {
                    size: r.page_size,
                    token: r.page_token,
                },
            };
            migrations::list(self, &l).await
        };
        reply(go.await.map(|p| pb::ListMigrationsResponse {
            migrations: p.items.iter().map(convert::migration).collect(),
            next_page_token: p.next,
        }))
    }
    async fn abort(&self, r: Request<pb::GetRequest>) -> R<pb::Migration> {
        let r = r.into_inner();
        reply(
            migrations::abort(self, &r.r#ref)
                .await
                .map(|v| convert::migration(&v)),
        )
    }
}
