//! Hypervisor nodes, their liveness and their usage.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Resources, Timestamp};
use crate::{InstanceId, NodeName};

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

/// `/nubo/v1/private/config/evacuation`: cluster-wide switch of automatic
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

/// Node label carrying the agent's node API address (`ip:port`), published
/// by the agent at registration (`nubo server console`, peer witnesses and
/// the coordinator's unfence check use it).
pub const NODE_API_LABEL: &str = "nubo.node-api";

/// Node label carrying the address the node's Ceph clients (agent, QEMU's
/// librbd) connect from; absent = the underlay address. The storage fencer
/// blocklists this address.
pub const STORAGE_IP_LABEL: &str = "nubo.storage-ip";

impl Node {
    /// The address the node's storage clients use ([`STORAGE_IP_LABEL`],
    /// else the underlay address). `None` when the label does not parse.
    pub fn storage_ip(&self) -> Option<IpAddr> {
        match self.labels.get(STORAGE_IP_LABEL) {
            Some(s) => s.parse().ok(),
            None => Some(self.underlay_ip),
        }
    }

    /// The node API address ([`NODE_API_LABEL`]), when published.
    pub fn node_api(&self) -> Option<&str> {
        self.labels.get(NODE_API_LABEL).map(String::as_str)
    }
}

/// Where an agent's self-fencing stands, as reported by its node API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FencePhase {
    /// Keep-alives acknowledged; everything runs.
    #[default]
    Normal,
    /// Keep-alives unacknowledged, but every peer reports etcd unreachable
    /// too: the control plane is down, instances keep running.
    Held,
    /// Self-fenced: instances frozen.
    Fenced,
    /// Back from a fence; re-listing etcd before resuming anything.
    Recovering,
}

/// `GET /v1/etcd-status` on an agent's node API: its etcd session as the
/// agent sees it (peer witnesses, coordinator unfence check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSessionStatus {
    /// The answering node.
    pub node: NodeName,
    /// Its liveness keep-alives are being acknowledged (the last one was
    /// sent recently and no later attempt failed).
    pub healthy: bool,
    /// Milliseconds since the last acknowledged keep-alive was sent (`None`:
    /// none yet).
    #[serde(default)]
    pub last_ack_age_ms: Option<u64>,
    /// Its self-fencing phase.
    pub phase: FencePhase,
}

impl EtcdSessionStatus {
    /// Path of the endpoint on the node API.
    pub const PATH: &'static str = "/v1/etcd-status";
}

#[cfg(test)]
mod storage_ip_tests {
    use super::*;

    #[test]
    fn storage_ip_defaults_to_the_underlay_address() {
        let mut n = Node {
            name: NodeName::new("n1").unwrap(),
            underlay_ip: "10.0.0.1".parse().unwrap(),
            underlay_mtu: 1500,
            availability_zone: String::new(),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            agent_version: String::new(),
            registered_at: crate::model::now(),
        };
        assert_eq!(n.storage_ip(), Some("10.0.0.1".parse().unwrap()));
        n.labels.insert(STORAGE_IP_LABEL.into(), "10.9.0.1".into());
        assert_eq!(n.storage_ip(), Some("10.9.0.1".parse().unwrap()));
        n.labels.insert(STORAGE_IP_LABEL.into(), "junk".into());
        assert_eq!(n.storage_ip(), None);
        assert_eq!(n.node_api(), None);
    }
}

/// Real usage of a node and of its instances, measured by its agent over
/// its last collection period (`/nubo/v1/node-owned/<node>/usage`, written
/// once per period on the agent's liveness lease, so it vanishes with the
/// node). Not to be confused with [`NodeUsage`] (what placement allocated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedUsage {
    /// When the newer of the two readings was taken.
    pub at: Timestamp,
    /// Time between the two readings the rates come from, ms.
    pub period_ms: u64,
    /// Busy CPU, percent of all the host's CPUs (0–100).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Logical CPUs of the host.
    pub cpus: u32,
    /// Memory in use (total − available), bytes.
    pub memory_used_bytes: u64,
    /// Installed memory, bytes.
    pub memory_total_bytes: u64,
    /// Used bytes of the filesystem holding the agent's state directory.
    pub disk_used_bytes: u64,
    /// Size of that filesystem.
    pub disk_total_bytes: u64,
    /// Each running instance's usage, by id.
    #[serde(default)]
    pub instances: BTreeMap<InstanceId, InstanceUsage>,
}

/// One instance's usage over a collection period (rates from two readings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    /// CPU, percent of one host CPU (200 = two CPUs busy).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    #[serde(default)]
    pub memory_used_bytes: Option<u64>,
    /// Memory the guest has, bytes.
    #[serde(default)]
    pub memory_available_bytes: Option<u64>,
    /// Disk reads, bytes/s (all disks).
    pub disk_read_bytes_per_sec: f64,
    /// Disk writes, bytes/s (all disks).
    pub disk_write_bytes_per_sec: f64,
    /// Network traffic into the guest, bytes/s (all ports).
    pub net_rx_bytes_per_sec: f64,
    /// Network traffic out of the guest, bytes/s (all ports).
    pub net_tx_bytes_per_sec: f64,
}
