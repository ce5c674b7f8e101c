//! Fake agents, in-process and cheap: ONE watch on every node's
//! assignments; each new assignment gets its status `running` written under
//! `/instances/<id>/status` as the node's agent would, batched into
//! transactions (up to 128 statuses, lingering a few ms) to keep the
//! benchmark's own CPU use, and etcd's, low. An instance counts as running
//! when the transaction writing its status has committed (watching the
//! statuses back would make etcd send every instance spec and status to
//! the benchmark: CPU taken from the system under test).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result};
use etcd_client::{Client, EventType, Txn, TxnOp, WatchOptions, WatchStream};
use nubo_common::model::{self, InstanceState, InstanceStatus};
use nubo_common::{keys, InstanceId, NodeName};
use tokio::sync::mpsc;

use crate::cluster::{assignment_instance, MAX_TXN_OPS};

/// When each instance was seen assigned, and seen running.
#[derive(Debug, Default)]
pub struct Observed {
    /// First time its assignment key appeared.
    pub assigned: Mutex<HashMap<InstanceId, Instant>>,
    /// When the `running` status write committed.
    pub running: Mutex<HashMap<InstanceId, Instant>>,
}

impl Observed {
    /// Number of instances seen running.
    pub fn running_count(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn record(map: &Mutex<HashMap<InstanceId, Instant>>, id: InstanceId, at: Instant) {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(id)
        .or_insert(at);
}

/// Starts the fake agents and the status observer; they run until the
/// runtime shuts down. No event after this call returns is missed.
pub async fn start(client: &Client, observed: Arc<Observed>) -> Result<()> {
    let mut c = client.clone();
    // Watch from the revision after "now" so nothing between here and the
    // watches being created is lost.
    let rev = c
        .get(keys::ROOT, None)
        .await
        .context("reading the etcd revision")?
        .header()
        .map_or(0, |h| h.revision());
    let opts = || {
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
    };
    let assignments = c
        .watch(keys::all_assignments_prefix(), Some(opts()))
        .await
        .context("watching assignments")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(watch_assignments(assignments, tx, observed.clone()));
    tokio::spawn(write_statuses(client.clone(), rx, observed));
    Ok(())
}

async fn watch_assignments(
    mut stream: WatchStream,
    tx: mpsc::UnboundedSender<(NodeName, InstanceId)>,
    observed: Arc<Observed>,
) {
    while let Ok(Some(resp)) = stream.message().await {
        let now = Instant::now();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            // Only creations: version 1 is the key's first write.
            if ev.event_type() != EventType::Put || kv.version() != 1 {
                continue;
            }
            let Some((node, id)) = kv.key_str().ok().and_then(assignment_instance) else {
                continue;
            };
            record(&observed.assigned, id, now);
            if tx.send((node, id)).is_err() {
                return;
            }
        }
    }
}

/// How long the status writer waits for more assignments before a
/// transaction that is not full (adds at most this to create→running).
const STATUS_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Writes `running` for each assignment, draining whatever queued up while
/// the previous transaction was in flight (at most [`MAX_TXN_OPS`] at once).
async fn write_statuses(
    mut c: Client,
    mut rx: mpsc::UnboundedReceiver<(NodeName, InstanceId)>,
    observed: Arc<Observed>,
) {
    let mut batch = Vec::with_capacity(MAX_TXN_OPS);
    while rx.recv_many(&mut batch, MAX_TXN_OPS).await > 0 {
        // Linger briefly so that a busy second fills one transaction with
        // many statuses instead of sending one transaction per assignment.
        if batch.len() < MAX_TXN_OPS {
            tokio::time::sleep(STATUS_LINGER).await;
            while batch.len() < MAX_TXN_OPS {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
        }
        let now = model::now();
        let ids: Vec<InstanceId> = batch.iter().map(|(_, id)| *id).collect();
        let ops: Vec<TxnOp> = batch
            .drain(..)
            .map(|(node, id)| {
                let key = keys::instance_status(&node, &id);
                let status = InstanceStatus {
                    state: InstanceState::Running,
                    node,
                    updated_at: now,
                    last_error: None,
                    reboot_generation: 0,
                    volumes: Vec::new(),
                    size: None,
                };
                TxnOp::put(key, model::encode(&status), None)
            })
            .collect();
        match c.txn(Txn::new().and_then(ops)).await {
            Ok(_) => {
                let at = Instant::now();
                let mut running = observed
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for id in ids {
                    running.entry(id).or_insert(at);
                }
            }
            Err(e) => eprintln!("warning: a fake agent status write failed: {e}"),
        }
    }
}
