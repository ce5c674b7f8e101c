//! Flavors: instance sizes (global, cloud admin).

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self};
use nubo_common::model::{self, Flavor, Resources};
use nubo_common::proto::{self as pb, flavors_server};
use nubo_common::FlavorName;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use nubo_store::kv::{absent, decode_or_skip, put, Versioned};

type R<T> = Result<Response<T>, Status>;

fn flavor_name(s: &str) -> ApiResult<FlavorName> {
    FlavorName::new(s.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}
impl Ctx {
    pub(crate) async fn flavor(&self, r: &str) -> ApiResult<Versioned<Flavor>> {
        let name = flavor_name(r)?;
        self.store
            .read(&keys::flavor(&name))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("flavor {:?} not found", name.as_str())))
    }
}
impl Ctx {
    async fn create_flavor(&self, r: pb::CreateFlavorRequest) -> ApiResult<pb::Flavor> {
        let name = flavor_name(&r.name)?;
        if r.vcpus == 0 || r.ram_mb == 0 {
            return Err(ApiError::InvalidArgument(format!(
                "flavor {:?} needs at least 1 vCPU and 1 MiB of RAM",
                name.as_str()
            )));
        }
        let f = Flavor {
            name: name.clone(),
            resources: Resources {
                vcpus: r.vcpus,
                ram_mb: r.ram_mb,
                disk_gb: r.disk_gb,
            },
            extra: Default::default(),
            created_at: model::now(),
        };
        let key = keys::flavor(&name);
        let resp = self
            .store
            .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &f)]))
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "flavor {:?} already exists",
                name.as_str()
            )));
        }
        Ok(convert::flavor(&f))
    }
}

#[tonic::async_trait]
impl flavors_server::Flavors for Ctx {
    async fn create(&self, r: Request<pb::CreateFlavorRequest>) -> R<pb::Flavor> {
        reply(self.create_flavor(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Flavor> {
        reply(
            self.flavor(&r.into_inner().r#ref)
                .await
                .map(|f| convert::flavor(&f.value)),
        )
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListFlavorsResponse> {
        let r = r.into_inner();
        reply(
            crate::paging::list_page(
                &self.store,
                &keys::flavors_prefix(),
                r.page_size,
                &r.page_token,
                |kv| decode_or_skip::<Flavor>(kv).map(|f| convert::flavor(&f)),
            )
            .await
            .map(|(flavors, next_page_token)| pb::ListFlavorsResponse {
                flavors,
                next_page_token,
            }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let go = async {
            let name = flavor_name(&r.into_inner().r#ref)?;
            let resp = self
                .store
                .txn(Txn::new().and_then([TxnOp::delete(keys::flavor(&name), None)]))
                .await?;
            let deleted = match resp.op_responses().into_iter().next() {
                Some(etcd_client::TxnOpResponse::Delete(d)) => d.deleted(),
                _ => 0,
            };
            if deleted == 0 {
                return Err(ApiError::NotFound(format!(
                    "flavor {:?} not found",
                    name.as_str()
                )));
            }
            Ok(pb::Empty {})
        };
        reply(go.await)
    }
}
