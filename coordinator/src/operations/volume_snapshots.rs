//! Volume snapshots: `/nubo/v1/volume-snapshots/<volume>/<name>` and the RBD
//! snapshot of the same name on the volume's image.
//!
//! The record is written first (create-if-absent, comparing the volume's
//! revision so a volume being deleted gets none), then the RBD snapshot is
//! taken; a Ceph failure removes the record again. Deleting removes the RBD
//! snapshot first (a missing one counts as removed), then the record. So
//! concurrent creates of one name never reach Ceph twice, and a volume's
//! deletion (which removes every RBD snapshot and the record prefix) leaves
//! nothing behind. A snapshot counts one `snapshots` and its size in
//! `gigabytes` of its project's quota (as in Cinder), added in the
//! creating transaction and given back with the record.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use std::collections::BTreeMap;

use nubo_common::model::{self, SnapshotStatus, Volume, VolumeSnapshot, VolumeStatus};
use nubo_common::{ProjectId, SnapshotId};
use nubo_storage::BlockStore;
use nubo_store::kv::{absent, decode_or_skip, put, unchanged};
use nubo_store::{TxnBuilder, Versioned};

use super::volumes::{self, VolumeView, TXN_RETRIES};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A new snapshot's description and metadata.
#[derive(Debug, Default, Clone)]
pub struct SnapshotInfo {
    /// Description (empty: none).
    pub description: String,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

/// The name of a snapshot created without one: `snapshot-<id>`.
pub fn generated_name(id: &SnapshotId) -> String {
    format!("snapshot-{id}")
}

/// Snapshots volume `volume` of `project` as `name` (empty:
/// `snapshot-<id>`).
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    name: &str,
    info: SnapshotInfo,
) -> ApiResult<VolumeSnapshot> {
    volumes::rbd(ctx)?;
    let id = SnapshotId::new_random();
    let name = match name.trim() {
        "" => generated_name(&id),
        _ => name.to_string(),
    };
    let name = name.as_str();
    validate::snapshot_name(name)?;
    validate::metadata(&info.metadata)?;
    validate::description(&info.description)?;
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, volume).await?;
        let vol = &v.value;
        if !matches!(vol.status, VolumeStatus::Available | VolumeStatus::InUse) {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; snapshots are taken of available or in-use volumes",
                vol.name,
                volumes::status_name(vol.status)
            )));
        }
        let snap = VolumeSnapshot {
            id: Some(id),
            name: name.to_string(),
            // RBD snapshot names stay short: a long display name takes
            // its RBD snapshot under `snapshot-<id>`.
            rbd_name: (name.len() > 63).then(|| generated_name(&id)),
            description: Some(info.description.clone()).filter(|d| !d.is_empty()),
            metadata: info.metadata.clone(),
            volume: vol.id,
            project: vol.project.clone(),
            size_gb: vol.size_gb,
            created_at: model::now(),
            status: SnapshotStatus::Available,
            progress: None,
            status_reset: None,
            quota_counted: super::quotas::enforced(ctx),
        };
        let (vkey, skey) = (keys::volume(&vol.id), keys::volume_snapshot(&vol.id, name));
        // The record, the volume unchanged and the quota (`snapshots`
        // and, as in Cinder, `gigabytes`) in one transaction.
        let mut t = TxnBuilder::new();
        t.unchanged(&vkey, v.mod_rev);
        let name_free = t.absent(&skey);
        t.put(&skey, &snap);
        super::quotas::add(
            ctx,
            &mut t,
            &vol.project,
            &super::snapshot_records::quota_of([&snap]),
        )
        .await?;
        let a = ctx.store.commit(&t).await?;
        if !a.succeeded() {
            if !a.held(name_free) {
                return Err(ApiError::AlreadyExists(format!(
                    "volume {:?} already has a snapshot named {:?}",
                    vol.name, name
                )));
            }
            continue;
        }
        let srev = a.revision();
        let (vid, snap_name) = (vol.id.to_string(), snap.rbd_snap().to_string());
        if let Err(e) = volumes::ceph(ctx, move |s| {
            s.snapshot_create(&s.volume_ref(&vid), &snap_name).map(drop)
        })
        .await
        {
            tracing::warn!(volume = %vol.id, snapshot = %name, error = %e, "RBD snapshot failed; removing the record");
            remove_record(ctx, &skey, &snap, srev).await;
            return Err(e);
        }
        tracing::info!(volume = %vol.id, snapshot = %name, "volume snapshot created");
        return Ok(snap);
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// The snapshots of volume `volume` of `project`, oldest first.
pub async fn list(ctx: &Ctx, project: &ProjectId, volume: &str) -> ApiResult<Vec<VolumeSnapshot>> {
    let v = super::lookup::volume(ctx, project, volume).await?;
    let mut snapshots: Vec<VolumeSnapshot> = ctx
        .store
        .list_all(&keys::volume_snapshots_prefix(&v.value.id), |kv| {
            decode_or_skip::<VolumeSnapshot>(kv)
        })
        .await?;
    snapshots.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(snapshots)
}

