//! The transactions a [`Decision`] of the state machine implies, each ONE
//! etcd transaction guarded by: the leader's lease (when given), the
//! record, both reports and the order to the source unchanged since they
//! were read (so a decision taken from a stale view, or by a deposed
//! leader, never applies), plus what the write itself depends on (the
//! spec, assignment, ports and usage for the switch; the destination's
//! usage for the rollback).

use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, Instance, InstanceState, InstanceStatus, Migration, MigrationMode, NodeUsage,
};
use nubo_store::kv::{decode_kv, decode_or_skip};
use nubo_store::TxnBuilder;

use super::machine::{Decision, Write};
use crate::election::leader_guard;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// The revisions a decision was taken from (0: the key was absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revs {
    /// `migrations/<id>`.
    pub migration: i64,
    /// The source's report.
    pub source_report: i64,
    /// The destination's report.
    pub destination_report: i64,
    /// `hosts/<source>/outgoing/<instance>`.
    pub outgoing: i64,
}

fn guards(t: &mut TxnBuilder, m: &Migration, revs: &Revs, lease: Option<i64>) {
    if let Some(l) = lease {
        t.when(leader_guard(l));
    }
    t.unchanged(&keys::migration(&m.id), revs.migration);
    t.unchanged(
        &keys::node_migration_report(&m.source, &m.id),
        revs.source_report,
    );
    t.unchanged(
        &keys::node_migration_report(&m.destination, &m.id),
        revs.destination_report,
    );
    t.unchanged(&keys::node_outgoing(&m.source, &m.instance), revs.outgoing);
}

/// The record after `d` (its time moves only when its state does).
pub fn next_record(m: &Migration, d: &Decision, now: model::Timestamp) -> Migration {
    Migration {
        state: d.state,
        error: d.error.clone(),
        downtime_ms: d.downtime_ms,
        postcopy: d.postcopy,
        updated_at: if d.state == m.state {
            m.updated_at
        } else {
            now
        },
        ..m.clone()
    }
}

/// Everything a migration leaves behind once over: both orders, both
/// reports and the instance's migration index.
fn delete_traces(t: &mut TxnBuilder, m: &Migration) {
    t.delete(&keys::node_incoming(&m.destination, &m.instance));
    t.delete(&keys::node_outgoing(&m.source, &m.instance));
    t.delete(&keys::node_migration_report(&m.source, &m.id));
    t.delete(&keys::node_migration_report(&m.destination, &m.id));
    t.delete(&keys::instance_migration(&m.instance));
}

/// Applies decision `d` for migration `m` read at `revs`; `false`: a
/// compare failed (something moved: decide again from a fresh reading).
pub async fn apply(
    ctx: &Ctx,
    m: &Migration,
    revs: &Revs,
    d: &Decision,
    lease: Option<i64>,
) -> ApiResult<bool> {
    let next = next_record(m, d, model::now());
    let mut t = TxnBuilder::new();
    guards(&mut t, m, revs, lease);
    t.put(&keys::migration(&m.id), &next);
    let mut usage = None;
    for w in &d.writes {
        match w {
            Write::Outgoing(o) => t.put(&keys::node_outgoing(&m.source, &m.instance), o),
            Write::Switch => usage = Some(switch_into(ctx, m, &mut t).await?),
            Write::Release => usage = Some(release_into(ctx, m, &mut t).await?),
        }
    }
    let ok = ctx.placement.release(&t, usage.flatten()).await?;
    if ok {
        tracing::info!(
            migration = %m.id,
            instance = %m.instance,
            source = %m.source,
            destination = %m.destination,
            from = ?m.state,
            to = ?next.state,
            error = ?next.error,
            downtime_ms = ?next.downtime_ms,
            "migration stepped"
        );
    }
    Ok(ok)
}

