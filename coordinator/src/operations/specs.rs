//! The one place instance specs are written or deleted.
//!
//! A spec lives at `/nubo/v1/instances/<id>` (read by coordinators only:
//! it holds the tenant's user data) and, while the instance is placed on a
//! node, as a copy at `/nubo/v1/hosts/<node>/instances/<id>`, the only copy
//! that node's etcd role may read. Every transaction that writes a spec
//! writes the copy with it from the functions below, so both always hold
//! the same value at the same revision (the agent names that revision in
//! its guest-stop reports). Callers never put `keys::instance` themselves.

use etcd_client::TxnOp;
use nubo_common::keys;
use nubo_common::model::{self, Instance};
use nubo_common::NodeName;
use nubo_store::kv::put;
use nubo_store::TxnBuilder;

/// The writes that store `inst`: its spec and the copy on its node, both
/// stamped with the time of the write (`updated_at`).
pub(crate) fn put_ops(inst: &Instance) -> Vec<TxnOp> {
    let mut inst = inst.clone();
    inst.updated_at = Some(model::now());
    let mut ops = vec![put(&keys::instance(&inst.id), &inst)];
    if let Some(n) = &inst.node {
        ops.push(put(&keys::node_spec(n, &inst.id), &inst));
    }
    ops
}

/// [`put_ops`] for an instance that moved from node `from` to its
/// `inst.node`: the copy on `from` is removed in the same transaction.
pub(crate) fn moved_ops(inst: &Instance, from: &NodeName) -> Vec<TxnOp> {
    let mut ops = put_ops(inst);
    if inst.node.as_ref() != Some(from) {
        ops.push(TxnOp::delete(keys::node_spec(from, &inst.id), None));
    }
    ops
}

/// The deletes that remove `inst`: its spec, the copy on its node and the
/// status its node reported.
pub(crate) fn delete_ops(inst: &Instance) -> Vec<TxnOp> {
    let mut ops = vec![TxnOp::delete(keys::instance(&inst.id), None)];
    if let Some(n) = &inst.node {
        ops.push(TxnOp::delete(keys::node_spec(n, &inst.id), None));
        ops.push(TxnOp::delete(keys::instance_status(n, &inst.id), None));
        ops.push(TxnOp::delete(keys::guest_stop(n, &inst.id), None));
    }
    ops
}

/// [`put_ops`] into a transaction builder.
pub(crate) fn put_into(t: &mut TxnBuilder, inst: &Instance) {
    for op in put_ops(inst) {
        t.op(op);
    }
}

/// [`moved_ops`] into a transaction builder.
pub(crate) fn move_into(t: &mut TxnBuilder, inst: &Instance, from: &NodeName) {
    for op in moved_ops(inst, from) {
        t.op(op);
    }
}

/// [`delete_ops`] into a transaction builder.
pub(crate) fn delete_into(t: &mut TxnBuilder, inst: &Instance) {
    for op in delete_ops(inst) {
        t.op(op);
    }
}
