//! The leader's volume loop: finishes what API calls only start.
//!
//! - `detaching` → `available` once the volume is really let go: the
//!   server's agent no longer reports it (`InstanceStatus.volumes`) and no
//!   Ceph client has the image open — or the server is gone or stopped, or
//!   its node is down (its client is fenced before anything moves);
//! - `deleting` volumes of deleted servers (`delete_on_termination`) are
//!   removed from Ceph and etcd as soon as the hypervisor closed them, and
//!   volumes deleted while `detaching` once released (as for a detach);
//!   other `deleting` ones (a coordinator died mid-delete) once they have
//!   not changed for [`STALE_AFTER`];
//! - `creating` or `reverting` volumes unchanged for [`STALE_AFTER`] (their
//!   coordinator died mid-way) go to `error`, so they can be deleted;
//! - a status a cloud admin set by hand (`Volume::status_reset`) is left
//!   alone while it is still the volume's status.
//!
//! Every write compares the revision it was decided from.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::Txn;
use nubo_common::keys;
use nubo_common::model::{
    Instance, InstanceState, InstanceStatus, PowerState, Volume, VolumeStatus,
};
use nubo_common::VolumeId;
use tokio::sync::watch;

use crate::error::ApiResult;
use crate::operations::volumes::{self, DELETED_WHILE_DETACHING, DELETED_WITH_SERVER};
use crate::state::Ctx;
use nubo_store::kv::{decode_or_skip, put, unchanged, Versioned};

/// Period of the loop.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long a `creating`/`deleting` volume must sit unchanged before the
/// loop treats its coordinator as dead.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// Runs the loop on the leader until shutdown (no-op without `[ceph]`).
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let mut seen: HashMap<VolumeId, (i64, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        if ctx.ceph.get().is_none() || !ctx.leader.is_leader() {
            continue;
        }
        if let Err(e) = pass(&ctx, &mut seen).await {
            tracing::warn!(error = %e, "volume reconcile pass failed");
        }
    }
}

