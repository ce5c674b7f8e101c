//! The coordinator's error type and its mapping onto gRPC status codes.

use tonic::{Code, Status};

/// Why an API call failed. Every variant carries a sentence meant for a
/// person; the variant chooses the gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (bad CIDR, bad name, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A referenced resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A resource with that name or id exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the call (in use, ambiguous name, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Out of capacity or addresses.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Transient: too much contention, etcd unreachable; retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// Talking to etcd failed.
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The etcd layer gave up (after its retries), or etcd is out of space.
    #[error("{0}")]
    Store(nubo_store::StoreError),
}

impl ApiError {
    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Unavailable(_) | Self::Etcd(_) => Code::Unavailable,
            Self::Store(e) => match e {
                // etcd's own code for it; the message names the cause.
                nubo_store::StoreError::NoSpace { .. } => Code::ResourceExhausted,
                nubo_store::StoreError::Compacted(_) => Code::FailedPrecondition,
                // A stored value that does not decode: named, never
                // overwritten; an operator repairs it.
                nubo_store::StoreError::Corrupt(_) => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
        }
    }

    /// The name of the gRPC code, as reported in `ServerResult.code`.
    pub fn code_name(&self) -> &'static str {
        grpc_code_name(self.code())
    }
}

/// The canonical name of a gRPC code (`OK`, `NotFound`, …).
pub fn grpc_code_name(code: Code) -> &'static str {
    use Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

impl From<nubo_store::StoreError> for ApiError {
    fn from(e: nubo_store::StoreError) -> Self {
        match e {
            nubo_store::StoreError::Corrupt(d) => Self::from(d),
            e => Self::Store(e),
        }
    }
}

impl From<nubo_common::model::DecodeError> for ApiError {
    /// A stored value that does not decode is a FailedPrecondition naming
    /// the key, so a hand-written value never panics anything and is never
    /// silently overwritten.
    fn from(e: nubo_common::model::DecodeError) -> Self {
        Self::FailedPrecondition(format!(
            "the stored record is unreadable ({e}); repair or delete it with etcdctl"
        ))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if matches!(e, ApiError::Etcd(_) | ApiError::Store(_)) {
            tracing::warn!(error = %e, "etcd error while serving a request");
        }
        Status::new(e.code(), e.to_string())
    }
}

impl From<nubo_common::IdError> for ApiError {
    fn from(e: nubo_common::IdError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

/// Shorthand for results of API operations.
pub type ApiResult<T> = Result<T, ApiError>;

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// etcd could not be reached or answered with an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The etcd layer failed (configuration, or etcd unavailable).
    #[error("{0}")]
    Store(#[from] nubo_store::StoreError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster's keys could not be brought to the current layout.
    #[error("etcd layout: {0}")]
    Layout(#[from] MigrationError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why the layout could not be brought up to date (`crate::layout`;
/// here so that this module imports no other of the crate).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// etcd failed.
    #[error("{0}")]
    Store(#[from] nubo_store::StoreError),
    /// The keys kept changing under this coordinator.
    #[error(
        "keys under {prefix} kept changing while they were moved to {to}: is a coordinator of \
         an older version still running? Stop it and start this one again"
    )]
    Contended {
        /// The old prefix.
        prefix: String,
        /// The new prefix.
        to: String,
    },
}
