//! The gRPC services. Each service is a thin adapter: parse and validate the
//! request, run the etcd reads/transactions, convert back to proto.

mod app_creds;
mod failover;
mod identity;
mod image_data;
mod misc;
mod network;
mod quota;
mod resize;
mod server_volumes;
mod servers;
pub mod volume_reconcile;
mod volume_snapshots;
mod volume_types;
mod volumes;

use std::sync::Arc;

use etcd_client::Txn;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, SecurityGroup};
use nubo_common::proto as pb;
use nubo_common::{ProjectId, SecurityGroupId};
use serde::de::DeserializeOwned;

use crate::cache::ResourceCache;
use crate::commit::Committer;
use crate::config::Config;
use crate::election::LeaderState;
use crate::error::{ApiError, ApiResult};
use crate::scheduler::Ratios;
use crate::store::{absent, decode_or_skip, put, Store, Versioned};
use crate::validate;
use crate::view::ClusterView;

pub use identity::{bootstrap, Bootstrapped};
pub use servers::MAX_BATCH;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx(Arc<Inner>);

/// See [`Ctx`].
pub struct Inner {
    /// etcd.
    pub store: Store,
    /// Node view.
    pub view: Arc<ClusterView>,
    /// Election state.
    pub leader: Arc<LeaderState>,
    /// Configuration.
    pub cfg: Config,
    /// Overcommit ratios.
    pub ratios: Ratios,
    /// Storage fencing (failure handling).
    pub fencer: crate::failover::SharedFencer,
    /// Watch-fed copy of flavors, images, networks, security groups,
    /// keypairs, server groups and the name index (see [`crate::cache`]);
    /// fed by whoever runs [`crate::cache::ResourceCache::run`], and simply
    /// missing (every lookup reads etcd) otherwise.
    pub cache: Arc<ResourceCache>,
    /// Group commit of placement transactions (see [`crate::commit`]).
    pub committer: Committer,
    /// The token signer (set at start with `auth = "token"`; `Tokens.Issue`
    /// refuses without it).
    pub signer: std::sync::OnceLock<nubo_identity::auth::SignerHandle>,
    /// The one Ceph connection of this coordinator (set at start when
    /// `[ceph]` is configured): the volume API, its reconciler and storage
    /// fencing share it. Unset = the volume API answers FailedPrecondition.
    pub ceph: std::sync::OnceLock<Arc<nubo_storage::RbdStore>>,
}

impl std::ops::Deref for Ctx {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ctx {
    /// Builds the context (inside a tokio runtime: it starts the
    /// placement committer's task).
    pub fn new(
        store: Store,
        view: Arc<ClusterView>,
        leader: Arc<LeaderState>,
        cfg: Config,
        fencer: crate::failover::SharedFencer,
    ) -> Self {
        let ratios = Ratios {
            cpu: cfg.cpu_ratio,
            ram: cfg.ram_ratio,
            disk: cfg.disk_ratio,
        };
        let committer = Committer::start(store.clone());
        Self(Arc::new(Inner {
            store,
            view,
            leader,
            cfg,
            ratios,
            fencer,
            cache: Arc::new(ResourceCache::default()),
            committer,
            signer: std::sync::OnceLock::new(),
            ceph: std::sync::OnceLock::new(),
        }))
    }

    /// Every service as tonic routes (`Tokens` included).
    pub fn routes(&self) -> tonic::service::Routes {
        use nubo_common::proto::*;
        tonic::service::Routes::default()
            .add_service(tokens_server::TokensServer::new(self.clone()))
            .add_service(quotas_server::QuotasServer::new(self.clone()))
            .add_service(flavors_server::FlavorsServer::new(self.clone()))
            .add_service(images_server::ImagesServer::new(self.clone()))
            .add_service(image_data_server::ImageDataServer::new(self.clone()))
            .add_service(networks_server::NetworksServer::new(self.clone()))
            .add_service(ports_server::PortsServer::new(self.clone()))
            .add_service(security_groups_server::SecurityGroupsServer::new(
                self.clone(),
            ))
            .add_service(keypairs_server::KeypairsServer::new(self.clone()))
            .add_service(server_groups_server::ServerGroupsServer::new(self.clone()))
            .add_service(servers_server::ServersServer::new(self.clone()))
            .add_service(nodes_server::NodesServer::new(self.clone()))
            .add_service(cluster_server::ClusterServer::new(self.clone()))
            .add_service(volumes_server::VolumesServer::new(self.clone()))
            .add_service(volume_types_server::VolumeTypesServer::new(self.clone()))
    }

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
                let Some(id) = self.store.get::<uuid::Uuid>(&idx).await? else {
                    return Err(not_found());
                };
                key_of(id.value)
            }
        };
        match self.store.get::<T>(&key).await? {
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
            return match self.store.get::<T>(&key_of(u)).await? {
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
            if let Some(id) = self.store.get::<SecurityGroupId>(&idx).await? {
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
        self.store
            .list_page(prefix, r.page_size, &r.page_token, |kv| {
                decode_or_skip::<T>(kv)
                    .filter(|t| in_scope(r.all_projects, &p, t.project()))
                    .map(|t| conv(&t))
            })
            .await
    }
}

/// Filters listings by project unless `all_projects`.
pub(crate) fn in_scope(all: bool, want: &ProjectId, have: &ProjectId) -> bool {
    (all && crate::auth::may_see_all()) || want == have
}