/// The snapshot record `name` of volume `volume`.
async fn snapshot(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    name: &str,
) -> ApiResult<(Versioned<Volume>, VolumeSnapshot, i64)> {
    let v = super::lookup::volume(ctx, project, volume).await?;
    let skey = keys::volume_snapshot(&v.value.id, name);
    match ctx.store.read::<VolumeSnapshot>(&skey).await? {
        Some(s) => Ok((v, s.value, s.mod_rev)),
        None => Err(ApiError::NotFound(format!(
            "volume {:?} has no snapshot named {:?}",
            v.value.name, name
        ))),
    }
}

/// Deletes snapshot `name` of volume `volume` of `project` (only an
/// `available` or `error` one, as Cinder).
pub async fn delete(ctx: &Ctx, project: &ProjectId, volume: &str, name: &str) -> ApiResult<()> {
    let (v, snap, srev) = snapshot(ctx, project, volume, name).await?;
    if !matches!(
        snap.status,
        SnapshotStatus::Available | SnapshotStatus::Error
    ) {
        return Err(ApiError::FailedPrecondition(format!(
            "snapshot {:?} is {}; only an available or error snapshot can be deleted (a cloud admin may force-delete it)",
            snap.name,
            snap.status.as_str()
        )));
    }
    delete_record(ctx, &v, &snap, srev).await
}

/// Removes snapshot `snap` (read at `srev`) of volume `v`: the RBD
/// snapshot (a missing one counts as removed), then the record and its
/// quota usage.
pub(crate) async fn delete_record(
    ctx: &Ctx,
    v: &Versioned<Volume>,
    snap: &VolumeSnapshot,
    srev: i64,
) -> ApiResult<()> {
    volumes::rbd(ctx)?;
    if v.value.status == VolumeStatus::Deleting {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} is being deleted with its snapshots",
            v.value.name
        )));
    }
    let (vid, name) = (v.value.id.to_string(), snap.rbd_snap().to_string());
    volumes::ceph(ctx, move |s| {
        let snap = nubo_storage::SnapshotRef {
            disk: s.volume_ref(&vid),
            snap: name,
        };
        match s.snapshot_delete(&snap) {
            Err(nubo_storage::Error::NotFound { .. }) => Ok(()),
            r => r,
        }
    })
    .await?;
    let skey = keys::volume_snapshot(&v.value.id, &snap.name);
    remove_record(ctx, &skey, snap, srev).await;
    tracing::info!(volume = %v.value.id, snapshot = %snap.name, "volume snapshot deleted");
    Ok(())
}

/// Deletes record `skey` (read at `srev`) and gives back its quota,
/// retried while only the usage moved (best effort: a failure is
/// logged).
async fn remove_record(ctx: &Ctx, skey: &str, snap: &VolumeSnapshot, srev: i64) {
    for _ in 0..TXN_RETRIES {
        let mut t = TxnBuilder::new();
        let same = t.unchanged(skey, srev);
        t.delete(skey);
        if let Err(e) = super::quotas::release(
            ctx,
            &mut t,
            &snap.project,
            &super::snapshot_records::quota_of([snap]),
        )
        .await
        {
            tracing::warn!(snapshot = %snap.name, error = %e, "cannot remove the snapshot record");
            return;
        }
        match ctx.store.commit(&t).await {
            Ok(a) if a.succeeded() || !a.held(same) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(snapshot = %snap.name, error = %e, "cannot remove the snapshot record");
                return;
            }
        }
    }
}

/// Rolls detached volume `volume` of `project` back to snapshot `name`.
pub async fn revert(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    name: &str,
) -> ApiResult<VolumeView> {
    volumes::rbd(ctx)?;
    let (v, snap, _) = snapshot(ctx, project, volume, name).await?;
    let vol = &v.value;
    super::snapshot_records::require_available(&snap)?;
    if vol.status != VolumeStatus::Available || vol.attached_to.is_some() {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} is {}; detach it before reverting to a snapshot",
            vol.name,
            volumes::status_name(vol.status)
        )));
    }
    if snap.size_gb != vol.size_gb {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} was resized since snapshot {:?} ({} GiB then, {} GiB now); it cannot be reverted to it",
            vol.name, snap.name, snap.size_gb, vol.size_gb
        )));
    }
    // `reverting` while librbd rolls back: nothing attaches meanwhile.
    let key = keys::volume(&vol.id);
    let mut busy = vol.clone();
    busy.status = VolumeStatus::Reverting;
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([unchanged(&key, v.mod_rev)])
                .and_then([put(&key, &busy)]),
        )
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::Unavailable(format!(
            "volume {:?} changed while the revert started; retry",
            vol.name
        )));
    }
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let (vid, name) = (vol.id.to_string(), snap.rbd_snap().to_string());
    let rolled = volumes::ceph(ctx, move |s| {
        s.snapshot_rollback(&nubo_storage::SnapshotRef {
            disk: s.volume_ref(&vid),
            snap: name,
        })
    })
    .await;
    let mut done = vol.clone();
    if let Err(e) = &rolled {
        // The image may be half rolled back: say so instead of
        // offering it as available.
        done.status = VolumeStatus::Error;
        done.status_reason = Some(format!("revert to snapshot {:?} failed: {e}", snap.name));
    }
    ctx.store
        .txn(
            Txn::new()
                .when([unchanged(&key, rev)])
                .and_then([put(&key, &done)]),
        )
        .await?;
    rolled?;
    tracing::info!(volume = %vol.id, snapshot = %snap.name, "volume reverted to snapshot");
    volumes::render_volume(ctx, &done).await
}

