//! nubo's metadata service: the agent's built-in 169.254.169.254.
//!
//! One HTTP listener per nubo bridge, each a TCP socket bound with
//! `SO_BINDTODEVICE` to its bridge on `169.254.169.254:80`. The caller is
//! identified only from what the host observes — the bridge, the TCP peer
//! address and the MAC the neighbour table holds for that address on that
//! bridge — and looked up in an [`InstanceLookup`] (normally the agent's
//! [`InstanceTable`]). Bridges may carry overlapping subnets: the bridge is
//! part of the key.
//!
//! Documents are served in the OpenStack (`/openstack/<version>/...`) and
//! EC2 (`/<version>/meta-data/...`) layouts so unmodified cloud-init works.
//!
//! Replies reach guests without any route to their subnet: for a
//! device-bound socket, when no route through that device matches the
//! destination, the kernel treats it as on-link on the bound device (see
//! `ip_route_output_key_hash_rcu`). The nubo bridges must not use strict
//! reverse-path filtering (`rp_filter=1`): loose (`2`, with any route to the
//! source, e.g. a default route) or off (`0`) both work.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nubo_metadata::MetadataError> {
//! use nubo_metadata::{InstanceMeta, InstanceTable, MetadataServer};
//! use nubo_netid::MacAddr;
//! let table = InstanceTable::new();
//! let mac: MacAddr = "fa:16:3e:00:00:01".parse().expect("valid MAC");
//! table.insert("nb-42", InstanceMeta::new("uuid", [10, 0, 0, 5].into(), mac));
//! let server = MetadataServer::start(table.clone())?;
//! server.add_bridge("nb-42")?;
//! // ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod caller;
mod error;
mod guard;
mod instance;
mod neighbour;
mod password;
mod routes;
mod server;
mod socket;

pub use caller::{resolve, CallerIdentity, Rejection};
pub use error::MetadataError;
pub use guard::ClientLimits;
pub use instance::{InstanceLookup, InstanceMeta, InstanceTable};
pub use neighbour::NeighbourError;
pub use password::{PasswordError, PasswordFuture, PasswordStore, MAX_PASSWORD_BYTES};
pub use routes::{router, EC2_VERSIONS, OPENSTACK_VERSIONS, TOKEN_PATH};
pub use server::{MetadataServer, RequestObserver, ServerConfig, METADATA_ADDR, REPORT_INTERVAL};
