//! Moving one instance off a node: ONE etcd transaction that deletes the old
//! assignment, writes the new one, rebinds the spec, its ports (same IP and
//! MAC: only `port.node` changes), its server-group member record and the
//! usage of both nodes. Used by automatic evacuation, `Nodes.Evacuate` and
//! `Nodes.Drain`. What moves is what the instance holds
//! ([`Instance::reserved`]): during a pending resize the larger of both
//! sizes, which the resize keeps holding on the new node.
//!
//! The transaction compares: the old assignment and the spec are unchanged
//! (so a move is applied at most once: a second attempt, by this or another
//! coordinator, finds the assignment gone and reports [`Moved::AlreadyGone`]),
//! both usage keys are unchanged (as placement does, so no node is
//! over-filled), the ports and the group are unchanged and, for the leader's
//! automatic evacuation, that the election key is still on its lease.

use crate::election::leader_guard;
use crate::error::{ApiError, ApiResult};
use crate::placement::{
    Chosen, GroupConstraint, Job, Limits, Request as PlaceRequest, Reservation, Retry, Target,
};
use crate::state::Ctx;
use etcd_client::{GetOptions, KeyValue, Txn};
use nubo_common::model::{
    Assignment, Instance, InstanceState, InstanceStatus, NodeUsage, Port, PowerState,
    ServerGroupPolicy,
};
use nubo_common::{keys, model, InstanceId, NodeName, ServerGroupId};
use nubo_store::kv::{decode_kv, decode_or_skip, kv_key, put};
use nubo_store::{Answer, TxnBuilder};
use std::collections::HashSet;

/// Transactions tried for one move before giving up (contention).
const MAX_MOVE_ATTEMPTS: usize = 32;

/// Best candidates among which the target is chosen at random.
const TOP_K: usize = 8;

/// The outcome of [`Ctx::move_instance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// Moved to this node.
    To(NodeName),
    /// The instance is no longer assigned to the source node (moved or
    /// deleted meanwhile): nothing to do.
    AlreadyGone,
}

/// Options of a move.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveOpts {
    /// Compare that this lease holds the election key (leader-only moves).
    pub leader_lease: Option<i64>,
    /// Desired power state to write with the move (drain restores it).
    pub power: Option<PowerState>,
}

/// One move as a job of the placement engine.
struct MoveJob<'a> {
    ctx: &'a Ctx,
    id: InstanceId,
    from: &'a NodeName,
    opts: MoveOpts,
    /// What this attempt read.
    read: Option<MoveRead>,
    /// The usage of `from` this attempt writes.
    new_from: Option<NodeUsage>,
}

/// Everything one attempt of a move is decided from.
struct MoveRead {
    inst: Instance,
    inst_rev: i64,
    assignment_rev: i64,
    from_usage: NodeUsage,
    from_rev: i64,
    ports: Vec<(String, Option<KeyValue>)>,
    /// The password the guest posted, under the source node's keys.
    password: Option<KeyValue>,
    /// The server group, the nodes of its other members and the revision
    /// they were read at.
    group: Option<(ServerGroupId, HashSet<NodeName>, i64)>,
    policy: Option<ServerGroupPolicy>,
}

