//! A cloud admin's tools to unstick volume and snapshot records (Cinder's
//! admin actions), and a snapshot owner's progress report.
//!
//! - a status reset changes the record only — never Ceph, never a server:
//!   the status set is remembered with who set it and when
//!   ([`StatusReset`]) and the background loops leave it alone while it
//!   is the status; the attachment is not a recorded status in nubo (it
//!   is the server's spec), so `attach_status` may only state what is
//!   true — force-detach changes it;
//! - force-delete removes a volume whatever its status (its snapshots
//!   and RBD image too, as a delete does) but, as in Cinder, not an
//!   attached one;
//! - force-detach takes the volume out of its server's spec whatever its
//!   status; the volume is `detaching` until the node lets it go (as a
//!   detach), so it is never offered again while still plugged.
//!
//! Admin-only twice: the API layer (`Volumes.Reset*`/`Force*` are cloud
//! admin methods, audited like every mutation) and here.

use etcd_client::Txn;
use nubo_common::keys;
use nubo_common::model::{self, SnapshotStatus, StatusReset, VolumeSnapshot, VolumeStatus};
use nubo_common::ProjectId;
use nubo_store::kv::{put, unchanged};

use super::volumes::{self, status_name, Detach, VolumeView, TXN_RETRIES};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// The volume statuses a cloud admin may set (Cinder's, without those of
/// features nubo does not have: managing, backups, migration).
pub const RESETTABLE: [VolumeStatus; 9] = [
    VolumeStatus::Creating,
    VolumeStatus::Available,
    VolumeStatus::InUse,
    VolumeStatus::Attaching,
    VolumeStatus::Detaching,
    VolumeStatus::Deleting,
    VolumeStatus::Error,
    VolumeStatus::ErrorDeleting,
    VolumeStatus::Maintenance,
];

/// The volume status named `s` that an admin may set. Pure.
pub fn resettable_status(s: &str) -> ApiResult<VolumeStatus> {
    let s = s.trim();
    RESETTABLE
        .into_iter()
        .find(|x| status_name(*x) == s)
        .ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "{s:?} is not a volume status an admin may set (one of: {})",
                RESETTABLE.map(status_name).join(", ")
            ))
        })
}

/// PermissionDenied unless the caller is a cloud admin.
fn require_admin(what: &str) -> ApiResult<()> {
    if crate::caller::is_cloud_admin() {
        return Ok(());
    }
    Err(ApiError::PermissionDenied(format!(
        "{what} is for cloud admins only"
    )))
}

/// The record of a reset from `from` to `to` by the caller, now.
fn reset_record(from: &str, to: &str) -> StatusReset {
    StatusReset {
        from: from.to_string(),
        to: to.to_string(),
        by: crate::caller::caller().map(|c| c.claims.user),
        at: model::now(),
    }
}

