//! Images: metadata of the images servers boot from (their data:
//! [`super::image_data`]).

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, DiskFormat, Image, ImageStatus};
use nubo_common::{ImageId, ProjectId};
use nubo_store::kv::{absent, put, unchanged};

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A new image (metadata; its data is uploaded afterwards, see
/// [`super::image_data`]).
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    /// Its name (unique in the project).
    pub name: String,
    /// `raw` or `qcow2` (empty: qcow2).
    pub disk_format: String,
    /// Declared size.
    pub size_bytes: u64,
    /// Declared SHA-256 of the disk data (hex; empty: none).
    pub checksum_sha256: String,
    /// Smallest root disk it needs.
    pub min_disk_gb: u64,
    /// Least RAM it needs.
    pub min_ram_mb: u64,
    /// SHA-256 of a kernel to boot directly (empty: none).
    pub kernel_sha256: String,
    /// SHA-256 of its initrd (empty: none).
    pub initrd_sha256: String,
    /// Kernel command line (with a kernel).
    pub kernel_cmdline: String,
}

/// Creates an image record (status `queued` until its data is uploaded).
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewImage) -> ApiResult<Image> {
    let project = project.clone();
    validate::name("image", &r.name)?;
    let disk_format = match r.disk_format.to_ascii_lowercase().as_str() {
        "" | "qcow2" => DiskFormat::Qcow2,
        "raw" => DiskFormat::Raw,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "disk_format {other:?} must be \"raw\" or \"qcow2\""
            )))
        }
    };
    let checksum = match r.checksum_sha256.trim() {
        "" => None,
        c if c.len() == 64 && c.chars().all(|x| x.is_ascii_hexdigit()) => {
            Some(c.to_ascii_lowercase())
        }
        c => {
            return Err(ApiError::InvalidArgument(format!(
                "checksum_sha256 {c:?} is not 64 hex digits"
            )))
        }
    };
    let img = Image {
        id: ImageId::new_random(),
        name: r.name.clone(),
        project: project.clone(),
        disk_format,
        size_bytes: r.size_bytes,
        checksum_sha256: checksum,
        min_disk_gb: r.min_disk_gb,
        min_ram_mb: r.min_ram_mb,
        status: ImageStatus::Queued,
        created_at: model::now(),
        kernel_sha256: crate::image_store::optional_sha256("kernel_sha256", &r.kernel_sha256)?,
        initrd_sha256: crate::image_store::optional_sha256("initrd_sha256", &r.initrd_sha256)?,
        kernel_cmdline: Some(r.kernel_cmdline.trim().to_string()).filter(|c| !c.is_empty()),
        status_reason: None,
    };
    let idx = keys::name_index(NameKind::Image, &project, &img.name);
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([absent(&idx)])
                .and_then([put(&idx, &img.id), put(&keys::image(&img.id), &img)]),
        )
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "image {:?} already exists in project {project}",
            img.name
        )));
    }
    Ok(img)
}

/// Changes to an image's metadata (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ImageChanges {
    /// A new name (unique in the image's project).
    pub name: Option<String>,
    /// Smallest root disk it needs.
    pub min_disk_gb: Option<u64>,
    /// Least RAM it needs.
    pub min_ram_mb: Option<u64>,
}

/// Applies `changes` to image `r` of `project` in one transaction on the
/// revision read (retried when the image changed meanwhile); a new name
/// must be free in the image's project, and its name index moves with it.
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    changes: &ImageChanges,
) -> ApiResult<Image> {
    if let Some(n) = &changes.name {
        validate::name("image", n)?;
    }
    for _ in 0..16 {
        let cur = super::lookup::image(ctx, project, r).await?;
        let mut img = cur.value.clone();
        if let Some(n) = &changes.name {
            img.name.clone_from(n);
        }
        if let Some(d) = changes.min_disk_gb {
            img.min_disk_gb = d;
        }
        if let Some(m) = changes.min_ram_mb {
            img.min_ram_mb = m;
        }
        let key = keys::image(&img.id);
        let new_idx = keys::name_index(NameKind::Image, &img.project, &img.name);
        let renamed = img.name != cur.value.name;
        let mut when = vec![unchanged(&key, cur.mod_rev)];
        let mut ops = vec![put(&key, &img)];
        if renamed {
            let old_idx = keys::name_index(NameKind::Image, &img.project, &cur.value.name);
            when.push(absent(&new_idx));
            ops.push(put(&new_idx, &img.id));
            ops.push(TxnOp::delete(old_idx.as_str(), None));
        }
        let resp = ctx.store.txn(Txn::new().when(when).and_then(ops)).await?;
        if resp.succeeded() {
            tracing::info!(image = %img.id, "image updated");
            return Ok(img);
        }
        if renamed && ctx.store.read::<ImageId>(&new_idx).await?.is_some() {
            return Err(ApiError::AlreadyExists(format!(
                "image {:?} already exists in project {}",
                img.name, img.project
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the image changed concurrently too often; retry".into(),
    ))
}

/// The image `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Image> {
    Ok(super::lookup::image(ctx, project, r).await?.value)
}

/// One page of the images `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Image>> {
    super::lookup::list_scoped(ctx, &keys::images_prefix(), scope, page).await
}

/// Deletes the image `r` of `project` and its data.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    let img = super::lookup::image(ctx, project, r).await?;
    let idx = keys::name_index(NameKind::Image, project, &img.value.name);
    let key = keys::image(&img.value.id);
    ctx.store
        .txn(Txn::new().when([unchanged(&key, img.mod_rev)]).and_then([
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(idx.as_str(), None),
        ]))
        .await?;
    // Its data goes with it (hook of the image-data feature).
    crate::image_store::ImageStore::new(&ctx.cfg.image_dir)
        .remove(&img.value.id.to_string())
        .await?;
    Ok(())
}
