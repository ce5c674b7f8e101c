//! Captures of a root disk that lives on its node (Nova's `createImage` of
//! a server whose disk is not in Ceph). The protocol between a coordinator,
//! the leader and the node's agent (`docs/image-capture.md`):
//!
//! 1. a coordinator creates the image (`queued`) and, in one transaction,
//!    the coordinator-private [`CaptureJob`] (`private/captures/<image>`)
//!    and the node's [`CaptureOrder`] (`hosts/<node>/captures/<image>`);
//! 2. the agent of the node copies the root disk at one point in time into
//!    a local file and reports [`CapturePhase::Ready`] (or
//!    [`CapturePhase::Failed`] with the reason) in its [`CaptureReport`]
//!    (`node-owned/<node>/captures/<image>`);
//! 3. the leader reads a ready copy through the node API (a stream ticket
//!    for exactly that capture) into the image store, the same path as an
//!    upload (hashed, `active`), or sets the image to `error` with the
//!    reason; then it deletes the job and the order, and the agent removes
//!    its file and its report.

use serde::{Deserialize, Serialize};

use super::Timestamp;
use crate::{ImageId, InstanceId, NodeName, ProjectId};

/// The coordinators' record of a capture (coordinator-private).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureJob {
    /// The new image (`queued` until the capture ends).
    pub image: ImageId,
    /// Its project.
    pub project: ProjectId,
    /// The server whose root disk is captured.
    pub instance: InstanceId,
    /// The node holding the disk.
    pub node: NodeName,
    /// When it was asked for.
    pub created_at: Timestamp,
}

/// The order to the node: copy this instance's root disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureOrder {
    /// The new image.
    pub image: ImageId,
    /// The server.
    pub instance: InstanceId,
    /// `raw` or `qcow2`: the format of the copy.
    pub disk_format: String,
    /// When it was asked for.
    pub created_at: Timestamp,
}

/// How far a node got with a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapturePhase {
    /// The copy is being made.
    Copying,
    /// The copy is complete on the node, ready to be read.
    Ready,
    /// The copy could not be made (the reason in the detail).
    Failed,
}

/// A node's report on a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// The image.
    pub image: ImageId,
    /// The phase reached.
    pub phase: CapturePhase,
    /// Size of the copy in bytes (ready).
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Why it failed.
    #[serde(default)]
    pub detail: Option<String>,
    /// When it was written.
    pub at: Timestamp,
}

impl CaptureReport {
    /// A report written now.
    pub fn new(image: ImageId, phase: CapturePhase, detail: Option<String>) -> Self {
        Self {
            image,
            phase,
            size_bytes: None,
            detail,
            at: super::now(),
        }
    }
}
