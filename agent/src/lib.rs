//! `nubo-agent`: the per-hypervisor daemon of nubo.
//!
//! It registers the node in etcd and holds its liveness lease
//! ([`registration`]), mirrors `/nubo/v1/` into a typed cache ([`mirror`],
//! [`cache`]), derives this node's [`desired::DesiredNode`] with a pure
//! function, and hands it to each [`reconciler::Subsystem`] in turn —
//! [`compute`] first, driving a [`hypervisor::Hypervisor`] (fake or
//! [`hypervisor::NetnsHypervisor`]), then the [`network`] subsystems
//! (overlay, firewall, DHCP, metadata) unless `--no-network`.
//! [`fencing`]/[`fencer`] freeze the node's instances when its liveness
//! lease can no longer be confirmed and bring them back (or destroy them)
//! when it returns; [`watchdog`] feeds systemd's watchdog from the loop.
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
pub mod cache;
pub mod compute;
pub mod config;
pub mod desired;
pub mod fencer;
pub mod fencing;
pub mod hypervisor;
pub mod images;
pub mod mirror;
pub mod network;
pub mod node_api;
pub mod notify;
pub mod plug_gate;
pub mod power_sync;
pub mod reconciler;
pub mod registration;
pub mod storage;
pub mod store;
pub mod volumes;
pub mod watchdog;

#[cfg(test)]
mod testutil;

pub use agent::{open_driver, run, run_with_hypervisor, AgentError};
pub use config::{AgentConfig, Cli, DriverKind, LogFormat};
pub use desired::DesiredNode;
pub use hypervisor::{FakeHypervisor, Hypervisor, NetnsHypervisor, ObservedInstance};
