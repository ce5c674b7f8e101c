//! The nubo coordinator: the gRPC API, validation, IPAM, the scheduler and
//! leader election, with all state in etcd.
//!
//! Run one in-process with [`start`] (tests, benchmarks) or [`serve`] (the
//! binary):
//!
//! ```no_run
//! # async fn demo() -> Result<(), nubo_coordinator::ServeError> {
//! let cfg = nubo_coordinator::Config::for_tests("http://127.0.0.1:2379");
//! let c = nubo_coordinator::start(cfg).await?;
//! println!("API on {}", c.endpoint());
//! c.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod background;
pub mod cache;
pub mod caller;
pub mod ceph;
pub mod config;
pub mod election;
pub mod error;
pub mod etcd_auth;
pub mod fencing;
pub mod health;
pub mod image_store;
pub mod ipam;
pub mod layout;
pub mod operations;
pub mod paging;
pub mod pki;
pub mod placement;
pub mod state;
pub mod telemetry;
pub mod tickets;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    AdminTls, AuthMode, Cli, Command, Config, EtcdAuthCommand, FailureConfig, LogFormat,
    MigrationConfig, NodeCommand, Placement, TlsPaths,
};
pub use error::{ApiError, ServeError};
pub use fencing::{CephFencer, FenceCall, Fencer, LogFencer, RecordingFencer};

/// A running coordinator.
pub struct Coordinator {
    grpc_addr: SocketAddr,
    tls: bool,
    health_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    leader: Arc<election::LeaderState>,
    view: Arc<placement::ClusterView>,
    store: nubo_store::Etcd,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl Coordinator {
    /// Whether this coordinator's node view has node `n` alive (its watch
    /// delivered the node's record and alive key): what a placement needs.
    pub fn sees_alive(&self, n: &nubo_common::NodeName) -> bool {
        self.view.get(n).is_some_and(|s| s.alive)
    }

    /// The bound metrics address (`None` when no `[metrics]` is
    /// configured).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The gRPC endpoint URL for tonic clients (`http://ip:port`, or
    /// `https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// The bound health address.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// True while this coordinator is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader.is_leader()
    }

    /// True when etcd answers a status request within `timeout` (the
    /// systemd watchdog is only fed while this holds).
    pub async fn etcd_healthy(&self, timeout: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.store.status()).await,
            Ok(Ok(_))
        )
    }

    /// Stops serving, resigns (revokes the lease) and waits for every task.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        let mut first = Ok(());
        for t in self.tasks {
            match t.await {
                Ok(Err(e)) if first.is_ok() => first = Err(e),
                Err(e) if first.is_ok() => first = Err(ServeError::Io(std::io::Error::other(e))),
                _ => {}
            }
        }
        first
    }
}

/// Connects to etcd, loads the node view, binds the listeners and starts
/// serving; returns once the API accepts requests. Storage fencing: a
/// [`CephFencer`] when `[ceph]` is configured, else [`LogFencer`].
pub async fn start(cfg: Config) -> Result<Coordinator, ServeError> {
    // Unusable node API TLS files stop the start, with the file named.
    let node_api = cfg.node_api_client()?;
    // The one Ceph connection: fencer, volume API and reconciler share it.
    let rbd = connect_ceph(&cfg).await?;
    let fencer: Arc<dyn Fencer> = match &rbd {
        Some(rbd) => Arc::new(CephFencer::new(
            rbd.cluster().clone(),
            connect_etcd(&cfg).await?,
            node_api.clone(),
        )),
        None => Arc::new(LogFencer),
    };
    // Boxed: the start's state machine is large, and a caller awaiting it
    // inline (a test's main future) would carry it on its stack.
    Box::pin(start_inner(cfg, fencer, rbd, node_api)).await
}

/// [`start`] with a storage [`Fencer`].
pub async fn start_with_fencer(
    cfg: Config,
    fencer: Arc<dyn Fencer>,
) -> Result<Coordinator, ServeError> {
    let node_api = cfg.node_api_client()?;
    let rbd = connect_ceph(&cfg).await?;
    Box::pin(start_inner(cfg, fencer, rbd, node_api)).await
}

/// Connects to Ceph when `[ceph]` is configured (before anything else, so a
/// wrong cephx key or a missing pool stops the start with a clear error).
async fn connect_ceph(cfg: &Config) -> Result<Option<Arc<nubo_storage::RbdStore>>, ServeError> {
    match &cfg.ceph {
        Some(c) => Ok(Some(ceph::connect(c).await?)),
        None => Ok(None),
    }
}

