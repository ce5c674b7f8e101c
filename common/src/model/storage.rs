//! Volumes (block storage on Ceph RBD), volume types with QoS, volume
//! snapshots, and how volumes are attached to instances.
//!
//! Naming on Ceph (shared by the coordinator and agents through
//! `nubo_storage::RbdStore`): volume `<volumes pool>/vol-<volume id>`,
//! root disk `<disks pool>/<instance id>-disk`, image
//! `<images pool>/img-<image id>@base`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Timestamp;
use super::UserName;
use crate::{ImageId, InstanceId, ProjectId, SnapshotId, TransferId, VolumeId};

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
    /// Detach requested; the agent has not confirmed it yet.
    Detaching,
    /// Being deleted.
    Deleting,
    /// Failed; see `status_reason`.
    Error,
    /// Being rolled back to a snapshot (not attachable meanwhile).
    Reverting,
    /// Reserved for an attach (Cinder's `os-reserve`): only an attach or
    /// an unreserve moves it on.
    Attaching,
    /// Offered to another project by a volume transfer: only accepting
    /// or deleting the transfer moves it on.
    AwaitingTransfer,
    /// Set by a cloud admin's status reset only (Cinder's `maintenance`):
    /// nothing but another reset or a force-delete moves it on.
    Maintenance,
    /// Set by a cloud admin's status reset only (Cinder's
    /// `error_deleting`); deletable like `error`.
    #[serde(rename = "error_deleting")]
    ErrorDeleting,
}

/// A status a cloud admin set by hand (Cinder's `os-reset_status`): the
/// record changed, nothing on the backend did. While the record still has
/// the status set (`to`), nubo's background loops leave it alone (a
/// `deleting` or `creating` set by hand is never finished or failed by
/// them); any operation that moves the record on clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReset {
    /// The status before (API name).
    pub from: String,
    /// The status set (API name).
    pub to: String,
    /// The admin who set it (`None` with `auth = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<UserName>,
    /// When.
    pub at: Timestamp,
}

/// Lifecycle of a volume snapshot. nubo takes the RBD snapshot within the
/// create call, so a snapshot is `available` once it exists; the other
/// states come from a cloud admin's status reset or from
/// `os-update_snapshot_status` (the snapshot's owner reporting progress).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Being created.
    Creating,
    /// Usable.
    #[default]
    Available,
    /// Being deleted.
    Deleting,
    /// Failed.
    Error,
    /// A deletion failed.
    ErrorDeleting,
}

impl SnapshotStatus {
    /// Every status.
    pub const ALL: [SnapshotStatus; 5] = [
        Self::Creating,
        Self::Available,
        Self::Deleting,
        Self::Error,
        Self::ErrorDeleting,
    ];

    /// The API name (`error_deleting`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::Deleting => "deleting",
            Self::Error => "error",
            Self::ErrorDeleting => "error_deleting",
        }
    }

    /// The status named `s` (as [`SnapshotStatus::as_str`]).
    pub fn parse(s: &str) -> Option<SnapshotStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// True for `available`.
    pub fn is_available(&self) -> bool {
        *self == Self::Available
    }
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
    /// Image it was created from (a bootable volume), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<ImageId>,
    /// Why the volume is in `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The user who created it (the authenticated caller). `None` for
    /// volumes created before nubo recorded creators and for volumes
    /// created by a coordinator running with `auth = "none"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<UserName>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// User metadata (key → value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Marked bootable; `None` = bootable when made from an image
    /// (see [`Volume::is_bootable`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootable: Option<bool>,
    /// Attached read-only (`None`: never set, read-write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Properties of the image it was made from (Cinder's
    /// `volume_image_metadata`), settable by the owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_metadata: BTreeMap<String, String>,
    /// The volume it was copied from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume: Option<VolumeId>,
    /// The snapshot it was copied from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot: Option<SnapshotId>,
    /// The guest device it is attached at (`vda` for a boot volume, else
    /// `vdb`… chosen by [`pick_volume_device`] when attached); set with
    /// `attached_to`, cleared when released. `None` in records written
    /// before nubo chose devices (their agents pick the lowest free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The status a cloud admin set by hand, while it is still the
    /// status (see [`StatusReset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reset: Option<StatusReset>,
}

impl Volume {
    /// True while the status is one a cloud admin set by hand (the
    /// background loops leave such a volume alone).
    pub fn status_held_by_admin(&self, api_status: &str) -> bool {
        self.status_reset
            .as_ref()
            .is_some_and(|r| r.to == api_status)
    }

    /// Bootable: as marked, else when made from an image.
    pub fn is_bootable(&self) -> bool {
        self.bootable.unwrap_or(self.source_image.is_some())
    }
}

/// I/O limits of a volume type, applied as libvirt `<iotune>` on every disk
/// of that type. `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// Read operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops_sec: Option<u64>,
    /// Write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops_sec: Option<u64>,
    /// Read bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes_sec: Option<u64>,
    /// Write bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_sec: Option<u64>,
}

impl Qos {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Qos::default()
    }
}

/// A class of volumes (`/nubo/v1/volume-types/<name>`), global like flavors.
/// Changing its QoS reaches disks already attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeType {
    /// Unique name, e.g. "ssd-200iops".
    pub name: String,
    /// Limits applied to every disk of this type.
    #[serde(default)]
    pub qos: Qos,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A snapshot of a volume (`/nubo/v1/volume-snapshots/<volume>/<name>`);
