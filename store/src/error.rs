//! The error of every operation of this crate.

use std::time::Duration;

/// The runbook section an operator follows when etcd is out of space.
pub const NOSPACE_RUNBOOK: &str = "docs/operator-guide.md, runbook \"etcd out of space\"";

/// Why an etcd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd's space quota is exceeded (NOSPACE alarm): etcd refuses every
    /// write until an operator frees space and disarms the alarm.
    #[error(
        "etcd is out of space (NOSPACE alarm: {detail}): it refuses writes until an operator \
         compacts, defragments and disarms the alarm ({NOSPACE_RUNBOOK})"
    )]
    NoSpace {
        /// etcd's message.
        detail: String,
    },
    /// etcd's authentication refused the request: the user named by the
    /// client certificate's CN does not exist or its role does not cover
    /// the key (a node revoked or never enrolled, or a role made by an
    /// older version).
    #[error(
        "etcd refused this client's user ({detail}): its certificate's user is missing or its \
         role does not cover the key; for a node: `nubo-coordinator node enroll` it (again), \
         it may have been revoked (docs/operator-guide.md, \"etcd permissions\")"
    )]
    PermissionDenied {
        /// etcd's message.
        detail: String,
    },
    /// The revision asked for is compacted.
    #[error("etcd: {0}")]
    Compacted(String),
    /// No member answered usefully within the deadline (every error on the
    /// way was one that is safe to retry).
    #[error("etcd unavailable: {what} failed {attempts} times in {elapsed:?}; last error: {last}")]
    Unavailable {
        /// The operation.
        what: &'static str,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        last: String,
    },
    /// A write was sent but its answer was lost, and etcd could not be
    /// asked whether it applied before the deadline: it may or may not have.
    #[error(
        "etcd did not confirm whether a write applied (its answer was lost: {cause}; \
         reading it back failed: {check})"
    )]
    OutcomeUnknown {
        /// Why the answer was lost.
        cause: String,
        /// Why the read-back failed.
        check: String,
    },
    /// etcd answered with an error that retrying cannot fix.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A stored value does not decode (hand-written, or another version's):
    /// reported naming the key, never overwritten silently.
    #[error("the stored record is unreadable ({0}); repair or delete it with etcdctl")]
    Corrupt(#[from] nubo_common::model::DecodeError),
    /// The configuration is unusable (no endpoint, bad URL, TLS files).
    #[error("etcd client configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// True for errors a later retry may cure (unavailable, unknown
    /// outcome); false for NOSPACE, compaction and definite answers.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::OutcomeUnknown { .. })
    }
}
