//! The per-bridge server task: receive, decide, reply.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use nubo_netid::MacAddr;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::DhcpError;

use crate::lease::LeaseTable;
use crate::packet::{decode_request, encode, MAX_PACKET};
use crate::ratelimit::{LogLimiter, Verdict};
use crate::respond::{decide, reply_destination, Decision, Silence};
use crate::socket::bind_device_socket;

/// Counters of one server, readable while it runs.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    ignored: AtomicU64,
    offers: AtomicU64,
    acks: AtomicU64,
    naks: AtomicU64,
    send_errors: AtomicU64,
}

/// A point-in-time copy of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpStats {
    /// Datagrams received on the socket.
    pub received: u64,
    /// Datagrams dropped as malformed or not client requests.
    pub dropped: u64,
    /// Well-formed requests deliberately left unanswered (unknown MAC, RELEASE, ...).
    pub ignored: u64,
    /// DHCPOFFERs sent.
    pub offers: u64,
    /// DHCPACKs sent (REQUEST and INFORM).
    pub acks: u64,
    /// DHCPNAKs sent.
    pub naks: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
}

impl Counters {
    fn snapshot(&self) -> DhcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DhcpStats {
            received: get(&self.received),
            dropped: get(&self.dropped),
            ignored: get(&self.ignored),
            offers: get(&self.offers),
            acks: get(&self.acks),
            naks: get(&self.naks),
            send_errors: get(&self.send_errors),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A DHCP server bound to one bridge, not yet running.
///
/// Created with [`DhcpServer::bind`] (no runtime needed: it can be called
/// from a thread that entered the bridge's network namespace with `setns`;
/// the socket stays in that namespace), then started with
/// [`DhcpServer::spawn`] or [`DhcpServer::run_until`] on a tokio runtime
/// with IO enabled.
#[derive(Debug)]
pub struct DhcpServer {
    iface: String,
    server_id: Ipv4Addr,
    table: LeaseTable,
    socket: std::net::UdpSocket,
    counters: Arc<Counters>,
}

/// Handle on a spawned server. Dropping it also stops the server.
#[derive(Debug)]
pub struct DhcpHandle {
    iface: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl DhcpServer {
    /// Opens the server's socket on `iface` (0.0.0.0:67, SO_BINDTODEVICE,
    /// SO_BROADCAST, SO_REUSEADDR) in the calling thread's network
    /// namespace. `server_id` is the address the bridge owns (option 54,
    /// normally [`crate::METADATA_IP`]); `table` is read live on every request.
    pub fn bind(iface: &str, server_id: Ipv4Addr, table: LeaseTable) -> Result<Self, DhcpError> {
        let socket = bind_device_socket(iface)?;
        debug!(iface, %server_id, "DHCP socket bound");
        Ok(Self {
            iface: iface.to_string(),
            server_id,
            table,
            socket,
            counters: Arc::default(),
        })
    }

    /// The bridge this server answers on.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Starts the server as a task on the current tokio runtime.
    pub fn spawn(self) -> Result<DhcpHandle, DhcpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| DhcpError::Runtime {
            iface: self.iface.clone(),
            source: std::io::Error::other(e),
        })?;
        let socket = {
            let _ctx = runtime.enter();
            UdpSocket::from_std(self.socket).map_err(|source| DhcpError::Runtime {
                iface: self.iface.clone(),
                source,
            })?
        };
        let (tx, rx) = oneshot::channel();
        let counters = Arc::clone(&self.counters);
        let iface = self.iface.clone();
        let worker = Worker::new(
            self.iface,
            self.server_id,
            self.table,
            socket,
            self.counters,
        );
        let task = runtime.spawn(worker.run(async {
            // A dropped sender (handle dropped) stops the server too.
            let _ = rx.await;
        }));
        Ok(DhcpHandle {
            iface,
            shutdown: tx,
            task,
            counters,
        })
    }

    /// Serves until `shutdown` completes. Must be polled on a tokio runtime
    /// with IO enabled.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), DhcpError> {
        let socket = UdpSocket::from_std(self.socket).map_err(|source| DhcpError::Runtime {
            iface: self.iface.clone(),
            source,
        })?;
        Worker::new(
            self.iface,
            self.server_id,
            self.table,
            socket,
            self.counters,
        )
        .run(shutdown)
        .await;
        Ok(())
    }
}

impl DhcpHandle {
    /// The bridge this server answers on.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The server's counters so far.
    pub fn stats(&self) -> DhcpStats {
        self.counters.snapshot()
    }

