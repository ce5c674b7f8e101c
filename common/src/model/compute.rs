//! Flavors, images, keypairs, server groups and instances.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::storage::VolumeAttachment;
use super::{Resources, Timestamp};
use crate::{
    FlavorName, ImageId, InstanceId, NodeName, PortId, ProjectId, ServerGroupId, VolumeId,
};

/// An instance size. Flavors are global and keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flavor {
    /// Unique name, e.g. "m1.small".
    pub name: FlavorName,
    /// vCPUs, memory and root disk.
    pub resources: Resources,
    /// Free-form properties (e.g. `hw:cpu_policy`).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// The name OpenStack clients show (empty: [`Flavor::name`], which is
    /// the flavor's OpenStack id): a flavor made through Nova's API keeps
    /// its Nova id as its name and its Nova name here.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// Private (OpenStack `os-flavor-access:is_public` false): seen and
    /// used only by cloud admins and the projects in [`Flavor::access`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// The projects a private flavor is shared with (empty for a public
    /// one).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub access: BTreeSet<ProjectId>,
}

impl Flavor {
    /// True when `project` may see and use the flavor: it is public, or
    /// private and shared with `project`. Pure.
    pub fn usable_by(&self, project: &ProjectId) -> bool {
        !self.private || self.access.contains(project)
    }
}

/// Format of an image's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw disk image.
    Raw,
    /// A qcow2 disk image.
    Qcow2,
}

/// Lifecycle of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Metadata registered, data not (yet) uploaded.
    Queued,
    /// Data stored and verified.
    Active,
    /// Upload or verification failed.
    Error,
}

/// A bootable image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Id.
    pub id: ImageId,
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Data format.
    pub disk_format: DiskFormat,
    /// Size of the data in bytes (0 while queued).
    pub size_bytes: u64,
    /// SHA-256 of the data, hex, when known.
    #[serde(default)]
    pub checksum_sha256: Option<String>,
    /// Smallest root disk this image fits on.
    pub min_disk_gb: u64,
    /// Smallest memory it boots with.
    pub min_ram_mb: u64,
    /// Lifecycle state.
    pub status: ImageStatus,
    /// Creation time.
    pub created_at: Timestamp,
    /// SHA-256 (hex) of the kernel for direct kernel boot, if the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sha256: Option<String>,
    /// SHA-256 (hex) of the initrd, if the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_sha256: Option<String>,
    /// Kernel command line for direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cmdline: Option<String>,
    /// Why the image is in `error` (e.g. a checksum mismatch on upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Who besides its project sees it (absent in records made before
    /// images could be shared: private).
    #[serde(default)]
    pub access: ImageAccess,
    /// Tags, free-form properties and flags.
    #[serde(default)]
    pub attrs: ImageAttrs,
}

/// Which projects see an image besides its owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageVisibility {
    /// Its project only.
    #[default]
    Private,
    /// Its project and the projects it is shared with ([`ImageAccess::members`]).
    Shared,
    /// Every project that asks for it (by id, or listing community images).
    Community,
    /// Every project, listed everywhere (set by a cloud admin only).
    Public,
}

impl ImageVisibility {
    /// The lowercase name (`private`, `shared`, `community`, `public`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Shared => "shared",
            Self::Community => "community",
            Self::Public => "public",
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "private" => Self::Private,
            "shared" => Self::Shared,
            "community" => Self::Community,
            "public" => Self::Public,
            _ => return None,
        })
    }
}

/// A member project's answer to an image shared with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Not answered yet: the image is usable by id, not listed.
    #[default]
    Pending,
    /// Accepted: listed among the member's images.
    Accepted,
    /// Rejected: usable by id, not listed.
    Rejected,
}

impl MemberStatus {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the lowercase name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "accepted" => Self::Accepted,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }
}

/// A project an image is shared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMember {
    /// Its answer.
    pub status: MemberStatus,
    /// When it was added.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
}

/// Who sees an image besides its project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageAccess {
    /// Private, shared, community or public.
    #[serde(default)]
    pub visibility: ImageVisibility,
    /// The projects a shared image is shared with (kept when the
    /// visibility changes, used only while it is `shared`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<ProjectId, ImageMember>,
}

