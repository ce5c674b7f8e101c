//! Volumes: block devices on Ceph RBD (`<volumes pool>/vol-<id>`).
//!
//! Every state change is one etcd transaction comparing the mod_revision
//! it was decided from, so two coordinators serving at once never attach a
//! volume twice or lose a quota count. The RBD work runs on the blocking
//! pool ([`ceph`]) between two transactions: creation first reserves
//! the record, the name and the quota (`creating`), then makes the image,
//! then marks it `available` — or, when Ceph fails, removes the image and
//! the record again (or leaves the record in `error` with the reason when
//! even that fails), so neither an orphan RBD image nor a half-made record
//! survives a failed call.
//!
//! Attach and detach only change etcd (the volume and `Instance.volumes` in
//! one transaction); the agent hot-plugs. A detach leaves the volume in
//! `detaching` until [`crate::background::volume_reconcile`] sees it released.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use etcd_client::Txn;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{
    self, pick_volume_device, DiskFormat, Image, Instance, InstanceStatus, QuotaUsage, Volume,
    VolumeAttachment, VolumeSnapshot, VolumeStatus, VolumeType, ROOT_DEVICE,
};
use nubo_common::{InstanceId, ProjectId, VolumeId};
use nubo_storage::{BlockStore, ImportWait, RbdStore};
use nubo_store::kv::{absent, decode_or_skip, put, unchanged};
use nubo_store::{TxnBuilder, Versioned};
use tracing::Instrument;

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::image_store::{ImageStore, Part};
use crate::state::Ctx;
use crate::validate;

const GIB: u64 = 1 << 30;

/// Largest volume accepted before even asking Ceph (64 TiB).
pub(crate) const MAX_VOLUME_GB: u64 = 64 * 1024;

/// Volumes attached to one server at most (virtio disks `vdb`…`vdq`).
pub(crate) const MAX_ATTACHED: usize = 16;

/// Transactions tried for one state change before answering Unavailable.
pub(crate) const TXN_RETRIES: usize = 32;

/// `status_reason` of volumes deleted because their server was deleted
/// with `delete_on_termination` (the reconciler finishes those at once).
pub(crate) const DELETED_WITH_SERVER: &str = "deleted with its server";
/// `status_reason` of a volume deleted while it was still detaching: the
/// volume loop deletes it once its server has let it go.
pub(crate) const DELETED_WHILE_DETACHING: &str = "deleted while detaching; removed once released";

/// Maps a Ceph failure onto the API error, keeping librbd's explanation.
pub(crate) fn ceph_error(e: nubo_storage::Error) -> ApiError {
    use nubo_storage::Error as E;
    let msg = format!("ceph: {e}");
    match e {
        E::NotFound { .. } => ApiError::NotFound(msg),
        E::AlreadyExists { .. } => ApiError::AlreadyExists(msg),
        E::InvalidArgument { .. } => ApiError::InvalidArgument(msg),
        E::NoSpace { .. } => ApiError::ResourceExhausted(msg),
        E::Busy { .. }
        | E::InUse { .. }
        | E::HasChildren { .. }
        | E::HasSnapshots { .. }
        | E::ReadOnly { .. }
        | E::PermissionDenied { .. } => ApiError::FailedPrecondition(msg),
        _ => ApiError::Unavailable(msg),
    }
}

/// A request size in GiB: > 0 and at most [`MAX_VOLUME_GB`].
pub(crate) fn size_gb(n: i64) -> ApiResult<u64> {
    match u64::try_from(n) {
        Ok(0) => Err(ApiError::InvalidArgument(
            "volume size must be at least 1 GiB (got 0)".into(),
        )),
        Err(_) => Err(ApiError::InvalidArgument(format!(
            "volume size must be at least 1 GiB (got a negative size, {n})"
        ))),
        Ok(g) if g > MAX_VOLUME_GB => Err(ApiError::InvalidArgument(format!(
            "volume size {g} GiB is larger than the maximum of {MAX_VOLUME_GB} GiB"
        ))),
        Ok(g) => Ok(g),
    }
}

/// What one volume of `gb` GiB counts against its project's quota.
pub(crate) fn quota_delta(volumes: u64, gb: u64) -> QuotaUsage {
    QuotaUsage {
        volumes,
        gigabytes: gb,
        ..QuotaUsage::default()
    }
}

/// The API name of a volume status (`in-use` as in OpenStack).
pub fn status_name(s: VolumeStatus) -> &'static str {
    match s {
        VolumeStatus::Creating => "creating",
        VolumeStatus::Available => "available",
        VolumeStatus::InUse => "in-use",
        VolumeStatus::Detaching => "detaching",
        VolumeStatus::Deleting => "deleting",
        VolumeStatus::Error => "error",
        VolumeStatus::Reverting => "reverting",
        VolumeStatus::Attaching => "attaching",
        VolumeStatus::AwaitingTransfer => "awaiting-transfer",
        VolumeStatus::Maintenance => "maintenance",
        VolumeStatus::ErrorDeleting => "error_deleting",
    }
}

/// A volume as front ends show it.
#[derive(Debug, Clone)]
pub struct VolumeView {
    /// The record.
    pub volume: Volume,
    /// Its RBD image `pool/vol-<id>` (empty without Ceph).
    pub rbd_image: String,
    /// Its server's attachment record and whether it is the boot disk.
    pub attachment: Option<(VolumeAttachment, bool)>,
}

