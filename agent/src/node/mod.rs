//! The node's presence: its record and liveness lease in etcd
//! ([`registration`]), the node API other agents and operators ask
//! ([`api`]), and systemd's watchdog ([`watchdog`]; readiness and pings
//! through the `sd-notify` crate).

pub mod api;
pub mod registration;
pub mod watchdog;