impl ImageAccess {
    /// True when `project` (not the owner) may use the image by id:
    /// public and community images, and shared images it is a member of
    /// (whatever its answer, as Glance). Pure.
    pub fn usable_by(&self, project: &ProjectId) -> bool {
        match self.visibility {
            ImageVisibility::Public | ImageVisibility::Community => true,
            ImageVisibility::Shared => self.members.contains_key(project),
            ImageVisibility::Private => false,
        }
    }

    /// The member status of `project` when the image is shared with it.
    pub fn member_status(&self, project: &ProjectId) -> Option<MemberStatus> {
        (self.visibility == ImageVisibility::Shared)
            .then(|| self.members.get(project).map(|m| m.status))
            .flatten()
    }
}

/// Tags, properties and flags of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageAttrs {
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub tags: std::collections::BTreeSet<String>,
    /// Free-form string properties (`kernel_id`, `os_distro`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Deletion refused while set.
    #[serde(default)]
    pub protected: bool,
    /// Left out of listings unless asked for.
    #[serde(default)]
    pub hidden: bool,
    /// Deactivated by an admin: its data is not served to tenants and
    /// no new server or volume is made from it.
    #[serde(default)]
    pub deactivated: bool,
}

/// An SSH public key injected through the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keypair {
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// The OpenSSH public key line.
    pub public_key: String,
    /// SHA-256 fingerprint ("SHA256:…").
    pub fingerprint: String,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Placement policy of a server group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerGroupPolicy {
    /// All members on the same node.
    Affinity,
    /// Every member on a different node.
    AntiAffinity,
}

/// A group of instances placed together or apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroup {
    /// Id.
    pub id: ServerGroupId,
    /// Name (unique within the project).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Placement policy.
    pub policy: ServerGroupPolicy,
    /// Creation time.
    pub created_at: Timestamp,
}

/// The power state the operator wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    /// Should be running.
    Running,
    /// Should be shut off.
    Stopped,
}

/// What happens to an instance when its node fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvacuationPolicy {
    /// Restarted elsewhere automatically (needs shared storage).
    #[default]
    Auto,
    /// Restarted elsewhere only by `nubo node evacuate`.
    Manual,
    /// Never moved.
    Never,
}

/// The desired state of an instance, written by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Id.
    pub id: InstanceId,
    /// Display name (not unique).
    pub name: String,
    /// Owner.
    pub project: ProjectId,
    /// Flavor name at creation time.
    pub flavor: FlavorName,
    /// Resources reserved on the node (copied from the flavor).
    pub resources: Resources,
    /// Boot image.
    pub image: ImageId,
    /// Ports in NIC order.
    pub ports: Vec<PortId>,
    /// Keypair name whose key is served by the metadata service.
    #[serde(default)]
    pub key_name: Option<String>,
    /// User data, base64-encoded as in the OpenStack API.
    #[serde(default)]
    pub user_data_b64: Option<String>,
    /// Desired power state.
    pub power: PowerState,
    /// Bumped by every reboot request; the agent reboots when it sees a
    /// generation newer than the one it last acted on.
    #[serde(default)]
    pub reboot_generation: u64,
    /// The reboot generation of the last rebuild request (0 = never
    /// rebuilt): a rebuild bumps `reboot_generation` and sets this to it;
    /// the agent re-creates the instance (root disk from `image`, same
    /// ports and volumes, same power) instead of rebooting it while the
    /// generation it acted on is older ([`Instance::rebuild_pending`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rebuild_generation: u64,
    /// Requested availability zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Server group membership.
    #[serde(default)]
    pub server_group: Option<ServerGroupId>,
    /// Node the instance is placed on (set together with its assignment).
    #[serde(default)]
    pub node: Option<NodeName>,
    /// Index inside the batch that created it.
    #[serde(default)]
    pub launch_index: u32,
    /// Evacuation policy.
    #[serde(default)]
    pub evacuation: EvacuationPolicy,
    /// Volumes attached, in attach order (hot-plugged by the agent when
    /// they change while the instance runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeAttachment>,
    /// Boot from this volume (the guest's `vda`) instead of a root disk
    /// made from `image`; `image` still names where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<VolumeAttachment>,
    /// User key/value metadata (OpenStack server `metadata`), served to the
    /// guest as `meta` in `meta_data.json`; within [`check_server_metadata`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The IPv4 address its users should reach it at (OpenStack
    /// `accessIPv4`): set by its owner, informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_ipv4: Option<std::net::Ipv4Addr>,
    /// The IPv6 one (OpenStack `accessIPv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_ipv6: Option<std::net::Ipv6Addr>,
    /// Locked (the reason, "" = none given): changes by anyone but cloud
    /// admins are refused until it is unlocked. `None`: not locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<String>,
    /// A resize waiting for its owner's confirm or revert (OpenStack
    /// `VERIFY_RESIZE`): `flavor`/`resources` already hold the new size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<PendingResize>,
    /// A cloud admin marked it `error` by hand (OpenStack `os-resetState`):
    /// shown as `error` whatever its agent reports, until an admin resets
    /// it to `active` or its owner starts, stops, reboots or rebuilds it.
    /// Changes nothing on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_mark: Option<ErrorMark>,
    /// Creation time.
    pub created_at: Timestamp,
    /// When the spec was last written (every write stamps it); `None` in
    /// specs written before nubo recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// `/nubo/v1/private/deleted-servers/<id>`: what is left of a deleted