/// An image's data in this coordinator's image store, to be imported into
/// the images pool (once per cluster) before volumes are cloned from it.
#[derive(Debug, Clone)]
pub(crate) struct ImageSource {
    id: String,
    disk: PathBuf,
    format: &'static str,
    scratch: PathBuf,
}

impl ImageSource {
    /// The image's `base` snapshot in Ceph, importing the image first if no
    /// client has (race-safe: a concurrent importer is waited for). Blocks.
    fn ensure_in(&self, s: &RbdStore) -> nubo_storage::Result<(nubo_storage::SnapshotRef, bool)> {
        let mut open = || {
            if !self.disk.exists() {
                return Err(nubo_storage::Error::NotFound {
                    op: "read image data",
                    object: self.disk.display().to_string(),
                });
            }
            nubo_storage::raw_image_reader(&self.disk, self.format, &self.scratch, &self.id)
        };
        s.ensure_image(&self.id, &mut open, ImportWait::default())
    }
}

/// What a new volume is made from.
#[derive(Debug, Clone)]
pub(crate) struct NewVolume {
    pub(crate) id: VolumeId,
    pub(crate) project: ProjectId,
    pub(crate) name: String,
    pub(crate) size_gb: u64,
    pub(crate) volume_type: Option<String>,
    pub(crate) image: Option<Image>,
    pub(crate) description: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) copy: Option<CopyOf>,
}

/// Another volume's data a new volume copies.
#[derive(Debug, Clone)]
pub(crate) enum CopyOf {
    /// A snapshot of a volume.
    Snapshot(VolumeSnapshot),
    /// A volume as it is now.
    Volume(Volume),
}

/// The name of a volume created without one: `volume-<id>`.
pub fn generated_name(id: &VolumeId) -> String {
    format!("volume-{id}")
}

/// The attachment of volume `v` on `inst`, and whether it is the boot disk.
fn attachment_of(inst: &Instance, v: VolumeId) -> Option<(VolumeAttachment, bool)> {
    if let Some(b) = inst.boot_volume.as_ref().filter(|b| b.volume == v) {
        return Some((b.clone(), true));
    }
    inst.volumes
        .iter()
        .find(|a| a.volume == v)
        .map(|a| (a.clone(), false))
}

/// The Ceph store, or FailedPrecondition when `[ceph]` is not set.
pub(crate) fn rbd(ctx: &Ctx) -> ApiResult<Arc<RbdStore>> {
    ctx.ceph.get().cloned().ok_or_else(|| {
        ApiError::FailedPrecondition(
            "volumes need Ceph: this coordinator has no [ceph] configuration (--ceph-conf)".into(),
        )
    })
}

/// Where image `img`'s disk data lives on this coordinator.
pub(crate) fn image_source(ctx: &Ctx, img: &Image) -> ImageSource {
    ImageSource {
        id: img.id.to_string(),
        disk: ImageStore::new(&ctx.cfg.image_dir).path(&img.id.to_string(), Part::Disk),
        format: match img.disk_format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        },
        scratch: ctx.cfg.image_dir.join("rbd-import"),
    }
}

/// Runs blocking RBD work on the blocking pool.
pub(crate) async fn ceph<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&RbdStore) -> nubo_storage::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let rbd = rbd(ctx)?;
    tokio::task::spawn_blocking(move || f(&rbd))
        .await
        .map_err(|e| ApiError::Unavailable(format!("ceph task failed: {e}")))?
        .map_err(ceph_error)
}

/// The API view of a volume (with its attachment details).
pub(crate) async fn render_volume(ctx: &Ctx, v: &Volume) -> ApiResult<VolumeView> {
    let inst = match v.attached_to {
        Some(i) => ctx
            .store
            .read::<Instance>(&keys::instance(&i))
            .await
            .ok()
            .flatten()
            .map(|x| x.value),
        None => None,
    };
    Ok(view(ctx, v, inst.as_ref()))
}

/// The view of `v`, attached (or not) to `inst`.
pub(crate) fn view(ctx: &Ctx, v: &Volume, inst: Option<&Instance>) -> VolumeView {
    let rbd_image = ctx
        .ceph
        .get()
        .map(|s| s.volume_ref(&v.id.to_string()).spec())
        .unwrap_or_default();
    VolumeView {
        volume: v.clone(),
        rbd_image,
        attachment: inst.and_then(|i| attachment_of(i, v.id)),
    }
}

