//! Identity: projects, users, role assignments, application credentials,
//! quotas and their usage, the audit trail and the token signing key.
//!
//! The logic that works on these records (password hashing, tokens,
//! authorization, quota checks) lives in the `nubo-identity` crate; this
//! module only holds what is stored in etcd.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Timestamp;
use crate::{IdError, ProjectId};

// ------------------------------------------------------------------ names

/// A user's login name: 1..=63 characters of `[a-zA-Z0-9._@-]`, starting
/// with a letter or digit (so it never collides with the `_cloud` marker in
/// role keys and never contains `/`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// Validates and wraps a user name.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let err = |reason| IdError {
            kind: "user name",
            value: s.chars().take(64).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > 63 {
            return Err(err("must be at most 63 characters"));
        }
        if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(err("must start with a letter or digit"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(err(
                "may contain only letters, digits, '-', '_', '.' and '@'",
            ));
        }
        Ok(Self(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({:?})", self.0)
    }
}

impl FromStr for UserName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for UserName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// Identifies an application credential (a UUID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppCredId(Uuid);

impl AppCredId {
    /// A fresh random id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
    /// Wraps an existing UUID.
    pub const fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for AppCredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for AppCredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppCredId({})", self.0.hyphenated())
    }
}

impl FromStr for AppCredId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError {
            kind: "application credential id",
            value: s.chars().take(64).collect(),
            reason: "expected a UUID",
        })
    }
}

// ------------------------------------------------------------------ records

/// `/nubo/v1/private/projects/<id>`: a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Id (a validated name, e.g. "admin", "team-a").
    pub id: ProjectId,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// A disabled project cannot get tokens.
    pub enabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
}

/// `/nubo/v1/private/users/<name>`: a person or a service account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: UserName,
    /// Argon2id hash in PHC string format (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub password_hash: String,
    /// A disabled user cannot get tokens.
    pub enabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
}

/// What a user may do in a project (or, cloud-wide, everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every project, including cloud-wide resources (nodes,
    /// flavors, projects, users, quotas). Only meaningful cloud-wide.
    Admin,
    /// Read and change the project's resources.
    Member,
    /// Read the project's resources.
    Reader,
    /// A hypervisor's agent (assigned cloud-wide to a service user): may
    /// only download image data, and never change tenant resources.
    Node,
}

impl Role {
    /// Lower-case name, as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Reader => "reader",
            Self::Node => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            "reader" => Ok(Self::Reader),
            "node" => Ok(Self::Node),
            _ => Err(IdError {
                kind: "role",
                value: s.chars().take(64).collect(),
                reason: "expected admin, member, reader or node",
            }),
        }
    }
}

/// `/nubo/v1/private/roles/<user>/<project|_cloud>`: one role of a user in a
/// project, or cloud-wide when `project` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// The user.
    pub user: UserName,
    /// The project, or `None` for a cloud-wide assignment.
    #[serde(default)]
    pub project: Option<ProjectId>,
    /// The role.
    pub role: Role,
}

/// `/nubo/v1/private/app-creds/<id>`: a secret a program uses instead of a
/// password, bound to one user and project, possibly with fewer roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationCredential {
    /// Id (public half of the credential).
    pub id: AppCredId,
    /// The user it acts for.
    pub user: UserName,
    /// The project it is scoped to.
    pub project: ProjectId,
    /// Hash of the secret (see `nubo_identity::appcred`).
    pub secret_hash: String,
    /// Expiry, if any.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Roles it may use (a subset of the user's roles in `project`).
    pub roles: Vec<Role>,
    /// A name for people (e.g. "ci"); may repeat.
    #[serde(default)]
    pub name: String,
    /// Creation time (absent in records written before it existed).
    #[serde(default)]
    pub created_at: Option<Timestamp>,
}

// ------------------------------------------------------------------ quotas

