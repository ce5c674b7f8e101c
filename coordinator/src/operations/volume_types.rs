//! Volume types (`/nubo/v1/volume-types/<name>`): global QoS classes. The
//! agents apply a type's QoS as libvirt `<iotune>` on every disk of that
//! type, so changing it here reaches disks already attached.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Qos, Volume, VolumeType};
use nubo_store::kv::{absent, decode_or_skip, prefix_unchanged_since, put, unchanged};
use nubo_store::Versioned;

use super::volumes::TXN_RETRIES;
use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// Limits to change: a field present is set (0 = unlimited), an absent one
/// stays as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosUpdate {
    /// Read operations per second.
    pub read_iops_sec: Option<u64>,
    /// Write operations per second.
    pub write_iops_sec: Option<u64>,
    /// Read bytes per second.
    pub read_bytes_sec: Option<u64>,
    /// Write bytes per second.
    pub write_bytes_sec: Option<u64>,
}

/// Applies the fields present in `p` to `q` (0 = unlimited).
fn apply_qos(q: &mut Qos, p: &QosUpdate) {
    let set = |slot: &mut Option<u64>, v: Option<u64>| {
        if let Some(v) = v {
            *slot = (v > 0).then_some(v);
        }
    };
    set(&mut q.read_iops_sec, p.read_iops_sec);
    set(&mut q.write_iops_sec, p.write_iops_sec);
    set(&mut q.read_bytes_sec, p.read_bytes_sec);
    set(&mut q.write_bytes_sec, p.write_bytes_sec);
}

async fn volume_type_get(ctx: &Ctx, name: &str) -> ApiResult<Versioned<VolumeType>> {
    let name = name.trim();
    validate::name("volume type", name)?;
    ctx.store
        .read::<VolumeType>(&keys::volume_type(name))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("volume type {name:?} not found")))
}

/// Creates volume type `name` with the limits `qos` sets.
pub async fn create(ctx: &Ctx, name: &str, qos: &QosUpdate) -> ApiResult<VolumeType> {
    validate::name("volume type", name)?;
    let mut q = Qos::default();
    apply_qos(&mut q, qos);
    let qos = q;
    let t = VolumeType {
        name: name.to_string(),
        qos,
        created_at: model::now(),
    };
    let key = keys::volume_type(&t.name);
    let resp = ctx
        .store
        .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &t)]))
        .await?;
    if !resp.succeeded() {
        return Err(ApiError::AlreadyExists(format!(
            "volume type {:?} exists",
            t.name
        )));
    }
    tracing::info!(volume_type = %t.name, "volume type created");
    Ok(t)
}

/// The volume type `name`.
pub async fn get(ctx: &Ctx, name: &str) -> ApiResult<VolumeType> {
    Ok(volume_type_get(ctx, name).await?.value)
}

/// One page of the volume types.
pub async fn list(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<VolumeType>> {
    super::lookup::list_page(
        ctx,
        &keys::volume_types_prefix(),
        page,
        decode_or_skip::<VolumeType>,
    )
    .await
}

/// Changes the limits of volume type `name` that `qos` sets (agents apply
/// them to attached disks at once).
pub async fn set_qos(ctx: &Ctx, name: &str, qos: &QosUpdate) -> ApiResult<VolumeType> {
    for _ in 0..TXN_RETRIES {
        let cur = volume_type_get(ctx, name).await?;
        let mut t = cur.value.clone();
        apply_qos(&mut t.qos, qos);
        let key = keys::volume_type(&t.name);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, cur.mod_rev)])
                    .and_then([put(&key, &t)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(volume_type = %t.name, qos = ?t.qos, "volume type QoS changed");
            return Ok(t);
        }
    }
    Err(ApiError::Unavailable(
        "the volume type changed concurrently too often; retry".into(),
    ))
}

/// Deletes volume type `name`; refused while volumes use it.
pub async fn delete(ctx: &Ctx, name: &str) -> ApiResult<()> {
    for _ in 0..TXN_RETRIES {
        let cur = volume_type_get(ctx, name).await?;
        let name = cur.value.name.clone();
        // Which volumes use it, as of one revision; the delete compares
        // that no volume changed since, so a concurrent create of a
        // volume of this type either lands first (and is seen) or fails.
        let prefix = keys::volumes_prefix();
        let resp = ctx
            .store
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix().with_limit(0)),
            )
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let users: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(decode_or_skip::<Volume>)
            .filter(|v| v.volume_type.as_deref() == Some(name.as_str()))
            .map(|v| v.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "volume type {name:?} is used by {} volume(s), e.g. {}",
                users.len(),
                users[0]
            )));
        }
        let key = keys::volume_type(&name);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([
                        unchanged(&key, cur.mod_rev),
                        prefix_unchanged_since(&prefix, rev),
                    ])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(volume_type = %name, "volume type deleted");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "volumes changed concurrently too often; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_fields_present_are_set_and_zero_clears() {
        let mut q = Qos {
            read_iops_sec: Some(100),
            ..Qos::default()
        };
        apply_qos(
            &mut q,
            &QosUpdate {
                write_iops_sec: Some(200),
                read_iops_sec: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(q.write_iops_sec, Some(200));
        assert_eq!(q.read_iops_sec, None);
        assert_eq!(q.read_bytes_sec, None);
    }
}