/// server, for lists of what changed since a time (Nova's
/// `changes-since`); leased, so etcd removes it after the retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedServer {
    /// Its last spec (without user data).
    pub instance: Instance,
    /// When it was deleted.
    pub deleted_at: Timestamp,
}

/// Who marked a server `error` by hand, and when ([`Instance::error_mark`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMark {
    /// The cloud admin who set it.
    pub by: String,
    /// When.
    pub at: Timestamp,
}

/// What a resize replaced, kept until it is confirmed (dropped) or
/// reverted (put back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResize {
    /// The flavor before the resize.
    pub old_flavor: FlavorName,
    /// The size before the resize.
    pub old_resources: Resources,
    /// The desired power when the resize was asked for (a revert restores it).
    pub old_power: PowerState,
    /// When the resize was asked for.
    pub at: Timestamp,
}

/// Most metadata items one server may carry (Nova's default
/// `metadata_items` quota).
pub const MAX_SERVER_METADATA_ITEMS: usize = 128;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Instance {
    /// What the instance holds on its node and in its project's quota:
    /// its size, or during a pending resize the larger of the old and new
    /// size in each dimension (so a revert always fits). Pure.
    pub fn reserved(&self) -> Resources {
        match &self.resize {
            Some(r) => Resources {
                vcpus: self.resources.vcpus.max(r.old_resources.vcpus),
                ram_mb: self.resources.ram_mb.max(r.old_resources.ram_mb),
                disk_gb: self.resources.disk_gb.max(r.old_resources.disk_gb),
            },
            None => self.resources,
        }
    }

    /// The lifecycle state front ends show for the instance given its
    /// agent's report: an admin's [`Instance::error_mark`] first, then a
    /// rebuild its agent has not done (`rebuilding`), then the reported
    /// state (`pending` before any report). Pure.
    pub fn shown_state(&self, status: Option<&InstanceStatus>) -> &'static str {
        if self.error_mark.is_some() {
            return InstanceState::Error.as_str();
        }
        match status {
            Some(s) if self.rebuild_pending(Some(s.reboot_generation)) => "rebuilding",
            Some(s) => s.state.as_str(),
            None => InstanceState::Pending.as_str(),
        }
    }

    /// Why it shows `error`: the admin's mark, else the agent's reported
    /// failure (empty: none). Pure.
    pub fn shown_error(&self, status: Option<&InstanceStatus>) -> String {
        match (&self.error_mark, status.and_then(|s| s.last_error.as_ref())) {
            (Some(m), Some(e)) => format!(
                "set to error by {} at {} (agent: {e})",
                m.by,
                m.at.to_rfc3339()
            ),
            (Some(m), None) => format!("set to error by {} at {}", m.by, m.at.to_rfc3339()),
            (None, e) => e.cloned().unwrap_or_default(),
        }
    }

    /// True when a rebuild was asked for and the agent has not acted on
    /// it: `acted` is the reboot generation its status reports (`None`:
    /// no status yet, so nothing to rebuild). Pure.
    pub fn rebuild_pending(&self, acted: Option<u64>) -> bool {
        // A reboot asked for after the rebuild (a newer generation) does
        // not cancel it: the re-created instance boots anyway.
        self.rebuild_generation > 0 && acted.is_some_and(|g| g < self.rebuild_generation)
    }
}

