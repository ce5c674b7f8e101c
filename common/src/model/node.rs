//! Hypervisor nodes, their liveness and their usage.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Resources, Timestamp};
use crate::NodeName;

/// A hypervisor, registered by its agent at start-up under `/nubo/v1/nodes/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name.
    pub name: NodeName,
    /// Underlay (VTEP) address.
    pub underlay_ip: IpAddr,
    /// Underlay MTU (guest MTU defaults to this − 50).
    #[serde(default = "default_mtu")]
    pub underlay_mtu: u16,
    /// Availability zone.
    #[serde(default)]
    pub availability_zone: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Physical capacity (before overcommit).
    pub capacity: Resources,
    /// Agent version.
    #[serde(default)]
    pub agent_version: String,
    /// When the agent registered.
    pub registered_at: Timestamp,
}

fn default_mtu() -> u16 {
    1500
}

/// `/nubo/v1/nodes/<node>/alive`: bound to the agent's etcd lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAlive {
    /// Lease id, for debugging with `etcdctl lease timetolive`.
    pub lease: i64,
    /// When the agent (re)started.
    pub since: Timestamp,
    /// Agent process id.
    pub pid: u32,
}

/// `/nubo/v1/nodes/<node>/usage`: resources reserved by placed instances,
/// maintained by the coordinator in the same transaction as the assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// Reserved resources.
    pub used: Resources,
    /// Number of instances placed.
    pub instances: u32,
}

/// `/nubo/v1/nodes/<node>/admin`: operator switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdmin {
    /// New instances may be placed on the node.
    pub enabled: bool,
    /// Why it was disabled.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Default for NodeAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            reason: None,
        }
    }
}

/// Failure-handling state of a node, as seen by the leading coordinator.
/// Transitions: `up → suspect` (the alive key vanished) `→ fenced` (grace
/// passed and storage fencing succeeded) `→ evacuated` (every instance with
/// policy `auto` moved away); any state `→ up` when the alive key returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeHealthState {
    /// The agent holds its lease.
    #[default]
    Up,
    /// The alive key is gone; waiting `suspect_grace` before fencing.
    Suspect,
    /// Storage-fenced: its instances may be restarted elsewhere.
    Fenced,
    /// Fenced and every automatically evacuable instance was moved away.
    Evacuated,
}

impl NodeHealthState {
    /// The lowercase name used in etcd, the API and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Fenced => "fenced",
            Self::Evacuated => "evacuated",
        }
    }
}

/// `/nubo/v1/nodes/<node>/health`: written by the leading coordinator only
/// (every write compares that the election key is on its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Current state.
    pub state: NodeHealthState,
    /// When the state was entered (informational: decisions use the
    /// coordinator's monotonic clock, never this wall-clock time).
    pub since: Timestamp,
    /// Why (human-readable).
    #[serde(default)]
    pub reason: String,
}

/// `/nubo/v1/election/coordinator`: the leading coordinator, put
/// create-if-absent on that coordinator's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The coordinator's id (`--id`).
    pub id: String,
    /// The etcd lease holding the key (hex in `etcdctl lease` output).
    pub lease: i64,
    /// When it became leader.
    pub since: Timestamp,
}

/// `/nubo/v1/config/evacuation`: cluster-wide switch of automatic
/// evacuation; an absent key means enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationConfig {
    /// Automatic evacuation of fenced nodes is allowed.
    pub enabled: bool,
}

impl Default for EvacuationConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}
