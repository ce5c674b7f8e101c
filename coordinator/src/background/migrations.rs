//! The leader's migration loop: drives every migration that is not over
//! through the state machine
//! ([`crate::operations::migrations::machine::step`]) and applies what it
//! decides ([`crate::operations::migrations::apply`]).
//!
//! Every coordinator follows the records (`migrations/`, list then
//! watch) and, for each migration not over, watches its two agents'
//! reports (`node-owned/<node>/migrations/<id>`), so a report wakes the
//! loop at once (the switch follows the source's `migrated` within one
//! etcd round trip). Only the leader acts: on every change and every
//! [`crate::config::MigrationConfig::tick`], it reads each active
//! migration's reports and order afresh (3 keys), decides, and commits
//! with the leader's lease and every revision it decided from compared.
//! A deposed leader's write fails; a new leader decides the same from
//! etcd (timeouts count from the record's `updated_at`).

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::EventType;
use nubo_common::keys::{self, Key};
use nubo_common::model::{Migration, MigrationReport, OutgoingMigration};
use nubo_common::MigrationId;
use nubo_store::kv::{kv_key, versioned_or_skip};
use nubo_store::{ListWatch, Update, Versioned};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::ApiResult;
use crate::operations::migrations::apply::{self, Revs};
use crate::operations::migrations::machine::{self, Budgets, Observed};
use crate::state::Ctx;

/// The records known, by id.
type Records = HashMap<MigrationId, Versioned<Migration>>;

/// Watches of the reports of one active migration.
struct ReportWatch(JoinHandle<()>);

impl Drop for ReportWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn watch_reports(ctx: &Ctx, m: &Migration, after: i64, wake: Arc<Notify>) -> ReportWatch {
    let etcd = ctx.store.clone();
    let (s, d) = (
        keys::node_migration_report(&m.source, &m.id),
        keys::node_migration_report(&m.destination, &m.id),
    );
    ReportWatch(tokio::spawn(async move {
        // Ids have one length: the key as a prefix matches only itself.
        let mut ws = etcd.watch_prefix_after(s, after);
        let mut wd = etcd.watch_prefix_after(d, after);
        loop {
            let r = tokio::select! {
                r = ws.next() => r.map(|_| ()),
                r = wd.next() => r.map(|_| ()),
            };
            wake.notify_one();
            if let Err(e) = r {
                // The periodic pass still reads the reports.
                tracing::debug!(error = %e, "migration report watch ended");
                return;
            }
        }
    }))
}

fn remember(records: &mut Records, key: &str, kv: Option<&etcd_client::KeyValue>) {
    let Some(Key::Migration(id)) = keys::parse(key) else {
        return;
    };
    match kv.and_then(versioned_or_skip::<Migration>) {
        Some(v) => {
            records.insert(id, v);
        }
        None => {
            records.remove(&id);
        }
    }
}

/// Runs until shutdown.
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let mut lw = ListWatch::new(ctx.store.clone(), vec![keys::migrations_prefix()]);
    let mut records = Records::new();
    let mut watches: HashMap<MigrationId, ReportWatch> = HashMap::new();
    let wake = Arc::new(Notify::new());
    let mut seen_rev = 0;
    let tick = ctx.cfg.migration.tick;
    loop {
        let update = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            u = lw.next() => Some(u),
            _ = wake.notified() => None,
            _ = tokio::time::sleep(tick) => None,
        };
        match update {
            Some(Ok(Update::Listed { kvs, revision, .. })) => {
                records.clear();
                for kv in &kvs {
                    remember(&mut records, kv_key(kv), Some(kv));
                }
                seen_rev = revision;
            }
            Some(Ok(Update::Events {
                events, progress, ..
            })) => {
                for ev in &events {
                    let Some(kv) = ev.kv() else { continue };
                    let put = ev.event_type() == EventType::Put;
                    remember(&mut records, kv_key(kv), put.then_some(kv));
                }
                seen_rev = seen_rev.max(progress);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "migrations: list/watch failed");
                tokio::time::sleep(tick).await;
                continue;
            }
            None => {}
        }
        // Watch the reports of the active migrations only.
        watches.retain(|id, _| records.get(id).is_some_and(|m| !m.value.state.is_final()));
        for (id, m) in &records {
            if !m.value.state.is_final() && !watches.contains_key(id) {
                watches.insert(*id, watch_reports(&ctx, &m.value, seen_rev, wake.clone()));
            }
        }
        let Some(lease) = ctx.leader.leader_lease() else {
            continue;
        };
        let active: Vec<Versioned<Migration>> = records
            .values()
            .filter(|m| !m.value.state.is_final())
            .cloned()
            .collect();
        for m in active {
            let span = tracing::info_span!("migration", migration = %m.value.id, instance = %m.value.instance, source = %m.value.source, destination = %m.value.destination);
            if let Err(e) = drive(&ctx, &m, lease).instrument(span).await {
                tracing::warn!(migration = %m.value.id, error = %e, "migration step failed; retrying");
            }
        }
    }
}

/// Decides and applies the next step of one migration (module docs).
async fn drive(ctx: &Ctx, m: &Versioned<Migration>, lease: i64) -> ApiResult<()> {
    let mig = &m.value;
    let got = ctx
        .store
        .get_many(&[
            keys::node_migration_report(&mig.source, &mig.id),
            keys::node_migration_report(&mig.destination, &mig.id),
            keys::node_outgoing(&mig.source, &mig.instance),
        ])
        .await?;
    let src = got[0]
        .as_ref()
        .and_then(versioned_or_skip::<MigrationReport>);
    let dst = got[1]
        .as_ref()
        .and_then(versioned_or_skip::<MigrationReport>);
    let out = got[2]
        .as_ref()
        .and_then(versioned_or_skip::<OutgoingMigration>);
    let rev = |kv: &Option<etcd_client::KeyValue>| kv.as_ref().map_or(0, |kv| kv.mod_revision());
    let revs = Revs {
        migration: m.mod_rev,
        source_report: rev(&got[0]),
        destination_report: rev(&got[1]),
        outgoing: rev(&got[2]),
    };
    let fenced = |n| ctx.view.get(n).is_some_and(|s| s.fenced());
    let c = &ctx.cfg.migration;
    let budgets = Budgets {
        prepare_timeout: c.prepare_timeout,
        precopy_budget: c.precopy_budget,
        budget: c.budget,
        budget_grace: c.budget_grace,
    };
    let obs = Observed {
        migration: mig,
        source: src.as_ref().map(|v| &v.value),
        destination: dst.as_ref().map(|v| &v.value),
        outgoing: out.as_ref().map(|v| &v.value),
        source_fenced: fenced(&mig.source),
        destination_fenced: fenced(&mig.destination),
        now: nubo_common::model::now(),
    };
    let Some(d) = machine::step(&obs, &budgets) else {
        return Ok(());
    };
    if !apply::apply(ctx, mig, &revs, &d, Some(lease)).await? {
        tracing::debug!(migration = %mig.id, "migration moved meanwhile; deciding again");
    }
    Ok(())
}