/// One pass over every volume that is between states.
pub(crate) async fn pass(ctx: &Ctx, seen: &mut HashMap<VolumeId, (i64, Instant)>) -> ApiResult<()> {
    let pending: Vec<Versioned<Volume>> = ctx
        .store
        .list_all(&keys::volumes_prefix(), |kv| {
            decode_or_skip::<Volume>(kv)
                .filter(|v| {
                    matches!(
                        v.status,
                        VolumeStatus::Detaching
                            | VolumeStatus::Deleting
                            | VolumeStatus::Creating
                            | VolumeStatus::Reverting
                    )
                })
                // A status a cloud admin set by hand is the admin's: the
                // loop neither finishes nor fails it.
                .filter(|v| !v.status_held_by_admin(volumes::status_name(v.status)))
                .map(|v| Versioned {
                    value: v,
                    mod_rev: kv.mod_revision(),
                })
        })
        .await?;
    let now = Instant::now();
    seen.retain(|id, _| pending.iter().any(|v| v.value.id == *id));
    for v in pending {
        let entry = seen.entry(v.value.id).or_insert((v.mod_rev, now));
        if entry.0 != v.mod_rev {
            *entry = (v.mod_rev, now);
        }
        let stale = now.duration_since(entry.1) >= STALE_AFTER;
        let id = v.value.id;
        let r = match v.value.status {
            VolumeStatus::Detaching => finish_detach(ctx, &v).await,
            VolumeStatus::Deleting
                if stale || v.value.status_reason.as_deref() == Some(DELETED_WITH_SERVER) =>
            {
                delete_when_released(ctx, &v).await
            }
            VolumeStatus::Deleting
                if v.value.status_reason.as_deref() == Some(DELETED_WHILE_DETACHING) =>
            {
                if released(ctx, &v.value).await? {
                    volumes::finish_delete(ctx, &v.value, v.mod_rev).await
                } else {
                    Ok(())
                }
            }
            VolumeStatus::Creating if stale => {
                mark_error(
                    ctx,
                    &v,
                    "creation was interrupted (its coordinator stopped); delete it",
                )
                .await
            }
            VolumeStatus::Reverting if stale => {
                mark_error(
                    ctx,
                    &v,
                    "a revert to a snapshot was interrupted (its coordinator stopped); the data may be partly rolled back",
                )
                .await
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!(volume = %id, error = %e, "volume not settled yet");
        }
    }
    Ok(())
}

/// Other Ceph clients with the volume's image open.
async fn watchers(ctx: &Ctx, v: &Volume) -> ApiResult<Vec<String>> {
    let vid = v.id.to_string();
    match volumes::ceph(ctx, move |s| s.disk_watchers(&s.volume_ref(&vid))).await {
        Err(crate::error::ApiError::NotFound(_)) => Ok(Vec::new()),
        r => r,
    }
}

/// True when the server no longer holds the volume (see the module docs).
async fn released(ctx: &Ctx, v: &Volume) -> ApiResult<bool> {
    let Some(iid) = v.attached_to else {
        return Ok(true);
    };
    let inst = ctx
        .store
        .get_many(&[keys::instance(&iid)])
        .await?
        .pop()
        .flatten()
        .as_ref()
        .and_then(decode_or_skip::<Instance>);
    // The status its node reports (under that node's own keys).
    let status = match inst.as_ref().and_then(|i| i.node.as_ref()) {
        Some(n) => ctx
            .store
            .get_many(&[keys::instance_status(n, &iid)])
            .await?
            .pop()
            .flatten()
            .as_ref()
            .and_then(decode_or_skip::<InstanceStatus>),
        None => None,
    };
    if let Some(node) = inst.as_ref().and_then(|i| i.node.clone()) {
        if ctx.view.get(&node).is_some_and(|n| !n.alive || n.fenced()) {
            return Ok(true);
        }
    }
    if let Some(i) = &inst {
        // Still in the spec (re-attached meanwhile): not ours to release.
        if i.volumes.iter().any(|a| a.volume == v.id)
            || i.boot_volume.as_ref().is_some_and(|b| b.volume == v.id)
        {
            return Ok(false);
        }
        let stopped = i.power == PowerState::Stopped
            && status
                .as_ref()
                .is_some_and(|s| s.state == InstanceState::Stopped);
        if stopped {
            return Ok(true);
        }
    }
    if status.as_ref().is_some_and(|s| s.volumes.contains(&v.id)) {
        return Ok(false);
    }
    Ok(watchers(ctx, v).await?.is_empty())
}

async fn finish_detach(ctx: &Ctx, v: &Versioned<Volume>) -> ApiResult<()> {
    if !released(ctx, &v.value).await? {
        return Ok(());
    }
    let mut nv = v.value.clone();
    nv.status = VolumeStatus::Available;
    nv.attached_to = None;
    nv.device = None;
    let key = keys::volume(&nv.id);
    let resp = ctx
        .store
        .txn(
            Txn::new()
                .when([unchanged(&key, v.mod_rev)])
                .and_then([put(&key, &nv)]),
        )
        .await?;
    if resp.succeeded() {
        tracing::info!(volume = %nv.id, "volume detached");
    }
    Ok(())
}

async fn delete_when_released(ctx: &Ctx, v: &Versioned<Volume>) -> ApiResult<()> {
    if !watchers(ctx, &v.value).await?.is_empty() {
        return Ok(());
    }
    volumes::finish_delete(ctx, &v.value, v.mod_rev).await
}

async fn mark_error(ctx: &Ctx, v: &Versioned<Volume>, reason: &str) -> ApiResult<()> {
    let mut nv = v.value.clone();
    nv.status = VolumeStatus::Error;
    nv.status_reason = Some(reason.into());
    let key = keys::volume(&nv.id);
    ctx.store
        .txn(
            Txn::new()
                .when([unchanged(&key, v.mod_rev)])
                .and_then([put(&key, &nv)]),
        )
        .await?;
    tracing::warn!(volume = %nv.id, reason, "volume marked error");
    Ok(())
}
