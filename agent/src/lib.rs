//! `nubo-agent`: the per-hypervisor daemon of nubo.
//!
//! The crate is grouped by concern:
//!
//! - [`state`]: the [`state::mirror`] keeps the typed [`state::cache`] of
//!   the node-relevant part of etcd in step, and [`state::desired`]
//!   resolves this node's [`state::desired::DesiredNode`] from it with a
//!   pure function.
//! - [`reconciler`]: the [`reconciler::Subsystem`] trait — observe, a pure
//!   typed plan, apply — and the pass over every subsystem.
//! - [`compute`]: instances on a [`compute::hypervisor::Hypervisor`]
//!   (libvirt, [`compute::hypervisor::NetnsHypervisor`], fake), their
//!   volumes, their reported status, and the plug gate.
//! - [`network`]: overlay, firewall, DHCP and metadata subsystems (skipped
//!   with `--no-network`).
//! - [`storage`]: where disks live (local qcow2 or Ceph RBD) and the image
//!   downloads they start from.
//! - [`fencing`]: self-fencing — freeze the node's instances when its
//!   liveness lease can no longer be confirmed, bring them back (or destroy
//!   them) when it returns.
//! - [`node`]: the node's record and liveness lease, the node API, systemd
//!   readiness and watchdog.
//! - [`telemetry`]: the Prometheus metrics and their endpoint.
//! - [`agent`] wires them together; [`config`] and [`store`] (the etcd
//!   calls) are used by all.
//!
//! Embed it with [`run`] (driver from the configuration) or
//! [`run_with_hypervisor`]:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use nubo_agent::{AgentConfig, DriverKind};
//! let mut cfg = AgentConfig::new("node-1".parse()?, vec!["http://127.0.0.1:2379".into()]);
//! cfg.driver = DriverKind::Fake;
//! nubo_agent::run(cfg, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod compute;
pub mod config;
pub mod fencing;
pub mod network;
pub mod node;
pub mod reconciler;
pub mod state;
pub mod storage;
pub mod store;
pub mod telemetry;

#[cfg(test)]
mod testutil;

pub use agent::{open_driver, run, run_with_hypervisor, AgentError};
pub use compute::hypervisor::{FakeHypervisor, Hypervisor, NetnsHypervisor, ObservedInstance};
pub use config::{AgentConfig, Cli, DriverKind, LogFormat};
pub use state::desired::DesiredNode;
