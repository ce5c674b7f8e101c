//! Volume snapshots: `/nubo/v1/volume-snapshots/<volume>/<name>` and the RBD
//! snapshot of the same name on the volume's image.
//!
//! The record is written first (create-if-absent, comparing the volume's
//! revision so a volume being deleted gets none), then the RBD snapshot is
//! taken; a Ceph failure removes the record again. Deleting removes the RBD
//! snapshot first (a missing one counts as removed), then the record. So
//! concurrent creates of one name never reach Ceph twice, and a volume's
//! deletion (which removes every RBD snapshot and the record prefix) leaves
//! nothing behind.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Volume, VolumeSnapshot, VolumeStatus};
use nubo_common::ProjectId;
use nubo_storage::BlockStore;
use nubo_store::kv::{absent, decode_or_skip, put, unchanged};
use nubo_store::Versioned;

use super::volumes::{self, VolumeView, TXN_RETRIES};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// Snapshots volume `volume` of `project` as `name`.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    name: &str,
) -> ApiResult<VolumeSnapshot> {
    volumes::rbd(ctx)?;
    validate::name("snapshot", name)?;
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
            name: name.to_string(),
            volume: vol.id,
            project: vol.project.clone(),
            size_gb: vol.size_gb,
            created_at: model::now(),
        };
        let (vkey, skey) = (keys::volume(&vol.id), keys::volume_snapshot(&vol.id, name));
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&vkey, v.mod_rev), absent(&skey)])
                    .and_then([put(&skey, &snap)]),
            )
            .await?;
        if !resp.succeeded() {
            if ctx.store.get_kv(&skey).await?.is_some() {
                return Err(ApiError::AlreadyExists(format!(
                    "volume {:?} already has a snapshot named {:?}",
                    vol.name, name
                )));
            }
            continue;
        }
        let srev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (vid, snap_name) = (vol.id.to_string(), name.to_string());
        if let Err(e) = volumes::ceph(ctx, move |s| {
            s.snapshot_create(&s.volume_ref(&vid), &snap_name).map(drop)
        })
        .await
        {
            tracing::warn!(volume = %vol.id, snapshot = %name, error = %e, "RBD snapshot failed; removing the record");
            let _ = ctx
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&skey, srev)])
                        .and_then([TxnOp::delete(skey.as_str(), None)]),
                )
                .await;
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

/// Deletes snapshot `name` of volume `volume` of `project`.
pub async fn delete(ctx: &Ctx, project: &ProjectId, volume: &str, name: &str) -> ApiResult<()> {
    volumes::rbd(ctx)?;
    let (v, snap, srev) = snapshot(ctx, project, volume, name).await?;
    if v.value.status == VolumeStatus::Deleting {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} is being deleted with its snapshots",
            v.value.name
        )));
    }
    let (vid, name) = (v.value.id.to_string(), snap.name.clone());
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
    ctx.store
        .txn(
            Txn::new()
                .when([unchanged(&skey, srev)])
                .and_then([TxnOp::delete(skey.as_str(), None)]),
        )
        .await?;
    tracing::info!(volume = %v.value.id, snapshot = %snap.name, "volume snapshot deleted");
    Ok(())
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
    let (vid, name) = (vol.id.to_string(), snap.name.clone());
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