/// Validates a create request into a [`NewVolume`] (type and image
/// resolved, size checked against the pool's free space).
pub(crate) async fn new_volume(
    ctx: &Ctx,
    project: ProjectId,
    name: &str,
    size: i64,
    volume_type: &str,
    image_ref: &str,
) -> ApiResult<NewVolume> {
    rbd(ctx)?;
    let id = VolumeId::new_random();
    let name = match name.trim() {
        "" => generated_name(&id),
        _ => name.to_string(),
    };
    validate::name("volume", &name)?;
    let size_gb = size_gb(size)?;
    let volume_type = match volume_type.trim() {
        "" => None,
        t => {
            if ctx
                .store
                .read::<VolumeType>(&keys::volume_type(t))
                .await?
                .is_none()
            {
                return Err(ApiError::NotFound(format!("volume type {t:?} not found")));
            }
            Some(t.to_string())
        }
    };
    let image = match image_ref.trim() {
        "" => None,
        r => {
            let img: Versioned<Image> = super::lookup::usable_image(ctx, &project, r).await?;
            if img.value.attrs.deactivated {
                return Err(ApiError::InvalidArgument(format!(
                    "image {} is deactivated: no volume is made from it until it is reactivated",
                    img.value.id
                )));
            }
            let need = img
                .value
                .size_bytes
                .div_ceil(GIB)
                .max(img.value.min_disk_gb);
            if size_gb < need {
                return Err(ApiError::InvalidArgument(format!(
                    "image {:?} needs a volume of at least {need} GiB; {size_gb} GiB requested",
                    img.value.name
                )));
            }
            Some(img.value)
        }
    };
    check_per_volume_limit(ctx, &project, size_gb).await?;
    check_pool_space(ctx, size_gb).await?;
    Ok(NewVolume {
        id,
        project,
        name,
        size_gb,
        volume_type,
        image,
        description: None,
        metadata: BTreeMap::new(),
        copy: None,
    })
}

/// ResourceExhausted when a volume of `gb` GiB is larger than
/// `project`'s `per_volume_gigabytes` quota (quotas enforced only).
pub(crate) async fn check_per_volume_limit(
    ctx: &Ctx,
    project: &ProjectId,
    gb: u64,
) -> ApiResult<()> {
    if !super::quotas::enforced(ctx) {
        return Ok(());
    }
    if let Some(max) = super::quotas::limit(ctx, project)
        .await?
        .per_volume_gigabytes
    {
        if gb > max {
            return Err(ApiError::ResourceExhausted(format!(
                "quota exceeded for project {project}: per_volume_gigabytes limit {max} GiB, requested a volume of {gb} GiB"
            )));
        }
    }
    Ok(())
}

/// ResourceExhausted when `gb` more GiB do not fit in the volumes pool.
pub(crate) async fn check_pool_space(ctx: &Ctx, gb: u64) -> ApiResult<()> {
    let pool = rbd(ctx)?.pools().volumes.clone();
    let p = pool.clone();
    let avail = ceph(ctx, move |s| s.pool_max_avail(&p)).await?;
    if gb.saturating_mul(GIB) > avail {
        return Err(ApiError::ResourceExhausted(format!(
            "{gb} GiB is beyond the free space of Ceph pool {pool:?} ({} GiB available)",
            avail / GIB
        )));
    }
    Ok(())
}

/// Creates a volume: reserve (record `creating` + name + quota, one
/// transaction), make the RBD image, mark it `available`. A Ceph failure
/// undoes the reservation.
pub(crate) async fn create_volume_from(ctx: &Ctx, nv: NewVolume) -> ApiResult<Volume> {
    let id = nv.id;
    let span = tracing::info_span!("volume.create", volume = %id, project = %nv.project);
    async move {
        let mut vol = Volume {
            id,
            name: nv.name.clone(),
            project: nv.project.clone(),
            size_gb: nv.size_gb,
            volume_type: nv.volume_type.clone(),
            status: VolumeStatus::Creating,
            attached_to: None,
            source_image: nv.image.as_ref().map(|i| i.id).or(match &nv.copy {
                Some(CopyOf::Volume(v)) => v.source_image,
                _ => None,
            }),
            status_reason: None,
            created_by: crate::caller::caller().map(|c| c.claims.user),
            created_at: model::now(),
            description: nv.description.clone(),
            metadata: nv.metadata.clone(),
            bootable: match &nv.copy {
                Some(CopyOf::Volume(v)) => Some(v.is_bootable()),
                _ => None,
            },
            read_only: None,
            image_metadata: match (&nv.image, &nv.copy) {
                (Some(img), _) => image_metadata_of(img),
                (None, Some(CopyOf::Volume(v))) => v.image_metadata.clone(),
                _ => BTreeMap::new(),
            },
            source_volume: match &nv.copy {
                Some(CopyOf::Volume(v)) => Some(v.id),
                _ => None,
            },
            source_snapshot: match &nv.copy {
                Some(CopyOf::Snapshot(s)) => Some(s.snapshot_id()),
                _ => None,
            },
            device: None,
            status_reset: None,
        };
        let rev = reserve_volume(ctx, &vol).await?;
        let (vid, size) = (id.to_string(), nv.size_gb);
        let source = nv.image.as_ref().map(|i| image_source(ctx, i));
        let copy = nv.copy.clone();
        let made = ceph(ctx, move |s| match (source, copy) {
                (None, Some(CopyOf::Snapshot(snap))) => {
                    let src = nubo_storage::SnapshotRef {
                        disk: s.volume_ref(&snap.volume.to_string()),
                        snap: snap.rbd_snap().to_string(),
                    };
                    s.copy_volume_from_snapshot(&src, &vid, size)
                }
                (None, Some(CopyOf::Volume(v))) => s.copy_volume(&v.id.to_string(), &vid, size),
                (None, None) => s.create_volume(&vid, size),
                (Some(src), _) => {
                    let (parent, imported) = src.ensure_in(s)?;
                    if imported {
                        tracing::info!(image = %src.id, "imported image into ceph");
                    }
                    s.clone_volume_from_image(&parent, &vid, size)
                }
            })
            .await;
        if let Err(e) = made {
            let e = match (e, &nv.image) {
                (ApiError::NotFound(m), Some(img)) => ApiError::FailedPrecondition(format!(
                    "image {} is not imported into Ceph and this coordinator has no data to import it from ({m}); upload it with `nubo image create --file`",
                    img.name
                )),
                (e, _) => e,
            };
            tracing::warn!(error = %e, "creating the RBD image failed; undoing the reservation");
            undo_create(ctx, &vol, rev, &e).await;
            return Err(e);
        }
        vol.status = VolumeStatus::Available;
        let key = keys::volume(&id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, rev)])
                    .and_then([put(&key, &vol)]),
            )
            .await?;
        if !resp.succeeded() {
            // Only the reconciler touches a `creating` volume (after
            // a long time): report what is there now.
            if let Some(v) = ctx.store.read::<Volume>(&key).await? {
                return Ok(v.value);
            }
            // Force-deleted by a cloud admin meanwhile: the image just
            // made must not outlive its record.
            let vid = id.to_string();
            if let Err(e) = ceph(ctx, move |s| match s.delete(&s.volume_ref(&vid)) {
                Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
                r => r,
            })
            .await
            {
                tracing::warn!(error = %e, "the record was deleted during creation and its RBD image could not be removed");
            }
            return Err(ApiError::NotFound(format!(
                "volume {id} was deleted while being created"
            )));
        }
        tracing::info!(size_gb = vol.size_gb, "volume created");
        Ok(vol)
    }
    .instrument(span)
    .await
}

