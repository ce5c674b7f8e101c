//! The operations: the coordinator's domain logic, callable from any front
//! end (the gRPC adapters in [`crate::api`] today). Validation, project
//! scoping of lookups, quotas and every etcd transaction live here; the
//! front ends decode, authorize, call an operation and encode.

pub mod app_creds;
pub mod audit;
pub mod cluster;
pub mod evacuation;
pub mod fixed_ips;
pub mod flavors;
pub mod floating_ips;
pub mod identity;
pub mod image_capture;
pub mod image_data;
pub mod images;
pub mod instance_actions;
pub(crate) mod ip_pool;
pub mod keypairs;
pub mod local_capture;
pub mod lookup;
pub mod migrations;
pub mod moves;
pub mod networks;
pub mod node_streams;
pub mod nodes;
pub mod ports;
pub mod quotas;
pub mod resize;
pub mod router_snat;
pub mod routers;
pub mod security_groups;
pub mod server_create;
pub mod server_groups;
pub mod server_ports;
pub mod server_secgroups;
pub mod server_volumes;
pub mod servers;
pub(crate) mod snapshot_records;
pub(crate) mod specs;
pub mod tokens;
pub mod usage;
pub mod volume_admin;
pub mod volume_attrs;
pub mod volume_snapshots;
pub mod volume_transfers;
pub mod volume_types;
pub mod volumes;

use nubo_common::ProjectId;

/// Which projects' resources a call sees, as decided by the front end
/// (`all_projects` only for a cloud admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The project the call is scoped to.
    pub project: ProjectId,
    /// Every project's resources (a cloud admin's listing).
    pub all_projects: bool,
}

impl Scope {
    /// Only `project`'s resources.
    pub fn project(project: ProjectId) -> Self {
        Self {
            project,
            all_projects: false,
        }
    }

    /// True when a resource of project `p` is visible.
    pub fn sees(&self, p: &ProjectId) -> bool {
        self.all_projects || &self.project == p
    }
}

/// The page asked for by a list call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page (0 = the default, capped at the maximum).
    pub size: u32,
    /// Where to continue (empty = from the start): the `next` of the
    /// previous page.
    pub token: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// The token of the next page; empty at the end.
    pub next: String,
}

impl<T> Page<T> {
    /// The same page with every item converted.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}
