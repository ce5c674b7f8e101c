//! The resource model: what is stored, as JSON, under `/nubo/v1/`.
//!
//! These types are the single source of truth for etcd values. Both daemons
//! decode every value they read with [`decode`], which never panics: a value
//! written by hand with `etcdctl put` that does not parse is reported as a
//! [`DecodeError`] naming the key, and the caller logs and skips it.

mod capture;
mod compute;
mod identity;
mod migration;
mod network;
mod node;
mod storage;
mod subnet;

pub use capture::*;
pub use compute::*;
pub use identity::*;
pub use migration::*;
pub use network::*;
pub use node::*;
pub use storage::*;
pub use subnet::*;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Timestamps are RFC 3339 UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The current time, as stored in resources.
pub fn now() -> Timestamp {
    chrono::Utc::now()
}

/// vCPUs, memory and disk: a flavor's size, a node's capacity or its usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mb: u64,
    /// Root disk in GiB.
    pub disk_gb: u64,
}

impl Resources {
    /// Component-wise sum, saturating.
    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(o.vcpus),
            ram_mb: self.ram_mb.saturating_add(o.ram_mb),
            disk_gb: self.disk_gb.saturating_add(o.disk_gb),
        }
    }

    /// Component-wise difference, saturating at zero.
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(o.vcpus),
            ram_mb: self.ram_mb.saturating_sub(o.ram_mb),
            disk_gb: self.disk_gb.saturating_sub(o.disk_gb),
        }
    }

    /// True when every component of `self` is at most the one of `o`.
    pub fn fits_in(&self, o: &Resources) -> bool {
        self.vcpus <= o.vcpus && self.ram_mb <= o.ram_mb && self.disk_gb <= o.disk_gb
    }
}

/// A stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("value at {key} is not a valid {kind}: {source}")]
pub struct DecodeError {
    /// The etcd key the value was read from.
    pub key: String,
    /// The Rust type that was expected.
    pub kind: &'static str,
    /// The JSON error.
    #[source]
    pub source: serde_json::Error,
}

/// Decodes a JSON value read from `key`.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError {
        key: key.to_string(),
        kind: std::any::type_name::<T>(),
        source,
    })
}

/// Encodes a value for storage (compact JSON).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain data types cannot fail: no maps with non-string
    // keys, no custom serialisers that error.
    serde_json::to_vec(value).unwrap_or_default()
}