/// The reservation transaction; returns the record's mod_revision.
pub(crate) async fn reserve_volume(ctx: &Ctx, vol: &Volume) -> ApiResult<i64> {
    let vkey = keys::volume(&vol.id);
    let idx = keys::name_index(NameKind::Volume, &vol.project, &vol.name);
    for _ in 0..TXN_RETRIES {
        let mut t = TxnBuilder::new();
        let name_free = t.absent(&idx);
        t.absent(&vkey);
        let type_there = vol
            .volume_type
            .as_ref()
            .map(|ty| (ty, t.present(&keys::volume_type(ty))));
        t.put(&idx, &vol.id);
        t.put(&vkey, vol);
        super::quotas::add(ctx, &mut t, &vol.project, &quota_delta(1, vol.size_gb)).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            return Ok(a.revision());
        }
        if !a.held(name_free) {
            return Err(ApiError::AlreadyExists(format!(
                "a volume named {:?} exists in project {}",
                vol.name, vol.project
            )));
        }
        if let Some((ty, there)) = type_there {
            if !a.held(there) {
                return Err(ApiError::NotFound(format!("volume type {ty:?} not found")));
            }
        }
        // The quota usage moved: check again.
    }
    Err(ApiError::Unavailable(
        "the project's quota usage changed concurrently too often; retry".into(),
    ))
}

/// After a failed RBD create: remove a possibly half-made image, then
/// the reservation; if the image cannot be removed, the record stays in
/// `error` with the reason (it still counts, and deleting it retries).
pub(crate) async fn undo_create(ctx: &Ctx, vol: &Volume, rev: i64, cause: &ApiError) {
    let vid = vol.id.to_string();
    let cleaned = ceph(ctx, move |s| match s.delete(&s.volume_ref(&vid)) {
        Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
        r => r,
    })
    .await;
    let key = keys::volume(&vol.id);
    for _ in 0..TXN_RETRIES {
        let t = match &cleaned {
            Ok(()) => match delete_ops(ctx, vol, rev).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(volume = %vol.id, error = %e, "cannot undo the reservation");
                    return;
                }
            },
            Err(e) => {
                let mut v = vol.clone();
                v.status = VolumeStatus::Error;
                v.status_reason = Some(format!("creation failed ({cause}); cleanup failed: {e}"));
                let mut t = TxnBuilder::new();
                t.unchanged(&key, rev);
                t.put(&key, &v);
                t
            }
        };
        match ctx.store.commit(&t).await {
            Ok(r) if r.succeeded() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(volume = %vol.id, error = %e, "cannot undo the reservation");
                return;
            }
        }
    }
}

/// The transaction removing volume `vol` (read at `rev`): its record,
/// name, snapshot records and quota usage.
pub(crate) async fn delete_ops(ctx: &Ctx, vol: &Volume, rev: i64) -> ApiResult<TxnBuilder> {
    let key = keys::volume(&vol.id);
    // No snapshot is added meanwhile: its creation compares the
    // volume's revision, which this transaction holds.
    let snaps = super::snapshot_records::records_of(ctx, &vol.id).await?;
    let held = super::snapshot_records::quota_of(snaps.iter().map(|(_, s, _)| s));
    let mut t = TxnBuilder::new();
    t.unchanged(&key, rev);
    t.delete(&key);
    t.delete(&keys::name_index(NameKind::Volume, &vol.project, &vol.name));
    t.delete_prefix(&keys::volume_snapshots_prefix(&vol.id));
    let delta = quota_delta(1, vol.size_gb).saturating_add(&held);
    super::quotas::release(ctx, &mut t, &vol.project, &delta).await?;
    Ok(t)
}

