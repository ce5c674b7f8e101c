//! One reading of every VM's counters, labelled with its instance: what
//! [`super::vm_stats`] encodes and [`super::usage`] turns into rates.

use std::time::Instant;

use nubo_common::model::Timestamp;

use crate::compute::hypervisor::InstanceStats;

/// One VM's counters with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSample {
    /// Instance id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Project.
    pub project: String,
    /// The counters.
    pub stats: InstanceStats,
    /// The port id of each of `stats.nics` ("" when the tap is no port's).
    pub ports: Vec<String>,
}

/// A successful reading of every VM's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When it was taken (monotonic).
    pub at: Instant,
    /// When it was taken (wall clock).
    pub wall: Timestamp,
    /// The VMs.
    pub vms: Vec<VmSample>,
}