/// Sets the recorded status of volume `r` (a cloud admin: any project's
/// by id). `status` empty: unchanged; `attach_status` (`attached` /
/// `detached`) must be what nubo's attachment is; `migration_status`
/// only empty or `none` (nubo has no volume migration).
pub async fn reset_status(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    status: &str,
    attach_status: &str,
    migration_status: &str,
) -> ApiResult<VolumeView> {
    require_admin("resetting a volume's status")?;
    let to = match status.trim() {
        "" => None,
        s => Some(resettable_status(s)?),
    };
    match migration_status.trim() {
        "" | "none" => {}
        m => {
            return Err(ApiError::InvalidArgument(format!(
                "migration_status {m:?}: nubo has no volume migration (only \"none\")"
            )))
        }
    }
    let attach = match attach_status.trim() {
        "" => None,
        "attached" => Some(true),
        "detached" => Some(false),
        a => {
            return Err(ApiError::InvalidArgument(format!(
                "attach_status {a:?} is neither \"attached\" nor \"detached\""
            )))
        }
    };
    if to.is_none() && attach.is_none() {
        return Err(ApiError::InvalidArgument(
            "a status reset needs a status or an attach_status".into(),
        ));
    }
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, r).await?;
        let vol = &v.value;
        if let Some(want) = attach {
            if want != vol.attached_to.is_some() {
                let (is, how) = match vol.attached_to {
                    Some(i) => (
                        format!("attached to server {}", volumes::server_label(ctx, i).await),
                        "force-detach it (nubo volume detach --force)",
                    ),
                    None => ("not attached".to_string(), "attach it to a server"),
                };
                return Err(ApiError::FailedPrecondition(format!(
                    "volume {:?} ({}) is {is}: nubo's attachment is the server's, not a recorded status; {how}",
                    vol.name, vol.id
                )));
            }
        }
        let Some(to) = to else {
            return volumes::render_volume(ctx, vol).await;
        };
        if vol.status == VolumeStatus::AwaitingTransfer {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is offered by a volume transfer; delete the transfer instead",
                vol.name
            )));
        }
        let mut nv = vol.clone();
        nv.status = to;
        nv.status_reason = None;
        nv.status_reset = Some(reset_record(status_name(vol.status), status_name(to)));
        let key = keys::volume(&vol.id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, v.mod_rev)])
                    .and_then([put(&key, &nv)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::warn!(
                volume = %vol.id,
                project = %vol.project,
                from = status_name(vol.status),
                to = status_name(to),
                by = crate::caller::caller_name().unwrap_or_default(),
                "volume status reset by a cloud admin (record only)"
            );
            return volumes::render_volume(ctx, &nv).await;
        }
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// Deletes volume `r` whatever its status (a cloud admin: any project's by
/// id); an attached one is refused (force-detach it first).
pub async fn force_delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    require_admin("force-deleting a volume")?;
    volumes::delete_with(ctx, project, r, true).await
}

/// Detaches volume `r` from its server whatever its status (a cloud
/// admin: any project's by id).
pub async fn force_detach(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<VolumeView> {
    require_admin("force-detaching a volume")?;
    volumes::detach_with(
        ctx,
        project,
        r,
        Detach {
            if_attached: false,
            force: true,
        },
    )
    .await
}

/// Writes `new` over snapshot record `key` if it is still at `rev`.
async fn put_snapshot(ctx: &Ctx, key: &str, rev: i64, new: &VolumeSnapshot) -> ApiResult<bool> {
    Ok(ctx
        .store
        .txn(
            Txn::new()
                .when([unchanged(key, rev)])
                .and_then([put(key, new)]),
        )
        .await?
        .succeeded())
}

/// The snapshot status named `s`. Pure.
pub fn snapshot_status(s: &str) -> ApiResult<SnapshotStatus> {
    SnapshotStatus::parse(s.trim()).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "{:?} is not a snapshot status (one of: {})",
            s.trim(),
            SnapshotStatus::ALL.map(|x| x.as_str()).join(", ")
        ))
    })
}

/// Sets the recorded status of snapshot `id` (a cloud admin: any
/// project's); the RBD snapshot is untouched.
pub async fn reset_snapshot_status(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    status: &str,
) -> ApiResult<VolumeSnapshot> {
    require_admin("resetting a snapshot's status")?;
    let to = snapshot_status(status)?;
    for _ in 0..TXN_RETRIES {
        let (key, old, rev) = super::snapshot_records::snapshot_any(ctx, project, id).await?;
        let mut new = old.clone();
        new.id = Some(old.snapshot_id());
        new.status = to;
        new.status_reset = Some(reset_record(old.status.as_str(), to.as_str()));
        if put_snapshot(ctx, &key, rev, &new).await? {
            tracing::warn!(
                snapshot = %old.snapshot_id(),
                volume = %old.volume,
                from = old.status.as_str(),
                to = to.as_str(),
                by = crate::caller::caller_name().unwrap_or_default(),
                "snapshot status reset by a cloud admin (record only)"
            );
            return Ok(new);
        }
    }
    Err(ApiError::Unavailable(
        "the snapshot changed concurrently too often; retry".into(),
    ))
}

