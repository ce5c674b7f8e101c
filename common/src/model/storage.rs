//! Volumes (block storage). Only the model exists so far; the storage
//! backends come with Ceph RBD support.

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::{InstanceId, ProjectId, VolumeId};

/// Lifecycle of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeStatus {
    /// Being created.
    Creating,
    /// Ready, not attached.
    Available,
    /// Attached to an instance.
    InUse,
    /// Failed.
    Error,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Id.
    pub id: VolumeId,
    /// Name.
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Size in GiB.
    pub size_gb: u64,
    /// Volume type (QoS class).
    #[serde(default)]
    pub volume_type: Option<String>,
    /// Lifecycle state.
    pub status: VolumeStatus,
    /// Instance it is attached to.
    #[serde(default)]
    pub attached_to: Option<InstanceId>,
    /// Creation time.
    pub created_at: Timestamp,
}
