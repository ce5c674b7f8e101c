//! Instance actions (OpenStack's `os-instance-actions`): each change made
//! to a server (create, start, stop, reboot, rebuild, resize, lock,
//! unlock) is recorded under the server, in the transaction that makes
//! it, with the call's request id, user and time. The newest
//! [`MAX_INSTANCE_ACTIONS`] of a server are kept; all go with it.

use etcd_client::TxnOp;
use nubo_common::keys;
use nubo_common::model::{encode, Instance, InstanceAction, MAX_INSTANCE_ACTIONS};
use nubo_common::{InstanceId, ProjectId};
use nubo_store::kv::decode_or_skip;
use nubo_store::TxnBuilder;

use crate::error::ApiResult;
use crate::state::Ctx;

/// The record of `action` on `inst` by the current caller, and its key.
fn record(inst: &Instance, action: &str) -> (String, InstanceAction) {
    let now = chrono::Utc::now();
    let rec = InstanceAction {
        action: action.to_string(),
        request_id: crate::caller::request_id()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        user: crate::caller::caller_name(),
        project: inst.project.clone(),
        start_time: now,
    };
    let key = keys::instance_action(&inst.id, &nubo_identity::audit::new_audit_id(now));
    (key, rec)
}

/// The transaction operation recording `action` on `inst`.
pub(crate) fn record_op(inst: &Instance, action: &str) -> TxnOp {
    let (key, rec) = record(inst, action);
    TxnOp::put(key, encode(&rec), None)
}

/// Records `action` on `inst` in transaction `t`.
pub(crate) fn record_into(t: &mut TxnBuilder, inst: &Instance, action: &str) {
    t.op(record_op(inst, action));
}

/// Drops the oldest actions of `id` beyond [`MAX_INSTANCE_ACTIONS`] (best
/// effort: a failure is logged; the next action prunes again).
pub(crate) async fn prune(ctx: &Ctx, id: &InstanceId) {
    let prefix = keys::instance_actions_prefix(id);
    if let Err(e) = super::audit::prune_prefix(&ctx.store, &prefix, MAX_INSTANCE_ACTIONS).await {
        tracing::warn!(instance = %id, error = %e, "could not prune the instance's actions");
    }
}

/// The id of server `r` of `project` and its actions, oldest first.
pub async fn list(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<(InstanceId, Vec<InstanceAction>)> {
    let id = super::lookup::server(ctx, project, r).await?.value.id;
    let actions = ctx
        .store
        .list_all(
            &keys::instance_actions_prefix(&id),
            decode_or_skip::<InstanceAction>,
        )
        .await?;
    Ok((id, actions))
}
