//! Volumes of a server being created: `volumes` attached at create, a
//! `boot_volume`, or `boot_from_volume_size_gb` (a new volume cloned from
//! the image first). The placement transaction compares every volume's
//! revision (they are plan dependencies, so a volume attached elsewhere
//! meanwhile re-plans and then fails) and marks them `in-use` in the same
//! transaction that writes the instance.

use nubo_common::keys;
use nubo_common::model::{volume_devices, Volume, VolumeAttachment, VolumeStatus, ROOT_DEVICE};
use nubo_common::{InstanceId, ProjectId};
use nubo_store::{TxnBuilder, Versioned};

use super::volumes;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// The validated volumes of a create request.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerVolumes {
    /// Attached in this order.
    pub(crate) data: Vec<Versioned<Volume>>,
    /// The boot disk.
    pub(crate) boot: Option<Versioned<Volume>>,
    /// Delete them with the server.
    pub(crate) delete_on_termination: bool,
}

impl ServerVolumes {
    /// `(key, mod_revision)` of every volume, for the plan's compares.
    pub(crate) fn deps(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        self.boot
            .iter()
            .chain(&self.data)
            .map(|v| (keys::volume(&v.value.id), v.mod_rev))
    }

    /// The instance's `volumes` and `boot_volume`.
    pub(crate) fn attachments(&self) -> (Vec<VolumeAttachment>, Option<VolumeAttachment>) {
        let att = |v: &Versioned<Volume>| VolumeAttachment {
            volume: v.value.id,
            delete_on_termination: self.delete_on_termination,
        };
        (
            self.data.iter().map(att).collect(),
            self.boot.as_ref().map(att),
        )
    }

    /// Puts every volume `in-use` by `id`, the boot volume at `vda` and the
    /// others at `vdb`, `vdc`, … in order; their keys are contended (two
    /// placements using one volume are never merged into one transaction).
    pub(crate) fn attach_ops(
        &self,
        id: InstanceId,
        t: &mut TxnBuilder,
        contended: &mut Vec<String>,
    ) {
        let boot = self.boot.iter().map(|v| (v, Some(ROOT_DEVICE.to_string())));
        let data = self.data.iter().zip(volume_devices().map(Some));
        for (v, device) in boot.chain(data) {
            let key = keys::volume(&v.value.id);
            let mut nv = v.value.clone();
            nv.status = VolumeStatus::InUse;
            nv.attached_to = Some(id);
            nv.device = device;
            t.put(&key, &nv);
            contended.push(key);
        }
    }
}

/// Resolves and checks the volumes of a create request: the boot volume
/// `boot_ref` (empty: none) and the `data` volumes (`count` is the batch
/// size: volumes need a single server).
pub(crate) async fn server_volumes(
    ctx: &Ctx,
    project: &ProjectId,
    boot_ref: &str,
    data: &[String],
    delete_on_termination: bool,
    count: u32,
) -> ApiResult<ServerVolumes> {
    let boot_ref = boot_ref.trim();
    if data.is_empty() && boot_ref.is_empty() {
        return Ok(ServerVolumes::default());
    }
    if count > 1 {
        return Err(ApiError::InvalidArgument(
            "volumes can only be attached at create when count is 1".into(),
        ));
    }
    let mut out = ServerVolumes {
        delete_on_termination,
        ..ServerVolumes::default()
    };
    if !boot_ref.is_empty() {
        out.boot = Some(available_volume(ctx, project, boot_ref).await?);
    }
    for v in data {
        let v = available_volume(ctx, project, v).await?;
        if out
            .boot
            .iter()
            .chain(&out.data)
            .any(|x| x.value.id == v.value.id)
        {
            return Err(ApiError::InvalidArgument(format!(
                "volume {:?} is listed twice",
                v.value.name
            )));
        }
        out.data.push(v);
    }
    if out.data.len() > super::volumes::MAX_ATTACHED {
        return Err(ApiError::InvalidArgument(format!(
            "at most {} volumes can be attached to a server",
            super::volumes::MAX_ATTACHED
        )));
    }
    Ok(out)
}

async fn available_volume(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Versioned<Volume>> {
    let v = super::lookup::volume(ctx, project, r).await?;
    if let Some(i) = v.value.attached_to {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} ({}) is attached to server {}",
            v.value.name,
            v.value.id,
            volumes::server_label(ctx, i).await
        )));
    }
    if v.value.status != VolumeStatus::Available {
        return Err(ApiError::FailedPrecondition(format!(
            "volume {:?} is {}; only an available volume can be attached",
            v.value.name,
            volumes::status_name(v.value.status)
        )));
    }
    Ok(v)
}

/// Deletes a boot volume made for a server that was not created.
pub(crate) async fn drop_unused_boot_volume(ctx: &Ctx, vol: &Volume) {
    if let Err(e) = volumes::delete(ctx, &vol.project, &vol.id.to_string()).await {
        tracing::warn!(volume = %vol.id, error = %e, "could not delete the unused boot volume");
    }
}