/// One countable resource limited by a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaResource {
    /// Instances.
    Instances,
    /// Virtual CPUs of instances.
    Vcpus,
    /// Memory of instances, MiB.
    RamMb,
    /// Volumes.
    Volumes,
    /// Volume size, GiB.
    Gigabytes,
    /// Ports.
    Ports,
    /// Networks.
    Networks,
    /// Security groups.
    SecurityGroups,
    /// Floating IPs.
    FloatingIps,
    /// Volume snapshots (their sizes also count in `Gigabytes`, as in
    /// Cinder).
    Snapshots,
    /// Volume backups: nubo has no backups, so the usage stays 0; the
    /// limit is kept for Cinder clients that set it.
    Backups,
    /// Volume backup GiB (as [`QuotaResource::Backups`]: usage always 0).
    BackupGigabytes,
    /// The largest single volume, GiB: not a counter (its usage stays 0);
    /// checked against each volume's size at create and extend.
    PerVolumeGigabytes,
}

impl QuotaResource {
    /// Every resource, in the order checks report them.
    pub const ALL: [QuotaResource; 13] = [
        Self::Instances,
        Self::Vcpus,
        Self::RamMb,
        Self::Volumes,
        Self::Gigabytes,
        Self::Ports,
        Self::Networks,
        Self::SecurityGroups,
        Self::FloatingIps,
        Self::Snapshots,
        Self::Backups,
        Self::BackupGigabytes,
        Self::PerVolumeGigabytes,
    ];

    /// The resource named `name` (as [`QuotaResource::as_str`]).
    pub fn parse(name: &str) -> Option<QuotaResource> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Name as in the JSON records and messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Instances => "instances",
            Self::Vcpus => "vcpus",
            Self::RamMb => "ram_mb",
            Self::Volumes => "volumes",
            Self::Gigabytes => "gigabytes",
            Self::Ports => "ports",
            Self::Networks => "networks",
            Self::SecurityGroups => "security_groups",
            Self::FloatingIps => "floating_ips",
            Self::Snapshots => "snapshots",
            Self::Backups => "backups",
            Self::BackupGigabytes => "backup_gigabytes",
            Self::PerVolumeGigabytes => "per_volume_gigabytes",
        }
    }
}

impl fmt::Display for QuotaResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `/nubo/v1/private/quotas/<project>` (or `/nubo/v1/private/quotas/_default` for every
/// project without its own record): limits; `None` (JSON `null`, `-1` or a
/// missing field) means unlimited. Serialised as `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Instances.
    #[serde(default, deserialize_with = "limit")]
    pub instances: Option<u64>,
    /// vCPUs.
    #[serde(default, deserialize_with = "limit")]
    pub vcpus: Option<u64>,
    /// RAM, MiB.
    #[serde(default, deserialize_with = "limit")]
    pub ram_mb: Option<u64>,
    /// Volumes.
    #[serde(default, deserialize_with = "limit")]
    pub volumes: Option<u64>,
    /// Volume GiB.
    #[serde(default, deserialize_with = "limit")]
    pub gigabytes: Option<u64>,
    /// Ports.
    #[serde(default, deserialize_with = "limit")]
    pub ports: Option<u64>,
    /// Networks.
    #[serde(default, deserialize_with = "limit")]
    pub networks: Option<u64>,
    /// Security groups.
    #[serde(default, deserialize_with = "limit")]
    pub security_groups: Option<u64>,
    /// Floating IPs.
    #[serde(default = "default_floating_ips", deserialize_with = "limit")]
    pub floating_ips: Option<u64>,
    /// Volume snapshots.
    #[serde(default = "default_snapshots", deserialize_with = "limit")]
    pub snapshots: Option<u64>,
    /// Volume backups (nubo has none: usage always 0).
    #[serde(default = "default_backups", deserialize_with = "limit")]
    pub backups: Option<u64>,
    /// Volume backup GiB (nubo has none: usage always 0).
    #[serde(default = "default_backup_gigabytes", deserialize_with = "limit")]
    pub backup_gigabytes: Option<u64>,
    /// The largest single volume, GiB.
    #[serde(default, deserialize_with = "limit")]
    pub per_volume_gigabytes: Option<u64>,
}

/// What a stored quota written before snapshot quotas existed allows.
fn default_snapshots() -> Option<u64> {
    Quota::cloud_default().snapshots
}

/// What a stored quota written before backup quotas existed allows.
fn default_backups() -> Option<u64> {
    Quota::cloud_default().backups
}

/// What a stored quota written before backup quotas existed allows.
fn default_backup_gigabytes() -> Option<u64> {
    Quota::cloud_default().backup_gigabytes
}

/// What a stored quota written before floating IPs existed allows.
fn default_floating_ips() -> Option<u64> {
    Quota::cloud_default().floating_ips
}

