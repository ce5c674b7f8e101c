//! Volumes: block devices on Ceph RBD (`<volumes pool>/vol-<id>`).
//!
//! Every state change is one etcd transaction comparing the mod_revision
//! it was decided from, so two coordinators serving at once never attach a
//! volume twice or lose a quota count. The RBD work runs on the blocking
//! pool ([`Ctx::ceph`]) between two transactions: creation first reserves
//! the record, the name and the quota (`creating`), then makes the image,
//! then marks it `available` — or, when Ceph fails, removes the image and
//! the record again (or leaves the record in `error` with the reason when
//! even that fails), so neither an orphan RBD image nor a half-made record
//! survives a failed call.
//!
//! Attach and detach only change etcd (the volume and `Instance.volumes` in
//! one transaction); the agent hot-plugs. A detach leaves the volume in
//! `detaching` until [`super::volume_reconcile`] sees it released.

use std::path::PathBuf;
use std::sync::Arc;

use etcd_client::Txn;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{
    self, DiskFormat, Image, Instance, QuotaUsage, Volume, VolumeAttachment, VolumeStatus,
    VolumeType,
};
use nubo_common::proto::{self as pb, volumes_server};
use nubo_common::{ImageId, InstanceId, ProjectId, VolumeId};
use nubo_storage::{BlockStore, ImportWait, RbdStore};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{in_scope, reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::image_store::{ImageStore, Part};
use crate::validate;
use nubo_store::kv::{absent, decode_or_skip, put, unchanged, Versioned};
use nubo_store::TxnBuilder;

type R<T> = Result<Response<T>, Status>;

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

fn status_name(s: VolumeStatus) -> &'static str {
    convert::volume_status_name(s)
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
    pub(crate) project: ProjectId,
    pub(crate) name: String,
    pub(crate) size_gb: u64,
    pub(crate) volume_type: Option<String>,
    pub(crate) image: Option<Image>,
}

