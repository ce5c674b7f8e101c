//! Images: metadata of the images servers boot from (their data:
//! [`super::image_data`]).

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use std::collections::{BTreeMap, BTreeSet};

use nubo_common::model::{
    self, DiskFormat, Image, ImageAccess, ImageAttrs, ImageMember, ImageStatus, ImageVisibility,
    MemberStatus,
};
use nubo_common::{ImageId, ProjectId};
use nubo_store::kv::{absent, put, unchanged};
use nubo_store::Versioned;

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A new image (metadata; its data is uploaded afterwards, see
/// [`super::image_data`]).
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    /// Its name (unique in the project; empty: a nameless image, found by
    /// id only, as Glance allows).
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
    /// `private` (also empty), `shared`, `community`; `public` for a
    /// cloud admin only.
    pub visibility: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Free-form properties.
    pub properties: BTreeMap<String, String>,
    /// Refuse deletion.
    pub protected: bool,
    /// Leave it out of listings.
    pub hidden: bool,
}

/// Attribute names an image property may not take: they are the image's
/// own fields in the OpenStack view.
const RESERVED: &[&str] = &[
    "id",
    "name",
    "status",
    "visibility",
    "owner",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "min_disk",
    "min_ram",
    "protected",
    "os_hidden",
    "tags",
    "created_at",
    "updated_at",
    "disk_format",
    "container_format",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "location",
    "deleted",
    "deleted_at",
    "member_status",
];

/// The visibility named `v` (empty: `None`); `public` only for a cloud
/// admin.
fn visibility(v: &str) -> ApiResult<Option<ImageVisibility>> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    let vis = ImageVisibility::parse(v.trim()).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "visibility {v:?} must be private, shared, community or public"
        ))
    })?;
    if vis == ImageVisibility::Public && !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(
            "only a cloud admin makes an image public".into(),
        ));
    }
    Ok(Some(vis))
}

/// A tag (1–255 characters, no `/`).
fn tag(t: &str) -> ApiResult<String> {
    if t.is_empty() || t.chars().count() > 255 || t.contains('/') {
        return Err(ApiError::InvalidArgument(format!(
            "tag {t:?} must be 1 to 255 characters without '/'"
        )));
    }
    Ok(t.to_string())
}

/// A property `k = v`: a key of 1–255 characters that is not one of the
/// image's own attributes, a value of at most 65535 bytes.
fn property(k: &str, v: &str) -> ApiResult<()> {
    if k.is_empty() || k.chars().count() > 255 {
        return Err(ApiError::InvalidArgument(format!(
            "property name {k:?} must be 1 to 255 characters"
        )));
    }
    if RESERVED.contains(&k) || k.starts_with("os_glance") {
        return Err(ApiError::PermissionDenied(format!(
            "{k:?} is an attribute of the image, not a free property"
        )));
    }
    if v.len() > 65535 {
        return Err(ApiError::InvalidArgument(format!(
            "property {k:?} is longer than 65535 bytes"
        )));
    }
    Ok(())
}

/// At most this many tags and properties on one image.
const MAX_ATTRS: usize = 128;

/// Checks the tag and property counts of `a`.
fn check_counts(a: &ImageAttrs) -> ApiResult<()> {
    if a.tags.len() > MAX_ATTRS || a.properties.len() > MAX_ATTRS {
        return Err(ApiError::ResourceExhausted(format!(
            "an image has at most {MAX_ATTRS} tags and {MAX_ATTRS} properties"
        )));
    }
    Ok(())
}