impl MoveJob<'_> {
    async fn read(&self) -> ApiResult<Option<MoveRead>> {
        let (ctx, id, from) = (self.ctx, self.id, self.from);
        let ikey = keys::instance(&id);
        let akey = keys::assignment(from, &id);
        let fkey = keys::node_usage(from);
        let mut got = ctx
            .store
            .get_many(&[
                ikey.clone(),
                akey.clone(),
                fkey.clone(),
                keys::instance_password(from, &id),
            ])
            .await?;
        let password = got.pop().flatten();
        let (Some(ikv), Some(akv)) = (&got[0], &got[1]) else {
            return Ok(None);
        };
        let inst: Instance = decode_kv(ikv)?;
        if inst.node.as_ref() != Some(from) {
            tracing::warn!(instance = %id, node = %from, spec_node = ?inst.node, "assignment and spec disagree; not moving");
            return Err(ApiError::FailedPrecondition(format!(
                "instance {id} is assigned to {from} but its spec names {:?}",
                inst.node
            )));
        }
        let (from_usage, from_rev) = match &got[2] {
            Some(kv) => (decode_kv::<NodeUsage>(kv)?, kv.mod_revision()),
            None => (NodeUsage::default(), 0),
        };
        // A planned migration owns the instance until it is over: no
        // evacuation or drain moves it meanwhile (the migration ends by
        // itself, or fails when the source is fenced; a later pass moves it).
        if let Some(mig) = ctx.store.get_kv(&keys::instance_migration(&id)).await? {
            let which = String::from_utf8_lossy(mig.value()).into_owned();
            return Err(ApiError::FailedPrecondition(format!(
                "instance {id} is being migrated (migration {}); it moves when that is over",
                which.trim_matches('"')
            )));
        }
        let port_keys: Vec<String> = inst.ports.iter().map(keys::port).collect();
        let port_kvs = ctx.store.get_many(&port_keys).await?;
        let (group, policy) = group_of(ctx, &inst, from).await?;
        Ok(Some(MoveRead {
            inst_rev: ikv.mod_revision(),
            assignment_rev: akv.mod_revision(),
            inst,
            from_usage,
            from_rev,
            ports: port_keys.into_iter().zip(port_kvs).collect(),
            password,
            group,
            policy,
        }))
    }
}

impl Job for MoveJob<'_> {
    type Output = Moved;

    async fn prepare(&mut self) -> ApiResult<Option<Moved>> {
        if let Some(l) = self.opts.leader_lease {
            if self.ctx.leader.leader_lease() != Some(l) {
                return Err(ApiError::Unavailable("no longer the leader".into()));
            }
        }
        self.read = self.read().await?;
        Ok(self.read.is_none().then_some(Moved::AlreadyGone))
    }

    fn target(&self) -> ApiResult<Target<'_>> {
        let Some(r) = &self.read else {
            return Err(ApiError::Unavailable("move without a reading".into()));
        };
        Ok(Target::Scheduled {
            request: PlaceRequest {
                // During a pending resize the larger of both sizes moves
                // (`Instance::reserved`), so confirm and revert find on
                // the new node what they give back.
                resources: r.inst.reserved(),
                availability_zone: r.inst.availability_zone.as_deref(),
                group: match (&r.group, r.policy) {
                    (Some((_, m, _)), Some(policy)) => Some(GroupConstraint {
                        policy,
                        member_nodes: m,
                    }),
                    _ => None,
                },
                // Hints apply at creation only (nubo keeps none).
                hosts: Default::default(),
            },
            avoid: Some(self.from),
        })
    }

    fn build(&mut self, at: &Chosen, t: &mut TxnBuilder) -> ApiResult<Reservation> {
        let Some(r) = &self.read else {
            return Err(ApiError::Unavailable("move without a reading".into()));
        };
        let (id, from, to) = (self.id, self.from, &at.node);
        if to == from {
            return Err(ApiError::Unavailable(format!(
                "instance {id} would move onto its own node"
            )));
        }
        let now = model::now();
        let mut inst = r.inst.clone();
        inst.node = Some(to.clone());
        if let Some(p) = self.opts.power {
            inst.power = p;
        }
        let new_from = NodeUsage {
            used: r.from_usage.used.saturating_sub(inst.reserved()),
            instances: r.from_usage.instances.saturating_sub(1),
        };
        let ikey = keys::instance(&id);
        let akey = keys::assignment(from, &id);
        let fkey = keys::node_usage(from);
        t.unchanged(&akey, r.assignment_rev);
        t.unchanged(&ikey, r.inst_rev);
        t.unchanged(&fkey, r.from_rev);
        // No migration started since the reading (see `read`).
        t.absent(&keys::instance_migration(&id));
        if let Some(l) = self.opts.leader_lease {
            t.when(leader_guard(l));
            // Automatic evacuation: the source node must still be dead
            // when the move commits. A node whose agent came back (and
            // re-listed its assignments) between the decision and this txn
            // keeps its instance; without this compare it could run on
            // both nodes for a moment.
            t.when(etcd_client::Compare::version(
                keys::node_alive(from),
                etcd_client::CompareOp::Equal,
                0,
            ));
        }
        t.delete(&akey);
        t.put(
            &keys::assignment(to, &id),
            &Assignment {
                instance: id,
                node: to.clone(),
                assigned_at: now,
            },
        );
        super::specs::move_into(t, &inst, from);
        t.put(&fkey, &new_from);
        // The status moves to the new node's keys: the old node's report
        // goes, the new one starts pending.
        t.delete(&keys::instance_status(from, &id));
        t.delete(&keys::guest_stop(from, &id));
        t.put(
            &keys::instance_status(to, &id),
            &InstanceStatus {
                state: InstanceState::Pending,
                node: to.clone(),
                updated_at: now,
                last_error: None,
                reboot_generation: inst.reboot_generation,
                volumes: Vec::new(),
                size: None,
            },
        );
        rebind_ports(t, id, to, &r.ports);
        carry_password(t, id, from, to, r.password.as_ref());
        if let Some((g, _, rev)) = &r.group {
            t.prefix_unchanged_since(&keys::server_group_members_prefix(g), *rev);
            t.put(&keys::server_group_member(g, &id), to);
        }
        self.new_from = Some(new_from);
        Ok(Reservation {
            usage: NodeUsage {
                used: at.usage.used.saturating_add(inst.reserved()),
                instances: at.usage.instances.saturating_add(1),
            },
            contended: vec![fkey],
            // A move commits on its own, at once.
            mergeable: false,
            // The spec and its node's copy.
            bytes: 4096 + 2 * inst.user_data_b64.as_ref().map_or(0, String::len),
        })
    }

    async fn committed(&mut self, at: &Chosen, revision: i64) -> ApiResult<Moved> {
        if let Some(u) = self.new_from.take() {
            self.ctx.view.record_usage(self.from, Some(u), revision);
        }
        tracing::info!(instance = %self.id, from = %self.from, to = %at.node, "instance moved");
        Ok(Moved::To(at.node.clone()))
    }

    fn failed(&mut self, _at: &Chosen, _a: &Answer, _node_lost: bool) -> ApiResult<Retry<Moved>> {
        // Read everything again: the instance may be gone or moved.
        Ok(Retry::Again)
    }

    fn contention(&self) -> ApiError {
        ApiError::Unavailable(format!(
            "could not move instance {} after {MAX_MOVE_ATTEMPTS} attempts because of contention; retry",
            self.id
        ))
    }
}

