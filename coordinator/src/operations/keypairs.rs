//! Keypairs: SSH public keys served by the metadata service.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Keypair};
use nubo_common::ProjectId;
use nubo_store::kv::{absent, decode_or_skip, put};

use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// Stores the SSH public key `public_key` as keypair `name` of `project`.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
    public_key: &str,
) -> ApiResult<Keypair> {
    let project = project.clone();
    validate::name("keypair", name)?;
    let (public_key, fingerprint) = validate::ssh_public_key(public_key)?;
    let k = Keypair {
        name: name.to_string(),
        project: project.clone(),
        public_key,
        fingerprint,
        created_at: model::now(),
    };
    let key = keys::keypair(&project, &k.name);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &k)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "keypair {:?} already exists in project {project}",
            k.name
        )));
    }
    Ok(k)
}

/// The keypair `name` of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, name: &str) -> ApiResult<Keypair> {
    Ok(super::lookup::keypair(ctx, project, name.trim())
        .await?
        .value)
}

/// One page of `project`'s keypairs.
pub async fn list(ctx: &Ctx, project: &ProjectId, page: &PageRequest) -> ApiResult<Page<Keypair>> {
    super::lookup::list_page(
        ctx,
        &keys::keypairs_prefix(project),
        page,
        decode_or_skip::<Keypair>,
    )
    .await
}

/// Deletes the keypair `name` of `project`.
pub async fn delete(ctx: &Ctx, project: &ProjectId, name: &str) -> ApiResult<()> {
    let k = super::lookup::keypair(ctx, project, name.trim()).await?;
    let key = keys::keypair(project, &k.value.name);
    ctx.store
        .txn(Txn::new().and_then([TxnOp::delete(key, None)]))
        .await?;
    Ok(())
}