/// The switch (module docs of [`super`]): assignment, spec (and its node
/// copy), ports (`port.node`: the agents and floating IPs follow it), the
/// server-group member record and the status move to the destination;
/// the source's usage is released (the destination's was reserved when the
/// migration started); every trace of the migration goes. Returns the
/// source's new usage.
async fn switch_into(
    ctx: &Ctx,
    m: &Migration,
    t: &mut TxnBuilder,
) -> ApiResult<Option<(nubo_common::NodeName, NodeUsage)>> {
    let (id, from, to) = (m.instance, &m.source, &m.destination);
    let ikey = keys::instance(&id);
    let akey = keys::assignment(from, &id);
    let fkey = keys::node_usage(from);
    let skey = keys::instance_status(from, &id);
    let mut got = ctx
        .store
        .get_many(&[
            ikey.clone(),
            akey.clone(),
            fkey.clone(),
            skey.clone(),
            keys::instance_password(from, &id),
        ])
        .await?;
    let password = got.pop().flatten();
    let (Some(ikv), Some(akv)) = (&got[0], &got[1]) else {
        // The guest runs on the destination but the server's records are
        // gone: nothing to switch; an operator must look (never guess).
        return Err(ApiError::FailedPrecondition(format!(
            "migration {}: server {id} is no longer assigned to {from}; cannot switch",
            m.id
        )));
    };
    let inst: Instance = decode_kv(ikv)?;
    if inst.node.as_ref() != Some(from) {
        return Err(ApiError::FailedPrecondition(format!(
            "migration {}: the spec of server {id} names {:?}, not {from}; cannot switch",
            m.id, inst.node
        )));
    }
    let (from_usage, from_rev) = match &got[2] {
        Some(kv) => (decode_kv::<NodeUsage>(kv)?, kv.mod_revision()),
        None => (NodeUsage::default(), 0),
    };
    let status = got[3].as_ref().and_then(decode_or_skip::<InstanceStatus>);
    let now = model::now();
    t.unchanged(&ikey, ikv.mod_revision());
    t.unchanged(&akey, akv.mod_revision());
    t.unchanged(&fkey, from_rev);
    t.unchanged(&skey, got[3].as_ref().map_or(0, |kv| kv.mod_revision()));
    t.delete(&akey);
    t.put(
        &keys::assignment(to, &id),
        &Assignment {
            instance: id,
            node: to.clone(),
            assigned_at: now,
        },
    );
    let mut next = inst.clone();
    next.node = Some(to.clone());
    crate::operations::specs::move_into(t, &next, from);
    let new_from = NodeUsage {
        used: from_usage.used.saturating_sub(inst.resources),
        instances: from_usage.instances.saturating_sub(1),
    };
    t.put(&fkey, &new_from);
    // The status follows: a live guest runs (the destination's agent
    // reports on from here); a cold one starts on the destination.
    t.delete(&skey);
    t.delete(&keys::guest_stop(from, &id));
    let state = match m.mode {
        MigrationMode::Live => InstanceState::Running,
        MigrationMode::Cold => InstanceState::Pending,
    };
    t.put(
        &keys::instance_status(to, &id),
        &InstanceStatus {
            state,
            node: to.clone(),
            updated_at: now,
            last_error: None,
            reboot_generation: status
                .as_ref()
                .map_or(inst.reboot_generation, |s| s.reboot_generation),
            // A live-migrated guest keeps its size; a cold one is defined
            // anew on arrival.
            size: match m.mode {
                MigrationMode::Live => status.as_ref().and_then(|s| s.size),
                MigrationMode::Cold => None,
            },
            volumes: match m.mode {
                MigrationMode::Live => status.map(|s| s.volumes).unwrap_or_default(),
                MigrationMode::Cold => Vec::new(),
            },
        },
    );
    let port_keys: Vec<String> = inst.ports.iter().map(keys::port).collect();
    let port_kvs = ctx.store.get_many(&port_keys).await?;
    let ports: Vec<_> = port_keys.into_iter().zip(port_kvs).collect();
    crate::operations::moves::rebind_ports(t, id, to, &ports);
    crate::operations::moves::carry_password(t, id, from, to, password.as_ref());
    if let Some(g) = &inst.server_group {
        t.put(&keys::server_group_member(g, &id), to);
    }
    delete_traces(t, m);
    Ok(Some((from.clone(), new_from)))
}

/// The rollback: the destination's reservation released, every trace of
/// the migration deleted; the instance stays on its source. Returns the
/// destination's new usage.
async fn release_into(
    ctx: &Ctx,
    m: &Migration,
    t: &mut TxnBuilder,
) -> ApiResult<Option<(nubo_common::NodeName, NodeUsage)>> {
    let (id, to) = (m.instance, &m.destination);
    let ukey = keys::node_usage(to);
    let got = ctx
        .store
        .get_many(&[keys::instance(&id), ukey.clone()])
        .await?;
    // The spec gives the size reserved (a deleted server: nothing to give
    // back that its deletion did not, see `servers::delete`).
    let resources = match &got[0] {
        Some(kv) => {
            t.unchanged(&keys::instance(&id), kv.mod_revision());
            Some(decode_kv::<Instance>(kv)?.resources)
        }
        None => {
            t.absent(&keys::instance(&id));
            None
        }
    };
    delete_traces(t, m);
    let (Some(res), Some(ukv)) = (resources, &got[1]) else {
        return Ok(None);
    };
    let u: NodeUsage = decode_kv(ukv)?;
    let nu = NodeUsage {
        used: u.used.saturating_sub(res),
        instances: u.instances.saturating_sub(1),
    };
    t.unchanged(&ukey, ukv.mod_revision());
    t.put(&ukey, &nu);
    Ok(Some((to.clone(), nu)))
}
