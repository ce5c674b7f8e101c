//! The gRPC services. Each service is a thin adapter: parse and validate the
//! request, run the etcd reads/transactions, convert back to proto.

mod app_creds;
mod audit;
pub mod auth;
mod cluster;
mod failover;
mod flavors;
mod identity;
mod image_data;
mod images;
mod keypairs;
mod network;
mod nodes;
mod quota;
mod resize;
mod server_groups;
mod server_volumes;
mod servers;
mod volume_snapshots;
mod volume_types;
pub mod volumes;

use etcd_client::Txn;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, SecurityGroup};
use nubo_common::proto as pb;
use nubo_common::{ProjectId, SecurityGroupId};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;
use nubo_store::kv::{absent, decode_or_skip, put, Versioned};

pub use identity::{bootstrap, Bootstrapped};
pub use servers::MAX_BATCH;

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
        .add_service(servers_server::ServersServer::new(s()))
        .add_service(nodes_server::NodesServer::new(s()))
        .add_service(cluster_server::ClusterServer::new(s()))
        .add_service(volumes_server::VolumesServer::new(s()))
        .add_service(volume_types_server::VolumeTypesServer::new(s()))
}

impl Ctx {
    /// Looks a project-scoped resource up by id or by its unique name (via
    /// the name index). Resources of other projects are not found.
    pub(crate) async fn resolve<T: DeserializeOwned + Owned>(
        &self,
        kind: NameKind,
        label: &str,
        project: &ProjectId,
        r: &str,
        key_of: impl Fn(uuid::Uuid) -> String,
    ) -> ApiResult<Versioned<T>> {
        let r = r.trim();
        if r.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "a {label} id or name is required"
            )));
        }
        let not_found =
            || ApiError::NotFound(format!("{label} {r:?} not found in project {project}"));
        let key = match uuid::Uuid::parse_str(r) {
            Ok(u) => key_of(u),
            Err(_) => {
                let idx = keys::name_index(kind, project, r);
                let Some(id) = self.store.read::<uuid::Uuid>(&idx).await? else {
                    return Err(not_found());
                };
                key_of(id.value)
            }
        };
        match self.store.read::<T>(&key).await? {
            Some(v) if v.value.project() == project => Ok(v),
            _ => Err(not_found()),
        }
    }

    /// Finds resources of a kind whose names are not unique (ports, servers)
    /// by id or name; an ambiguous name is a FailedPrecondition naming the
    /// candidates.
    pub(crate) async fn resolve_scan<T: DeserializeOwned + Owned>(
        &self,
        label: &str,
        project: &ProjectId,
        r: &str,
        prefix: &str,
        key_of: impl Fn(uuid::Uuid) -> String,
    ) -> ApiResult<Versioned<T>> {
        let r = r.trim();
        if r.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "a {label} id or name is required"
            )));
        }
        let not_found =
            || ApiError::NotFound(format!("{label} {r:?} not found in project {project}"));
        if let Ok(u) = uuid::Uuid::parse_str(r) {
            return match self.store.read::<T>(&key_of(u)).await? {
                Some(v) if v.value.project() == project => Ok(v),
                _ => Err(not_found()),
            };
        }
        let mut found: Vec<(String, Versioned<T>)> = self
            .store
            .list_all(prefix, |kv| {
                let v: T = decode_or_skip(kv)?;
                (v.project() == project && v.name() == r).then(|| {
                    (
                        v.id_string(),
                        Versioned {
                            value: v,
                            mod_rev: kv.mod_revision(),
                        },
                    )
                })
            })
            .await?;
        match found.len() {
            0 => Err(not_found()),
            1 => Ok(found.remove(0).1),
            _ => {
                Err(ApiError::FailedPrecondition(format!(
                "{label} name {r:?} is ambiguous in project {project}: it matches {}; use an id",
                found.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
            )))
            }
        }
    }

    /// The project's "default" security group, created on first use.
    pub(crate) async fn default_secgroup(&self, project: &ProjectId) -> ApiResult<SecurityGroupId> {
        let idx = keys::name_index(NameKind::SecurityGroup, project, "default");
        for _ in 0..5 {
            if let Some(id) = self.store.read::<SecurityGroupId>(&idx).await? {
                return Ok(id.value);
            }
            let id = SecurityGroupId::new_random();
            let sg = SecurityGroup {
                id,
                name: "default".into(),
                project: project.clone(),
                description: "Default security group".into(),
                rules: SecurityGroup::default_rules(id),
                created_at: model::now(),
            };
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([absent(&idx)])
                        .and_then([put(&idx, &id), put(&keys::secgroup(&id), &sg)]),
                )
                .await?;
            if resp.succeeded() {
                tracing::info!(project = %project, secgroup = %id, "created the default security group");
                return Ok(id);
            }
        }
        Err(ApiError::Unavailable(
            "could not create the default security group; retry".into(),
        ))
    }

    /// Resolves security group refs (empty = the project's default group).
    pub(crate) async fn secgroups(
        &self,
        project: &ProjectId,
        refs: &[String],
    ) -> ApiResult<Vec<SecurityGroupId>> {
        if refs.is_empty() {
            return Ok(vec![self.default_secgroup(project).await?]);
        }
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let g: Versioned<SecurityGroup> = self
                .resolve(NameKind::SecurityGroup, "security group", project, r, |u| {
                    keys::secgroup(&SecurityGroupId::from_uuid(u))
                })
                .await?;
            if !out.contains(&g.value.id) {
                out.push(g.value.id);
            }
        }
        Ok(out)
    }
}

/// Stored resources that belong to a project and have a name and an id.
pub(crate) trait Owned {
    fn project(&self) -> &ProjectId;
    fn name(&self) -> &str;
    fn id_string(&self) -> String;
}

macro_rules! owned {
    ($($t:ty),*) => {$(
        impl Owned for $t {
            fn project(&self) -> &ProjectId { &self.project }
            fn name(&self) -> &str { &self.name }
            fn id_string(&self) -> String { self.id.to_string() }
        }
    )*};
}
owned!(
    model::Network,
    model::Port,
    model::SecurityGroup,
    model::Image,
    model::ServerGroup,
    model::Instance,
    model::Volume
);

/// Converts a handler result into a tonic response.
pub(crate) fn reply<T>(r: ApiResult<T>) -> Result<tonic::Response<T>, tonic::Status> {
    r.map(tonic::Response::new).map_err(Into::into)
}

impl Ctx {
    /// One page of the resources under `prefix` that the request may see
    /// (its project's; every project's with `all_projects` for an admin),
    /// converted with `conv`; returns them and the next page token.
    pub(crate) async fn list_scoped<T: DeserializeOwned + Owned, U>(
        &self,
        prefix: &str,
        r: &pb::ListRequest,
        conv: impl Fn(&T) -> U,
    ) -> ApiResult<(Vec<U>, String)> {
        let p = validate::project(&r.project)?;
        crate::paging::list_page(&self.store, prefix, r.page_size, &r.page_token, |kv| {
            decode_or_skip::<T>(kv)
                .filter(|t| in_scope(r.all_projects, &p, t.project()))
                .map(|t| conv(&t))
        })
        .await
    }
}

/// Filters listings by project unless `all_projects`.
pub(crate) fn in_scope(all: bool, want: &ProjectId, have: &ProjectId) -> bool {
    (all && crate::caller::may_see_all()) || want == have
}