/// Rebinds the ports of instance `id` (as read: key and value) to node
/// `to` (`port.node`: same IP and MAC), each compared unchanged; ports
/// bound to another device are left alone. Shared by moves and the
/// migration switch.
pub(crate) fn rebind_ports(
    t: &mut TxnBuilder,
    id: InstanceId,
    to: &NodeName,
    ports: &[(String, Option<KeyValue>)],
) {
    for (k, kv) in ports {
        let Some(kv) = kv else { continue };
        let Some(mut port) = decode_or_skip::<Port>(kv) else {
            continue;
        };
        if port.device != Some(id) {
            continue;
        }
        t.unchanged(k, kv.mod_revision());
        port.node = Some(to.clone());
        t.put(k, &port);
    }
}

/// Moves the password the guest of `id` posted to the metadata service
/// (kept under the node that received it: `keys::instance_password`) from
/// `from` to `to`, as read (`kv`): compared unchanged — or still absent —
/// so a password posted meanwhile is never lost. Shared by moves and the
/// migration switch.
pub(crate) fn carry_password(
    t: &mut TxnBuilder,
    id: InstanceId,
    from: &NodeName,
    to: &NodeName,
    kv: Option<&KeyValue>,
) {
    let old = keys::instance_password(from, &id);
    match kv {
        Some(kv) => {
            t.unchanged(&old, kv.mod_revision());
            t.delete(&old);
            t.op(etcd_client::TxnOp::put(
                keys::instance_password(to, &id),
                kv.value().to_vec(),
                None,
            ));
        }
        None => {
            t.absent(&old);
        }
    }
}

