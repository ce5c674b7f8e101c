//! The agents' node API, shared by its server (the agent) and its clients
//! (the coordinators, peer agents).
//!
//! - [`ticket`]: single-use stream tickets, signed by the coordinators'
//!   Ed25519 key, checked by the node (pure functions).
//! - [`tls`]: mutual TLS with the cluster CA.
//! - [`client`]: the HTTP client (console, capture and disk-capture
//!   streams, the etcd status of the fencing checks).
//! - [`server`]: serving a router over TLS, and the [`server::TicketGate`].
//!
//! The routes themselves are the agent's (`nubo_agent::node::api`).

pub mod client;
pub mod server;
pub mod ticket;
pub mod tls;

pub use client::{ClientError, NodeApiAddr, NodeApiClient, NodeStream};
pub use server::{TicketGate, VerifyKeys};
pub use ticket::{StreamTarget, TicketClaims, TicketError, TicketSigner};
pub use tls::{TlsError, TlsFiles};

/// Path of the console stream of `instance` (`?follow=1` to keep reading).
pub fn console_path(instance: &nubo_common::InstanceId, follow: bool) -> String {
    if follow {
        format!("/v1/console/{instance}?follow=1")
    } else {
        format!("/v1/console/{instance}")
    }
}

/// Path of the capture stream on `tap` (`count` packets, else until the
/// reader leaves).
pub fn capture_path(tap: &str, count: Option<u32>) -> String {
    match count {
        Some(c) => format!("/v1/capture/{tap}?count={c}"),
        None => format!("/v1/capture/{tap}"),
    }
}

/// Path of the root-disk copy a node made for `image`
/// ([`StreamTarget::DiskCapture`]).
pub fn disk_capture_path(image: &nubo_common::ImageId) -> String {
    format!("/v1/disk-capture/{image}")
}
