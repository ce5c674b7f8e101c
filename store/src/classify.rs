//! Which etcd errors are safe to retry, and how.
//!
//! - [`Class::NotSent`]: the request provably did not reach etcd's state
//!   machine (no connection could be made to the member; the member refused
//!   it before proposing: "no leader", "too many requests"): any request may
//!   be sent again.
//! - [`Class::Lost`]: the request may have reached etcd and its answer was
//!   lost (connection reset, member killed, "request timed out", "leader
//!   changed", our own attempt timeout). A read may be sent again; a write
//!   may have applied and is resolved by [`crate::txn`].
//! - [`Class::NoSpace`], [`Class::Compacted`]: definite answers with their
//!   own handling.
//! - [`Class::Fatal`]: anything else (permission denied, invalid argument,
//!   lease not found, …): returned to the caller.

use tonic::Code;

/// Prefix of the status message of a request the pool could not send to
/// any member (connection refused or timed out before the request left).
pub const NOT_SENT: &str = "nubo-store: not sent";
/// Prefix of the status message of a request whose member connection broke
/// after it may have been sent.
pub const LOST: &str = "nubo-store: connection lost";

/// What an error means for a retry (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not executed: safe to send again.
    NotSent,
    /// Maybe executed, answer lost.
    Lost,
    /// The space quota is exceeded.
    NoSpace,
    /// The revision is compacted.
    Compacted,
    /// Not retryable.
    Fatal,
}

/// Classifies an error of the etcd client.
pub fn classify(e: &etcd_client::Error) -> Class {
    use etcd_client::Error as E;
    match e {
        // Building a connection (the client's own endpoints).
        E::TransportError(_) => Class::NotSent,
        E::GRpcStatus(s) => classify_status(s.code(), s.message()),
        // Stream plumbing of watches and keep-alives: the stream broke.
        E::WatchError(_) | E::LeaseKeepAliveError(_) | E::IoError(_) => Class::Lost,
        _ => Class::Fatal,
    }
}

/// Classifies a gRPC status by code and message.
pub fn classify_status(code: Code, msg: &str) -> Class {
    if msg.contains("database space exceeded") {
        return Class::NoSpace;
    }
    if msg.contains("required revision has been compacted") {
        return Class::Compacted;
    }
    match code {
        Code::Unavailable => {
            if msg.starts_with(NOT_SENT)
                || msg.contains("etcdserver: no leader")
                || msg.contains("etcdserver: too many requests")
                || msg.contains("etcdserver: not capable")
            {
                Class::NotSent
            } else {
                // "request timed out", "leader changed", "server stopped",
                // our LOST marker, transport errors mapped by tonic.
                Class::Lost
            }
        }
        // tonic maps h2/hyper failures (reset, broken pipe, GOAWAY) to these.
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
            if msg.starts_with(NOT_SENT) {
                Class::NotSent
            } else {
                Class::Lost
            }
        }
        // etcd: "request is too large", "too many operations in txn",
        // "permission denied", "lease not found", "key not found", ….
        _ => Class::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn errors_are_classified_by_what_they_mean_for_a_retry() {
        for (code, msg, want) in [
            (
                Code::Unavailable,
                "nubo-store: not sent: etcd member http://a: tcp connect error",
                Class::NotSent,
            ),
            (Code::Unavailable, "etcdserver: no leader", Class::NotSent),
            (
                Code::Unavailable,
                "etcdserver: too many requests",
                Class::NotSent,
            ),
            (
                Code::Unavailable,
                "etcdserver: request timed out",
                Class::Lost,
            ),
            (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
                Class::Lost,
            ),
            (Code::Unavailable, "etcdserver: leader changed", Class::Lost),
            (
                Code::Unavailable,
                "nubo-store: connection lost: etcd member http://a: connection reset",
                Class::Lost,
            ),
            (
                Code::Unknown,
                "h2 protocol error: error reading a body from connection",
                Class::Lost,
            ),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
                Class::NoSpace,
            ),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                Class::Compacted,
            ),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
                Class::Fatal,
            ),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied",
                Class::Fatal,
            ),
            (
                Code::NotFound,
                "etcdserver: requested lease not found",
                Class::Fatal,
            ),
        ] {
            assert_eq!(classify(&st(code, msg)), want, "{code:?} {msg}");
        }
        assert_eq!(
            classify(&etcd_client::Error::WatchError("stream closed".into())),
            Class::Lost
        );
        assert_eq!(
            classify(&etcd_client::Error::InvalidArgs("empty endpoints".into())),
            Class::Fatal
        );
    }
}