/// A quota limit: a non-negative number, or `null` / `-1` for unlimited.
fn limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        None | Some(-1) => Ok(None),
        Some(n) => u64::try_from(n).map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "quota limit {n} is invalid: use a number >= 0, or -1 / null for unlimited"
            ))
        }),
    }
}

impl Quota {
    /// No limit on anything.
    pub const UNLIMITED: Quota = Quota {
        instances: None,
        vcpus: None,
        ram_mb: None,
        volumes: None,
        gigabytes: None,
        ports: None,
        networks: None,
        security_groups: None,
        floating_ips: None,
        snapshots: None,
        backups: None,
        backup_gigabytes: None,
        per_volume_gigabytes: None,
    };

    /// The built-in cloud-wide default, used when neither
    /// `/quotas/<project>` nor `/quotas/_default` exists (OpenStack's
    /// defaults: 10 instances, 20 vCPUs, 50 GiB RAM, 10 volumes, 1000 GiB,
    /// 500 ports, 100 networks, 10 security groups, 50 floating IPs;
    /// Cinder's 10 snapshots, 10 backups, 1000 backup GiB, no per-volume
    /// limit).
    pub const fn cloud_default() -> Quota {
        Quota {
            instances: Some(10),
            vcpus: Some(20),
            ram_mb: Some(51_200),
            volumes: Some(10),
            gigabytes: Some(1_000),
            ports: Some(500),
            networks: Some(100),
            security_groups: Some(10),
            floating_ips: Some(50),
            snapshots: Some(10),
            backups: Some(10),
            backup_gigabytes: Some(1_000),
            per_volume_gigabytes: None,
        }
    }

    /// The limit of one resource (`None` = unlimited).
    pub fn get(&self, r: QuotaResource) -> Option<u64> {
        match r {
            QuotaResource::Instances => self.instances,
            QuotaResource::Vcpus => self.vcpus,
            QuotaResource::RamMb => self.ram_mb,
            QuotaResource::Volumes => self.volumes,
            QuotaResource::Gigabytes => self.gigabytes,
            QuotaResource::Ports => self.ports,
            QuotaResource::Networks => self.networks,
            QuotaResource::SecurityGroups => self.security_groups,
            QuotaResource::FloatingIps => self.floating_ips,
            QuotaResource::Snapshots => self.snapshots,
            QuotaResource::Backups => self.backups,
            QuotaResource::BackupGigabytes => self.backup_gigabytes,
            QuotaResource::PerVolumeGigabytes => self.per_volume_gigabytes,
        }
    }

    /// The limit of one resource, mutable (`None` = unlimited).
    pub fn get_mut(&mut self, r: QuotaResource) -> &mut Option<u64> {
        match r {
            QuotaResource::Instances => &mut self.instances,
            QuotaResource::Vcpus => &mut self.vcpus,
            QuotaResource::RamMb => &mut self.ram_mb,
            QuotaResource::Volumes => &mut self.volumes,
            QuotaResource::Gigabytes => &mut self.gigabytes,
            QuotaResource::Ports => &mut self.ports,
            QuotaResource::Networks => &mut self.networks,
            QuotaResource::SecurityGroups => &mut self.security_groups,
            QuotaResource::FloatingIps => &mut self.floating_ips,
            QuotaResource::Snapshots => &mut self.snapshots,
            QuotaResource::Backups => &mut self.backups,
            QuotaResource::BackupGigabytes => &mut self.backup_gigabytes,
            QuotaResource::PerVolumeGigabytes => &mut self.per_volume_gigabytes,
        }
    }

    /// This quota with `changes` applied (each resource's new limit,
    /// `None` = unlimited); the other limits are kept.
    pub fn with_changes(mut self, changes: &[(QuotaResource, Option<u64>)]) -> Quota {
        for (r, l) in changes {
            *self.get_mut(*r) = *l;
        }
        self
    }
}

impl Default for Quota {
    fn default() -> Self {
        Self::cloud_default()
    }
}