    /// Whether the server task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the server and waits for its task; the socket is closed on return.
    pub async fn shutdown(self) -> Result<(), DhcpError> {
        let _ = self.shutdown.send(());
        self.task.await.map_err(|e| DhcpError::Task {
            iface: self.iface,
            reason: e.to_string(),
        })
    }
}

/// The running server's state.
struct Worker {
    iface: String,
    server_id: Ipv4Addr,
    table: LeaseTable,
    socket: UdpSocket,
    counters: Arc<Counters>,
    /// For log lines a guest can trigger at will.
    guest_log: LogLimiter,
    /// For socket errors.
    io_log: LogLimiter,
}

impl Worker {
    fn new(
        iface: String,
        server_id: Ipv4Addr,
        table: LeaseTable,
        socket: UdpSocket,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            iface,
            server_id,
            table,
            socket,
            counters,
            guest_log: LogLimiter::new(20, Duration::from_secs(10)),
            io_log: LogLimiter::new(5, Duration::from_secs(10)),
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        info!(iface = %self.iface, server_id = %self.server_id, "DHCP server running");
        tokio::pin!(shutdown);
        // One byte more than accepted, so oversized datagrams are detectable.
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let received = tokio::select! {
                _ = &mut shutdown => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((len, peer)) => {
                    let datagram = buf.get(..len).unwrap_or(&buf[..]);
                    self.handle(datagram, peer).await;
                }
                Err(e) => {
                    if let Verdict::Log { suppressed_before } = self.io_log.check(Instant::now()) {
                        warn!(iface = %self.iface, error = %e, suppressed_before, "DHCP receive failed");
                    }
                    // Do not spin on a persistent error (e.g. device gone).
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        info!(iface = %self.iface, "DHCP server stopped");
    }

    async fn handle(&mut self, datagram: &[u8], peer: SocketAddr) {
        bump(&self.counters.received);
        let req = match decode_request(datagram) {
            Ok(req) => req,
            Err(reason) => {
                bump(&self.counters.dropped);
                if let Verdict::Log { suppressed_before } = self.guest_log.check(Instant::now()) {
                    warn!(iface = %self.iface, %peer, %reason, suppressed_before, "dropped bad DHCP datagram");
                }
                return;
            }
        };
        // The read guard is released before any await.
        let decision = decide(&self.table.read(), &req, self.server_id);
        let reply = match decision {
            Decision::Reply(reply) => reply,
            Decision::Silent(why) => {
                bump(&self.counters.ignored);
                self.log_silence(&why);
                return;
            }
        };
        let kind = reply.opts().msg_type();
        match kind {
            Some(MessageType::Offer) => bump(&self.counters.offers),
            Some(MessageType::Ack) => bump(&self.counters.acks),
            Some(MessageType::Nak) => {
                bump(&self.counters.naks);
                if let Verdict::Log { suppressed_before } = self.guest_log.check(Instant::now()) {
                    info!(iface = %self.iface, mac = %mac_of(&reply), suppressed_before, "sent DHCPNAK");
                }
            }
            _ => {}
        }
        let bytes = match encode(&reply) {
            Ok(bytes) => bytes,
            Err(e) => {
                bump(&self.counters.send_errors);
                warn!(iface = %self.iface, error = %e, "cannot encode DHCP reply");
                return;
            }
        };
        let dest = reply_destination(&reply);
        debug!(iface = %self.iface, ?kind, mac = %mac_of(&reply), yiaddr = %reply.yiaddr(), %dest, "reply");
        if let Err(e) = self.socket.send_to(&bytes, dest).await {
            bump(&self.counters.send_errors);
            if let Verdict::Log { suppressed_before } = self.io_log.check(Instant::now()) {
                warn!(iface = %self.iface, %dest, error = %e, suppressed_before, "cannot send DHCP reply");
            }
        }
    }

    fn log_silence(&mut self, why: &Silence) {
        if matches!(why, Silence::Released(..) | Silence::Declined(..)) {
            if let Verdict::Log { suppressed_before } = self.guest_log.check(Instant::now()) {
                info!(iface = %self.iface, suppressed_before, "{why}");
            }
        } else {
            debug!(iface = %self.iface, "request not answered: {why}");
        }
    }
}

/// The client MAC of a reply, for logs.
fn mac_of(reply: &dhcproto::v4::Message) -> String {
    match MacAddr::from_slice(reply.chaddr()) {
        Some(mac) => mac.to_string(),
        None => "?".to_string(),
    }
}