/// Longest metadata key and value, in characters (Nova's limits).
pub const MAX_SERVER_METADATA_LEN: usize = 255;

/// Why a server's metadata is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerMetadataError {
    /// An empty key.
    #[error("a server metadata key may not be empty")]
    EmptyKey,
    /// A key over [`MAX_SERVER_METADATA_LEN`] characters.
    #[error("server metadata key {key:?} is longer than {MAX_SERVER_METADATA_LEN} characters")]
    KeyTooLong {
        /// The key, cut to 40 characters.
        key: String,
    },
    /// A value over [`MAX_SERVER_METADATA_LEN`] characters.
    #[error("the value of server metadata key {key:?} is longer than {MAX_SERVER_METADATA_LEN} characters")]
    ValueTooLong {
        /// The key.
        key: String,
    },
    /// More than [`MAX_SERVER_METADATA_ITEMS`] items.
    #[error("metadata_items: a server carries at most {MAX_SERVER_METADATA_ITEMS} metadata items ({count} requested)")]
    TooMany {
        /// How many the result would hold.
        count: usize,
    },
}

/// Checks a server's complete metadata against nubo's (Nova's) limits:
/// keys 1..=255 characters, values at most 255, at most 128 items. Pure.
pub fn check_server_metadata(m: &BTreeMap<String, String>) -> Result<(), ServerMetadataError> {
    for (k, v) in m {
        if k.is_empty() {
            return Err(ServerMetadataError::EmptyKey);
        }
        if k.chars().count() > MAX_SERVER_METADATA_LEN {
            return Err(ServerMetadataError::KeyTooLong {
                key: k.chars().take(40).collect(),
            });
        }
        if v.chars().count() > MAX_SERVER_METADATA_LEN {
            return Err(ServerMetadataError::ValueTooLong { key: k.clone() });
        }
    }
    if m.len() > MAX_SERVER_METADATA_ITEMS {
        return Err(ServerMetadataError::TooMany { count: m.len() });
    }
    Ok(())
}

/// The observed lifecycle state reported by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Accepted, no agent has reported yet.
    Pending,
    /// The agent is creating it.
    Building,
    /// Running.
    Running,
    /// Shut off.
    Stopped,
    /// Failed; see `last_error`.
    Error,
    /// Being torn down.
    Deleting,
}

impl InstanceState {
    /// The lowercase name used in the API and CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Deleting => "deleting",
        }
    }
}

/// Observed state of an instance, written by the agent that runs it under
/// `/nubo/v1/node-owned/<node>/status/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Lifecycle state.
    pub state: InstanceState,
    /// Node that reported.
    pub node: NodeName,
    /// When the state last changed.
    pub updated_at: Timestamp,
    /// Human-readable reason for the last failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The reboot generation the agent has acted on.
    #[serde(default)]
    pub reboot_generation: u64,
    /// Volumes attached on the hypervisor right now (the agent's view); the
    /// coordinator completes a detach once a volume is gone from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeId>,
    /// The vCPUs and memory the guest has on the hypervisor (the domain's
    /// definition, the netns driver's record); `None` from agents and
    /// drivers that do not report it (values written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<GuestSize>,
}

/// The vCPUs and memory a guest has on its hypervisor, as its agent
/// reports them in [`InstanceStatus::size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSize {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mb: u64,
}

impl GuestSize {
    /// The size a guest of `r` gets (at least one vCPU, as domains get).
    /// Pure.
    pub fn of(r: &Resources) -> Self {
        GuestSize {
            vcpus: r.vcpus.max(1),
            ram_mb: r.ram_mb,
        }
    }
}

/// `/nubo/v1/node-owned/<node>/guest-stops/<instance>`: the agent of the
/// node saw the guest power itself off while its desired power was
/// running. The agent keeps the guest off while the report stands; the
/// leading coordinator sets the spec's desired power to stopped (if the
/// spec is still the one the report was made against) and deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStop {
    /// The mod revision of the spec (and of the node's copy, written in
    /// the same transaction) the agent saw when the guest stopped: a spec
    /// changed since (e.g. `nubo server start`) supersedes the report.
    pub spec_revision: i64,
    /// When the guest stopped.
    pub at: Timestamp,
}