/// `/nubo/v1/private/quota-usage/<project>`: what a project holds, maintained by
/// the coordinator in the same transaction as the resources themselves.
/// Also used for a request's delta.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// Instances.
    #[serde(default)]
    pub instances: u64,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: u64,
    /// RAM, MiB.
    #[serde(default)]
    pub ram_mb: u64,
    /// Volumes.
    #[serde(default)]
    pub volumes: u64,
    /// Volume GiB.
    #[serde(default)]
    pub gigabytes: u64,
    /// Ports.
    #[serde(default)]
    pub ports: u64,
    /// Networks.
    #[serde(default)]
    pub networks: u64,
    /// Security groups.
    #[serde(default)]
    pub security_groups: u64,
    /// Floating IPs.
    #[serde(default)]
    pub floating_ips: u64,
    /// Volume snapshots (counted by snapshots taken since nubo counts
    /// them, see `VolumeSnapshot::quota_counted`).
    #[serde(default)]
    pub snapshots: u64,
    /// Always 0: nubo has no volume backups.
    #[serde(default)]
    pub backups: u64,
    /// Always 0: nubo has no volume backups.
    #[serde(default)]
    pub backup_gigabytes: u64,
    /// Always 0: a per-volume limit, not a counter.
    #[serde(default)]
    pub per_volume_gigabytes: u64,
}

impl QuotaUsage {
    /// The counter of one resource.
    pub fn get(&self, r: QuotaResource) -> u64 {
        match r {
            QuotaResource::Instances => self.instances,
            QuotaResource::Vcpus => self.vcpus,
            QuotaResource::RamMb => self.ram_mb,
            QuotaResource::Volumes => self.volumes,
            QuotaResource::Gigabytes => self.gigabytes,
            QuotaResource::Ports => self.ports,
            QuotaResource::Networks => self.networks,
            QuotaResource::SecurityGroups => self.security_groups,
            QuotaResource::FloatingIps => self.floating_ips,
            QuotaResource::Snapshots => self.snapshots,
            QuotaResource::Backups => self.backups,
            QuotaResource::BackupGigabytes => self.backup_gigabytes,
            QuotaResource::PerVolumeGigabytes => self.per_volume_gigabytes,
        }
    }

    /// A mutable reference to the counter of one resource.
    pub fn get_mut(&mut self, r: QuotaResource) -> &mut u64 {
        match r {
            QuotaResource::Instances => &mut self.instances,
            QuotaResource::Vcpus => &mut self.vcpus,
            QuotaResource::RamMb => &mut self.ram_mb,
            QuotaResource::Volumes => &mut self.volumes,
            QuotaResource::Gigabytes => &mut self.gigabytes,
            QuotaResource::Ports => &mut self.ports,
            QuotaResource::Networks => &mut self.networks,
            QuotaResource::SecurityGroups => &mut self.security_groups,
            QuotaResource::FloatingIps => &mut self.floating_ips,
            QuotaResource::Snapshots => &mut self.snapshots,
            QuotaResource::Backups => &mut self.backups,
            QuotaResource::BackupGigabytes => &mut self.backup_gigabytes,
            QuotaResource::PerVolumeGigabytes => &mut self.per_volume_gigabytes,
        }
    }

    /// Component-wise sum, saturating at `u64::MAX`.
    pub fn saturating_add(mut self, o: &QuotaUsage) -> QuotaUsage {
        for r in QuotaResource::ALL {
            let v = self.get_mut(r);
            *v = v.saturating_add(o.get(r));
        }
        self
    }

    /// Component-wise difference, saturating at zero (releasing more than
    /// is held, e.g. after a hand edit, never underflows).
    pub fn saturating_sub(mut self, o: &QuotaUsage) -> QuotaUsage {
        for r in QuotaResource::ALL {
            let v = self.get_mut(r);
            *v = v.saturating_sub(o.get(r));
        }
        self
    }
}

// ------------------------------------------------------------------ audit

/// How an audited call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum AuditOutcome {
    /// It succeeded.
    Ok,
    /// It failed with a gRPC code name (e.g. "PermissionDenied") and a message.
    Error {
        /// gRPC code name.
        code: String,
        /// The message returned to the caller.
        message: String,
    },
}

