//! The etcd layer of nubo, shared by the coordinator and the agent.
//!
//! etcd runs as 3 or 5 members; losing any minority of them must not fail
//! a request. `etcd_client::Client::connect` hands every endpoint to tonic's
//! power-of-two-choices balancer, whose per-endpoint `Reconnect` service
//! reports itself *ready* while its connection is down and then fails the
//! request ("tcp connect error … ConnectionRefused"): with one member of
//! three dead, a large share of requests keeps going to it for as long as it
//! is down. This crate replaces that channel:
//!
//! - **[`pool`]**: one HTTP/2 channel per member and a health table. Every
//!   request goes to one live member (the raft leader when
//!   [`EtcdConfig::prefer_leader`] is set: no forwarding hop for writes and
//!   linearizable reads; otherwise a sticky member chosen at random, which
//!   spreads agents over the members). A transport failure, or a member that
//!   answers "no leader", takes the member out at once; a background prober
//!   (`Maintenance.Status` per member) puts it back when it answers with a
//!   leader, and finds the leader. When the leader itself is lost, requests
//!   wait (bounded) for the survivors to elect a new one instead of being
//!   forwarded into the void by a follower that has not noticed yet.
//! - **[`retry`]**: every operation is retried with exponential backoff
//!   and jitter within a deadline, each attempt bounded by a timeout, for
//!   the errors that are safe to retry ([`mod@classify`]).
//! - **transactions whose outcome was lost** (sent, then the connection or
//!   the member died; "request timed out"): re-sent only when that cannot
//!   apply them twice, and *resolved* by reading back what they wrote
//!   ([`txn`]): never reported as a conflict when they did apply, never
//!   applied twice.
//! - **[`watch`]**: a watch that moves to a live member and resumes from the
//!   last revision seen + 1; it ends only on compaction (the caller lists
//!   again) or a real cancellation.
//! - **[`kv`]** and **[`builder`]**: the helpers both daemons read and
//!   write nubo's JSON values with (typed reads with the revision to
//!   compare, whole prefixes at one revision, pages) and guarded
//!   transactions whose compares and failure reads are named handles.
//! - **[`listwatch`]**: the list-then-watch loop both daemons keep their
//!   copies of etcd with ([`ListWatch`]): several prefixes listed at one
//!   revision, watched from the next, listed again after a compaction.
//! - **[`observe`]**: a hook reporting each request's duration and each
//!   refused transaction to the daemon's metrics ([`Etcd::with_observer`]).
//! - NOSPACE (etcd's space quota exceeded) is a distinct error
//!   ([`StoreError::NoSpace`]) naming the cause and the runbook.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nubo_store::StoreError> {
//! let etcd = nubo_store::Etcd::connect(&nubo_store::EtcdConfig::new(vec![
//!     "http://10.0.0.1:2379".into(),
//!     "http://10.0.0.2:2379".into(),
//!     "http://10.0.0.3:2379".into(),
//! ]))
//! .await?;
//! etcd.put("/k", "v", None).await?;
//! let got = etcd.get("/k", None).await?;
//! assert_eq!(got.kvs()[0].value(), b"v");
//! # Ok(()) }
//! ```

pub mod builder;
pub mod classify;
pub mod config;
pub mod error;
mod etcd;
pub mod kv;
pub mod listwatch;
pub mod observe;
pub mod pool;
pub mod retry;
pub mod txn;
pub mod watch;

pub use builder::{merged, Answer, Guard, Probe, TxnBuilder};
pub use classify::{classify, Class};
pub use config::{EtcdConfig, TlsFiles};
pub use error::StoreError;
pub use etcd::Etcd;
pub use kv::Versioned;
pub use listwatch::{ListWatch, Update};
pub use observe::{Observer, SharedObserver};
pub use pool::MemberHealth;
pub use retry::{Backoff, RetryPolicy};
pub use watch::{Watch, WatchEnd, WatchSpec};