/// Creates an image record (status `queued` until its data is uploaded).
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewImage) -> ApiResult<Image> {
    let project = project.clone();
    // Nameless images exist in Glance: they have no name-index entry and
    // are found by id only.
    if !r.name.is_empty() {
        validate::name("image", &r.name)?;
    }
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
        access: ImageAccess {
            visibility: visibility(&r.visibility)?.unwrap_or_default(),
            members: BTreeMap::new(),
        },
        attrs: ImageAttrs {
            tags: r
                .tags
                .iter()
                .map(|t| tag(t))
                .collect::<ApiResult<BTreeSet<_>>>()?,
            properties: r.properties.clone(),
            protected: r.protected,
            hidden: r.hidden,
            deactivated: false,
        },
    };
    for (k, v) in &img.attrs.properties {
        property(k, v)?;
    }
    check_counts(&img.attrs)?;
    let idx = keys::name_index(NameKind::Image, &project, &img.name);
    let txn = if img.name.is_empty() {
        Txn::new().and_then([put(&keys::image(&img.id), &img)])
    } else {
        Txn::new()
            .when([absent(&idx)])
            .and_then([put(&idx, &img.id), put(&keys::image(&img.id), &img)])
    };
    let resp = ctx.store.txn(txn).await?;
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
    /// A new visibility (`public` only for a cloud admin).
    pub visibility: Option<String>,
    /// Tags to add.
    pub add_tags: Vec<String>,
    /// Tags to remove (absent ones: NotFound).
    pub remove_tags: Vec<String>,
    /// Properties to set.
    pub set_properties: BTreeMap<String, String>,
    /// Properties to remove (absent ones: NotFound).
    pub remove_properties: Vec<String>,
    /// Protect from deletion (or not).
    pub protected: Option<bool>,
    /// Hide from listings (or not).
    pub hidden: Option<bool>,
    /// Deactivate (true, an active image only) or reactivate (false).
    pub deactivated: Option<bool>,
    /// Give it to this project (cloud admins only).
    pub owner: Option<String>,
}

