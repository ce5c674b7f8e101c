//! Flavors: instance sizes (global, cloud admin).

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Flavor, Resources};
use nubo_store::kv::{absent, decode_or_skip, put};

use super::lookup::flavor_name;
use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// A new flavor.
#[derive(Debug, Clone, Default)]
pub struct NewFlavor {
    /// Its name (unique, global).
    pub name: String,
    /// vCPUs (at least 1).
    pub vcpus: u32,
    /// RAM in MiB (at least 1).
    pub ram_mb: u64,
    /// Root disk in GiB.
    pub disk_gb: u64,
    /// The name OpenStack clients show (empty: `name`); up to 255
    /// characters, no control characters.
    pub display_name: String,
}

/// Creates a flavor; AlreadyExists when the name is taken.
pub async fn create(ctx: &Ctx, r: NewFlavor) -> ApiResult<Flavor> {
    let name = flavor_name(&r.name)?;
    if r.vcpus == 0 || r.ram_mb == 0 {
        return Err(ApiError::InvalidArgument(format!(
            "flavor {:?} needs at least 1 vCPU and 1 MiB of RAM",
            name.as_str()
        )));
    }
    if r.display_name.chars().count() > 255 || r.display_name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "flavor {:?}: a display name has at most 255 characters and no control characters",
            name.as_str()
        )));
    }
    let f = Flavor {
        display_name: r.display_name,
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
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &f)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "flavor {:?} already exists",
            name.as_str()
        )));
    }
    Ok(f)
}

/// The flavor named `r`.
pub async fn get(ctx: &Ctx, r: &str) -> ApiResult<Flavor> {
    Ok(super::lookup::flavor(ctx, r).await?.value)
}

/// One page of the flavors.
pub async fn list(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<Flavor>> {
    super::lookup::list_page(ctx, &keys::flavors_prefix(), page, decode_or_skip::<Flavor>).await
}

/// Deletes the flavor named `r`; NotFound when there is none.
pub async fn delete(ctx: &Ctx, r: &str) -> ApiResult<()> {
    let name = flavor_name(r)?;
    let resp = ctx
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
    Ok(())
}