/// Removes volume `vol` (already `deleting`, read at `rev`) from Ceph,
/// then from etcd. A missing image counts as removed.
pub(crate) async fn finish_delete(ctx: &Ctx, vol: &Volume, mut rev: i64) -> ApiResult<()> {
    let vid = vol.id.to_string();
    ceph(ctx, move |s| match s.delete(&s.volume_ref(&vid)) {
        Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
        r => r,
    })
    .await?;
    let key = keys::volume(&vol.id);
    for _ in 0..TXN_RETRIES {
        let t = delete_ops(ctx, vol, rev).await?;
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(volume = %vol.id, "volume deleted");
            return Ok(());
        }
        // Only the quota usage may have moved (nothing else changes a
        // `deleting` volume but another finisher).
        match ctx.store.read::<Volume>(&key).await? {
            None => return Ok(()),
            Some(v) => rev = v.mod_rev,
        }
    }
    Err(ApiError::Unavailable(
        "the project's quota usage changed concurrently too often; retry".into(),
    ))
}

/// The image metadata a volume made from `img` starts with (Cinder's
/// `volume_image_metadata`: the image's id, name and formats). Pure.
pub(crate) fn image_metadata_of(img: &Image) -> BTreeMap<String, String> {
    let format = match img.disk_format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    [
        ("image_id", img.id.to_string()),
        ("image_name", img.name.clone()),
        ("disk_format", format.to_string()),
        ("container_format", "bare".to_string()),
        ("size", img.size_bytes.to_string()),
        ("min_disk", img.min_disk_gb.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What a volume is created from and with, beyond its size and type.
#[derive(Debug, Default, Clone)]
pub struct CreateFrom {
    /// Image (id or name) to clone; empty: none.
    pub image_ref: String,
    /// Snapshot id to copy; empty: none.
    pub snapshot_id: String,
    /// Volume (id or name) to copy; empty: none.
    pub source_volume: String,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Creates volume `name` (empty: `volume-<id>`) of `size_gb` GiB for
/// `project`, of type `volume_type` (empty: none), blank or from what
/// `from` names (an image, a snapshot or a volume; at most one). A copy
/// of a snapshot or volume with `size_gb` 0 gets its source's size.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
    size_gb: i64,
    volume_type: &str,
    from: CreateFrom,
) -> ApiResult<VolumeView> {
    let sources = [&from.image_ref, &from.snapshot_id, &from.source_volume]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .count();
    if sources > 1 {
        return Err(ApiError::InvalidArgument(
            "a volume is made from at most one of an image, a snapshot and a volume".into(),
        ));
    }
    validate::metadata(&from.metadata)?;
    if let Some(d) = &from.description {
        validate::description(d)?;
    }
    let copy = match (from.snapshot_id.trim(), from.source_volume.trim()) {
        ("", "") => None,
        (sid, "") => {
            let (_, snap, _) = super::lookup::snapshot_by_id(ctx, project, sid).await?;
            super::snapshot_records::require_available(&snap)?;
            Some(CopyOf::Snapshot(snap))
        }
        (_, vr) => {
            let v = super::lookup::volume(ctx, project, vr).await?.value;
            if !matches!(v.status, VolumeStatus::Available | VolumeStatus::InUse) {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is {}; only an available or in-use volume can be copied",
                    v.name,
                    status_name(v.status)
                )));
            }
            Some(CopyOf::Volume(v))
        }
    };
    // A copy without a size has its source's.
    let size_gb = match (&copy, size_gb) {
        (Some(CopyOf::Snapshot(s)), 0) => i64::try_from(s.size_gb).unwrap_or(i64::MAX),
        (Some(CopyOf::Volume(v)), 0) => i64::try_from(v.size_gb).unwrap_or(i64::MAX),
        _ => size_gb,
    };
    let mut nv = new_volume(
        ctx,
        project.clone(),
        name,
        size_gb,
        volume_type,
        &from.image_ref,
    )
    .await?;
    if let Some(c) = &copy {
        let (what, need) = match c {
            CopyOf::Snapshot(s) => (format!("snapshot {:?}", s.name), s.size_gb),
            CopyOf::Volume(v) => (format!("volume {:?}", v.name), v.size_gb),
        };
        if nv.size_gb < need {
            return Err(ApiError::InvalidArgument(format!(
                "a volume made from {what} needs at least its {need} GiB; {} GiB requested",
                nv.size_gb
            )));
        }
    }
    nv.copy = copy;
    nv.description = from.description.filter(|d| !d.is_empty());
    nv.metadata = from.metadata;
    let v = create_volume_from(ctx, nv).await?;
    Ok(view(ctx, &v, None))
}

/// The volume `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<VolumeView> {
    let v = super::lookup::volume(ctx, project, r).await?;
    render_volume(ctx, &v.value).await
}

/// One page of the volumes `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<VolumeView>> {
    let Page { items: vols, next } =
        super::lookup::list_scoped::<Volume>(ctx, &keys::volumes_prefix(), scope, page).await?;
    let inst_keys: Vec<String> = vols
        .iter()
        .filter_map(|v| v.attached_to.map(|i| keys::instance(&i)))
        .collect();
    let insts: Vec<Instance> = ctx
        .store
        .get_many(&inst_keys)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip::<Instance>)
        .collect();
    let volumes = vols
        .iter()
        .map(|v| {
            let inst = v.attached_to.and_then(|i| insts.iter().find(|x| x.id == i));
            view(ctx, v, inst)
        })
        .collect();
    Ok(Page {
        items: volumes,
        next,
    })
}

