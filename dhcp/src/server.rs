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

use crate::l2::{ipv4_udp, L2Sender};
use crate::lease::LeaseTable;
use crate::packet::{decode_request, encode, peek_chaddr, MAX_PACKET};
use crate::ratelimit::{Event, Quota, Quotas, Tally};
use crate::respond::{decide, reply_destination, Decision, Silence, CLIENT_PORT};
use crate::socket::{bind_device_socket, SERVER_PORT};

/// How often what guests caused (drops, NAKs, errors) is summed up in one
/// log line, and quotas of departed MACs forgotten.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of one server, readable while it runs: plain atomics, so that
/// an owner (e.g. the agent's metrics) can keep them across restarts of the
/// server ([`DhcpServer::with_counters`]) and read them at any time
/// ([`DhcpCounters::snapshot`]) without this crate knowing who reads.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    received: AtomicU64,
    dropped: AtomicU64,
    ignored: AtomicU64,
    limited: AtomicU64,
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
    /// Requests dropped because their MAC was over its quota.
    pub limited: u64,
    /// DHCPOFFERs sent.
    pub offers: u64,
    /// DHCPACKs sent (REQUEST and INFORM).
    pub acks: u64,
    /// DHCPNAKs sent.
    pub naks: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
}

impl DhcpCounters {
    /// The counters now.
    pub fn snapshot(&self) -> DhcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DhcpStats {
            received: get(&self.received),
            dropped: get(&self.dropped),
            ignored: get(&self.ignored),
            limited: get(&self.limited),
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
    sender: L2Sender,
    quota: Quota,
    counters: Arc<DhcpCounters>,
}

/// Handle on a spawned server. Dropping it also stops the server.
#[derive(Debug)]
pub struct DhcpHandle {
    iface: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    counters: Arc<DhcpCounters>,
}

impl DhcpServer {
    /// Opens the server's sockets on `iface` in the calling thread's
    /// network namespace: UDP 0.0.0.0:67 (SO_BINDTODEVICE, SO_REUSEADDR) to
    /// receive, and a send-only `AF_PACKET` socket for replies to the
    /// client's MAC ([`crate::l2`]). `server_id` is the address the bridge
    /// owns (option 54 and the replies' source, normally
    /// [`crate::METADATA_IP`]); `table` is read live on every request. Each
    /// client MAC gets the default [`Quota`] ([`DhcpServer::with_quota`]).
    pub fn bind(iface: &str, server_id: Ipv4Addr, table: LeaseTable) -> Result<Self, DhcpError> {
        let socket = bind_device_socket(iface)?;
        let sender = L2Sender::open(iface)?;
        debug!(iface, %server_id, "DHCP sockets bound");
        Ok(Self {
            iface: iface.to_string(),
            server_id,
            table,
            socket,
            sender,
            quota: Quota::default(),
            counters: Arc::default(),
        })
    }