/// Applies the changes other than the name to `img`. Pure apart from
/// the caller's role (for `public`).
fn apply(img: &mut Image, c: &ImageChanges) -> ApiResult<()> {
    if let Some(d) = c.min_disk_gb {
        img.min_disk_gb = d;
    }
    if let Some(m) = c.min_ram_mb {
        img.min_ram_mb = m;
    }
    if let Some(v) = c
        .visibility
        .as_deref()
        .map(visibility)
        .transpose()?
        .flatten()
    {
        img.access.visibility = v;
    }
    for t in &c.add_tags {
        img.attrs.tags.insert(tag(t)?);
    }
    for t in &c.remove_tags {
        if !img.attrs.tags.remove(t) {
            return Err(ApiError::NotFound(format!(
                "image {} has no tag {t:?}",
                img.id
            )));
        }
    }
    for (k, v) in &c.set_properties {
        property(k, v)?;
        img.attrs.properties.insert(k.clone(), v.clone());
    }
    for k in &c.remove_properties {
        if img.attrs.properties.remove(k).is_none() {
            return Err(ApiError::NotFound(format!(
                "image {} has no property {k:?}",
                img.id
            )));
        }
    }
    if let Some(p) = c.protected {
        img.attrs.protected = p;
    }
    if let Some(h) = c.hidden {
        img.attrs.hidden = h;
    }
    match c.deactivated {
        Some(true) if img.status != ImageStatus::Active => {
            return Err(ApiError::PermissionDenied(format!(
                "image {} is {:?}: only an active image is deactivated",
                img.id, img.status
            )))
        }
        Some(d) => img.attrs.deactivated = d,
        None => {}
    }
    check_counts(&img.attrs)
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
    let owner = match changes.owner.as_deref().map(str::trim) {
        None => None,
        Some(_) if !crate::caller::is_cloud_admin() => {
            return Err(ApiError::PermissionDenied(
                "only a cloud admin may give an image to another project".into(),
            ))
        }
        Some(o) => Some(ProjectId::new(o).map_err(|e| ApiError::InvalidArgument(e.to_string()))?),
    };
    for _ in 0..16 {
        let cur = super::lookup::image(ctx, project, r).await?;
        let mut img = cur.value.clone();
        if let Some(n) = &changes.name {
            img.name.clone_from(n);
        }
        if let Some(o) = &owner {
            img.project = o.clone();
        }
        apply(&mut img, changes)?;
        let key = keys::image(&img.id);
        let new_idx = keys::name_index(NameKind::Image, &img.project, &img.name);
        // A new name or owner moves its name index entry (a nameless
        // image has none).
        let renamed = img.name != cur.value.name || img.project != cur.value.project;
        let mut when = vec![unchanged(&key, cur.mod_rev)];
        let mut ops = vec![put(&key, &img)];
        if renamed {
            let old_idx = keys::name_index(NameKind::Image, &cur.value.project, &cur.value.name);
            if !img.name.is_empty() {
                when.push(absent(&new_idx));
                ops.push(put(&new_idx, &img.id));
            }
            if !cur.value.name.is_empty() {
                ops.push(TxnOp::delete(old_idx.as_str(), None));
            }
        }
        if img.project != cur.value.project {
            tracing::warn!(image = %img.id, from = %cur.value.project, to = %img.project, "image given to another project");
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

/// The image `r`: `project`'s own (id or name), or one it may use (by
/// id: public, community, shared with it; see
/// [`super::lookup::usable_image`]).
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Image> {
    Ok(super::lookup::usable_image(ctx, project, r).await?.value)
}

/// One page of the images `scope` sees: its project's own and those it
/// may use (public, community, shared with it whatever its answer — the
/// member status is in [`ImageAccess::member_status`]); every image with
/// `all_projects`.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Image>> {
    super::lookup::list_page(ctx, &keys::images_prefix(), page, |kv| {
        let key = nubo_store::kv::kv_key(kv);
        if !matches!(keys::Key::parse(key), None | Some(keys::Key::Image(..))) {
            return None;
        }
        nubo_store::kv::decode_or_skip::<Image>(kv)
            .filter(|i| scope.sees(&i.project) || i.access.usable_by(&scope.project))
    })
    .await
}

/// Deletes the image `r` of `project` and its data (refused while it is
/// protected).
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    let img = super::lookup::image(ctx, project, r).await?;
    if img.value.attrs.protected {
        return Err(ApiError::PermissionDenied(format!(
            "image {} is protected: unprotect it before deleting it",
            img.value.id
        )));
    }
    let idx = keys::name_index(NameKind::Image, project, &img.value.name);
    let key = keys::image(&img.value.id);
    let mut ops = vec![TxnOp::delete(key.as_str(), None)];
    if !img.value.name.is_empty() {
        ops.push(TxnOp::delete(idx.as_str(), None));
    }
    ctx.store
        .txn(
            Txn::new()
                .when([unchanged(&key, img.mod_rev)])
                .and_then(ops),
        )
        .await?;
    // Its data goes with it (hook of the image-data feature).
    crate::image_store::ImageStore::new(&ctx.cfg.image_dir)
        .remove(&img.value.id.to_string())
        .await?;
    Ok(())
}

/// Reads image `id` (an id only), applies `f` and writes it back on the
/// revision read (retried when the image changed meanwhile).
async fn modify<T>(
    ctx: &Ctx,
    id: &str,
    mut f: impl FnMut(&mut Image) -> ApiResult<T>,
) -> ApiResult<T> {
    let id: ImageId = id
        .trim()
        .parse()
        .map_err(|_| ApiError::InvalidArgument(format!("bad image id {id:?}")))?;
    let key = keys::image(&id);
    for _ in 0..16 {
        let Some(cur) = ctx.store.read::<Image>(&key).await? else {
            return Err(ApiError::NotFound(format!("image {id} not found")));
        };
        let mut img = cur.value;
        let out = f(&mut img)?;
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, cur.mod_rev)])
                    .and_then([put(&key, &img)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(out);
        }
    }
    Err(ApiError::Unavailable(
        "the image changed concurrently too often; retry".into(),
    ))
}