/// Deletes volume `r` of `project` (RBD image, snapshots, record, quota);
/// refused while attached.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    delete_with(ctx, project, r, false).await
}

/// [`delete`], or with `force` (a cloud admin's force-delete, checked by
/// the caller) whatever the volume's status — a `deleting` one is
/// finished now; an attached one is still refused (force-detach first).
pub(crate) async fn delete_with(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    force: bool,
) -> ApiResult<()> {
    rbd(ctx)?;
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, r).await?;
        let vol = &v.value;
        match (vol.status, vol.attached_to) {
            (VolumeStatus::Deleting, None) if force => {}
            (VolumeStatus::Deleting, _) => return Ok(()),
            // Deleted by the volume loop once released (a server deleted
            // just now, or a detach the guest has not completed).
            (VolumeStatus::Detaching, Some(_)) => {
                if mark_deleting(ctx, &v, Some(DELETED_WHILE_DETACHING))
                    .await?
                    .is_some()
                {
                    tracing::info!(volume = %vol.id, "volume deleted while detaching; removed once released");
                    return Ok(());
                }
                continue;
            }
            (_, Some(i)) => {
                let how = if force {
                    "force-detach it first (nubo volume detach --force)"
                } else {
                    "detach it first"
                };
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} ({}) is attached to server {}; {how}",
                    vol.name,
                    vol.id,
                    server_label(ctx, i).await
                )));
            }
            _ => {}
        }
        if vol.status == VolumeStatus::AwaitingTransfer {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is offered by a volume transfer; delete the transfer first",
                vol.name
            )));
        }
        match vol.status {
            VolumeStatus::Available | VolumeStatus::Error => {}
            _ if force => {
                tracing::warn!(volume = %vol.id, status = status_name(vol.status), "volume force-deleted by a cloud admin");
            }
            s => {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is {}; it can be deleted once available",
                    vol.name,
                    status_name(s)
                )))
            }
        }
        let Some((d, rev)) = mark_deleting(ctx, &v, None).await? else {
            continue;
        };
        let key = keys::volume(&vol.id);
        if let Err(e) = finish_delete(ctx, &d, rev).await {
            // Keep the reason where the operator looks; deleting again
            // retries.
            let mut failed = d.clone();
            failed.status = VolumeStatus::Error;
            failed.status_reason = Some(format!("delete failed: {e}"));
            if let Ok(Some(cur)) = ctx.store.read::<Volume>(&key).await {
                let _ = ctx
                    .store
                    .txn(
                        Txn::new()
                            .when([unchanged(&key, cur.mod_rev)])
                            .and_then([put(&key, &failed)]),
                    )
                    .await;
            }
            return Err(e);
        }
        return Ok(());
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// `name (id)` of a server, or its id when it cannot be read.
pub(crate) async fn server_label(ctx: &Ctx, i: InstanceId) -> String {
    match ctx.store.read::<Instance>(&keys::instance(&i)).await {
        Ok(Some(s)) => format!("{:?} ({i})", s.value.name),
        _ => i.to_string(),
    }
}

/// Grows available volume `r` of `project` to `size` GiB.
pub async fn resize(ctx: &Ctx, project: &ProjectId, r: &str, size: i64) -> ApiResult<VolumeView> {
    rbd(ctx)?;
    let new = size_gb(size)?;
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, r).await?;
        let old = v.value.clone();
        if old.status != VolumeStatus::Available {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; only an available (detached) volume can be resized",
                old.name,
                status_name(old.status)
            )));
        }
        if new < old.size_gb {
            return Err(ApiError::InvalidArgument(format!(
                "volume {:?} is {} GiB; volumes only grow (asked for {new} GiB)",
                old.name, old.size_gb
            )));
        }
        if new == old.size_gb {
            return Ok(view(ctx, &old, None));
        }
        let grow = new - old.size_gb;
        check_per_volume_limit(ctx, &old.project, new).await?;
        check_pool_space(ctx, grow).await?;
        let key = keys::volume(&old.id);
        let mut grown = old.clone();
        grown.size_gb = new;
        let mut t = TxnBuilder::new();
        t.unchanged(&key, v.mod_rev);
        t.put(&key, &grown);
        super::quotas::add(ctx, &mut t, &old.project, &quota_delta(0, grow)).await?;
        let a = ctx.store.commit(&t).await?;
        if !a.succeeded() {
            continue;
        }
        let rev = a.revision();
        let vid = old.id.to_string();
        if let Err(e) = ceph(ctx, move |s| s.resize_volume(&s.volume_ref(&vid), new)).await {
            undo_resize(ctx, &old, rev, grow).await;
            return Err(e);
        }
        tracing::info!(volume = %old.id, from = old.size_gb, to = new, "volume resized");
        return Ok(view(ctx, &grown, None));
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// Puts the size and the quota back after a failed RBD resize.
pub(crate) async fn undo_resize(ctx: &Ctx, old: &Volume, mut rev: i64, grow: u64) {
    let key = keys::volume(&old.id);
    for _ in 0..TXN_RETRIES {
        let mut t = TxnBuilder::new();
        t.unchanged(&key, rev);
        t.put(&key, old);
        if let Err(e) =
            super::quotas::release(ctx, &mut t, &old.project, &quota_delta(0, grow)).await
        {
            tracing::warn!(volume = %old.id, error = %e, "cannot undo the resize");
            return;
        }
        match ctx.store.commit(&t).await {
            Ok(r) if r.succeeded() => return,
            Ok(_) => match ctx.store.read::<Volume>(&key).await {
                Ok(Some(v)) if v.value.size_gb == old.size_gb + grow => rev = v.mod_rev,
                _ => return,
            },
            Err(e) => {
                tracing::warn!(volume = %old.id, error = %e, "cannot undo the resize");
                return;
            }
        }
    }
}

