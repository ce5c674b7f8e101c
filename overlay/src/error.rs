//! Error types.

use std::fmt;
use std::io;

use crate::plan::OverlayAction;

/// Errors of the overlay library.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Opening the rtnetlink socket failed.
    #[error("cannot open rtnetlink socket: {0}")]
    Connect(#[source] io::Error),
    /// A netlink request failed.
    #[error("netlink request failed while trying to {what}: {source}")]
    Netlink {
        /// What we were trying to do, e.g. "create bridge nb-42".
        what: String,
        /// The underlying rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that an operation needs does not exist.
    #[error("network interface {0:?} does not exist")]
    NoSuchLink(String),
    /// A link with this name already exists.
    #[error("network interface {0:?} already exists")]
    LinkExists(String),
    /// An interface name is empty, too long (> 15 bytes) or contains `/`,
    /// whitespace or NUL.
    #[error("invalid interface name {0:?}: must be 1-15 bytes without '/', whitespace or NUL")]
    InvalidIfName(String),
    /// A namespace name is empty, `.`/`..`, or contains `/` or NUL.
    #[error("invalid network namespace name {0:?}")]
    InvalidNetnsName(String),
    /// The named network namespace already exists.
    #[error("network namespace {0:?} already exists")]
    NetnsExists(String),
    /// The named network namespace does not exist.
    #[error("network namespace {0:?} does not exist")]
    NoSuchNetns(String),
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// The operation, e.g. "TUNSETIFF on /dev/net/tun for tap0".
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A helper thread (namespace entry) died or could not be started.
    #[error("namespace helper thread failed: {0}")]
    Helper(String),
}

impl OverlayError {
    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        OverlayError::Netlink {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: io::Error) -> Self {
        OverlayError::Sys {
            what: what.into(),
            source,
        }
    }

    /// The kernel's errno if this is a netlink error reply.
    pub fn errno(&self) -> Option<i32> {
        match self {
            OverlayError::Netlink { source, .. } => netlink_errno(source),
            OverlayError::Sys { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The positive errno of a netlink error reply.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// One action of a plan that could not be applied.
#[derive(Debug)]
pub struct ActionFailure {
    /// The action.
    pub action: OverlayAction,
    /// Why it failed.
    pub error: OverlayError,
}

/// Some actions of a plan failed; the others were applied. The next
/// observe/plan round retries what is still missing.
#[derive(Debug)]
pub struct ApplyError {
    /// Number of actions in the plan.
    pub total: usize,
    /// The failed actions, in plan order.
    pub failures: Vec<ActionFailure>,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} overlay actions failed",
            self.failures.len(),
            self.total
        )?;
        if let Some(first) = self.failures.first() {
            write!(f, "; first: {:?}: {}", first.action, first.error)?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyError {}