/// Deletes snapshot `id` whatever its status (a cloud admin: any
/// project's): the RBD snapshot, the record, its quota.
pub async fn force_delete_snapshot(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<()> {
    require_admin("force-deleting a snapshot")?;
    let (_, snap, srev) = super::snapshot_records::snapshot_any(ctx, project, id).await?;
    let Some(v) = ctx
        .store
        .read::<model::Volume>(&keys::volume(&snap.volume))
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "the volume {} of snapshot {id} no longer exists",
            snap.volume
        )));
    };
    tracing::warn!(snapshot = %snap.snapshot_id(), status = snap.status.as_str(), "snapshot force-deleted by a cloud admin");
    super::volume_snapshots::delete_record(ctx, &v, &snap, srev).await
}

/// The moves `os-update_snapshot_status` allows (Cinder's): from
/// `creating` to creating/available/error, from `deleting` to
/// deleting/error_deleting. Pure.
pub fn update_allowed(from: SnapshotStatus, to: SnapshotStatus) -> bool {
    use SnapshotStatus as S;
    matches!(
        (from, to),
        (S::Creating, S::Creating | S::Available | S::Error)
            | (S::Deleting, S::Deleting | S::ErrorDeleting)
    )
}

/// The owner's report on snapshot `id` of `project` (Cinder's
/// `os-update_snapshot_status`): its status (see [`update_allowed`]) and
/// progress (`""`: unchanged).
pub async fn update_snapshot_status(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    status: &str,
    progress: &str,
) -> ApiResult<VolumeSnapshot> {
    let to = snapshot_status(status)?;
    let progress = progress.trim();
    if progress.len() > 32 {
        return Err(ApiError::InvalidArgument(
            "progress is at most 32 characters (e.g. \"80%\")".into(),
        ));
    }
    for _ in 0..TXN_RETRIES {
        let (key, old, rev) = super::lookup::snapshot_by_id(ctx, project, id).await?;
        if !update_allowed(old.status, to) {
            return Err(ApiError::FailedPrecondition(format!(
                "snapshot {} is {}; its status cannot be updated to {} (creating -> creating, available or error; deleting -> deleting or error_deleting)",
                old.snapshot_id(),
                old.status.as_str(),
                to.as_str()
            )));
        }
        let mut new = old.clone();
        new.id = Some(old.snapshot_id());
        new.status = to;
        new.status_reset = None;
        if !progress.is_empty() {
            new.progress = Some(progress.to_string());
        }
        if put_snapshot(ctx, &key, rev, &new).await? {
            tracing::info!(snapshot = %old.snapshot_id(), from = old.status.as_str(), to = to.as_str(), progress, "snapshot status updated");
            return Ok(new);
        }
    }
    Err(ApiError::Unavailable(
        "the snapshot changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cinders_settable_statuses_parse() {
        assert_eq!(
            resettable_status("maintenance").unwrap(),
            VolumeStatus::Maintenance
        );
        assert_eq!(resettable_status(" in-use ").unwrap(), VolumeStatus::InUse);
        assert_eq!(
            resettable_status("error_deleting").unwrap(),
            VolumeStatus::ErrorDeleting
        );
        for bad in [
            "reverting",
            "awaiting-transfer",
            "managing",
            "",
            "AVAILABLE",
        ] {
            let e = resettable_status(bad).unwrap_err().to_string();
            assert!(e.contains("maintenance"), "{bad}: {e}");
        }
    }

    #[test]
    fn snapshot_progress_moves_only_from_creating_or_deleting() {
        use SnapshotStatus as S;
        assert!(update_allowed(S::Creating, S::Error));
        assert!(update_allowed(S::Creating, S::Available));
        assert!(update_allowed(S::Deleting, S::ErrorDeleting));
        assert!(!update_allowed(S::Available, S::Error));
        assert!(!update_allowed(S::Creating, S::Deleting));
        assert!(!update_allowed(S::Error, S::Available));
        assert_eq!(snapshot_status("error_deleting").unwrap(), S::ErrorDeleting);
        assert!(snapshot_status("in-use").is_err());
    }
}
