//! Typed identifiers.
//!
//! Every resource kind has its own id type, so an instance id cannot be passed
//! where a port id is expected. UUID-based ids render in canonical hyphenated
//! form; name-based ids (nodes, flavors, projects) are validated strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Error returned when a string is not a valid identifier of the requested kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}: {reason}")]
pub struct IdError {
    /// The kind of id that was expected, e.g. "instance id".
    pub kind: &'static str,
    /// The offending input (truncated to 64 characters).
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl IdError {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        Self {
            kind,
            value: value.chars().take(64).collect(),
            reason,
        }
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
            /// Wraps an existing UUID.
            pub const fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }
            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            /// The first `n` hex digits (no hyphens), used for device names.
            pub fn short_hex(&self, n: usize) -> String {
                self.0.simple().to_string().chars().take(n).collect()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| IdError::new($kind, s, "expected a UUID"))
            }
        }
    };
}

uuid_id!(
    /// Identifies an instance (a VM, or a network-namespace guest in tests).
    InstanceId, "instance id");
uuid_id!(
    /// Identifies a port: a MAC + IP on a network, plugged into at most one instance.
    PortId, "port id");
uuid_id!(
    /// Identifies a tenant network.
    NetworkId, "network id");
uuid_id!(
    /// Identifies a subnet of a network (a network's first subnet has the
    /// network's id).
    SubnetId, "subnet id");
uuid_id!(
    /// Identifies a security group.
    SecurityGroupId, "security group id");
uuid_id!(
    /// Identifies one rule inside a security group.
    RuleId, "security group rule id");
uuid_id!(
    /// Identifies an image.
    ImageId, "image id");
uuid_id!(
    /// Identifies a volume.
    VolumeId, "volume id");
uuid_id!(
    /// Identifies a volume snapshot.
    SnapshotId, "snapshot id");
uuid_id!(
    /// Identifies a server group (affinity / anti-affinity).
    ServerGroupId, "server group id");
uuid_id!(
    /// Identifies a router.
    RouterId, "router id");
uuid_id!(
    /// Identifies a floating IP.
    FloatingIpId, "floating ip id");
uuid_id!(
    /// Identifies a migration of an instance.
    MigrationId, "migration id");
uuid_id!(
    /// Identifies a volume transfer (a volume offered to another project).
    TransferId, "volume transfer id");

/// Checks a DNS-label-like name: 1..=63 chars of `[a-zA-Z0-9._-]`, starting
/// with an alphanumeric character.
fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::new(kind, s, "must not be empty"));
    }
    if s.len() > 63 {
        return Err(IdError::new(kind, s, "must be at most 63 characters"));
    }
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(IdError::new(kind, s, "must start with a letter or digit"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(IdError::new(
            kind,
            s,
            "may contain only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name($kind, &s)?;
                Ok(Self(s))
            }
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A hypervisor node's name (unique in the cluster; usually its hostname).
    NodeName, "node name");
name_id!(
    /// A flavor's name (flavors are global and keyed by name).
    FlavorName, "flavor name");
name_id!(
    /// A project (tenant). Until authentication exists everything lives in "default".
    ProjectId, "project id");

impl ProjectId {
    /// The project every resource belongs to until authentication exists.
    pub fn default_project() -> Self {
        Self(crate::proto::DEFAULT_PROJECT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_round_trip_and_reject_garbage() {
        let id = InstanceId::new_random();
        let parsed: InstanceId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        let err = "not-a-uuid".parse::<InstanceId>().unwrap_err();
        assert_eq!(err.kind, "instance id");
        assert!(err.to_string().contains("expected a UUID"));
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = PortId::new_random();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: PortId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn names_are_validated() {
        assert!(NodeName::new("node-1.rack2").is_ok());
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("-leading").is_err());
        assert!(NodeName::new("has/slash").is_err());
        assert!(NodeName::new("x".repeat(64)).is_err());
        assert!(serde_json::from_str::<NodeName>("\"a/b\"").is_err());
    }

    #[test]
    fn short_hex_has_no_hyphens() {
        let id = PortId::new_random();
        let s = id.short_hex(11);
        assert_eq!(s.len(), 11);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
