//! Volume snapshot records as other volume operations need them: a
//! volume's snapshots, the quota they hold, the by-id lookup a cloud admin
//! uses, the state a copy or revert needs. Imports no other volume module
//! (they all import this one).

use nubo_common::keys;
use nubo_common::model::{QuotaUsage, VolumeSnapshot};
use nubo_common::{ProjectId, SnapshotId, VolumeId};
use nubo_store::kv::decode_or_skip;

use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// The quota usage snapshots hold: one `snapshots` each and their sizes
/// in `gigabytes` (as Cinder), for those counted when taken. Pure.
pub(crate) fn quota_of<'a>(snaps: impl IntoIterator<Item = &'a VolumeSnapshot>) -> QuotaUsage {
    snaps
        .into_iter()
        .filter(|s| s.quota_counted)
        .fold(QuotaUsage::default(), |u, s| {
            u.saturating_add(&QuotaUsage {
                snapshots: 1,
                gigabytes: s.size_gb,
                ..QuotaUsage::default()
            })
        })
}

/// Every snapshot record of volume `volume`: key, record, mod_revision.
pub(crate) async fn records_of(
    ctx: &Ctx,
    volume: &VolumeId,
) -> ApiResult<Vec<(String, VolumeSnapshot, i64)>> {
    Ok(ctx
        .store
        .list_all(&keys::volume_snapshots_prefix(volume), |kv| {
            decode_or_skip::<VolumeSnapshot>(kv).map(|s| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    s,
                    kv.mod_revision(),
                )
            })
        })
        .await?)
}

/// FailedPrecondition unless `snap` is `available` (to copy or revert to).
pub(crate) fn require_available(snap: &VolumeSnapshot) -> ApiResult<()> {
    if snap.status.is_available() {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(format!(
        "snapshot {:?} is {}; only an available snapshot can be used",
        snap.name,
        snap.status.as_str()
    )))
}

/// The snapshot `id` of `project`, or (a cloud admin) of any project:
/// key, record, mod_revision.
pub(crate) async fn snapshot_any(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
) -> ApiResult<(String, VolumeSnapshot, i64)> {
    match super::lookup::snapshot_by_id(ctx, project, id).await {
        Err(ApiError::NotFound(m)) if crate::caller::is_cloud_admin() => {
            let Ok(want) = id.trim().parse::<SnapshotId>() else {
                return Err(ApiError::NotFound(m));
            };
            let found: Vec<(String, VolumeSnapshot, i64)> = ctx
                .store
                .list_all(&keys::volume_snapshots_root(), |kv| {
                    let s = decode_or_skip::<VolumeSnapshot>(kv)?;
                    (s.snapshot_id() == want).then(|| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            s,
                            kv.mod_revision(),
                        )
                    })
                })
                .await?;
            found.into_iter().next().ok_or(ApiError::NotFound(m))
        }
        other => other,
    }
}
