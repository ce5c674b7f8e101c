//! The gRPC front end: one thin adapter per service. Each decodes the
//! request, authorizes it (the authentication layer [`auth`] and the
//! project scope of [`crate::validate::project`]), calls an operation of
//! [`crate::operations`] and encodes the answer ([`convert`]). No domain
//! logic lives here.

mod app_creds;
mod audit;
pub mod auth;
mod cluster;
pub mod convert;
mod flavors;
mod floating_ips;
mod identity;
mod image_data;
mod images;
mod keypairs;
mod migrations;
mod networks;
mod nodes;
mod ports;
mod quotas;
mod routers;
mod security_groups;
mod server_groups;
mod servers;
mod streams;
mod tokens;
mod volume_types;
mod volumes;

use nubo_common::proto as pb;
use nubo_common::ProjectId;

use crate::error::ApiResult;
use crate::operations::lookup::ById;
use crate::operations::{PageRequest, Scope};
use crate::state::Ctx;

pub use crate::operations::identity::Bootstrapped;
pub use crate::operations::server_create::MAX_BATCH;

/// `nubo-coordinator bootstrap`: an older cluster's keys are moved to the
/// current layout first (so its identity keys are seen), then the first
/// cloud admin is created (`operations::identity::bootstrap`).
pub async fn bootstrap(
    store: &nubo_store::Etcd,
    admin: &nubo_common::model::UserName,
    password: &str,
    passwords: &nubo_identity::Passwords,
) -> Result<Bootstrapped, crate::ServeError> {
    crate::layout::migrate(store).await?;
    crate::operations::identity::bootstrap(store, admin, password, passwords).await
}

/// The result of a gRPC handler.
pub(crate) type R<T> = Result<tonic::Response<T>, tonic::Status>;

/// Every service as tonic routes (`Tokens` included; `Audit`, `Identity`
/// and `ApplicationCredentials` are added by the caller, behind
/// authentication only).
pub fn routes(ctx: &Ctx) -> tonic::service::Routes {
    use nubo_common::proto::*;
    let s = || ctx.clone();
    tonic::service::Routes::default()
        .add_service(tokens_server::TokensServer::new(s()))
        .add_service(quotas_server::QuotasServer::new(s()))
        .add_service(flavors_server::FlavorsServer::new(s()))
        .add_service(images_server::ImagesServer::new(s()))
        .add_service(image_data_server::ImageDataServer::new(s()))
        .add_service(networks_server::NetworksServer::new(s()))
        .add_service(ports_server::PortsServer::new(s()))
        .add_service(security_groups_server::SecurityGroupsServer::new(s()))
        .add_service(keypairs_server::KeypairsServer::new(s()))
        .add_service(server_groups_server::ServerGroupsServer::new(s()))
        .add_service(routers_server::RoutersServer::new(s()))
        .add_service(floating_ips_server::FloatingIpsServer::new(s()))
        .add_service(servers_server::ServersServer::new(s()))
        .add_service(nodes_server::NodesServer::new(s()))
        .add_service(migrations_server::MigrationsServer::new(s()))
        .add_service(cluster_server::ClusterServer::new(s()))
        .add_service(volumes_server::VolumesServer::new(s()))
        .add_service(volume_types_server::VolumeTypesServer::new(s()))
}

/// Converts a handler result into a tonic response.
pub(crate) fn reply<T>(r: ApiResult<T>) -> Result<tonic::Response<T>, tonic::Status> {
    r.map(tonic::Response::new).map_err(Into::into)
}

/// The project a request is scoped to: the caller must be allowed the
/// call there (see [`crate::validate::project`]).
pub(crate) fn project(p: &str) -> ApiResult<ProjectId> {
    crate::validate::project(p)
}

/// The project a request naming the resource `r` of `kind` acts in: the
/// request's, or for a cloud admin naming another project's record by id
/// with an empty project, the owner's (see
/// [`crate::operations::lookup::acting_project`]).
pub(crate) async fn owner(ctx: &Ctx, requested: &str, kind: ById, r: &str) -> ApiResult<ProjectId> {
    crate::operations::lookup::acting_project(ctx, requested, kind, r).await
}

/// The scope of a list request: its project, and every project only for
/// a cloud admin asking for `all_projects`.
pub(crate) fn scope(r: &pb::ListRequest) -> ApiResult<Scope> {
    Ok(Scope {
        project: project(&r.project)?,
        all_projects: r.all_projects && crate::caller::may_see_all(),
    })
}

/// The page a list request asks for.
pub(crate) fn page(r: &pb::ListRequest) -> PageRequest {
    PageRequest {
        size: r.page_size,
        token: r.page_token.clone(),
    }
}