/// Attaches available volume `r` of `project` to server `server` (the
/// agent hot-plugs it).
pub async fn attach(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    server: &str,
    delete_on_termination: bool,
    device_hint: Option<&str>,
) -> ApiResult<VolumeView> {
    rbd(ctx)?;
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, r).await?;
        let inst = super::lookup::server(ctx, project, server).await?;
        let vol = &v.value;
        let i = &inst.value;
        if let Some(other) = vol.attached_to {
            let what = if other == i.id {
                "already attached to this server".to_string()
            } else {
                format!(
                    "attached to server {}; detach it first",
                    server_label(ctx, other).await
                )
            };
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} ({}) is {what}",
                vol.name, vol.id
            )));
        }
        if !matches!(
            vol.status,
            VolumeStatus::Available | VolumeStatus::Attaching
        ) {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; only an available (or reserved) volume can be attached",
                vol.name,
                status_name(vol.status)
            )));
        }
        if i.volumes.len() >= MAX_ATTACHED {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} already has {MAX_ATTACHED} volumes attached",
                i.name
            )));
        }
        let used = devices_in_use(ctx, i).await?;
        let Some(device) = pick_volume_device(used.iter().map(String::as_str), device_hint) else {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} has no free device for another volume",
                i.name
            )));
        };
        let mut nv = vol.clone();
        nv.status = VolumeStatus::InUse;
        nv.attached_to = Some(i.id);
        nv.device = Some(device);
        let mut ni = i.clone();
        ni.volumes.push(VolumeAttachment {
            volume: vol.id,
            delete_on_termination,
        });
        let (vkey, ikey) = (keys::volume(&vol.id), keys::instance(&i.id));
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&vkey, v.mod_rev), unchanged(&ikey, inst.mod_rev)])
                    .and_then(
                        std::iter::once(put(&vkey, &nv))
                            .chain(super::specs::put_ops(&ni))
                            .collect::<Vec<_>>(),
                    ),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(volume = %vol.id, instance = %i.id, "volume attached");
            return Ok(view(ctx, &nv, Some(&ni)));
        }
    }
    Err(ApiError::Unavailable(
        "the volume or the server changed concurrently too often; retry".into(),
    ))
}

/// Marks volume `v` `deleting` (with `reason`) if it is still as read:
/// the record written and the revision of the write, `None` when it
/// changed meanwhile.
async fn mark_deleting(
    ctx: &Ctx,
    v: &Versioned<Volume>,
    reason: Option<&str>,
) -> ApiResult<Option<(Volume, i64)>> {
    let mut d = v.value.clone();
    d.status = VolumeStatus::Deleting;
    d.status_reason = reason.map(str::to_string);
    d.status_reset = None;
    let key = keys::volume(&d.id);
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([unchanged(&key, v.mod_rev)])
                .and_then([put(&key, &d)]),
        )
        .await?;
    Ok(resp
        .succeeded()
        .then(|| (d, resp.header().map(|h| h.revision()).unwrap_or(0))))
}

/// The guest devices of `inst` taken by volumes: those of its attached
/// volumes and of volumes its agent still reports plugged (a detach the
/// guest has not completed yet), read from their records.
async fn devices_in_use(ctx: &Ctx, inst: &Instance) -> ApiResult<Vec<String>> {
    let mut ids: BTreeSet<VolumeId> = inst.volumes.iter().map(|a| a.volume).collect();
    if let Some(node) = &inst.node {
        if let Some(s) = ctx
            .store
            .read::<InstanceStatus>(&keys::instance_status(node, &inst.id))
            .await?
        {
            ids.extend(s.value.volumes);
        }
    }
    let vkeys: Vec<String> = ids.iter().map(keys::volume).collect();
    let mut used = vec![ROOT_DEVICE.to_string()];
    for kv in ctx.store.get_many(&vkeys).await?.into_iter().flatten() {
        if let Some(v) = decode_or_skip::<Volume>(&kv) {
            if v.attached_to == Some(inst.id) {
                used.extend(v.device);
            }
        }
    }
    Ok(used)
}

/// Detaches volume `r` of `project` from its server: `detaching` until
/// the volume loop sees it released.
pub async fn detach(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<VolumeView> {
    detach_with(ctx, project, r, Detach::default()).await
}

/// How a detach treats a volume in an unexpected state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detach {
    /// A volume that is not attached is left as it is (Cinder's
    /// `os-detach`) instead of refused.
    pub if_attached: bool,
    /// A cloud admin's force-detach (checked by the caller): whatever
    /// the recorded status (one reset by hand included), any project's
    /// volume by id.
    pub force: bool,
}