async fn start_inner(
    cfg: Config,
    fencer: Arc<dyn Fencer>,
    ceph: Option<Arc<nubo_storage::RbdStore>>,
    node_api: nubo_nodeapi::NodeApiClient,
) -> Result<Coordinator, ServeError> {
    cfg.validate()?;
    cfg.check_security()?;
    if let Some(what) = cfg.insecurity() {
        tracing::warn!(
            "INSECURE (--insecure, development only): {what}; never expose this coordinator"
        );
    }
    let leader = Arc::new(election::LeaderState::default());
    // Registered whether or not `[metrics]` serves them: the layers update
    // them either way. The etcd layer reports to them through its hook.
    let mut registry = telemetry::registry();
    let metrics = telemetry::CoordinatorMetrics::register(&mut registry, &cfg, leader.clone());
    let etcd = connect_etcd(&cfg).await?.with_observer(metrics.clone());
    // Before anything reads or serves: an older cluster's keys are moved
    // to the current layout (safe with several coordinators starting).
    // In a task of its own: polled from the runtime's stack, not nested in
    // the caller's future (a deep one in debug builds).
    {
        let etcd = etcd.clone();
        tokio::spawn(async move { layout::migrate(&etcd).await })
            .await
            .map_err(|e| {
                ServeError::Io(std::io::Error::other(format!("layout migration task: {e}")))
            })??;
    }
    let store = etcd.clone();
    let (shutdown, rx) = watch::channel(false);
    let view = Arc::new(placement::ClusterView::default());

    let mut tasks = Vec::new();
    {
        let view = view.clone();
        let (etcd, rx) = (etcd.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            view.run(etcd, rx).await;
            Ok(())
        }));
    }
    {
        let (etcd, rx, leader, id) = (etcd.clone(), rx.clone(), leader.clone(), cfg.id.clone());
        let ttl = cfg.lease_ttl_secs;
        tasks.push(tokio::spawn(async move {
            election::run(etcd, id, ttl, leader, rx).await;
            Ok(())
        }));
    }
    // Serve only with a loaded view, so the first placements see the nodes.
    tokio::time::timeout(std::time::Duration::from_secs(30), view.wait_ready())
        .await
        .map_err(|_| {
            ServeError::Config("the node view did not load from etcd within 30 s".into())
        })?;

    let grpc = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let grpc_addr = grpc.local_addr()?;
    let health = tokio::net::TcpListener::bind(cfg.health_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.health_listen,
            source,
        })?;
    let health_addr = health.local_addr()?;
    let metrics_endpoint = match &cfg.metrics {
        Some(m) => Some(
            nubo_metrics::Endpoint::bind(m)
                .await
                .map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_endpoint
        .as_ref()
        .map(nubo_metrics::Endpoint::local_addr)
        .transpose()?;

    let ctx = state::Ctx::new(
        store.clone(),
        view.clone(),
        leader.clone(),
        cfg.clone(),
        fencer,
        node_api,
        metrics.clone(),
    );
    if let Some(c) = ceph {
        let _ = ctx.ceph.set(c);
    }
    let signer = match cfg.auth {
        AuthMode::None => None,
        AuthMode::Token => {
            let set = background::token_keys::load(&store).await?;
            let h = api::auth::handle(background::token_keys::signer(&set)?);
            let _ = ctx.signer.set(h.clone());
            // Revoked tokens are known before the first call is served.
            background::revoked_tokens::load(&ctx).await?;
            {
                let (ctx, rx) = (ctx.clone(), rx.clone());
                tasks.push(tokio::spawn(async move {
                    background::revoked_tokens::run(ctx, rx).await;
                    Ok(())
                }));
            }
            let (kstore, kh, krx) = (store.clone(), h.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                background::token_keys::run_reload(kstore, kh, set, krx).await;
                Ok(())
            }));
            {
                let (ctx, rx) = (ctx.clone(), rx.clone());
                tasks.push(tokio::spawn(async move {
                    background::audit::run_pruner(ctx, rx).await;
                    Ok(())
                }));
            }
            Some(h)
        }
    };
    {
        let (cache, etcd, rx) = (ctx.cache.clone(), etcd.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            cache.run(etcd, rx).await;
            Ok(())
        }));
        // Not required for correctness (a miss reads etcd), only for speed.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), ctx.cache.wait_ready()).await;
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::failover::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::volume_reconcile::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::guest_stops::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::router_snat::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::migrations::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx) = (ctx.clone(), rx.clone());
        tasks.push(tokio::spawn(async move {
            background::captures::run(ctx, rx).await;
            Ok(())
        }));
    }
    {
        let (ctx, rx, gauges) = (ctx.clone(), rx.clone(), metrics.cluster.clone());
        tasks.push(tokio::spawn(async move {
            background::cluster_gauges::run(ctx, gauges, rx).await;
            Ok(())
        }));
    }
    {
        let mut rx = rx.clone();
        let routes = match signer {
            Some(h) => api::auth::layer(
                api::routes(&ctx)
                    // Only behind authentication: open, they would let
                    // anyone make themselves a cloud admin.
                    .add_service(nubo_common::proto::audit_server::AuditServer::new(
                        ctx.clone(),
                    ))
                    .add_service(nubo_common::proto::identity_server::IdentityServer::new(
                        ctx.clone(),
                    ))
                    .add_service(
                        nubo_common::proto::application_credentials_server::ApplicationCredentialsServer::new(
                            ctx.clone(),
                        ),
                    )
                    .prepare()
                    .into_axum_router(),
                api::auth::AuthState {
                    signer: h,
                    store: store.clone(),
                    revoked: ctx.revoked.clone(),
                },
            ),
            None => api::routes(&ctx).prepare().into_axum_router(),
        };
        // Outermost: refused calls are counted too.
        let routes = tonic::service::Routes::from(telemetry::api::layer(routes, metrics.clone()));
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &cfg.tls {
            let id = tonic::transport::Identity::from_pem(read_pem(cert)?, read_pem(key)?);
            builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(id))?;
        }
        let router = builder.add_routes(routes);
        // Responses are small: without TCP_NODELAY each one can wait for
        // the client's delayed ACK (~40 ms), which capped throughput at
        // concurrency / 40 ms. (Server::tcp_nodelay only applies to
        // listeners tonic binds itself.)
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            |conn| {
                if let Ok(c) = &conn {
                    if let Err(e) = c.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                }
                conn
            },
        );
        tasks.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await?;
            Ok(())
        }));
    }
    {
        let mut rx = rx.clone();
        let app = health::router(health::Health {
            store: store.clone(),
            leader: leader.clone(),
            view: view.clone(),
        });
        tasks.push(tokio::spawn(async move {
            axum::serve(health, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await?;
            Ok(())
        }));
    }
    if let Some(endpoint) = metrics_endpoint {
        let mut rx = rx.clone();
        let registry = Arc::new(registry);
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = endpoint.serve(registry) => r?,
                _ = rx.wait_for(|s| *s) => {}
            }
            Ok(())
        }));
    }
    tracing::info!(id = %cfg.id, %grpc_addr, %health_addr, ?metrics_addr, "nubo-coordinator ready on {grpc_addr}");
    Ok(Coordinator {
        grpc_addr,
        tls: cfg.tls.is_some(),
        health_addr,
        metrics_addr,
        leader,
        view,
        store,
        shutdown,
        tasks,
    })
}

fn read_pem(p: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(p).map_err(|e| ServeError::Config(format!("cannot read {}: {e}", p.display())))
}

/// The etcd layer's settings for this coordinator: every endpoint, client
/// certificates when `[etcd_tls]` is set, requests to the raft leader.
pub fn etcd_config(cfg: &Config) -> nubo_store::EtcdConfig {
    nubo_store::EtcdConfig::new(cfg.etcd_endpoints.clone())
        .with_tls(cfg.etcd_tls.as_ref().map(|t| nubo_store::TlsFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }))
        .prefer_leader(true)
}

/// Connects to etcd through the etcd layer (`nubo-store`: failover across
/// members, retries). Lazy: an etcd that is down surfaces on first use.
pub async fn connect_etcd(cfg: &Config) -> Result<nubo_store::Etcd, ServeError> {
    Ok(nubo_store::Etcd::connect(&etcd_config(cfg)).await?)
}

/// Runs a coordinator until `shutdown` completes.
pub async fn serve(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let c = start(cfg).await?;
    shutdown.await;
    c.shutdown().await
}