/// A member project named in a request.
fn member_project(m: &str) -> ApiResult<ProjectId> {
    ProjectId::new(m.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// The image `id` as seen by `project` for member calls: NotFound unless
/// it is the owner, a member, or a cloud admin.
async fn member_view(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<Versioned<Image>> {
    let img = super::lookup::usable_image(ctx, project, id).await?;
    let v = &img.value;
    if v.project == *project
        || v.access.members.contains_key(project)
        || crate::caller::is_cloud_admin()
    {
        Ok(img)
    } else {
        Err(ApiError::NotFound(format!("image {} not found", v.id)))
    }
}

/// The members of image `id` `project` may see: all for the owner (and a
/// cloud admin), only itself for a member.
pub async fn list_members(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
) -> ApiResult<(Image, Vec<(ProjectId, ImageMember)>)> {
    let img = member_view(ctx, project, id).await?.value;
    let all = img.project == *project || crate::caller::is_cloud_admin();
    let members = img
        .access
        .members
        .iter()
        .filter(|(p, _)| all || *p == project)
        .map(|(p, m)| (p.clone(), m.clone()))
        .collect();
    Ok((img, members))
}

/// Member `member` of image `id` (owner, that member, or a cloud admin).
pub async fn get_member(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    member: &str,
) -> ApiResult<(ImageId, ImageMember)> {
    let member = member_project(member)?;
    let (img, members) = list_members(ctx, project, id).await?;
    members
        .into_iter()
        .find(|(p, _)| *p == member)
        .map(|(_, m)| (img.id, m))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "project {member} is not a member of image {}",
                img.id
            ))
        })
}

/// The owner `project` shares its `shared` image `id` with `member`
/// (pending until the member answers).
pub async fn add_member(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    member: &str,
) -> ApiResult<(ImageId, ImageMember)> {
    let member = member_project(member)?;
    let img = super::lookup::image(ctx, project, id).await?.value;
    let out = modify(ctx, &img.id.to_string(), |img| {
        if img.project != *project {
            return Err(ApiError::NotFound(format!("image {} not found", img.id)));
        }
        if img.access.visibility != ImageVisibility::Shared {
            return Err(ApiError::PermissionDenied(format!(
                "image {} is {}: only a shared image has members",
                img.id,
                img.access.visibility.as_str()
            )));
        }
        if member == img.project {
            return Err(ApiError::InvalidArgument(
                "the owner is not a member of its own image".into(),
            ));
        }
        if img.access.members.contains_key(&member) {
            return Err(ApiError::AlreadyExists(format!(
                "project {member} is already a member of image {}",
                img.id
            )));
        }
        if img.access.members.len() >= MAX_ATTRS {
            return Err(ApiError::ResourceExhausted(format!(
                "an image has at most {MAX_ATTRS} members"
            )));
        }
        let now = model::now();
        let m = ImageMember {
            status: MemberStatus::Pending,
            created_at: now,
            updated_at: now,
        };
        img.access.members.insert(member.clone(), m.clone());
        Ok(m)
    })
    .await?;
    tracing::info!(image = %img.id, %member, "image shared");
    Ok((img.id, out))
}

/// The member `member` (which must be the caller's `project`; empty: that
/// project) answers
/// image `id`: `accepted`, `rejected` or back to `pending`.
pub async fn set_member_status(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    member: &str,
    status: &str,
) -> ApiResult<(ImageId, ImageMember)> {
    let member = if member.trim().is_empty() {
        project.clone()
    } else {
        member_project(member)?
    };
    let status = MemberStatus::parse(status.trim()).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "member status {status:?} must be pending, accepted or rejected"
        ))
    })?;
    let img = member_view(ctx, project, id).await?.value;
    if member != *project {
        return Err(ApiError::PermissionDenied(format!(
            "only project {member} answers for itself (the owner shares, the member accepts)"
        )));
    }
    let m = modify(ctx, &img.id.to_string(), |img| {
        let m = img.access.members.get_mut(&member).ok_or_else(|| {
            ApiError::NotFound(format!(
                "project {member} is not a member of image {}",
                img.id
            ))
        })?;
        m.status = status;
        m.updated_at = model::now();
        Ok(m.clone())
    })
    .await?;
    Ok((img.id, m))
}

/// The owner `project` stops sharing image `id` with `member`.
pub async fn remove_member(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    member: &str,
) -> ApiResult<()> {
    let member = member_project(member)?;
    let img = member_view(ctx, project, id).await?.value;
    if img.project != *project && !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(format!(
            "only the owner of image {} removes its members",
            img.id
        )));
    }
    modify(ctx, &img.id.to_string(), |img| {
        img.access
            .members
            .remove(&member)
            .map(|_| ())
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "project {member} is not a member of image {}",
                    img.id
                ))
            })
    })
    .await
}
