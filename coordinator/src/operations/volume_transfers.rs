//! Volume transfers (Cinder's `os-volume-transfer`): a project offers one
//! of its available volumes to whoever presents a random auth key; the
//! accepting project takes the volume, its snapshots and its quota usage.
//!
//! Creating a transfer moves the volume `available` → `awaiting_transfer`
//! and writes the [`VolumeTransfer`] record in one transaction; deleting
//! it moves the volume back. Accepting is one transaction too: the
//! transfer record goes, the volume (now `available`) and its snapshot
//! records get the new project, the name index moves, and the volume's
//! count and GiB leave the old project's quota usage and enter the new
//! one's (refused when the new project's limits do not allow them). The
//! key itself is shown once, at creation; only its salted SHA-256 is
//! kept.

use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, Volume, VolumeSnapshot, VolumeStatus, VolumeTransfer};
use nubo_common::{ProjectId, TransferId};
use nubo_store::kv::decode_or_skip;
use nubo_store::TxnBuilder;
use sha2::{Digest, Sha256};

use super::volumes::{self, quota_delta, status_name, TXN_RETRIES};
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::image_store::hex;
use crate::state::Ctx;

/// A transfer as created: the record and the auth key (shown only now).
#[derive(Debug, Clone)]
pub struct NewTransfer {
    /// The record.
    pub transfer: VolumeTransfer,
    /// The key the accepting project must present.
    pub auth_key: String,
}

/// SHA-256 of `salt` followed by `key`, hex. Pure.
fn key_digest(salt: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(key.as_bytes());
    hex(&h.finalize())
}

/// Whether `key` is the auth key of `t`. Pure.
fn key_matches(t: &VolumeTransfer, key: &str) -> bool {
    let got = key_digest(&t.salt, key.trim());
    // Equal length by construction; compare every byte.
    got.len() == t.key_sha256.len()
        && got
            .bytes()
            .zip(t.key_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("volume transfer {id} not found"))
}

/// The transfer `id` (any project's) and its mod_revision.
async fn read_any(ctx: &Ctx, id: &str) -> ApiResult<(VolumeTransfer, i64)> {
    let tid: TransferId = id.trim().parse().map_err(|_| not_found(id))?;
    match ctx
        .store
        .read::<VolumeTransfer>(&keys::volume_transfer(&tid))
        .await?
    {
        Some(v) => Ok((v.value, v.mod_rev)),
        None => Err(not_found(id)),
    }
}

/// The transfer `id` of `project` and its mod_revision.
async fn read_own(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<(VolumeTransfer, i64)> {
    let (t, rev) = read_any(ctx, id).await?;
    if t.project != *project {
        return Err(not_found(id));
    }
    Ok((t, rev))
}

/// Offers available volume `volume` (id or name) of `project` for
/// transfer under `name` (may be empty).
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    name: &str,
) -> ApiResult<NewTransfer> {
    let name = name.trim().to_string();
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(
            "a volume transfer name is at most 255 characters, without control characters".into(),
        ));
    }
    for _ in 0..TXN_RETRIES {
        let v = super::lookup::volume(ctx, project, volume).await?;
        let vol = &v.value;
        if vol.status != VolumeStatus::Available || vol.attached_to.is_some() {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; only an available volume can be transferred",
                vol.name,
                status_name(vol.status)
            )));
        }
        let auth_key = hex(&rand::random::<[u8; 8]>());
        let salt = hex(&rand::random::<[u8; 16]>());
        let transfer = VolumeTransfer {
            id: TransferId::new_random(),
            name: name.clone(),
            volume: vol.id,
            project: project.clone(),
            key_sha256: key_digest(&salt, &auth_key),
            salt,
            created_at: model::now(),
        };
        let mut offered = vol.clone();
        offered.status = VolumeStatus::AwaitingTransfer;
        let vkey = keys::volume(&vol.id);
        let tkey = keys::volume_transfer(&transfer.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&vkey, v.mod_rev);
        t.absent(&tkey);
        t.put(&vkey, &offered);
        t.put(&tkey, &transfer);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(volume = %vol.id, transfer = %transfer.id, "volume offered for transfer");
            return Ok(NewTransfer { transfer, auth_key });
        }
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// The transfer `id` of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<VolumeTransfer> {
    Ok(read_own(ctx, project, id).await?.0)
}

/// One page of the transfers `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<VolumeTransfer>> {
    super::lookup::list_scoped::<VolumeTransfer>(ctx, &keys::volume_transfers_prefix(), scope, page)
        .await
}