impl Ctx {
    /// The Ceph store, or FailedPrecondition when `[ceph]` is not set.
    pub(crate) fn rbd(&self) -> ApiResult<Arc<RbdStore>> {
        self.ceph.get().cloned().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "volumes need Ceph: this coordinator has no [ceph] configuration (--ceph-conf)"
                    .into(),
            )
        })
    }

    /// Where image `img`'s disk data lives on this coordinator.
    fn image_source(&self, img: &Image) -> ImageSource {
        ImageSource {
            id: img.id.to_string(),
            disk: ImageStore::new(&self.cfg.image_dir).path(&img.id.to_string(), Part::Disk),
            format: match img.disk_format {
                DiskFormat::Raw => "raw",
                DiskFormat::Qcow2 => "qcow2",
            },
            scratch: self.cfg.image_dir.join("rbd-import"),
        }
    }

    /// Runs blocking RBD work on the blocking pool.
    pub(crate) async fn ceph<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RbdStore) -> nubo_storage::Result<T> + Send + 'static,
    ) -> ApiResult<T> {
        let rbd = self.rbd()?;
        tokio::task::spawn_blocking(move || f(&rbd))
            .await
            .map_err(|e| ApiError::Unavailable(format!("ceph task failed: {e}")))?
            .map_err(ceph_error)
    }

    /// The volume `r` (id or name) of `project`; other projects' volumes
    /// are not found.
    pub(crate) async fn volume(
        &self,
        project: &ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<Volume>> {
        self.resolve(NameKind::Volume, "volume", project, r, |u| {
            keys::volume(&VolumeId::from_uuid(u))
        })
        .await
    }

    /// The API view of a volume (with its attachment details).
    pub(crate) async fn render_volume(&self, v: &Volume) -> ApiResult<pb::Volume> {
        let inst = match v.attached_to {
            Some(i) => self
                .store
                .read::<Instance>(&keys::instance(&i))
                .await
                .ok()
                .flatten()
                .map(|x| x.value),
            None => None,
        };
        Ok(self.volume_pb(v, inst.as_ref()))
    }

    fn volume_pb(&self, v: &Volume, inst: Option<&Instance>) -> pb::Volume {
        let rbd = self
            .ceph
            .get()
            .map(|s| s.volume_ref(&v.id.to_string()).spec())
            .unwrap_or_default();
        let att = inst.and_then(|i| attachment_of(i, v.id));
        convert::volume(v, rbd, att)
    }

    /// Validates a create request into a [`NewVolume`] (type and image
    /// resolved, size checked against the pool's free space).
    pub(crate) async fn new_volume(
        &self,
        project: ProjectId,
        name: &str,
        size: i64,
        volume_type: &str,
        image_ref: &str,
    ) -> ApiResult<NewVolume> {
        self.rbd()?;
        validate::name("volume", name)?;
        let size_gb = size_gb(size)?;
        let volume_type = match volume_type.trim() {
            "" => None,
            t => {
                if self
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
                let img: Versioned<Image> = self
                    .resolve(NameKind::Image, "image", &project, r, |u| {
                        keys::image(&ImageId::from_uuid(u))
                    })
                    .await?;
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
        self.check_pool_space(size_gb).await?;
        Ok(NewVolume {
            project,
            name: name.to_string(),
            size_gb,
            volume_type,
            image,
        })
    }

    /// ResourceExhausted when `gb` more GiB do not fit in the volumes pool.
    async fn check_pool_space(&self, gb: u64) -> ApiResult<()> {
        let pool = self.rbd()?.pools().volumes.clone();
        let p = pool.clone();
        let avail = self.ceph(move |s| s.pool_max_avail(&p)).await?;
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
    pub(crate) async fn create_volume_from(&self, nv: NewVolume) -> ApiResult<Volume> {
        let id = VolumeId::new_random();
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
                source_image: nv.image.as_ref().map(|i| i.id),
                status_reason: None,
                created_at: model::now(),
            };
            let rev = self.reserve_volume(&vol).await?;
            let (vid, size) = (id.to_string(), nv.size_gb);
            let source = nv.image.as_ref().map(|i| self.image_source(i));
            let made = self
                .ceph(move |s| match source {
                    None => s.create_volume(&vid, size),
                    Some(src) => {
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
                self.undo_create(&vol, rev, &e).await;
                return Err(e);
            }
            vol.status = VolumeStatus::Available;
            let key = keys::volume(&id);
            let resp = self
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
                if let Some(v) = self.store.read::<Volume>(&key).await? {
                    return Ok(v.value);
                }
                return Err(ApiError::Unavailable(format!(
                    "volume {id} vanished while being created"
                )));
            }
            tracing::info!(size_gb = vol.size_gb, "volume created");
            Ok(vol)
        }
        .instrument(span)
        .await
    }

    /// The reservation transaction; returns the record's mod_revision.
    async fn reserve_volume(&self, vol: &Volume) -> ApiResult<i64> {
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
            self.quota_add(&mut t, &vol.project, &quota_delta(1, vol.size_gb))
                .await?;
            let a = self.store.commit(&t).await?;
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
    async fn undo_create(&self, vol: &Volume, rev: i64, cause: &ApiError) {
        let vid = vol.id.to_string();
        let cleaned = self
            .ceph(move |s| match s.delete(&s.volume_ref(&vid)) {
                Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
                r => r,
            })
            .await;
        let key = keys::volume(&vol.id);
        for _ in 0..TXN_RETRIES {
            let t = match &cleaned {
                Ok(()) => match self.delete_ops(vol, rev).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(volume = %vol.id, error = %e, "cannot undo the reservation");
                        return;
                    }
                },
                Err(e) => {
                    let mut v = vol.clone();
                    v.status = VolumeStatus::Error;
                    v.status_reason =
                        Some(format!("creation failed ({cause}); cleanup failed: {e}"));
                    let mut t = TxnBuilder::new();
                    t.unchanged(&key, rev);
                    t.put(&key, &v);
                    t
                }
            };
            match self.store.commit(&t).await {
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
    pub(crate) async fn delete_ops(&self, vol: &Volume, rev: i64) -> ApiResult<TxnBuilder> {
        let key = keys::volume(&vol.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&key, rev);
        t.delete(&key);
        t.delete(&keys::name_index(NameKind::Volume, &vol.project, &vol.name));
        t.delete_prefix(&keys::volume_snapshots_prefix(&vol.id));
        self.quota_release(&mut t, &vol.project, &quota_delta(1, vol.size_gb))
            .await?;
        Ok(t)
    }

    /// Removes volume `vol` (already `deleting`, read at `rev`) from Ceph,
    /// then from etcd. A missing image counts as removed.
    pub(crate) async fn finish_delete(&self, vol: &Volume, mut rev: i64) -> ApiResult<()> {
        let vid = vol.id.to_string();
        self.ceph(move |s| match s.delete(&s.volume_ref(&vid)) {
            Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
            r => r,
        })
        .await?;
        let key = keys::volume(&vol.id);
        for _ in 0..TXN_RETRIES {
            let t = self.delete_ops(vol, rev).await?;
            if self.store.commit(&t).await?.succeeded() {
                tracing::info!(volume = %vol.id, "volume deleted");
                return Ok(());
            }
            // Only the quota usage may have moved (nothing else changes a
            // `deleting` volume but another finisher).
            match self.store.read::<Volume>(&key).await? {
                None => return Ok(()),
                Some(v) => rev = v.mod_rev,
            }
        }
        Err(ApiError::Unavailable(
            "the project's quota usage changed concurrently too often; retry".into(),
        ))
    }

    async fn create_volume(&self, r: pb::CreateVolumeRequest) -> ApiResult<pb::Volume> {
        let project = validate::project(&r.project)?;
        let nv = self
            .new_volume(project, &r.name, r.size_gb, &r.volume_type, &r.image_ref)
            .await?;
        let v = self.create_volume_from(nv).await?;
        Ok(self.volume_pb(&v, None))
    }

    async fn get_volume(&self, r: pb::GetRequest) -> ApiResult<pb::Volume> {
        let project = validate::project(&r.project)?;
        let v = self.volume(&project, &r.r#ref).await?;
        self.render_volume(&v.value).await
    }

    async fn list_volumes(&self, r: pb::ListRequest) -> ApiResult<pb::ListVolumesResponse> {
        let p = validate::project(&r.project)?;
        let (vols, next_page_token) = crate::paging::list_page(
            &self.store,
            &keys::volumes_prefix(),
            r.page_size,
            &r.page_token,
            |kv| decode_or_skip::<Volume>(kv).filter(|v| in_scope(r.all_projects, &p, &v.project)),
        )
        .await?;
        let inst_keys: Vec<String> = vols
            .iter()
            .filter_map(|v| v.attached_to.map(|i| keys::instance(&i)))
            .collect();
        let insts: Vec<Instance> = self
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
                self.volume_pb(v, inst)
            })
            .collect();
        Ok(pb::ListVolumesResponse {
            volumes,
            next_page_token,
        })
    }

    pub(crate) async fn delete_volume(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        self.rbd()?;
        let project = validate::project(&r.project)?;
        for _ in 0..TXN_RETRIES {
            let v = self.volume(&project, &r.r#ref).await?;
            let vol = &v.value;
            match (vol.status, vol.attached_to) {
                (VolumeStatus::Deleting, _) => return Ok(pb::Empty {}),
                (VolumeStatus::Detaching, Some(i)) => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "volume {:?} ({}) is still detaching from server {}; delete it once available",
                        vol.name,
                        vol.id,
                        self.server_label(i).await
                    )))
                }
                (_, Some(i)) => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "volume {:?} ({}) is attached to server {}; detach it first",
                        vol.name,
                        vol.id,
                        self.server_label(i).await
                    )))
                }
                _ => {}
            }
            match vol.status {
                VolumeStatus::Available | VolumeStatus::Error => {}
                s => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "volume {:?} is {}; it can be deleted once available",
                        vol.name,
                        status_name(s)
                    )))
                }
            }
            let mut d = vol.clone();
            d.status = VolumeStatus::Deleting;
            d.status_reason = None;
            let key = keys::volume(&vol.id);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, v.mod_rev)])
                        .and_then([put(&key, &d)]),
                )
                .await?;
            if !resp.succeeded() {
                continue;
            }
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            if let Err(e) = self.finish_delete(&d, rev).await {
                // Keep the reason where the operator looks; deleting again
                // retries.
                let mut failed = d.clone();
                failed.status = VolumeStatus::Error;
                failed.status_reason = Some(format!("delete failed: {e}"));
                if let Ok(Some(cur)) = self.store.read::<Volume>(&key).await {
                    let _ = self
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
            return Ok(pb::Empty {});
        }
        Err(ApiError::Unavailable(
            "the volume changed concurrently too often; retry".into(),
        ))
    }

    /// `name (id)` of a server, or its id when it cannot be read.
    pub(crate) async fn server_label(&self, i: InstanceId) -> String {
        match self.store.read::<Instance>(&keys::instance(&i)).await {
            Ok(Some(s)) => format!("{:?} ({i})", s.value.name),
            _ => i.to_string(),
        }
    }

    async fn resize_volume(&self, r: pb::ResizeVolumeRequest) -> ApiResult<pb::Volume> {
        self.rbd()?;
        let project = validate::project(&r.project)?;
        let new = size_gb(r.size_gb)?;
        for _ in 0..TXN_RETRIES {
            let v = self.volume(&project, &r.r#ref).await?;
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
                return Ok(self.volume_pb(&old, None));
            }
            let grow = new - old.size_gb;
            self.check_pool_space(grow).await?;
            let key = keys::volume(&old.id);
            let mut grown = old.clone();
            grown.size_gb = new;
            let mut t = TxnBuilder::new();
            t.unchanged(&key, v.mod_rev);
            t.put(&key, &grown);
            self.quota_add(&mut t, &old.project, &quota_delta(0, grow))
                .await?;
            let a = self.store.commit(&t).await?;
            if !a.succeeded() {
                continue;
            }
            let rev = a.revision();
            let vid = old.id.to_string();
            if let Err(e) = self
                .ceph(move |s| s.resize_volume(&s.volume_ref(&vid), new))
                .await
            {
                self.undo_resize(&old, rev, grow).await;
                return Err(e);
            }
            tracing::info!(volume = %old.id, from = old.size_gb, to = new, "volume resized");
            return Ok(self.volume_pb(&grown, None));
        }
        Err(ApiError::Unavailable(
            "the volume changed concurrently too often; retry".into(),
        ))
    }

    /// Puts the size and the quota back after a failed RBD resize.
    async fn undo_resize(&self, old: &Volume, mut rev: i64, grow: u64) {
        let key = keys::volume(&old.id);
        for _ in 0..TXN_RETRIES {
            let mut t = TxnBuilder::new();
            t.unchanged(&key, rev);
            t.put(&key, old);
            if let Err(e) = self
                .quota_release(&mut t, &old.project, &quota_delta(0, grow))
                .await
            {
                tracing::warn!(volume = %old.id, error = %e, "cannot undo the resize");
                return;
            }
            match self.store.commit(&t).await {
                Ok(r) if r.succeeded() => return,
                Ok(_) => match self.store.read::<Volume>(&key).await {
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

    async fn attach_volume(&self, r: pb::AttachVolumeRequest) -> ApiResult<pb::Volume> {
        self.rbd()?;
        let project = validate::project(&r.project)?;
        for _ in 0..TXN_RETRIES {
            let v = self.volume(&project, &r.r#ref).await?;
            let inst = self.server_spec(&project, &r.server_ref).await?;
            let vol = &v.value;
            let i = &inst.value;
            if let Some(other) = vol.attached_to {
                let what = if other == i.id {
                    "already attached to this server".to_string()
                } else {
                    format!(
                        "attached to server {}; detach it first",
                        self.server_label(other).await
                    )
                };
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} ({}) is {what}",
                    vol.name, vol.id
                )));
            }
            if vol.status != VolumeStatus::Available {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is {}; only an available volume can be attached",
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
            let mut nv = vol.clone();
            nv.status = VolumeStatus::InUse;
            nv.attached_to = Some(i.id);
            let mut ni = i.clone();
            ni.volumes.push(VolumeAttachment {
                volume: vol.id,
                delete_on_termination: r.delete_on_termination,
            });
            let (vkey, ikey) = (keys::volume(&vol.id), keys::instance(&i.id));
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&vkey, v.mod_rev), unchanged(&ikey, inst.mod_rev)])
                        .and_then([put(&vkey, &nv), put(&ikey, &ni)]),
                )
                .await?;
            if resp.succeeded() {
                tracing::info!(volume = %vol.id, instance = %i.id, "volume attached");
                return Ok(self.volume_pb(&nv, Some(&ni)));
            }
        }
        Err(ApiError::Unavailable(
            "the volume or the server changed concurrently too often; retry".into(),
        ))
    }

    async fn detach_volume(&self, r: pb::DetachVolumeRequest) -> ApiResult<pb::Volume> {
        self.rbd()?;
        let project = validate::project(&r.project)?;
        for _ in 0..TXN_RETRIES {
            let v = self.volume(&project, &r.r#ref).await?;
            let vol = &v.value;
            let Some(iid) = vol.attached_to else {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} ({}) is not attached",
                    vol.name, vol.id
                )));
            };
            match vol.status {
                VolumeStatus::InUse => {}
                VolumeStatus::Detaching => return Ok(self.volume_pb(vol, None)),
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
            let (compares, ops) = match self.store.read::<Instance>(&ikey).await? {
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
                        vec![put(&vkey, &nv), put(&ikey, &ni)],
                    )
                }
                // The server is gone: the reconciler releases it.
                None => (
                    vec![unchanged(&vkey, v.mod_rev), absent(&ikey)],
                    vec![put(&vkey, &nv)],
                ),
            };
            let resp = self
                .store
                .txn(Txn::new().when(compares).and_then(ops))
                .await?;
            if resp.succeeded() {
                tracing::info!(volume = %vol.id, instance = %iid, "volume detaching");
                return Ok(self.volume_pb(&nv, None));
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
        &self,
        inst: &Instance,
        t: &mut TxnBuilder,
    ) -> ApiResult<()> {
        let atts: Vec<&VolumeAttachment> =
            inst.boot_volume.iter().chain(inst.volumes.iter()).collect();
        if atts.is_empty() {
            return Ok(());
        }
        let vkeys: Vec<String> = atts.iter().map(|a| keys::volume(&a.volume)).collect();
        let kvs = self.store.get_many(&vkeys).await?;
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
}