/// Snapshot `id` of `project` (a cloud admin: any project's).
pub async fn get(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<VolumeSnapshot> {
    Ok(super::snapshot_records::snapshot_any(ctx, project, id)
        .await?
        .1)
}

/// Every snapshot of `project`'s volumes, oldest first.
pub async fn list_project(ctx: &Ctx, project: &ProjectId) -> ApiResult<Vec<VolumeSnapshot>> {
    let mut all: Vec<VolumeSnapshot> = ctx
        .store
        .list_all(&keys::volume_snapshots_root(), |kv| {
            decode_or_skip::<VolumeSnapshot>(kv).filter(|s| s.project == *project)
        })
        .await?;
    all.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.snapshot_id().cmp(&b.snapshot_id()))
    });
    Ok(all)
}

/// Deletes snapshot `id` of `project`.
pub async fn delete_by_id(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<()> {
    let (_, snap, _) = super::lookup::snapshot_by_id(ctx, project, id).await?;
    delete(ctx, project, &snap.volume.to_string(), &snap.name).await
}

/// Rolls snapshot `id`'s volume back to it.
pub async fn revert_by_id(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<VolumeView> {
    let (_, snap, _) = super::lookup::snapshot_by_id(ctx, project, id).await?;
    revert(ctx, project, &snap.volume.to_string(), &snap.name).await
}

/// Metadata changes: replace all, or set these keys, then remove those
/// (a key to remove that is not there is NotFound). Pure.
pub(crate) fn edit_metadata(
    m: &mut BTreeMap<String, String>,
    replace: bool,
    set: &BTreeMap<String, String>,
    remove: &[String],
    what: &str,
) -> ApiResult<()> {
    if replace {
        m.clone_from(set);
    } else {
        m.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for k in remove {
        if m.remove(k).is_none() {
            return Err(ApiError::NotFound(format!(
                "{what} has no metadata key {k:?}"
            )));
        }
    }
    validate::metadata(m)
}

/// What a snapshot update changes (`None`: unchanged).
#[derive(Debug, Default, Clone)]
pub struct SnapshotUpdate {
    /// New name (empty: `snapshot-<id>`).
    pub name: Option<String>,
    /// New description (empty: none).
    pub description: Option<String>,
    /// Replace all metadata with `metadata` instead of merging it in.
    pub replace_metadata: bool,
    /// Metadata set.
    pub metadata: BTreeMap<String, String>,
    /// Metadata keys removed.
    pub remove_metadata: Vec<String>,
}

/// Updates snapshot `id` of `project`: a rename moves its record (the RBD
/// snapshot keeps its name, remembered in `rbd_name`).
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    u: SnapshotUpdate,
) -> ApiResult<VolumeSnapshot> {
    for _ in 0..TXN_RETRIES {
        let (key, old, rev) = super::lookup::snapshot_by_id(ctx, project, id).await?;
        let mut new = old.clone();
        new.id = Some(old.snapshot_id());
        if let Some(n) = &u.name {
            let n = match n.trim() {
                "" => generated_name(&old.snapshot_id()),
                n => n.to_string(),
            };
            validate::snapshot_name(&n)?;
            if n != old.name {
                new.rbd_name = Some(old.rbd_snap().to_string());
                new.name = n;
            }
        }
        if let Some(d) = &u.description {
            validate::description(d)?;
            new.description = Some(d.clone()).filter(|d| !d.is_empty());
        }
        edit_metadata(
            &mut new.metadata,
            u.replace_metadata,
            &u.metadata,
            &u.remove_metadata,
            &format!("snapshot {}", old.snapshot_id()),
        )?;
        let new_key = keys::volume_snapshot(&old.volume, &new.name);
        let txn = if new_key == key {
            Txn::new()
                .when([unchanged(&key, rev)])
                .and_then([put(&key, &new)])
        } else {
            Txn::new()
                .when([unchanged(&key, rev), absent(&new_key)])
                .and_then([TxnOp::delete(key.as_str(), None), put(&new_key, &new)])
        };
        if ctx.store.txn(txn).await?.succeeded() {
            tracing::info!(volume = %old.volume, snapshot = %new.name, "volume snapshot updated");
            return Ok(new);
        }
        if new_key != key && ctx.store.get_kv(&new_key).await?.is_some() {
            return Err(ApiError::AlreadyExists(format!(
                "the volume already has a snapshot named {:?}",
                new.name
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the snapshot changed concurrently too often; retry".into(),
    ))
}
