//! nubo's built-in DHCPv4 server.
//!
//! The agent runs one [`DhcpServer`] per bridge. Each server owns a UDP
//! socket on 0.0.0.0:67 bound to its bridge with `SO_BINDTODEVICE`, so
//! bridges with overlapping subnets in one namespace never mix their
//! traffic, and answers only the MACs in its [`LeaseTable`] — a shared
//! table the agent updates live as ports come and go. Every port has one
//! fixed address; the protocol logic is the pure function [`respond`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), nubo_dhcp::DhcpError> {
//! use nubo_dhcp::{DhcpServer, Lease, LeaseTable, METADATA_IP};
//! let table = LeaseTable::new();
//! table.upsert(Lease {
//!     router: Some([10, 0, 0, 1].into()),
//!     mtu: Some(1450),
//!     hostname: Some("vm-1".into()),
//!     ..Lease::new([0x02, 0, 0, 0, 0, 1].into(), [10, 0, 0, 5].into(), 24)
//! })?;
//! let handle = DhcpServer::bind("nb-100", METADATA_IP, table.clone())?.spawn()?;
//! // ... table.upsert()/remove() as ports change ...
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
pub mod l2;
mod lease;
mod packet;
pub mod probe;
pub mod ratelimit;
mod respond;
mod server;
mod socket;

pub use error::{DecodeError, DhcpError};
pub use lease::{Lease, LeaseTable, METADATA_IP};
pub use packet::{decode_request, encode, peek_chaddr, MAX_PACKET, MIN_PACKET};
pub use ratelimit::{Event, Quota, Quotas, Summary, Tally};
pub use respond::{decide, reply_destination, respond, Decision, Silence, CLIENT_PORT};
pub use server::{DhcpCounters, DhcpHandle, DhcpServer, DhcpStats};
pub use socket::SERVER_PORT;

/// The `dhcproto` crate this API speaks (`Message`, options).
pub use dhcproto;
/// The network type of [`Lease::routes`].
pub use ipnet::Ipv4Net;