/// The server group of `inst` with the nodes of its other members (not
/// `from`) and the revision they were read at, and the group's policy:
/// what a placement that moves `inst` off `from` must respect.
pub(crate) async fn group_of(
    ctx: &Ctx,
    inst: &Instance,
    from: &NodeName,
) -> ApiResult<(
    Option<(ServerGroupId, HashSet<NodeName>, i64)>,
    Option<ServerGroupPolicy>,
)> {
    let Some(g) = &inst.server_group else {
        return Ok((None, None));
    };
    let resp = ctx
        .store
        .get(
            keys::server_group_members_prefix(g),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let me = keys::server_group_member(g, &inst.id);
    let nodes: HashSet<NodeName> = resp
        .kvs()
        .iter()
        .filter(|kv| kv_key(kv) != me.as_str())
        .filter_map(decode_or_skip::<NodeName>)
        .filter(|n| n != from)
        .collect();
    let policy = ctx
        .store
        .read::<model::ServerGroup>(&keys::server_group(g))
        .await?
        .map(|v| v.value.policy);
    Ok((Some((*g, nodes, rev)), policy))
}

/// Moves instance `id` from node `from` to a node chosen by the
/// scheduler (never `from`) through the placement engine.
/// `ResourceExhausted` when no node fits.
pub(crate) async fn move_instance(
    ctx: &Ctx,
    id: InstanceId,
    from: &NodeName,
    opts: MoveOpts,
) -> ApiResult<Moved> {
    let mut job = MoveJob {
        ctx,
        id,
        from,
        opts,
        read: None,
        new_from: None,
    };
    ctx.placement
        .place(
            &mut job,
            Limits {
                attempts: MAX_MOVE_ATTEMPTS,
                rounds: MAX_MOVE_ATTEMPTS,
                top_k: TOP_K,
            },
        )
        .await
}

/// Marks an instance that could not be moved off `from` as failed (only
/// while it is still assigned there): status error with `msg`.
pub(crate) async fn mark_move_failed(
    ctx: &Ctx,
    id: InstanceId,
    from: &NodeName,
    msg: &str,
    leader_lease: Option<i64>,
) -> ApiResult<()> {
    let akey = keys::assignment(from, &id);
    let skey = keys::instance_status(from, &id);
    let old = ctx.store.read::<InstanceStatus>(&skey).await.ok().flatten();
    if old.as_ref().is_some_and(|s| {
        s.value.state == InstanceState::Error && s.value.last_error.as_deref() == Some(msg)
    }) {
        return Ok(());
    }
    let status = InstanceStatus {
        state: InstanceState::Error,
        node: from.clone(),
        updated_at: model::now(),
        last_error: Some(msg.to_string()),
        size: old.as_ref().and_then(|s| s.value.size),
        volumes: old
            .as_ref()
            .map(|s| s.value.volumes.clone())
            .unwrap_or_default(),
        reboot_generation: old.map_or(0, |s| s.value.reboot_generation),
    };
    let mut compares = vec![etcd_client::Compare::version(
        akey.as_str(),
        etcd_client::CompareOp::Greater,
        0,
    )];
    if let Some(l) = leader_lease {
        compares.push(leader_guard(l));
    }
    ctx.store
        .txn(Txn::new().when(compares).and_then([put(&skey, &status)]))
        .await?;
    Ok(())
}

/// The instances assigned to `node`, with their specs (unreadable specs
/// are logged and skipped).
pub(crate) async fn assigned_instances(ctx: &Ctx, node: &NodeName) -> ApiResult<Vec<Instance>> {
    let resp = ctx
        .store
        .get(
            keys::assignments_prefix(node),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let ids: Vec<InstanceId> = resp
        .kvs()
        .iter()
        .filter_map(|kv| match keys::parse(kv_key(kv)) {
            Some(keys::Key::Assignment(_, id)) => Some(id),
            _ => None,
        })
        .collect();
    let spec_keys: Vec<String> = ids.iter().map(keys::instance).collect();
    Ok(ctx
        .store
        .get_many(&spec_keys)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip::<Instance>)
        .collect())
}