/// The attachment of volume `v` on `inst`, and whether it is the boot disk.
fn attachment_of(inst: &Instance, v: VolumeId) -> Option<(&VolumeAttachment, bool)> {
    if let Some(b) = inst.boot_volume.as_ref().filter(|b| b.volume == v) {
        return Some((b, true));
    }
    inst.volumes
        .iter()
        .find(|a| a.volume == v)
        .map(|a| (a, false))
}

#[tonic::async_trait]
impl volumes_server::Volumes for Ctx {
    async fn create(&self, r: Request<pb::CreateVolumeRequest>) -> R<pb::Volume> {
        reply(self.create_volume(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Volume> {
        reply(self.get_volume(r.into_inner()).await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListVolumesResponse> {
        reply(self.list_volumes(r.into_inner()).await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_volume(r.into_inner()).await)
    }
    async fn resize(&self, r: Request<pb::ResizeVolumeRequest>) -> R<pb::Volume> {
        reply(self.resize_volume(r.into_inner()).await)
    }
    async fn attach(&self, r: Request<pb::AttachVolumeRequest>) -> R<pb::Volume> {
        reply(self.attach_volume(r.into_inner()).await)
    }
    async fn detach(&self, r: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        reply(self.detach_volume(r.into_inner()).await)
    }
    async fn create_snapshot(
        &self,
        r: Request<pb::VolumeSnapshotRequest>,
    ) -> R<pb::VolumeSnapshot> {
        reply(self.create_snapshot(r.into_inner()).await)
    }
    async fn list_snapshots(
        &self,
        r: Request<pb::GetRequest>,
    ) -> R<pb::ListVolumeSnapshotsResponse> {
        reply(self.list_snapshots(r.into_inner()).await)
    }
    async fn delete_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Empty> {
        reply(self.delete_snapshot(r.into_inner()).await)
    }
    async fn revert_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Volume> {
        reply(self.revert_snapshot(r.into_inner()).await)
    }
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
