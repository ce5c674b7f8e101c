//! Flavors: instance sizes (global, cloud admin). A private flavor is
//! seen and used only by cloud admins and the projects it is shared with.

use etcd_client::{Txn, TxnOp};
use nubo_common::model::{self, Flavor, Resources};
use nubo_common::{keys, ProjectId};
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
    /// Private: shared with no project at first ([`set_access`]).
    pub private: bool,
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
        private: r.private,
        access: Default::default(),
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

/// The project of a caller who is not a cloud admin (whose view of
/// private flavors is limited); `None` for cloud admins and without
/// authentication.
fn limited_project() -> Option<ProjectId> {
    if crate::caller::is_cloud_admin() {
        return None;
    }
    crate::caller::caller().map(|c| c.claims.project)
}

/// `f` as the caller may see it: `None` when it is private and not shared
/// with the caller's project (cloud admins see every flavor); only cloud
/// admins see whom a flavor is shared with.
fn visible(f: Flavor, project: Option<&ProjectId>) -> Option<Flavor> {
    match project {
        None => Some(f),
        Some(p) if f.usable_by(p) => Some(Flavor {
            access: Default::default(),
            ..f
        }),
        Some(_) => None,
    }
}

/// The flavor named `r` (NotFound for a private one the caller's project
/// has no access to, as if it did not exist).
pub async fn get(ctx: &Ctx, r: &str) -> ApiResult<Flavor> {
    let f = super::lookup::flavor(ctx, r).await?.value;
    let name = f.name.clone();
    visible(f, limited_project().as_ref())
        .ok_or_else(|| ApiError::NotFound(format!("flavor {:?} not found", name.as_str())))
}

/// One page of the flavors the caller's project may use: the public ones
/// and the private ones shared with it (what Nova lists by default, for
/// admins too); with `all`, a cloud admin gets every flavor (others still
/// only those they may use).
pub async fn list(ctx: &Ctx, page: &PageRequest, all: bool) -> ApiResult<Page<Flavor>> {
    let limited = limited_project();
    let shared_with = match (&limited, all) {
        (Some(p), _) => Some(p.clone()),
        // A cloud admin without `all`: its own project's view.
        (None, false) => crate::caller::caller().map(|c| c.claims.project),
        (None, true) => None,
    };
    super::lookup::list_page(ctx, &keys::flavors_prefix(), page, |kv| {
        let f = decode_or_skip::<Flavor>(kv)?;
        if shared_with.as_ref().is_some_and(|p| !f.usable_by(p)) {
            return None;
        }
        visible(f, limited.as_ref())
    })
    .await
}

/// Checks that `project` may boot (or resize to) flavor `f`: a private
/// flavor needs access, unless a cloud admin asks. NotFound otherwise, as
/// if the flavor did not exist (front ends say 400, as Nova).
pub(crate) fn ensure_usable(f: &Flavor, project: &ProjectId) -> ApiResult<()> {
    if f.usable_by(project) || crate::caller::is_cloud_admin() {
        return Ok(());
    }
    Err(ApiError::NotFound(format!(
        "flavor {:?} not found (it is private and not shared with project {project})",
        f.name.as_str()
    )))
}

/// Shares private flavor `r` with `project` (`add`) or stops sharing it,
/// in one transaction on the revision read (cloud admins: the API layer
/// allows only them). A public flavor: FailedPrecondition; sharing twice:
/// AlreadyExists; removing a project it is not shared with: NotFound.
pub async fn set_access(ctx: &Ctx, r: &str, project: &str, add: bool) -> ApiResult<Flavor> {
    let project =
        ProjectId::new(project.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    for _ in 0..16 {
        let mut f = super::lookup::flavor(ctx, r).await?;
        let name = f.value.name.clone();
        if !f.value.private {
            return Err(ApiError::FailedPrecondition(format!(
                "flavor {:?} is public: every project may use it, there is no access list",
                name.as_str()
            )));
        }
        let changed = if add {
            f.value.access.insert(project.clone())
        } else {
            f.value.access.remove(&project)
        };
        match (changed, add) {
            (false, true) => {
                return Err(ApiError::AlreadyExists(format!(
                    "flavor {:?} is shared with project {project} already",
                    name.as_str()
                )))
            }
            (false, false) => {
                return Err(ApiError::NotFound(format!(
                    "flavor {:?} is not shared with project {project}",
                    name.as_str()
                )))
            }
            _ => {}
        }
        let key = keys::flavor(&name);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([nubo_store::kv::unchanged(&key, f.mod_rev)])
                    .and_then([put(&key, &f.value)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(flavor = %name.as_str(), %project, add, "flavor access changed");
            return Ok(f.value);
        }
    }
    Err(ApiError::Unavailable(
        "the flavor changed concurrently too often; retry".into(),
    ))
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
