//! Placement: which node an instance goes to, and the one loop that
//! reserves it there.
//!
//! - [`scheduler`]: pure filtering and weighing of nodes;
//! - [`view`]: the watch-fed view of every node (info, liveness, admin
//!   switch, usage) and the in-flight claims of this coordinator;
//! - [`engine`]: claim → build the transaction → commit → retry on
//!   conflict, for every placement (create, evacuation, drain, resize);
//! - [`commit`]: group commit of concurrent placement transactions.
//!
//! The reservation itself is always one etcd transaction that compares the
//! node's usage at the revision the decision was made from, so two
//! coordinators never over-fill a node.

pub mod commit;
pub mod engine;
pub mod scheduler;
pub mod view;

pub use engine::{Chosen, Engine, Job, Limits, Reservation, Retry, Target, NODE_CONFLICTS};
pub use scheduler::{GroupConstraint, HostHints, NodeState, Ratios, Request};
pub use view::ClusterView;
