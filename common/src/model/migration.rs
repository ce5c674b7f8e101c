//! Migrations: moving an instance from one node to another while it runs
//! (live) or stopped (cold). The protocol between the leader and the two
//! agents (docs/migration.md):
//!
//! 1. the leader reserves the destination (one placement transaction) and
//!    writes the [`Migration`] (`migrations/<id>`, state
//!    [`MigrationState::Preparing`]) and an [`IncomingMigration`] for the
//!    destination (`hosts/<dest>/incoming/<instance>`);
//! 2. the destination's agent plugs the ports (tap, firewall, DHCP,
//!    metadata) and reports [`MigrationPhase::Prepared`]
//!    (`node-owned/<dest>/migrations/<id>`);
//! 3. the leader moves the migration to [`MigrationState::Migrating`] and
//!    writes an [`OutgoingMigration`] for the source
//!    (`hosts/<source>/outgoing/<instance>`); the source's agent runs the
//!    hypervisor's migration and reports [`MigrationPhase::Migrated`] (the
//!    guest runs on the destination) or [`MigrationPhase::Failed`] (it
//!    still runs on the source);
//! 4. the leader switches in one transaction (assignment, spec copy and
//!    port ownership to the destination, the source's reservation
//!    released, the orders deleted, state [`MigrationState::Completed`]),
//!    or rolls back (destination reservation released, orders deleted,
//!    state [`MigrationState::Aborted`] or [`MigrationState::Failed`]).
//!
//! The leader never writes [`MigrationState::Switching`]: the switch is
//! one transaction right after the source's `migrated`; the API shows
//! `switching` for a record whose source reported `migrated` and whose
//! switch is not written yet (a leader died in between; the next one
//! completes it). At most one migration per instance exists at a time
//! (`private/instance-migrations/<instance>`, coordinator-private).
//!
//! While an order exists, neither agent acts on the instance on its own:
//! the source does not restart a guest that left, the destination does not
//! remove a guest that arrived before the switch.

use serde::{Deserialize, Serialize};

use super::{Instance, Timestamp};
use crate::{InstanceId, MigrationId, NodeName};

/// How the instance moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// While it runs: memory copied (pre-copy, auto-converge, then
    /// post-copy within the time budget), no reboot.
    Live,
    /// Stopped, moved, started again (same IP, MAC, volumes, floating IPs).
    Cold,
}

/// Where a migration stands (the leader's record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Destination reserved; its agent prepares the ports.
    Preparing,
    /// The source's agent moves the guest.
    Migrating,
    /// The guest runs on the destination; ownership being switched.
    Switching,
    /// Done: the instance belongs to the destination.
    Completed,
    /// An abort was requested; waiting for the source to stop the job.
    Aborting,
    /// Aborted (by request or budget): the instance stays on the source.
    Aborted,
    /// Failed: the instance stays on the source (see `error`).
    Failed,
}

impl MigrationState {
    /// Whether the migration is over (nothing will change it any more).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted | Self::Failed)
    }
}

/// A migration, as the API shows it (`/nubo/v1/migrations/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Id.
    pub id: MigrationId,
    /// The instance.
    pub instance: InstanceId,
    /// Where it runs now.
    pub source: NodeName,
    /// Where it goes.
    pub destination: NodeName,
    /// Live or cold.
    pub mode: MigrationMode,
    /// Copy local disks too (block migration); false for disks on shared
    /// storage (Ceph RBD).
    #[serde(default)]
    pub block: bool,
    /// Where it stands.
    pub state: MigrationState,
    /// Why it failed or was aborted.
    #[serde(default)]
    pub error: Option<String>,
    /// Guest downtime measured by the hypervisor, when known.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// A live migration that finished in post-copy (the guest ran on the
    /// destination while the rest of its memory was fetched).
    #[serde(default)]
    pub postcopy: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Time of the last state change.
    pub updated_at: Timestamp,
}

/// The order to the destination (`hosts/<dest>/incoming/<instance>`):
/// prepare to receive the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingMigration {
    /// The migration.
    pub migration: MigrationId,
    /// The node it comes from.
    pub source: NodeName,
    /// Live or cold.
    pub mode: MigrationMode,
    /// The instance's spec as it will be on the destination (its `node`
    /// is the destination): what the destination plugs and, for a cold
    /// migration, starts once the switch gives it the assignment.
    pub spec: Instance,
}

/// The order to the source (`hosts/<source>/outgoing/<instance>`): move the
/// instance to `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMigration {
    /// The migration.
    pub migration: MigrationId,
    /// The destination node.
    pub destination: NodeName,
    /// Live or cold.
    pub mode: MigrationMode,
    /// Copy local disks too.
    #[serde(default)]
    pub block: bool,
    /// Seconds of pre-copy before switching to post-copy (live).
    pub precopy_budget_secs: u32,
    /// Seconds after which the migration is aborted and the guest kept on
    /// the source.
    pub budget_secs: u32,
    /// Set by the leader to request an abort.
    #[serde(default)]
    pub abort: bool,
}

/// What an agent reports about a migration
/// (`node-owned/<node>/migrations/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Destination: ports plugged, ready to receive.
    Prepared,
    /// Source: the hypervisor's job runs.
    Running,
    /// Source: the guest runs on the destination.
    Migrated,
    /// Source: the job failed or was aborted; the guest runs here.
    Failed,
}

/// An agent's report on a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The migration.
    pub migration: MigrationId,
    /// The phase reached.
    pub phase: MigrationPhase,
    /// Details (the hypervisor's error, progress).
    #[serde(default)]
    pub detail: Option<String>,
    /// Guest downtime measured by the hypervisor.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Source, `Migrated`: the migration finished in post-copy.
    #[serde(default)]
    pub postcopy: bool,
    /// When it was written.
    pub at: Timestamp,
}

impl MigrationReport {
    /// A report written now, without downtime (not post-copy).
    pub fn new(migration: MigrationId, phase: MigrationPhase, detail: Option<String>) -> Self {
        Self {
            migration,
            phase,
            detail,
            downtime_ms: None,
            postcopy: false,
            at: super::now(),
        }
    }
}
