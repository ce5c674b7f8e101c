//! Moving one instance off a node: ONE etcd transaction that deletes the old
//! assignment, writes the new one, rebinds the spec, its ports (same IP and
//! MAC: only `port.node` changes), its server-group member record and the
//! usage of both nodes. Used by automatic evacuation, `Nodes.Evacuate` and
//! `Nodes.Drain`.
//!
//! The transaction compares: the old assignment and the spec are unchanged
//! (so a move is applied at most once: a second attempt, by this or another
//! coordinator, finds the assignment gone and reports [`Moved::AlreadyGone`]),
//! both usage keys are unchanged (as placement does, so no node is
//! over-filled), the ports and the group are unchanged and, for the leader's
//! automatic evacuation, that the election key is still on its lease.

use std::collections::{HashMap, HashSet};

use etcd_client::{GetOptions, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, Instance, InstanceState, InstanceStatus, NodeUsage, Port, PowerState,
};
use nubo_common::{InstanceId, NodeName};
use rand::seq::IndexedRandom;

use crate::commit::op_kvs;
use crate::election::leader_guard;
use crate::error::{ApiError, ApiResult};
use crate::scheduler::{GroupConstraint, Request as PlaceRequest};
use crate::state::Ctx;
use nubo_store::kv::{decode_kv, decode_or_skip, prefix_unchanged_since, put, unchanged};

/// Transactions tried for one move before giving up (contention).
const MAX_MOVE_ATTEMPTS: usize = 32;
/// Conflicts on one target before another is preferred.
const NODE_CONFLICTS: u32 = 3;
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

