//! Errors returned by the metadata server's control API.

use std::io;

/// Why a bridge could not be served (or the server could not start).
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The name cannot be a Linux interface name.
    #[error("{name:?} is not a valid interface name (1-15 bytes, no '/', ':', NUL or whitespace)")]
    InvalidBridgeName {
        /// The rejected name.
        name: String,
    },
    /// `add_bridge` was called twice for the same bridge.
    #[error("bridge {bridge} is already served")]
    AlreadyServed {
        /// The bridge name.
        bridge: String,
    },
    /// No interface of that name exists in the calling thread's network namespace.
    #[error("interface {bridge} does not exist in this network namespace: {source}")]
    NoSuchInterface {
        /// The bridge name.
        bridge: String,
        /// The error from `if_nametoindex`.
        source: io::Error,
    },
    /// A step of creating the device-bound listening socket failed.
    #[error("cannot listen on {bridge}: {step} failed: {source}")]
    Socket {
        /// The bridge name.
        bridge: String,
        /// Which system call failed (e.g. "bind", "SO_BINDTODEVICE").
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The rtnetlink socket used for neighbour (ARP) lookups could not be opened.
    #[error("cannot open the netlink socket for neighbour lookups on {bridge}: {source}")]
    Netlink {
        /// The bridge name.
        bridge: String,
        /// The OS error.
        source: io::Error,
    },
    /// `MetadataServer::start` was called outside of a tokio runtime.
    #[error("MetadataServer::start must be called from within a tokio runtime")]
    NoRuntime,
}
