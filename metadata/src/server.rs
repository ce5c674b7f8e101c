//! The listeners: one device-bound socket per bridge, each serving the
//! shared router.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::caller::CallerIdentity;
use crate::error::MetadataError;
use crate::guard::{Admitted, ClientLimits, Guard, Refused};
use crate::instance::InstanceLookup;
use crate::neighbour::NeighbourResolver;
use crate::routes;
use crate::socket;

/// The well-known metadata address.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How often refusals are summed up in one log line per bridge.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Tunables of the metadata server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port every bridge listener binds (default 169.254.169.254:80).
    pub listen: SocketAddrV4,
    /// Open connections allowed per bridge, all guests together; a
    /// connection over the cap is closed at once (default 256).
    pub max_connections_per_bridge: usize,
    /// What one client address may hold and ask (default
    /// [`ClientLimits::default`]): connections over its cap are closed at
    /// once, requests over its rate get `429 Too Many Requests`.
    pub client: ClientLimits,
    /// Time a client has to send a complete request head (default 3 s):
    /// a connection trickling its headers (slowloris) is closed.
    pub header_read_timeout: Duration,
    /// Longest life of one connection (default 30 s): then it is closed
    /// after its current request, so idle keep-alive connections do not
    /// hold their slot for ever.
    pub max_connection_age: Duration,
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
            client: ClientLimits::default(),
            header_read_timeout: Duration::from_secs(3),
            max_connection_age: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            backlog: 1024,
        }
    }
}

/// Told the HTTP status of every answer the server gives (e.g. to count
/// them in a daemon's metrics), so that this crate needs to know nothing
/// about who counts. Called on the request's task: keep it cheap.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request that arrived on `bridge` was answered with `status`.
    fn answered(&self, bridge: &str, status: StatusCode);
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
    observer: Option<Arc<dyn RequestObserver>>,
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
    guard: Arc<Guard>,
    observer: Option<Arc<dyn RequestObserver>>,
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
            observer: None,
        })
    }

    /// Keeps the passwords guests post to `/openstack/<version>/password`
    /// in `store` (without one those routes answer 404). Bridges added from
    /// now on.
    pub fn with_passwords(mut self, store: Arc<dyn crate::PasswordStore>) -> Self {
        self.router = self.router.clone().layer(axum::Extension(store));
        self
    }

    /// Reports the status of every answer to `observer` (bridges added
    /// from now on).
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
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
            guard: Guard::new(self.config.client, self.config.max_connections_per_bridge),
            observer: self.observer.clone(),
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

/// The accept loop of one bridge. Connections over a cap (per client
/// address, per bridge) are closed at once, never queued: the loop keeps
/// accepting, so one guest holding connections cannot stall the others.
async fn serve_bridge(
    listener: TcpListener,
    context: Arc<BridgeContext>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
    config: ServerConfig,
) {
    let mut connections = JoinSet::new();
    let mut report = tokio::time::interval(REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = stop_requested(&mut stopped) => break,
            _ = report.tick() => {
                report_refusals(&context);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(bridge = %context.name, error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(ip) = peer_ipv4(peer) else {
            debug!(bridge = %context.name, %peer, "ignoring IPv6 metadata client");
            continue;
        };
        let admitted = match context.guard.admit(ip, Instant::now()) {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse(stream, why);
                continue;
            }
        };
        connections.spawn(serve_connection(
            stream,
            ip,
            Arc::clone(&context),
            router.clone(),
            stopped.clone(),
            (config.header_read_timeout, config.max_connection_age),
            admitted,
        ));
    }
    drop(listener);
    report_refusals(&context);
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

/// The IPv4 address of a peer (IPv4-mapped IPv6 included).
fn peer_ipv4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// Closes a refused connection with a reset: no FIN_WAIT/TIME_WAIT state
/// kept for a guest that opens connections in a loop.
fn refuse(stream: TcpStream, why: Refused) {
    if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        debug!(error = %err, ?why, "cannot set SO_LINGER on a refused connection");
    }
    drop(stream);
}

/// One line per interval with what the caps and rates refused, if any.
fn report_refusals(context: &BridgeContext) {
    let r = context.guard.refusals.take();
    if !r.is_empty() {
        warn!(
            bridge = %context.name,
            interval_s = REPORT_INTERVAL.as_secs(),
            connections_over_client_cap = r.per_client,
            connections_over_bridge_cap = r.per_bridge,
            requests_over_rate = r.rate,
            requests_unidentified = r.unidentified,
            neighbour_lookup_errors = r.lookup_errors,
            first = r.first.as_deref().unwrap_or(""),
            open = context.guard.open(),
            "metadata clients refused"
        );
    }
}

/// Serves the HTTP/1.1 requests of one guest connection.
async fn serve_connection(
    stream: TcpStream,
    ip: Ipv4Addr,
    context: Arc<BridgeContext>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
    (header_read_timeout, max_age): (Duration, Duration),
    _admitted: Admitted,
) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(bridge = %context.name, %ip, error = %err, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let context = Arc::clone(&context);
        let router = router.clone();
        async move {
            let response = handle_request(request, &context, ip, router).await;
            if let Some(observer) = &context.observer {
                observer.answered(&context.name, response.status());
            }
            Ok::<_, Infallible>(response)
        }
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
        _ = tokio::time::sleep(max_age) => {
            connection.as_mut().graceful_shutdown();
            // A request still trickling in gets the header timeout.
            connection.as_mut().await
        }
    };
    if let Err(err) = result {
        debug!(%ip, error = %err, "metadata connection ended with an error");
    }
}

/// Identifies the caller from the kernel's view and runs the router.
async fn handle_request(
    request: Request<Incoming>,
    context: &BridgeContext,
    ip: Ipv4Addr,
    router: Router,
) -> Response {
    if !context.guard.allow_request(ip, Instant::now()) {
        return (StatusCode::TOO_MANY_REQUESTS, "too many requests\n").into_response();
    }
    let refusals = &context.guard.refusals;
    let mac = match context.neighbours.mac_of(ip).await {
        Ok(mac) => mac,
        Err(err) => {
            refusals.note(&refusals.lookup_errors, || {
                format!("neighbour lookup of {ip} failed: {err}")
            });
            None
        }
    };
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(CallerIdentity {
        bridge: context.name.clone(),
        ip,
        mac,
    });
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if let Some(rejection) = response.extensions().get::<crate::caller::Rejection>() {
        refusals.note(&refusals.unidentified, || {
            format!("request from {ip} refused: {rejection}")
        });
    }
    response
}
