//! The node's presence: its record and liveness lease in etcd
//! ([`registration`]), the node API other agents and operators ask
//! ([`api`]), and systemd's readiness and watchdog ([`notify`],
//! [`watchdog`]).

pub mod api;
pub mod notify;
pub mod registration;
pub mod watchdog;
