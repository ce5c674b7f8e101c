//! Guest passwords (Nova's `/openstack/<version>/password`): a guest (e.g.
//! cloudbase-init) posts its encrypted password once; its owner reads it
//! through the API. Where it is kept is the daemon's business
//! ([`PasswordStore`]: the agent keeps it in etcd).

use std::future::Future;
use std::pin::Pin;

/// The longest password a guest may post, in bytes (Nova's limit).
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Why a password was not read or stored.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The instance has one already: it is written once.
    #[error("the instance's password is already set")]
    AlreadySet,
    /// The store failed.
    #[error("password store: {0}")]
    Store(String),
}

/// A boxed future of a [`PasswordStore`].
pub type PasswordFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, PasswordError>> + Send + 'a>>;

/// Where the guests' passwords are kept.
pub trait PasswordStore: Send + Sync + 'static {
    /// The password of instance `uuid` (empty = none).
    fn get<'a>(&'a self, uuid: &'a str) -> PasswordFuture<'a, Vec<u8>>;
    /// Stores the password of instance `uuid` unless it has one
    /// ([`PasswordError::AlreadySet`]).
    fn set<'a>(&'a self, uuid: &'a str, password: Vec<u8>) -> PasswordFuture<'a, ()>;
}
