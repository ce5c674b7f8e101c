//! Identity for nubo: who is calling, what they may do, and how much they
//! may hold.
//!
//! Everything here is pure (no etcd, no clock reads except where a function
//! says "now" is taken from the caller): the coordinator reads and writes
//! the records of `nubo_common::model` (projects, users, role assignments,
//! application credentials, quotas, quota usage, audit records, the token
//! key) and calls into this crate to decide.
//!
//! - [`password`]: argon2id hashing (PHC strings) and verification;
//! - [`token`]: HMAC-SHA256 signed bearer tokens with key rotation;
//! - [`appcred`]: application-credential secrets;
//! - [`authz`]: the role model ([`authz::authorize`], [`authz::effective_roles`]);
//! - [`quota`]: the quota check and the transaction recipe that enforces it;
//! - [`auth`]: reading the bearer token from gRPC metadata, a tonic
//!   interceptor, and the mapping of every error here onto gRPC codes;
//! - [`audit`]: audit record builder, time-ordered keys and retention;
//! - [`bootstrap`]: the etcd writes that create the first admin.
//!
//! # Wiring into the coordinator
//!
//! 1. On start, read `keys::token_key()` into a [`token::TokenSigner`]
//!    behind an [`auth::SignerHandle`]; watch the key and replace the
//!    signer when it changes (rotation).
//! 2. Wrap every gRPC service except `Tokens` with
//!    `XServer::with_interceptor(api.clone(), AuthInterceptor::new(handle.clone()))`.
//! 3. In each handler: `let claims = auth::claims_of(&req)?;` then
//!    `authorize(claims, Action::mutate("servers"), &project, all_projects)?`
//!    where `project` is the resource's project (for creates/lists: the
//!    request's project, defaulting to `claims.project`). [`Denied`] converts
//!    into `NotFound` / `PermissionDenied`.
//! 4. Creates that consume quota follow the recipe in [`quota`].
//! 5. Mutations (and refusals) write an [`audit`] record after the call.

#![warn(missing_docs)]

pub mod appcred;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod password;
pub mod quota;
pub mod revocation;
pub mod token;

pub use auth::{authenticate, bearer_from_metadata, AuthError, AuthInterceptor};
pub use authz::{authorize, Action, Denied, Verb};
pub use password::{PasswordError, Passwords};
pub use quota::{check as check_quota, QuotaDelta, QuotaExceeded};
pub use token::{Claims, TokenError, TokenSigner};