/// `/nubo/v1/assignments/<node>/<instance>`: the instance is placed on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The instance.
    pub instance: InstanceId,
    /// The node.
    pub node: NodeName,
    /// When it was placed.
    pub assigned_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn server_metadata_limits() {
        let long = "k".repeat(MAX_SERVER_METADATA_LEN);
        let too_long = "k".repeat(MAX_SERVER_METADATA_LEN + 1);
        // At the limits: accepted (multi-byte characters count once).
        check_server_metadata(&meta(&[(&long, &long), ("₡", "€")])).unwrap();
        let full: BTreeMap<String, String> = (0..MAX_SERVER_METADATA_ITEMS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        check_server_metadata(&full).unwrap();
        // Beyond them: refused, naming what.
        assert_eq!(
            check_server_metadata(&meta(&[("", "v")])),
            Err(ServerMetadataError::EmptyKey)
        );
        assert!(matches!(
            check_server_metadata(&meta(&[(&too_long, "v")])),
            Err(ServerMetadataError::KeyTooLong { .. })
        ));
        assert_eq!(
            check_server_metadata(&meta(&[("k", &too_long)])),
            Err(ServerMetadataError::ValueTooLong { key: "k".into() })
        );
        let mut over = full;
        over.insert("one-more".into(), "v".into());
        assert_eq!(
            check_server_metadata(&over),
            Err(ServerMetadataError::TooMany {
                count: MAX_SERVER_METADATA_ITEMS + 1
            })
        );
    }

    #[test]
    fn an_error_mark_shows_error_until_dropped() {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "id": "3f0d2a4c-1d2e-4f60-9a1b-2c3d4e5f6a7b", "name": "vm",
            "project": "p1", "flavor": "m1", "image": "4f0d2a4c-1d2e-4f60-9a1b-2c3d4e5f6a7b",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "ports": [], "power": "running", "reboot_generation": 2,
            "rebuild_generation": 2, "created_at": crate::model::now(),
        }))
        .unwrap();
        let st = |state, generation| InstanceStatus {
            state,
            node: NodeName::new("n0").unwrap(),
            updated_at: crate::model::now(),
            last_error: None,
            reboot_generation: generation,
            volumes: Vec::new(),
            size: None,
        };
        let running = st(InstanceState::Running, 2);
        assert_eq!(i.shown_state(None), "pending");
        assert_eq!(i.shown_state(Some(&running)), "running");
        assert_eq!(
            i.shown_state(Some(&st(InstanceState::Running, 1))),
            "rebuilding"
        );
        assert_eq!(i.shown_error(Some(&running)), "");
        i.error_mark = Some(ErrorMark {
            by: "admin".into(),
            at: crate::model::now(),
        });
        // The mark wins over what the agent reports, a pending rebuild too.
        assert_eq!(i.shown_state(Some(&running)), "error");
        assert_eq!(i.shown_state(Some(&st(InstanceState::Running, 1))), "error");
        assert_eq!(i.shown_state(None), "error");
        assert!(i
            .shown_error(Some(&running))
            .starts_with("set to error by admin at "));
        let mut failed = st(InstanceState::Error, 2);
        failed.last_error = Some("disk gone".into());
        assert!(i.shown_error(Some(&failed)).ends_with("(agent: disk gone)"));
        // Dropped: the agent's report again (its own error stays).
        i.error_mark = None;
        assert_eq!(i.shown_state(Some(&failed)), "error");
        assert_eq!(i.shown_error(Some(&failed)), "disk gone");
    }
}

/// `/nubo/v1/private/instance-actions/<instance>/<id>`: one thing done to
/// an instance (OpenStack's instance action): what, by whom, when, under
/// which request id. Written with the change itself; the newest
/// [`MAX_INSTANCE_ACTIONS`] are kept, all deleted with the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAction {
    /// `create`, `start`, `stop`, `reboot`, `rebuild`, `resize`, `lock`,
    /// `unlock`, … (OpenStack's names).
    pub action: String,
    /// The request id of the call (the audit record's, and what the
    /// OpenStack front end answered in `x-openstack-request-id`).
    pub request_id: String,
    /// Who asked (`None` without authentication).
    #[serde(default)]
    pub user: Option<String>,
    /// The instance's project.
    pub project: ProjectId,
    /// When.
    pub start_time: Timestamp,
}

/// How many actions of one instance are kept (the oldest go first).
pub const MAX_INSTANCE_ACTIONS: usize = 100;
