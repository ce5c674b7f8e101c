//! Keypairs: SSH public keys served by the metadata service.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self};
use nubo_common::model::{self, Keypair};
use nubo_common::proto::{self as pb, keypairs_server};
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::validate;
use nubo_store::kv::{absent, decode_or_skip, put, Versioned};

type R<T> = Result<Response<T>, Status>;

impl Ctx {
    async fn create_keypair(&self, r: pb::CreateKeypairRequest) -> ApiResult<pb::Keypair> {
        let project = validate::project(&r.project)?;
        validate::name("keypair", &r.name)?;
        let (public_key, fingerprint) = validate::ssh_public_key(&r.public_key)?;
        let k = Keypair {
            name: r.name.clone(),
            project: project.clone(),
            public_key,
            fingerprint,
            created_at: model::now(),
        };
        let key = keys::keypair(&project, &k.name);
        let resp = self
            .store
            .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &k)]))
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "keypair {:?} already exists in project {project}",
                k.name
            )));
        }
        Ok(convert::keypair(&k))
    }

    pub(crate) async fn keypair(
        &self,
        project: &nubo_common::ProjectId,
        name: &str,
    ) -> ApiResult<Versioned<Keypair>> {
        validate::name("keypair", name)?;
        self.store
            .read(&keys::keypair(project, name))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("keypair {name:?} not found in project {project}"))
            })
    }
}

#[tonic::async_trait]
impl keypairs_server::Keypairs for Ctx {
    async fn create(&self, r: Request<pb::CreateKeypairRequest>) -> R<pb::Keypair> {
        reply(self.create_keypair(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Keypair> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::keypair(
                &self.keypair(&p, r.r#ref.trim()).await?.value,
            ))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListKeypairsResponse> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            let (keypairs, next_page_token) = crate::paging::list_page(
                &self.store,
                &keys::keypairs_prefix(&p),
                r.page_size,
                &r.page_token,
                |kv| decode_or_skip::<Keypair>(kv).map(|k| convert::keypair(&k)),
            )
            .await?;
            Ok(pb::ListKeypairsResponse {
                keypairs,
                next_page_token,
            })
        };
        reply(go.await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            let k = self.keypair(&p, r.r#ref.trim()).await?;
            let key = keys::keypair(&p, &k.value.name);
            self.store
                .txn(Txn::new().and_then([TxnOp::delete(key, None)]))
                .await?;
            Ok(pb::Empty {})
        };
        reply(go.await)
    }
}
