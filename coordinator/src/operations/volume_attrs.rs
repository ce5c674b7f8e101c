//! A volume's attributes besides its data: name, description, metadata,
//! the bootable and read-only marks, image metadata (Cinder's
//! `volume_image_metadata`), and the reservation an attach may be
//! preceded by (`available` ⇄ `attaching`, Cinder's `os-reserve` /
//! `os-unreserve`). Each change is one etcd transaction comparing the
//! revision it was decided from; a rename moves the name index in it.

use std::collections::BTreeMap;

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{Volume, VolumeStatus};
use nubo_common::ProjectId;
use nubo_store::kv::{absent, put, unchanged};

use super::volume_snapshots::edit_metadata;
use super::volumes::{self, VolumeView, TXN_RETRIES};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// What a volume update changes (`None`/empty: unchanged).
#[derive(Debug, Default, Clone)]
pub struct VolumeUpdate {
    /// New name (empty: `volume-<id>`).
    pub name: Option<String>,
    /// New description (empty: none).
    pub description: Option<String>,
    /// Replace all metadata with `metadata` instead of merging it in.
    pub replace_metadata: bool,
    /// Metadata set.
    pub metadata: BTreeMap<String, String>,
    /// Metadata keys removed (each must be there).
    pub remove_metadata: Vec<String>,
    /// Mark bootable or not.
    pub bootable: Option<bool>,
    /// Attach read-only or not (the volume must not be attached).
    pub read_only: Option<bool>,
    /// Image metadata set.
    pub set_image_metadata: BTreeMap<String, String>,
    /// Image metadata keys removed (each must be there).
    pub unset_image_metadata: Vec<String>,
}

/// The volume `u` makes of `old`. Pure.
fn updated(old: &Volume, u: &VolumeUpdate) -> ApiResult<Volume> {
    let mut v = old.clone();
    let what = format!("volume {}", old.id);
    if let Some(n) = &u.name {
        let n = match n.trim() {
            "" => volumes::generated_name(&old.id),
            n => n.to_string(),
        };
        validate::name("volume", &n)?;
        v.name = n;
    }
    if let Some(d) = &u.description {
        validate::description(d)?;
        v.description = Some(d.clone()).filter(|d| !d.is_empty());
    }
    edit_metadata(
        &mut v.metadata,
        u.replace_metadata,
        &u.metadata,
        &u.remove_metadata,
        &what,
    )?;
    if let Some(b) = u.bootable {
        v.bootable = Some(b);
    }
    if let Some(ro) = u.read_only {
        if ro != old.read_only.unwrap_or(false) && old.attached_to.is_some() {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is attached; change its read-only mark while it is detached",
                old.name
            )));
        }
        v.read_only = Some(ro);
    }
    edit_metadata(
        &mut v.image_metadata,
        false,
        &u.set_image_metadata,
        &u.unset_image_metadata,
        &format!("{what}'s image metadata"),
    )?;
    Ok(v)
}

