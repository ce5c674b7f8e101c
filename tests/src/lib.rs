//! Test harness for nubo: starts real daemons (etcd, coordinators, agents) as
//! child processes in temporary directories, and cleans everything up on drop,
//! even when a test panics.
//!
//! - [`bin_path`] finds the workspace binaries (`cargo build --bins` first);
//! - [`Etcd`], [`Coordinator`], [`Agent`] guard one process each (SIGKILL by
//!   pid on drop) and fail to start with the tail of the daemon's log;
//! - [`Cli`] runs `nubo -f json …`;
//! - [`Cluster`] is etcd + N coordinators + M fake agents;
//! - [`Underlay`] and [`Host`] simulate hypervisors as network namespaces;
//! - [`prometheus::Prometheus`] is a real Prometheus scraping them;
//! - [`wait_until`] / [`wait_for`] poll with a deadline.

#![warn(missing_docs)]

pub mod agent;
pub mod ceph_lab;
pub mod cli;
pub mod cluster;
pub mod coordinator;
pub mod etcd;
pub mod files;
pub mod flood;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod modgraph;
pub mod net_e2e;
pub mod netns;
pub mod openstack_lab;
pub mod ports;
pub mod prober;
pub mod process;
pub mod prometheus;
pub mod secure;
pub mod stats;
pub mod tls;
pub mod vm_e2e;
pub mod wait;
pub mod wire;

pub use agent::{Agent, AgentOpts, Driver};
pub use cli::{list_items, Cli, CliOutput, Running};
pub use cluster::{Cluster, ClusterBuilder};
pub use coordinator::{Coordinator, CoordinatorOpts, SecureOpts};
pub use etcd::{Etcd, EtcdOpts};
pub use netns::{Host, Underlay};
pub use process::{bin_path, pid_alive, Daemon};
pub use wait::{fatal, wait_for, wait_until};
