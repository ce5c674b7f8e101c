//! Images from a root disk on its node's local storage (Nova's
//! `createImage` of a server whose disk is not in Ceph): the coordinator
//! cannot read that disk, its node's agent can.
//!
//! [`request`] creates the image (`queued`, as for any capture) and, in
//! one transaction guarded by the revision of the server's spec (so the
//! node named is the one the server is on), the coordinator-private
//! [`CaptureJob`] and the node's [`CaptureOrder`] (the protocol is in
//! `nubo_common::model::capture`). The agent copies the disk at one point
//! in time (crash-consistent; the guest keeps running) and reports; the
//! leader ([`crate::background::captures`]) reads the copy through the
//! node API into the image store (`active`) or sets the image to `error`
//! with the reason: the node's failure, the node down longer than
//! [`crate::background::captures::NODE_DOWN_GRACE`], the server deleted
//! meanwhile, or no end within
//! [`crate::background::captures::CAPTURE_TIMEOUT`].

use etcd_client::{Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, CaptureJob, CaptureOrder, Image, Instance};
use nubo_common::ProjectId;
use nubo_store::kv::{absent, unchanged};

use super::images::{self, NewImage};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Makes image `new` of `project` from the local root disk of `inst`
/// (`new.disk_format`: `raw` or `qcow2`, checked by the caller).
pub(super) async fn request(
    ctx: &Ctx,
    project: &ProjectId,
    inst: &Instance,
    new: NewImage,
) -> ApiResult<Image> {
    let format = new.disk_format.clone();
    let node = inst.node.clone().ok_or_else(|| {
        ApiError::FailedPrecondition(format!(
            "server {:?} is not placed on a node yet: it has no disk to capture",
            inst.name
        ))
    })?;
    let spec_key = keys::instance(&inst.id);
    let spec = ctx
        .store
        .get_kv(&spec_key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("server {} does not exist", inst.id)))?;
    super::migrations::ensure_not_migrating(ctx, inst).await?;
    let img = images::create(ctx, project, new).await?;
    let now = model::now();
    let job = CaptureJob {
        image: img.id,
        project: project.clone(),
        instance: inst.id,
        node: node.clone(),
        created_at: now,
    };
    let order = CaptureOrder {
        image: img.id,
        instance: inst.id,
        disk_format: format.clone(),
        created_at: now,
    };
    let (job_key, order_key) = (
        keys::capture_job(&img.id),
        keys::node_capture_order(&node, &img.id),
    );
    let txn = Txn::new()
        .when(vec![
            unchanged(&spec_key, spec.mod_revision()),
            absent(&job_key),
            absent(&keys::instance_migration(&inst.id)),
        ])
        .and_then(vec![
            TxnOp::put(job_key.as_str(), model::encode(&job), None),
            TxnOp::put(order_key.as_str(), model::encode(&order), None),
        ]);
    let done = match ctx.store.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(()),
        Ok(_) => Err(ApiError::Unavailable(format!(
            "server {:?} changed while its capture was being recorded; try again",
            inst.name
        ))),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = done {
        let _ = images::delete(ctx, project, &img.id.to_string()).await;
        return Err(e);
    }
    tracing::info!(image = %img.id, instance = %inst.id, %node, %format,
        "capture of a local root disk ordered from its node");
    Ok(img)
}
