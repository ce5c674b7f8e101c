//! `nubo-openstack`: the OpenStack REST API in front of nubo.
//!
//! A stateless adapter: every request is translated into calls of nubo's
//! gRPC API (the coordinators' one front door), with the caller's token
//! passed through, so tokens, roles, quotas, the audit trail and every
//! rule are the coordinators' — no second copy of any logic lives here.
//! Run it beside the coordinators (behind the same virtual address).
//!
//! - Identity v3 ([`identity`]): password authentication for nubo users,
//!   token validation, a catalog pointing at this front end;
//! - Compute v2.1 ([`compute`]): flavors, servers (create, list, show,
//!   delete, start, stop, reboot);
//! - Networking v2.0 ([`network`]): networks, subnets, ports, security
//!   groups, routers, floating IPs;
//! - Image v2 ([`image`]): images, members ([`image_members`]), schemas
//!   ([`image_schemas`]).
//!
//! What is not supported answers a clear 4xx/501 in the service's own
//! error format (docs/openstack-compatibility.md), never a silently wrong
//! answer.

pub mod attachments;
pub mod cinder_list;
pub mod compute;
pub mod error;
pub mod flavors_admin;
pub mod hypervisors;
pub mod identity;
pub mod image;
pub mod image_members;
pub mod image_schemas;
pub mod limits;
pub mod microversion;
pub mod network;
pub mod quota;
pub mod request_id;
pub mod server_actions;
pub mod server_groups;
pub mod server_image;
pub mod server_interfaces;
pub mod server_metadata;
pub mod server_migrations;
pub mod server_password;
pub mod server_secgroups;
pub mod time;
pub mod upstream;
pub mod versions;
pub mod volume;
pub mod volume_actions;
pub mod volume_metadata;
pub mod volume_snapshots;
pub mod volume_transfers;

use axum::routing::get;
use axum::Router;

pub use upstream::Upstream;

/// The whole API: `/identity`, `/compute`, `/network`, `/image`.
pub fn router(upstream: Upstream) -> Router {
    Router::new()
        // Version discovery at each root with its trailing slash too
        // (`/image/`, `/volume/`: what Tempest and keystoneauth ask).
        .route("/image/", get(image::versions_doc))
        .route("/volume/", get(volume::versions_doc))
        .route("/network/", get(network::versions_doc))
        .nest("/identity", identity::router())
        .nest(
            "/compute",
            compute::router()
                .merge(attachments::router())
                .merge(server_groups::router())
                .merge(server_metadata::router())
                .merge(hypervisors::router())
                .merge(server_actions::router())
                .merge(server_secgroups::router())
                .merge(server_password::router())
                .merge(server_interfaces::router())
                .merge(server_migrations::router())
                .route("/v2.1/limits", get(limits::compute_limits))
                // Flavor management here: `flavors_admin` uses `compute`'s
                // flavor view, so `compute` may not route to it.
                .route("/v2.1/flavors", axum::routing::post(flavors_admin::create))
                .route(
                    "/v2.1/flavors/{id}",
                    axum::routing::delete(flavors_admin::delete),
                )
                .route(
                    "/v2.1/flavors/{id}/os-flavor-access",
                    get(flavors_admin::access_list),
                )
                .route(
                    "/v2.1/flavors/{id}/action",
                    axum::routing::post(flavors_admin::action),
                )
                // Quota sets here: `quota` uses `compute`'s microversion
                // helpers, so `compute` may not route to it.
                .route(
                    "/v2.1/os-quota-sets/{project}",
                    get(quota::compute_quota)
                        .put(quota::update_compute_quota)
                        .delete(quota::reset_compute_quota),
                )
                .route(
                    "/v2.1/os-quota-sets/{project}/defaults",
                    get(quota::compute_quota_defaults),
                )
                .route(
                    "/v2.1/os-quota-sets/{project}/detail",
                    get(quota::compute_quota_detail),
                )
                .layer(axum::middleware::from_fn(request_id::assign)),
        )
        .nest("/network", network::router())
        .nest("/image", image::router())
        .nest(
            "/volume",
            volume::router()
                .route(
                    "/v3/{project}/volumes/{id}/action",
                    axum::routing::post(volume_actions::volume_action),
                )
                .route(
                    "/v3/{project}/os-quota-sets/{target}/defaults",
                    get(quota::volume_quota_defaults),
                )
                .merge(volume_metadata::router())
                .merge(volume_snapshots::router())
                .merge(volume_transfers::router()),
        )
        .fallback(error::not_found)
        .with_state(upstream)
}