/// Withdraws transfer `id` of `project`: the volume is `available` again.
pub async fn delete(ctx: &Ctx, project: &ProjectId, id: &str) -> ApiResult<()> {
    for _ in 0..TXN_RETRIES {
        let (tr, trev) = read_own(ctx, project, id).await?;
        let tkey = keys::volume_transfer(&tr.id);
        let vkey = keys::volume(&tr.volume);
        let mut t = TxnBuilder::new();
        t.unchanged(&tkey, trev);
        t.delete(&tkey);
        match ctx.store.read::<Volume>(&vkey).await? {
            Some(v) if v.value.status == VolumeStatus::AwaitingTransfer => {
                let mut back = v.value.clone();
                back.status = VolumeStatus::Available;
                t.unchanged(&vkey, v.mod_rev);
                t.put(&vkey, &back);
            }
            // A volume gone or moved on (hand-edited) keeps what it has;
            // the stale transfer still goes.
            Some(v) => {
                tracing::warn!(volume = %tr.volume, status = status_name(v.value.status), "deleting a transfer whose volume is not awaiting it");
                t.unchanged(&vkey, v.mod_rev);
            }
            None => {
                t.absent(&vkey);
            }
        }
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(volume = %tr.volume, transfer = %tr.id, "volume transfer deleted");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// Accepts transfer `id` into `project` with `auth_key`: the volume,
/// its snapshots and its quota usage move to `project`, and the caller
/// becomes the volume's user. Returns the transfer as it was and the
/// volume as it is now.
pub async fn accept(
    ctx: &Ctx,
    project: &ProjectId,
    id: &str,
    auth_key: &str,
) -> ApiResult<(VolumeTransfer, volumes::VolumeView)> {
    for _ in 0..TXN_RETRIES {
        let (tr, trev) = read_any(ctx, id).await?;
        if !key_matches(&tr, auth_key) {
            return Err(ApiError::PermissionDenied(format!(
                "the auth key does not match volume transfer {}",
                tr.id
            )));
        }
        let vkey = keys::volume(&tr.volume);
        let Some(v) = ctx.store.read::<Volume>(&vkey).await? else {
            return Err(ApiError::NotFound(format!(
                "volume {} of transfer {} no longer exists",
                tr.volume, tr.id
            )));
        };
        let old = &v.value;
        if old.status != VolumeStatus::AwaitingTransfer || old.project != tr.project {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {} is {}, not awaiting transfer {}",
                old.id,
                status_name(old.status),
                tr.id
            )));
        }
        let mut moved = old.clone();
        moved.project = project.clone();
        moved.status = VolumeStatus::Available;
        if let Some(c) = crate::caller::caller() {
            moved.created_by = Some(c.claims.user.clone());
        }
        let tkey = keys::volume_transfer(&tr.id);
        let old_idx = keys::name_index(NameKind::Volume, &old.project, &old.name);
        let new_idx = keys::name_index(NameKind::Volume, project, &old.name);
        let mut t = TxnBuilder::new();
        t.unchanged(&tkey, trev);
        t.delete(&tkey);
        t.unchanged(&vkey, v.mod_rev);
        t.put(&vkey, &moved);
        if old.project != *project {
            t.delete(&old_idx);
        }
        let name_free = (old.project != *project).then(|| t.absent(&new_idx));
        t.put(&new_idx, &old.id);
        let snaps: Vec<(String, VolumeSnapshot, i64)> = ctx
            .store
            .list_all(&keys::volume_snapshots_prefix(&old.id), |kv| {
                decode_or_skip::<VolumeSnapshot>(kv).map(|s| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        s,
                        kv.mod_revision(),
                    )
                })
            })
            .await?;
        let held = super::snapshot_records::quota_of(snaps.iter().map(|(_, s, _)| s));
        for (key, mut s, rev) in snaps {
            s.project = project.clone();
            t.unchanged(&key, rev);
            t.put(&key, &s);
        }
        let delta = quota_delta(1, old.size_gb).saturating_add(&held);
        if old.project != *project {
            super::quotas::release(ctx, &mut t, &old.project, &delta).await?;
            super::quotas::add(ctx, &mut t, project, &delta).await?;
        }
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(volume = %old.id, transfer = %tr.id, from = %old.project, to = %project, "volume transfer accepted");
            let view = volumes::view(ctx, &moved, None);
            return Ok((tr, view));
        }
        if name_free.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::AlreadyExists(format!(
                "project {project} already has a volume named {:?}; rename one before accepting transfer {}",
                old.name, tr.id
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the volume or a quota usage changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::VolumeId;

    fn transfer(key: &str) -> VolumeTransfer {
        let salt = "00ff".to_string();
        VolumeTransfer {
            id: TransferId::new_random(),
            name: String::new(),
            volume: VolumeId::new_random(),
            project: ProjectId::default_project(),
            key_sha256: key_digest(&salt, key),
            salt,
            created_at: model::now(),
        }
    }

    #[test]
    fn only_the_auth_key_matches() {
        let t = transfer("0123456789abcdef");
        assert!(key_matches(&t, "0123456789abcdef"));
        assert!(key_matches(&t, " 0123456789abcdef\n"));
        assert!(!key_matches(&t, "0123456789abcdee"));
        assert!(!key_matches(&t, ""));
        // The salt is part of the digest.
        let mut other = t.clone();
        other.salt = "00fe".into();
        assert!(!key_matches(&other, "0123456789abcdef"));
    }
}