/// `/nubo/v1/private/audit/<time-ordered id>`: one mutating (or denied) API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call was made.
    pub time: Timestamp,
    /// Who made it (`None` when authentication failed).
    #[serde(default)]
    pub user: Option<UserName>,
    /// The project the token was scoped to.
    #[serde(default)]
    pub project: Option<ProjectId>,
    /// The project the call acted in when a cloud admin acted on another
    /// project's resource by its id (None otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acted_in: Option<ProjectId>,
    /// The API action, e.g. "servers.create".
    pub action: String,
    /// The resource kind, e.g. "server".
    pub resource_kind: String,
    /// The resource id or name, when known.
    #[serde(default)]
    pub resource_id: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The request id (also logged by the coordinator).
    pub request_id: String,
}

// ------------------------------------------------------------------ secrets

/// `/nubo/v1/private/secrets/token-key`: the cluster's token signing keys
/// (base64, standard alphabet, 32+ random bytes each). Written by the
/// coordinator (bootstrap and rotation); readable by anyone with read
/// access to etcd, which is why etcd must require client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKeySet {
    /// The key new tokens are signed with.
    pub current: String,
    /// When `current` became current.
    pub rotated_at: Timestamp,
    /// The key before the last rotation, still accepted for verification
    /// until `previous_valid_until` (= rotation time + the longest token
    /// lifetime), so tokens issued just before a rotation keep working.
    #[serde(default)]
    pub previous: Option<String>,
    /// End of the grace window for `previous`.
    #[serde(default)]
    pub previous_valid_until: Option<Timestamp>,
}

/// `/nubo/v1/private/revoked-tokens/<token id>`: a token revoked before
/// its expiry (`Tokens.Revoke`). The key is leased until the token would
/// have expired, so the list never holds a token that is refused anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    /// The token's user.
    pub user: UserName,
    /// When the token expires (unix seconds).
    pub expires_at: i64,
    /// Who revoked it.
    pub revoked_by: UserName,
    /// When.
    pub revoked_at: Timestamp,
}

/// `/nubo/v1/private/secrets/ticket-key`: the coordinators' Ed25519 key
/// signing stream tickets (`nubo_nodeapi::ticket`). Made by the first
/// coordinator that needs it (create-if-absent), together with its public
/// half ([`TicketVerifyKey`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketSigningKey {
    /// Key id (hex), the name of the public half's key.
    pub kid: String,
    /// PKCS#8 document, base64 (standard alphabet).
    pub pkcs8: String,
    /// When it was made.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for TicketSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigningKey")
            .field("kid", &self.kid)
            .field("pkcs8", &"<secret>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// `/nubo/v1/ticket-keys/<kid>`: the public half of a ticket key, read by
/// nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketVerifyKey {
    /// The Ed25519 public key (32 bytes), base64 (standard alphabet).
    pub public_key: String,
    /// When it was made.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_validated() {
        assert!(UserName::new("alice@example.org").is_ok());
        assert!(UserName::new("_cloud").is_err());
        assert!(UserName::new("a/b").is_err());
        assert!(UserName::new("").is_err());
        assert!(serde_json::from_str::<UserName>("\"x/y\"").is_err());
    }

    #[test]
    fn quota_null_means_unlimited_and_usage_saturates() {
        let q: Quota = serde_json::from_str(r#"{"instances":3,"vcpus":null,"ram_mb":-1}"#).unwrap();
        assert_eq!(q.get(QuotaResource::Instances), Some(3));
        assert_eq!(q.get(QuotaResource::Vcpus), None);
        assert_eq!(q.get(QuotaResource::RamMb), None);
        assert!(serde_json::from_str::<Quota>(r#"{"ports":-2}"#).is_err());
        let back: Quota = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        assert_eq!(q.get(QuotaResource::Ports), None);
        let a = QuotaUsage {
            instances: u64::MAX,
            ports: 1,
            ..Default::default()
        };
        let b = QuotaUsage {
            instances: 1,
            ports: 2,
            ..Default::default()
        };
        assert_eq!(a.saturating_add(&b).instances, u64::MAX);
        assert_eq!(a.saturating_sub(&b).ports, 0);
        assert_eq!(a.saturating_sub(&b).instances, u64::MAX - 1);
    }

    #[test]
    fn audit_outcome_json_is_readable() {
        let o = AuditOutcome::Error {
            code: "NotFound".into(),
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"status":"error","code":"NotFound","message":"m"}"#
        );
        assert_eq!(
            serde_json::to_string(&AuditOutcome::Ok).unwrap(),
            r#"{"status":"ok"}"#
        );
    }
}