/// Updates volume `r` of `project`.
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    u: VolumeUpdate,
) -> ApiResult<VolumeView> {
    for _ in 0..TXN_RETRIES {
        let cur = super::lookup::volume(ctx, project, r).await?;
        let old = &cur.value;
        if old.status == VolumeStatus::Deleting {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is being deleted",
                old.name
            )));
        }
        let new = updated(old, &u)?;
        let key = keys::volume(&old.id);
        let mut when = vec![unchanged(&key, cur.mod_rev)];
        let mut ops = vec![put(&key, &new)];
        let new_idx = keys::name_index(NameKind::Volume, &old.project, &new.name);
        if new.name != old.name {
            let old_idx = keys::name_index(NameKind::Volume, &old.project, &old.name);
            when.push(absent(&new_idx));
            ops.push(TxnOp::delete(old_idx.as_str(), None));
            ops.push(put(&new_idx, &old.id));
        }
        if ctx
            .store
            .txn(Txn::new().when(when).and_then(ops))
            .await?
            .succeeded()
        {
            tracing::info!(volume = %old.id, "volume updated");
            return volumes::render_volume(ctx, &new).await;
        }
        if new.name != old.name && ctx.store.get_kv(&new_idx).await?.is_some() {
            return Err(ApiError::AlreadyExists(format!(
                "a volume named {:?} exists in project {}",
                new.name, old.project
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// Moves volume `r` of `project` from status `from` to `to` (nothing else
/// changes); `what` names the step in the refusal.
async fn transition(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    from: VolumeStatus,
    to: VolumeStatus,
    what: &str,
) -> ApiResult<VolumeView> {
    for _ in 0..TXN_RETRIES {
        let cur = super::lookup::volume(ctx, project, r).await?;
        let old = &cur.value;
        if old.status != from || old.attached_to.is_some() {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; only an {} volume can be {what}",
                old.name,
                volumes::status_name(old.status),
                volumes::status_name(from)
            )));
        }
        let mut new = old.clone();
        new.status = to;
        let key = keys::volume(&old.id);
        if ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, cur.mod_rev)])
                    .and_then([put(&key, &new)]),
            )
            .await?
            .succeeded()
        {
            tracing::info!(volume = %old.id, status = volumes::status_name(to), "volume {what}");
            return Ok(volumes::view(ctx, &new, None));
        }
    }
    Err(ApiError::Unavailable(
        "the volume changed concurrently too often; retry".into(),
    ))
}

/// Reserves available volume `r` of `project` for an attach (`attaching`:
/// no other attach, resize or delete takes it meanwhile).
pub async fn reserve(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<VolumeView> {
    transition(
        ctx,
        project,
        r,
        VolumeStatus::Available,
        VolumeStatus::Attaching,
        "reserved",
    )
    .await
}

/// Releases the reservation of volume `r` of `project` (`available`).
pub async fn unreserve(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<VolumeView> {
    transition(
        ctx,
        project,
        r,
        VolumeStatus::Attaching,
        VolumeStatus::Available,
        "unreserved",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::VolumeId;

    fn vol() -> Volume {
        serde_json::from_value(serde_json::json!({
            "id": VolumeId::new_random(), "name": "v", "project": "p", "size_gb": 1,
            "status": "available", "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn updates_edit_what_they_name_and_nothing_else() {
        let old = vol();
        let set = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let v = updated(
            &old,
            &VolumeUpdate {
                description: Some("d".into()),
                metadata: set("a", "1"),
                bootable: Some(true),
                set_image_metadata: set("image_id", "x"),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (v.name.as_str(), v.description.as_deref(), v.is_bootable()),
            ("v", Some("d"), true)
        );
        assert_eq!(v.metadata, set("a", "1"));
        let v2 = updated(
            &v,
            &VolumeUpdate {
                name: Some(String::new()),
                metadata: set("b", "2"),
                replace_metadata: true,
                unset_image_metadata: vec!["image_id".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(v2.name, volumes::generated_name(&old.id));
        assert_eq!(v2.metadata, set("b", "2"));
        assert!(v2.image_metadata.is_empty());
        assert_eq!(v2.description.as_deref(), Some("d"));
        // Removing a key that is not there is NotFound; a bad name is
        // refused; neither changes anything (the input is untouched).
        let e = updated(
            &v2,
            &VolumeUpdate {
                remove_metadata: vec!["zz".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::NotFound(_)), "{e}");
        let e = updated(
            &v2,
            &VolumeUpdate {
                name: Some("no spaces allowed".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        let attached = Volume {
            attached_to: Some(nubo_common::InstanceId::new_random()),
            ..v2.clone()
        };
        assert!(updated(
            &attached,
            &VolumeUpdate {
                read_only: Some(true),
                ..Default::default()
            }
        )
        .is_err());
        assert!(
            updated(
                &v2,
                &VolumeUpdate {
                    read_only: Some(true),
                    ..Default::default()
                }
            )
            .unwrap()
            .read_only
                == Some(true)
        );
    }
}