impl Ctx {
    /// Moves instance `id` from node `from` to a node chosen by the
    /// scheduler (never `from`). `ResourceExhausted` when no node fits.
    pub async fn move_instance(
        &self,
        id: InstanceId,
        from: &NodeName,
        opts: MoveOpts,
    ) -> ApiResult<Moved> {
        let mut exclude: HashSet<NodeName> = HashSet::from([from.clone()]);
        let mut conflicts: HashMap<NodeName, u32> = HashMap::new();
        for _ in 0..MAX_MOVE_ATTEMPTS {
            if let Some(l) = opts.leader_lease {
                if self.leader.leader_lease() != Some(l) {
                    return Err(ApiError::Unavailable("no longer the leader".into()));
                }
            }
            let ikey = keys::instance(&id);
            let akey = keys::assignment(from, &id);
            let fkey = keys::node_usage(from);
            let got = self
                .store
                .get_many(&[ikey.clone(), akey.clone(), fkey.clone()])
                .await?;
            let (Some(ikv), Some(akv)) = (&got[0], &got[1]) else {
                return Ok(Moved::AlreadyGone);
            };
            let mut inst: Instance = decode_kv(ikv)?;
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
            let port_keys: Vec<String> = inst.ports.iter().map(keys::port).collect();
            let port_kvs = self.store.get_many(&port_keys).await?;
            let members = match &inst.server_group {
                Some(g) => {
                    let resp = self
                        .store
                        .get(
                            keys::server_group_members_prefix(g),
                            Some(GetOptions::new().with_prefix()),
                        )
                        .await?;
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    let nodes: HashSet<NodeName> = resp
                        .kvs()
                        .iter()
                        .filter(|kv| {
                            crate::view::kv_key(kv) != keys::server_group_member(g, &id).as_str()
                        })
                        .filter_map(decode_or_skip::<NodeName>)
                        .filter(|n| n != from)
                        .collect();
                    Some((*g, nodes, rev))
                }
                None => None,
            };
            let policy = match &inst.server_group {
                Some(g) => self
                    .store
                    .read::<model::ServerGroup>(&keys::server_group(g))
                    .await?
                    .map(|v| v.value.policy),
                None => None,
            };
            let req = PlaceRequest {
                resources: inst.resources,
                availability_zone: inst.availability_zone.as_deref(),
                group: match (&members, policy) {
                    (Some((_, m, _)), Some(policy)) => Some(GroupConstraint {
                        policy,
                        member_nodes: m,
                    }),
                    _ => None,
                },
            };
            let cands =
                match self
                    .view
                    .candidates(&req, &self.ratios, self.cfg.placement, &exclude, TOP_K)
                {
                    Ok(c) => c,
                    Err(_) if exclude.len() > 1 => {
                        exclude = HashSet::from([from.clone()]);
                        continue;
                    }
                    Err(rej) => return Err(ApiError::ResourceExhausted(rej.explain(&req))),
                };
            let Some((to, to_usage, to_rev)) = cands.choose(&mut rand::rng()).cloned() else {
                return Err(ApiError::ResourceExhausted(
                    "no capacity: no candidate node".into(),
                ));
            };
            let now = model::now();
            inst.node = Some(to.clone());
            if let Some(p) = opts.power {
                inst.power = p;
            }
            let new_from = NodeUsage {
                used: from_usage.used.saturating_sub(inst.resources),
                instances: from_usage.instances.saturating_sub(1),
            };
            let new_to = NodeUsage {
                used: to_usage.used.saturating_add(inst.resources),
                instances: to_usage.instances.saturating_add(1),
            };
            let tkey = keys::node_usage(&to);
            let mut compares = vec![
                unchanged(&akey, akv.mod_revision()),
                unchanged(&ikey, ikv.mod_revision()),
                unchanged(&fkey, from_rev),
                unchanged(&tkey, to_rev),
            ];
            if let Some(l) = opts.leader_lease {
                compares.push(leader_guard(l));
                // Automatic evacuation: the source node must still be dead
                // when the move commits. A node whose agent came back (and
                // re-listed its assignments) between the decision and this
                // txn keeps its instance; without this compare it could run
                // on both nodes for a moment.
                compares.push(etcd_client::Compare::version(
                    keys::node_alive(from),
                    etcd_client::CompareOp::Equal,
                    0,
                ));
            }
            let mut ops = vec![
                TxnOp::delete(akey.as_str(), None),
                put(
                    &keys::assignment(&to, &id),
                    &Assignment {
                        instance: id,
                        node: to.clone(),
                        assigned_at: now,
                    },
                ),
                put(&ikey, &inst),
                put(&fkey, &new_from),
                put(&tkey, &new_to),
                put(
                    &keys::instance_status(&id),
                    &InstanceStatus {
                        state: InstanceState::Pending,
                        node: to.clone(),
                        updated_at: now,
                        last_error: None,
                        reboot_generation: inst.reboot_generation,
                        volumes: Vec::new(),
                    },
                ),
            ];
            for (k, kv) in port_keys.iter().zip(&port_kvs) {
                let Some(kv) = kv else { continue };
                let Some(mut port) = decode_or_skip::<Port>(kv) else {
                    continue;
                };
                if port.device != Some(id) {
                    continue;
                }
                compares.push(unchanged(k, kv.mod_revision()));
                port.node = Some(to.clone());
                ops.push(put(k, &port));
            }
            if let Some((g, _, rev)) = &members {
                compares.push(prefix_unchanged_since(
                    &keys::server_group_members_prefix(g),
                    *rev,
                ));
                ops.push(put(&keys::server_group_member(g, &id), &to));
            }
            let probes = vec![TxnOp::get(tkey.as_str(), None)];
            let resp = self
                .store
                .txn(Txn::new().when(compares).and_then(ops).or_else(probes))
                .await?;
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.succeeded() {
                self.view.record_usage(from, Some(new_from), rev);
                self.view.record_usage(&to, Some(new_to), rev);
                tracing::info!(instance = %id, from = %from, to = %to, "instance moved");
                return Ok(Moved::To(to));
            }
            match op_kvs(&resp, 0).first() {
                Some(kv) if kv.mod_revision() != to_rev => {
                    self.view.apply_usage_kv(&to, kv);
                    let c = conflicts.entry(to.clone()).or_default();
                    *c += 1;
                    if *c >= NODE_CONFLICTS {
                        exclude.insert(to);
                    }
                }
                None if to_rev != 0 => self.view.record_usage(&to, None, rev),
                _ => {}
            }
        }
        Err(ApiError::Unavailable(format!(
            "could not move instance {id} after {MAX_MOVE_ATTEMPTS} attempts because of contention; retry"
        )))
    }

    /// Marks an instance that could not be moved off `from` as failed (only
    /// while it is still assigned there): status error with `msg`.
    pub async fn mark_move_failed(
        &self,
        id: InstanceId,
        from: &NodeName,
        msg: &str,
        leader_lease: Option<i64>,
    ) -> ApiResult<()> {
        let akey = keys::assignment(from, &id);
        let skey = keys::instance_status(&id);
        let old = self
            .store
            .read::<InstanceStatus>(&skey)
            .await
            .ok()
            .flatten();
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
        self.store
            .txn(Txn::new().when(compares).and_then([put(&skey, &status)]))
            .await?;
        Ok(())
    }

    /// The instances assigned to `node`, with their specs (unreadable specs
    /// are logged and skipped).
    pub async fn assigned_instances(&self, node: &NodeName) -> ApiResult<Vec<Instance>> {
        let resp = self
            .store
            .get(
                keys::assignments_prefix(node),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let ids: Vec<InstanceId> = resp
            .kvs()
            .iter()
            .filter_map(|kv| match keys::parse(crate::view::kv_key(kv)) {
                Some(keys::Key::Assignment(_, id)) => Some(id),
                _ => None,
            })
            .collect();
        let spec_keys: Vec<String> = ids.iter().map(keys::instance).collect();
        Ok(self
            .store
            .get_many(&spec_keys)
            .await?
            .iter()
            .flatten()
            .filter_map(decode_or_skip::<Instance>)
            .collect())
    }
}