    /// Sets the requests answered per client MAC (the excess is dropped
    /// before decoding, and counted in [`DhcpStats::limited`]).
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Counts into `counters` instead of fresh ones (shared with whoever
    /// reads them; they keep counting across servers).
    pub fn with_counters(mut self, counters: Arc<DhcpCounters>) -> Self {
        self.counters = counters;
        self
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
            (socket, self.sender),
            self.quota,
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
            (socket, self.sender),
            self.quota,
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
    sender: L2Sender,
    counters: Arc<DhcpCounters>,
    /// A token bucket per client MAC.
    quotas: Quotas,
    /// What guests caused, summed up once per [`LOG_INTERVAL`].
    tally: Tally,
}

impl Worker {
    fn new(
        iface: String,
        server_id: Ipv4Addr,
        table: LeaseTable,
        (socket, sender): (UdpSocket, L2Sender),
        quota: Quota,
        counters: Arc<DhcpCounters>,
    ) -> Self {
        Self {
            iface,
            server_id,
            table,
            socket,
            sender,
            counters,
            quotas: Quotas::new(quota),
            tally: Tally::new(LOG_INTERVAL),
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        info!(iface = %self.iface, server_id = %self.server_id, "DHCP server running");
        tokio::pin!(shutdown);
        let mut summary = tokio::time::interval(LOG_INTERVAL);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One byte more than accepted, so oversized datagrams are detectable.
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            let received = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = summary.tick() => {
                    self.summarise();
                    continue;
                }
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((len, peer)) => {
                    let datagram = buf.get(..len).unwrap_or(&buf[..]);
                    self.handle(datagram, peer);
                }
                Err(e) => {
                    self.tally.note(Event::IoError, Instant::now(), || {
                        format!("receive failed: {e}")
                    });
                    // Do not spin on a persistent error (e.g. device gone).
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        self.summarise_now();
        info!(iface = %self.iface, "DHCP server stopped");
    }

    /// Logs the interval's summary (if it is over and anything happened)
    /// and forgets the quotas of MACs that left the table.
    fn summarise(&mut self) {
        if let Some(s) = self.tally.flush(Instant::now()) {
            warn!(
                iface = %self.iface,
                interval_s = LOG_INTERVAL.as_secs(),
                counts = %s.fields(),
                first = s.first.as_deref().unwrap_or(""),
                "DHCP requests dropped or refused"
            );
        }
        let table = self.table.read();
        self.quotas.retain(|m| table.contains_key(m));
    }

    fn summarise_now(&mut self) {
        if let Some(s) = self.tally.flush(Instant::now() + LOG_INTERVAL) {
            warn!(iface = %self.iface, counts = %s.fields(), first = s.first.as_deref().unwrap_or(""), "DHCP requests dropped or refused");
        }
    }

    fn handle(&mut self, datagram: &[u8], peer: SocketAddr) {
        bump(&self.counters.received);
        let now = Instant::now();
        // Cheap checks first: unknown and over-quota MACs cost a lookup.
        if let Some(mac) = peek_chaddr(datagram) {
            if !self.table.read().contains_key(&mac) {
                bump(&self.counters.ignored);
                self.tally
                    .note(Event::UnknownMac, now, || format!("unknown MAC {mac}"));
                return;
            }
            if !self.quotas.allow(mac, now) {
                bump(&self.counters.limited);
                self.tally
                    .note(Event::OverQuota, now, || format!("{mac} over its quota"));
                return;
            }
        }
        let req = match decode_request(datagram) {
            Ok(req) => req,
            Err(reason) => {
                bump(&self.counters.dropped);
                self.tally.note(Event::Malformed, now, || {
                    format!("bad datagram from {peer}: {reason}")
                });
                return;
            }
        };
        // The read guard is released before anything else.
        let decision = decide(&self.table.read(), &req, self.server_id);
        let reply = match decision {
            Decision::Reply(reply) => reply,
            Decision::Silent(why) => {
                bump(&self.counters.ignored);
                self.note_silence(&why, now);
                return;
            }
        };
        let kind = reply.opts().msg_type();
        match kind {
            Some(MessageType::Offer) => bump(&self.counters.offers),
            Some(MessageType::Ack) => bump(&self.counters.acks),
            Some(MessageType::Nak) => {
                bump(&self.counters.naks);
                self.tally
                    .note(Event::Nak, now, || format!("DHCPNAK to {}", mac_of(&reply)));
            }
            _ => {}
        }
        self.send(&reply, now);
    }

    /// Sends `reply` to the client's MAC (see [`crate::l2`]).
    fn send(&mut self, reply: &dhcproto::v4::Message, now: Instant) {
        let Some(mac) = MacAddr::from_slice(reply.chaddr()) else {
            bump(&self.counters.send_errors);
            return;
        };
        let dest = reply_destination(reply);
        let packet = encode(reply).map_err(|e| e.to_string()).and_then(|bytes| {
            ipv4_udp(self.server_id, SERVER_PORT, *dest.ip(), CLIENT_PORT, &bytes)
                .ok_or_else(|| "reply too large".to_string())
        });
        let result = match packet {
            Ok(packet) => self.sender.send(mac, &packet).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                debug!(iface = %self.iface, %mac, yiaddr = %reply.yiaddr(), %dest, "reply sent")
            }
            Err(e) => {
                bump(&self.counters.send_errors);
                self.tally.note(Event::IoError, now, || {
                    format!("cannot send the reply to {mac} ({dest}): {e}")
                });
            }
        }
    }

    fn note_silence(&mut self, why: &Silence, now: Instant) {
        match why {
            Silence::UnknownMac(_) => self.tally.note(Event::UnknownMac, now, || why.to_string()),
            Silence::Released(..) | Silence::Declined(..) | Silence::OtherServer(..) => {
                self.tally.note(Event::Unanswered, now, || why.to_string())
            }
            _ => {
                self.tally.note(Event::Malformed, now, || why.to_string());
            }
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