/// the RBD snapshot of the same name on the volume's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    /// Id; `None` for snapshots recorded before snapshots had ids (see
    /// [`VolumeSnapshot::snapshot_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<SnapshotId>,
    /// Name, unique per volume (also the RBD snapshot name unless
    /// `rbd_name` says otherwise).
    pub name: String,
    /// The RBD snapshot's name when it differs from `name` (the snapshot
    /// was renamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_name: Option<String>,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// User metadata (key → value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The volume.
    pub volume: VolumeId,
    /// Owner (the volume's project).
    pub project: ProjectId,
    /// Volume size when taken, GiB.
    pub size_gb: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Lifecycle state (records written before snapshots had one:
    /// `available`).
    #[serde(default, skip_serializing_if = "SnapshotStatus::is_available")]
    pub status: SnapshotStatus,
    /// Progress its owner reported (`os-update_snapshot_status`), e.g.
    /// `80%`; `None`: complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The status a cloud admin set by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reset: Option<StatusReset>,
    /// Counted in its project's `snapshots` and `gigabytes` quota usage
    /// (false for snapshots taken before nubo counted them: releasing
    /// them gives nothing back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quota_counted: bool,
}

impl VolumeSnapshot {
    /// Its id: the recorded one, else one derived from the volume id and
    /// the name (stable for snapshots recorded before ids existed).
    pub fn snapshot_id(&self) -> SnapshotId {
        self.id.unwrap_or_else(|| {
            use sha2::Digest;
            let h = sha2::Sha256::new()
                .chain_update(self.volume.as_uuid().as_bytes())
                .chain_update(self.name.as_bytes())
                .finalize();
            let mut b = [0u8; 16];
            b.copy_from_slice(&h[..16]);
            // RFC 4122 variant, version 8 (custom).
            b[6] = (b[6] & 0x0f) | 0x80;
            b[8] = (b[8] & 0x3f) | 0x80;
            SnapshotId::from_uuid(uuid::Uuid::from_bytes(b))
        })
    }

    /// The RBD snapshot's name.
    pub fn rbd_snap(&self) -> &str {
        self.rbd_name.as_deref().unwrap_or(&self.name)
    }
}

/// A volume attached to an instance (`Instance::volumes`), in attach order:
/// the first is the guest's second disk (`vdb`) unless the instance boots
/// from a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The volume.
    pub volume: VolumeId,
    /// Delete the volume when the instance is deleted.
    #[serde(default)]
    pub delete_on_termination: bool,
}

/// The guest device of an instance's root disk (image or boot volume).
pub const ROOT_DEVICE: &str = "vda";

/// The guest devices volumes may use, in order ([`ROOT_DEVICE`] is the
/// root disk).
pub fn volume_devices() -> impl Iterator<Item = String> {
    (b'b'..=b'z').map(|c| format!("vd{}", c as char))
}

/// The device a volume attached next to the devices in `used` gets:
/// `preferred` (a caller's hint such as Cinder's `mountpoint` `/dev/vdc`,
/// with or without `/dev/`) when it is one of [`volume_devices`] and free,
/// else the lowest free one; `None` when all 25 are taken. Pure.
pub fn pick_volume_device<'a>(
    used: impl IntoIterator<Item = &'a str>,
    preferred: Option<&str>,
) -> Option<String> {
    let used: std::collections::BTreeSet<&str> = used.into_iter().collect();
    let hint = preferred.map(|p| p.trim().trim_start_matches("/dev/"));
    if let Some(h) = hint.filter(|h| !used.contains(h)) {
        if let Some(d) = volume_devices().find(|d| d == h) {
            return Some(d);
        }
    }
    volume_devices().find(|d| !used.contains(d.as_str()))
}

/// The serial a volume's disk carries in the guest
/// (`/dev/disk/by-id/virtio-<serial>`): the first 20 characters of the
/// volume id (virtio-blk's limit).
pub fn volume_serial(id: &VolumeId) -> String {
    id.to_string()
        .chars()
        .filter(|c| *c != '-')
        .take(20)
        .collect()
}

/// A volume offered to another project (Cinder's volume transfer). The
/// volume stays `awaiting_transfer` while this exists; whoever presents
/// the auth key (only its salted SHA-256 is kept) takes it into their
/// project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeTransfer {
    /// Id.
    pub id: TransferId,
    /// Name (may be empty).
    #[serde(default)]
    pub name: String,
    /// The volume offered.
    pub volume: VolumeId,
    /// The project giving it away.
    pub project: ProjectId,
    /// Random salt of [`Self::key_sha256`] (hex).
    pub salt: String,
    /// SHA-256 of salt followed by the auth key (hex).
    pub key_sha256: String,
    /// Creation time.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_devices_are_picked_lowest_free_or_as_hinted() {
        assert_eq!(pick_volume_device([], None).as_deref(), Some("vdb"));
        assert_eq!(
            pick_volume_device(["vdb", "vdd"], None).as_deref(),
            Some("vdc")
        );
        // A free hint is taken, with or without /dev/.
        assert_eq!(
            pick_volume_device(["vdb"], Some("/dev/vdf")).as_deref(),
            Some("vdf")
        );
        assert_eq!(pick_volume_device([], Some("vdc")).as_deref(), Some("vdc"));
        // A used, foreign or root hint is ignored (as Nova does).
        assert_eq!(
            pick_volume_device(["vdb"], Some("/dev/vdb")).as_deref(),
            Some("vdc")
        );
        assert_eq!(
            pick_volume_device([], Some("/dev/sda")).as_deref(),
            Some("vdb")
        );
        assert_eq!(pick_volume_device([], Some("vda")).as_deref(), Some("vdb"));
        let all: Vec<String> = volume_devices().collect();
        assert_eq!(all.len(), 25);
        assert_eq!(
            pick_volume_device(all.iter().map(String::as_str), Some("vdc")),
            None
        );
    }
}
