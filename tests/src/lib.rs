//! Test harness for nubo: starts real daemons (etcd, coordinators, agents) as
//! child processes in temporary directories, and cleans everything up on drop,
//! even when a test panics.

pub mod etcd;
pub mod ports;

pub use etcd::Etcd;
