//! The listeners: one device-bound socket per bridge, each serving the
//! shared router.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::caller::CallerIdentity;
use crate::error::MetadataError;
use crate::instance::InstanceLookup;
use crate::neighbour::NeighbourResolver;
use crate::routes;
use crate::socket;

/// The well-known metadata address.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Tunables of the metadata server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port every bridge listener binds (default 169.254.169.254:80).
    pub listen: SocketAddrV4,
    /// Open connections allowed per bridge; further guests wait in the
    /// accept backlog (default 256).
    pub max_connections_per_bridge: usize,
    /// Time a client has to send a complete request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish when a bridge is removed or the
    /// server shuts down (default 5 s).
    pub shutdown_grace: Duration,
    /// `listen(2)` backlog (default 1024).
    pub backlog: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddrV4::new(METADATA_ADDR, 80),
            max_connections_per_bridge: 256,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            backlog: 1024,
        }
    }
}

/// The running metadata service of one node.
///
/// Dropping it stops every listener (in-flight requests are finished in the
/// background); [`MetadataServer::shutdown`] does the same and waits.
pub struct MetadataServer {
    router: Router,
    runtime: tokio::runtime::Handle,
    config: ServerConfig,
    bridges: Mutex<HashMap<String, BridgeTask>>,
}

/// A served bridge: its accept loop and netlink connection.
struct BridgeTask {
    stop: watch::Sender<bool>,
    serve: JoinHandle<()>,
    netlink: JoinHandle<()>,
}

/// What every connection of one bridge shares.
struct BridgeContext {
    name: String,
    neighbours: NeighbourResolver,
}

impl MetadataServer {
    /// Starts a server with the default [`ServerConfig`], answering from
    /// `lookup` (typically an [`crate::InstanceTable`] the agent keeps
    /// updated). Serves no bridge until [`MetadataServer::add_bridge`].
    ///
    /// Must be called within a tokio runtime; listeners and their tasks live
    /// on that runtime.
    pub fn start(lookup: impl InstanceLookup) -> Result<Self, MetadataError> {
        Self::start_with_config(lookup, ServerConfig::default())
    }

    /// Like [`MetadataServer::start`] with explicit tunables.
    pub fn start_with_config(
        lookup: impl InstanceLookup,
        config: ServerConfig,
    ) -> Result<Self, MetadataError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| MetadataError::NoRuntime)?;
        Ok(MetadataServer {
            router: routes::router(Arc::new(lookup)),
            runtime,
            config,
            bridges: Mutex::new(HashMap::new()),
        })
    }

    /// Starts serving on bridge `name`.
    ///
    /// The listening socket and the netlink socket for neighbour lookups are
    /// created synchronously in the *calling thread's* network namespace
    /// (which may have been switched with `setns`); requests are then served
    /// on the runtime's worker threads whatever their namespace.
    pub fn add_bridge(&self, name: &str) -> Result<(), MetadataError> {
        socket::validate_ifname(name)?;
        let mut bridges = self.bridges.lock().unwrap_or_else(PoisonError::into_inner);
        if bridges.contains_key(name) {
            return Err(MetadataError::AlreadyServed {
                bridge: name.to_owned(),
            });
        }
        let ifindex = socket::ifindex(name)?;
        let std_listener = socket::bind_listener(name, self.config.listen, self.config.backlog)?;

        let _runtime = self.runtime.enter();
        let listener =
            TcpListener::from_std(std_listener).map_err(|source| MetadataError::Socket {
                bridge: name.to_owned(),
                step: "register with the tokio reactor",
                source,
            })?;
        let (neighbours, netlink) =
            NeighbourResolver::new(ifindex).map_err(|source| MetadataError::Netlink {
                bridge: name.to_owned(),
                source,
            })?;
        let context = Arc::new(BridgeContext {
            name: name.to_owned(),
            neighbours,
        });
        let (stop, stopped) = watch::channel(false);
        let serve = self.runtime.spawn(serve_bridge(
            listener,
            context,
            self.router.clone(),
            stopped,
            self.config.clone(),
        ));
        bridges.insert(
            name.to_owned(),
            BridgeTask {
                stop,
                serve,
                netlink,
            },
        );
        info!(bridge = name, ifindex, listen = %self.config.listen, "serving metadata");
        Ok(())
    }

    /// Stops serving on bridge `name`: closes its listener, lets in-flight
    /// requests finish (up to the shutdown grace) and returns once the
    /// socket is gone. Returns `false` if the bridge was not served.
    pub async fn remove_bridge(&self, name: &str) -> bool {
        let task = self
            .bridges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        match task {
            Some(task) => {
                stop_bridge(name, task).await;
                true
            }
            None => false,
        }
    }

    /// Names of the bridges currently served, sorted.
    pub fn bridges(&self) -> Vec<String> {
        let bridges = self.bridges.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = bridges.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Stops every bridge and waits for them (graceful shutdown).
    pub async fn shutdown(&self) {
        let tasks: Vec<(String, BridgeTask)> = self
            .bridges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        futures::future::join_all(
            tasks
                .into_iter()
                .map(|(name, task)| async move { stop_bridge(&name, task).await }),
        )
        .await;
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        let bridges = self
            .bridges
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for task in bridges.values() {
            task.stop.send_replace(true);
        }
    }
}

async fn stop_bridge(name: &str, task: BridgeTask) {
    task.stop.send_replace(true);
    if let Err(err) = task.serve.await {
        warn!(bridge = name, error = %err, "metadata listener task failed");
    }
    task.netlink.abort();
    info!(bridge = name, "stopped serving metadata");
}

/// Resolves once shutdown is requested (or the server is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: stop as well.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// The accept loop of one bridge.
async fn serve_bridge(
    listener: TcpListener,
    context: Arc<BridgeContext>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
    config: ServerConfig,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections_per_bridge.max(1)));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(bridge = %context.name, error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            Arc::clone(&context),
            router.clone(),
            stopped.clone(),
            config.header_read_timeout,
            permit,
        ));
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_grace, drain)
        .await
        .is_err()
    {
        warn!(
            bridge = %context.name,
            remaining = connections.len(),
            "metadata connections still open after the grace period, closing them"
        );
        connections.shutdown().await;
    }
}

/// Serves the HTTP/1.1 requests of one guest connection.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    context: Arc<BridgeContext>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
    header_read_timeout: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let ip = match peer.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => ip,
            None => {
                debug!(bridge = %context.name, %peer, "ignoring IPv6 metadata client");
                return;
            }
        },
    };
    if let Err(err) = stream.set_nodelay(true) {
        debug!(bridge = %context.name, %peer, error = %err, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let context = Arc::clone(&context);
        let router = router.clone();
        async move { Ok::<_, Infallible>(handle_request(request, &context, ip, router).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(err) = result {
        debug!(%peer, error = %err, "metadata connection ended with an error");
    }
}

/// Identifies the caller from the kernel's view and runs the router.
async fn handle_request(
    request: Request<Incoming>,
    context: &BridgeContext,
    ip: Ipv4Addr,
    router: Router,
) -> Response {
    let mac = match context.neighbours.mac_of(ip).await {
        Ok(mac) => mac,
        Err(err) => {
            warn!(bridge = %context.name, %ip, error = %err, "neighbour lookup failed");
            None
        }
    };
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(CallerIdentity {
        bridge: context.name.clone(),
        ip,
        mac,
    });
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
