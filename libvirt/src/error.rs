//! Errors of the libvirt driver.

use crate::ffi::VirError;
use crate::info::PowerState;
use crate::spec::SpecError;

/// Everything [`crate::LibvirtDriver`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The connection could not be opened.
    #[error("cannot connect to libvirt at {uri}: {source}")]
    Connect {
        /// URI that was tried.
        uri: String,
        /// libvirt's error.
        source: VirError,
    },
    /// The connection closed (libvirtd restarted or stopped) and the last
    /// reconnection attempt failed; the next one waits for the backoff.
    #[error("not connected to libvirt at {uri} (reconnecting)")]
    Disconnected {
        /// The URI.
        uri: String,
    },
    /// The libvirt event loop could not be started or the callback not registered.
    #[error("libvirt event registration failed: {0}")]
    Events(#[source] VirError),
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Listing domains failed.
    #[error("listing libvirt domains failed: {0}")]
    List(#[source] VirError),
    /// The bulk statistics call failed.
    #[error("libvirt bulk domain statistics failed: {0}")]
    Stats(#[source] VirError),
    /// A libvirt call on one domain failed.
    #[error("instance {instance_id}: libvirt {op} failed: {source}")]
    Domain {
        /// Instance concerned.
        instance_id: String,
        /// The operation (`define`, `start`, `destroy`, …).
        op: &'static str,
        /// libvirt's error.
        source: VirError,
    },
    /// No domain with that UUID exists.
    #[error("instance {0}: no such libvirt domain")]
    NotFound(String),
    /// A domain with that UUID exists but nubo does not own it.
    #[error("instance {instance_id}: libvirt domain {name:?} carries no nubo metadata; refusing to touch it")]
    Foreign {
        /// Instance id (domain UUID).
        instance_id: String,
        /// Name of the foreign domain.
        name: String,
    },
    /// The operation needs a domain in another power state.
    #[error("instance {instance_id}: {op} needs the domain {needed}, but it is {state:?}")]
    WrongState {
        /// Instance concerned.
        instance_id: String,
        /// The operation.
        op: &'static str,
        /// The state the operation needs ("shut off", "running").
        needed: &'static str,
        /// The state it is in.
        state: PowerState,
    },
    /// Defining or setting the Ceph secret failed.
    #[error("libvirt secret {usage:?}: {source}")]
    Secret {
        /// The secret's usage name (`client.<id> secret`).
        usage: String,
        /// libvirt's error.
        source: VirError,
    },
    /// A blocking libvirt task panicked or was cancelled.
    #[error("libvirt worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}
