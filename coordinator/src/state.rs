//! The coordinator's state: what every operation, adapter and background
//! loop works with ([`Ctx`]). It holds connections and in-memory views of
//! etcd, never state of its own that etcd does not have.

use std::sync::Arc;

use nubo_store::Etcd;

use crate::cache::ResourceCache;
use crate::config::Config;
use crate::election::LeaderState;
use crate::placement::{ClusterView, Engine, Ratios};
use crate::telemetry::CoordinatorMetrics;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx(Arc<Inner>);

/// See [`Ctx`].
pub struct Inner {
    /// etcd.
    pub store: Etcd,
    /// Node view.
    pub view: Arc<ClusterView>,
    /// Election state.
    pub leader: Arc<LeaderState>,
    /// Configuration.
    pub cfg: Config,
    /// Storage fencing (failure handling).
    pub fencer: crate::fencing::SharedFencer,
    /// Watch-fed copy of flavors, images, networks, security groups,
    /// keypairs, server groups and the name index (see [`crate::cache`]);
    /// fed by whoever runs [`crate::cache::ResourceCache::run`], and simply
    /// missing (every lookup reads etcd) otherwise.
    pub cache: Arc<ResourceCache>,
    /// The placement engine (see [`crate::placement`]): every placement
    /// and every change of a node's usage goes through it.
    pub placement: Engine,
    /// The token signer (set at start with `auth = "token"`; `Tokens.Issue`
    /// refuses without it).
    pub signer: std::sync::OnceLock<nubo_identity::auth::SignerHandle>,
    /// Tokens revoked before their expiry, fed by the watch of
    /// [`crate::background::revoked_tokens`] (with `auth = "token"`).
    pub revoked: nubo_identity::revocation::RevokedHandle,
    /// The one Ceph connection of this coordinator (set at start when
    /// `[ceph]` is configured): the volume API, its reconciler and storage
    /// fencing share it. Unset = the volume API answers FailedPrecondition.
    pub ceph: std::sync::OnceLock<Arc<nubo_storage::RbdStore>>,
    /// The client of the nodes' APIs (console and capture relays): the
    /// coordinator's certificate when `[etcd_tls]` has one.
    pub node_api: nubo_nodeapi::NodeApiClient,
    /// The stream ticket signer, loaded on first use.
    pub tickets: crate::tickets::TicketKeys,
    /// The coordinator's metric families (registered in its registry when
    /// `[metrics]` is configured; updated either way).
    pub metrics: Arc<CoordinatorMetrics>,
}

impl std::ops::Deref for Ctx {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ctx {
    /// Builds the context (inside a tokio runtime: it starts the
    /// placement engine's group committer); `node_api` is the client of
    /// the nodes' APIs ([`Config::node_api_client`]).
    pub fn new(
        store: Etcd,
        view: Arc<ClusterView>,
        leader: Arc<LeaderState>,
        cfg: Config,
        fencer: crate::fencing::SharedFencer,
        node_api: nubo_nodeapi::NodeApiClient,
        metrics: Arc<CoordinatorMetrics>,
    ) -> Self {
        let ratios = Ratios {
            cpu: cfg.cpu_ratio,
            ram: cfg.ram_ratio,
            disk: cfg.disk_ratio,
        };
        let placement = Engine::new(
            view.clone(),
            store.clone(),
            ratios,
            cfg.placement,
            metrics.clone(),
        );
        Self(Arc::new(Inner {
            store,
            view,
            leader,
            cfg,
            fencer,
            cache: Arc::new(ResourceCache::default()),
            placement,
            signer: std::sync::OnceLock::new(),
            revoked: Default::default(),
            ceph: std::sync::OnceLock::new(),
            node_api,
            tickets: Default::default(),
            metrics,
        }))
    }
}