/// [`detach`] with the options of `how`. The server's spec loses the
/// volume and the volume is `detaching` until its node lets it go — a
/// force-detach too, so it is never offered while still plugged.
pub async fn detach_with(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    how: Detach,
) -> ApiResult<VolumeView> {
    rbd(ctx)?;
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, r).await?;
        let vol = &v.value;
        let Some(iid) = vol.attached_to else {
            if how.if_attached && vol.status != VolumeStatus::Maintenance {
                return Ok(view(ctx, vol, None));
            }
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} ({}) is not attached",
                vol.name, vol.id
            )));
        };
        let held = vol.status_held_by_admin(status_name(vol.status));
        match vol.status {
            VolumeStatus::Deleting => {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is being deleted",
                    vol.name
                )))
            }
            VolumeStatus::Detaching if !(how.force && held) => return Ok(view(ctx, vol, None)),
            _ if how.force => {
                tracing::warn!(volume = %vol.id, instance = %iid, status = status_name(vol.status), "volume force-detached by a cloud admin");
            }
            // The attachment is real whatever an admin's reset recorded.
            VolumeStatus::InUse | VolumeStatus::Available | VolumeStatus::Error => {}
            s => {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is {}",
                    vol.name,
                    status_name(s)
                )))
            }
        }
        let vkey = keys::volume(&vol.id);
        let ikey = keys::instance(&iid);
        let mut nv = vol.clone();
        nv.status = VolumeStatus::Detaching;
        nv.status_reset = None;
        let (compares, ops) = match ctx.store.read::<Instance>(&ikey).await? {
            Some(inst) => {
                if inst.value.boot_volume.as_ref().map(|b| b.volume) == Some(vol.id) {
                    return Err(ApiError::FailedPrecondition(format!(
                        "volume {:?} is the boot disk of server {:?}; delete the server instead",
                        vol.name, inst.value.name
                    )));
                }
                let mut ni = inst.value.clone();
                ni.volumes.retain(|a| a.volume != vol.id);
                (
                    vec![unchanged(&vkey, v.mod_rev), unchanged(&ikey, inst.mod_rev)],
                    std::iter::once(put(&vkey, &nv))
                        .chain(super::specs::put_ops(&ni))
                        .collect(),
                )
            }
            // The server is gone: the reconciler releases it.
            None => (
                vec![unchanged(&vkey, v.mod_rev), absent(&ikey)],
                vec![put(&vkey, &nv)],
            ),
        };
        let resp = ctx
            .store
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        if resp.succeeded() {
            tracing::info!(volume = %vol.id, instance = %iid, "volume detaching");
            return Ok(view(ctx, &nv, None));
        }
    }
    Err(ApiError::Unavailable(
        "the volume or the server changed concurrently too often; retry".into(),
    ))
}

/// Compares and writes for a server being deleted: each volume still
/// attached to it becomes `detaching` (released by the reconciler once
/// no client holds it) or, with `delete_on_termination`, `deleting`
/// (removed by the reconciler once the hypervisor let it go).
pub(crate) async fn release_volumes_of(
    ctx: &Ctx,
    inst: &Instance,
    t: &mut TxnBuilder,
) -> ApiResult<()> {
    let atts: Vec<&VolumeAttachment> = inst.boot_volume.iter().chain(inst.volumes.iter()).collect();
    if atts.is_empty() {
        return Ok(());
    }
    let vkeys: Vec<String> = atts.iter().map(|a| keys::volume(&a.volume)).collect();
    let kvs = ctx.store.get_many(&vkeys).await?;
    for ((a, key), kv) in atts.iter().zip(&vkeys).zip(kvs) {
        let Some(kv) = kv else { continue };
        let Some(mut v) = decode_or_skip::<Volume>(&kv) else {
            continue;
        };
        if v.attached_to != Some(inst.id) {
            continue;
        }
        if a.delete_on_termination {
            v.status = VolumeStatus::Deleting;
            v.status_reason = Some(DELETED_WITH_SERVER.into());
        } else {
            v.status = VolumeStatus::Detaching;
        }
        t.unchanged(key, kv.mod_revision());
        t.put(key, &v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_with_reasons() {
        assert!(size_gb(0).unwrap_err().to_string().contains("got 0"));
        assert!(size_gb(-3).unwrap_err().to_string().contains("negative"));
        assert!(size_gb(i64::MIN).is_err());
        assert!(size_gb((MAX_VOLUME_GB + 1) as i64)
            .unwrap_err()
            .to_string()
            .contains("maximum"));
        assert_eq!(size_gb(10).unwrap(), 10);
    }

    #[test]
    fn ceph_errors_map_to_codes() {
        let e = ceph_error(nubo_storage::Error::NotFound {
            op: "open image",
            object: "volumes/vol-x".into(),
        });
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.to_string().contains("volumes/vol-x"));
        let e = ceph_error(nubo_storage::Error::InUse {
            op: "delete disk",
            object: "volumes/vol-x".into(),
            watchers: vec!["1.2.3.4:0/1".into()],
        });
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }
}
