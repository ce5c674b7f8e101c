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
use nubo_common::proto as pb;

use nubo_storage::BlockStore;

use super::volumes::TXN_RETRIES;
use super::Ctx;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::validate;
use nubo_store::kv::{absent, decode_or_skip, put, unchanged};

impl Ctx {
    pub(super) async fn create_snapshot(
        &self,
        r: pb::VolumeSnapshotRequest,
    ) -> ApiResult<pb::VolumeSnapshot> {
        self.rbd()?;
        let project = validate::project(&r.project)?;
        validate::name("snapshot", &r.name)?;
        for _ in 0..TXN_RETRIES {
            let v = self.volume(&project, &r.r#ref).await?;
            let vol = &v.value;
            if !matches!(vol.status, VolumeStatus::Available | VolumeStatus::InUse) {
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} is {}; snapshots are taken of available or in-use volumes",
                    vol.name,
                    convert::volume_status_name(vol.status)
                )));
            }
            let snap = VolumeSnapshot {
                name: r.name.clone(),
                volume: vol.id,
                project: vol.project.clone(),
                size_gb: vol.size_gb,
                created_at: model::now(),
            };
            let (vkey, skey) = (
                keys::volume(&vol.id),
                keys::volume_snapshot(&vol.id, &r.name),
            );
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&vkey, v.mod_rev), absent(&skey)])
                        .and_then([put(&skey, &snap)]),
                )
                .await?;
            if !resp.succeeded() {
                if self.store.get_kv(&skey).await?.is_some() {
                    return Err(ApiError::AlreadyExists(format!(
                        "volume {:?} already has a snapshot named {:?}",
                        vol.name, r.name
                    )));
                }
                continue;
            }
            let srev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let (vid, name) = (vol.id.to_string(), r.name.clone());
            if let Err(e) = self
                .ceph(move |s| s.snapshot_create(&s.volume_ref(&vid), &name).map(drop))
                .await
            {
                tracing::warn!(volume = %vol.id, snapshot = %r.name, error = %e, "RBD snapshot failed; removing the record");
                let _ = self
                    .store
                    .txn(
                        Txn::new()
                            .when([unchanged(&skey, srev)])
                            .and_then([TxnOp::delete(skey.as_str(), None)]),
                    )
                    .await;
                return Err(e);
            }
            tracing::info!(volume = %vol.id, snapshot = %r.name, "volume snapshot created");
            return Ok(convert::volume_snapshot(&snap));
        }
        Err(ApiError::Unavailable(
            "the volume changed concurrently too often; retry".into(),
        ))
    }

    pub(super) async fn list_snapshots(
        &self,
        r: pb::GetRequest,
    ) -> ApiResult<pb::ListVolumeSnapshotsResponse> {
        let project = validate::project(&r.project)?;
        let v = self.volume(&project, &r.r#ref).await?;
        let mut snapshots: Vec<VolumeSnapshot> = self
            .store
            .list_all(&keys::volume_snapshots_prefix(&v.value.id), |kv| {
                decode_or_skip::<VolumeSnapshot>(kv)
            })
            .await?;
        snapshots.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(pb::ListVolumeSnapshotsResponse {
            snapshots: snapshots.iter().map(convert::volume_snapshot).collect(),
        })
    }

    /// The snapshot record `name` of the volume `r`.
    async fn snapshot(
        &self,
        r: &pb::VolumeSnapshotRequest,
    ) -> ApiResult<(nubo_store::Versioned<Volume>, VolumeSnapshot, i64)> {
        let project = validate::project(&r.project)?;
        let v = self.volume(&project, &r.r#ref).await?;
        let skey = keys::volume_snapshot(&v.value.id, &r.name);
        match self.store.read::<VolumeSnapshot>(&skey).await? {
            Some(s) => Ok((v, s.value, s.mod_rev)),
            None => Err(ApiError::NotFound(format!(
                "volume {:?} has no snapshot named {:?}",
                v.value.name, r.name
            ))),
        }
    }

    pub(super) async fn delete_snapshot(
        &self,
        r: pb::VolumeSnapshotRequest,
    ) -> ApiResult<pb::Empty> {
        self.rbd()?;
        let (v, snap, srev) = self.snapshot(&r).await?;
        if v.value.status == VolumeStatus::Deleting {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is being deleted with its snapshots",
                v.value.name
            )));
        }
        let (vid, name) = (v.value.id.to_string(), snap.name.clone());
        self.ceph(move |s| {
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
        self.store
            .txn(
                Txn::new()
                    .when([unchanged(&skey, srev)])
                    .and_then([TxnOp::delete(skey.as_str(), None)]),
            )
            .await?;
        tracing::info!(volume = %v.value.id, snapshot = %snap.name, "volume snapshot deleted");
        Ok(pb::Empty {})
    }

    pub(super) async fn revert_snapshot(
        &self,
        r: pb::VolumeSnapshotRequest,
    ) -> ApiResult<pb::Volume> {
        self.rbd()?;
        let (v, snap, _) = self.snapshot(&r).await?;
        let vol = &v.value;
        if vol.status != VolumeStatus::Available || vol.attached_to.is_some() {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; detach it before reverting to a snapshot",
                vol.name,
                convert::volume_status_name(vol.status)
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
        let resp = self
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
        let rolled = self
            .ceph(move |s| {
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
        self.store
            .txn(
                Txn::new()
                    .when([unchanged(&key, rev)])
                    .and_then([put(&key, &done)]),
            )
            .await?;
        rolled?;
        tracing::info!(volume = %vol.id, snapshot = %snap.name, "volume reverted to snapshot");
        self.render_volume(&done).await
    }
}
