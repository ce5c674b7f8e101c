//! Node registration and liveness.
//!
//! `/nodes/<node>` describes the node (capacity from `sysinfo` or the
//! overrides); `/nodes/<node>/alive` is bound to an etcd lease of TTL
//! `--lease-ttl`, kept alive every TTL/3 (each attempt bounded by TTL/6, a
//! failed one retried after [`RETRY_AFTER_FAILED_KEEPALIVE`]). If the lease is
//! lost (etcd was unreachable for longer than the TTL), a new one is granted
//! and `alive` written again: the agent never exits because of it.
//!
//! Every acknowledged keep-alive (and every grant) is published as a
//! [`LeaseAck`] carrying the monotonic time its request was *sent*: that is
//! what [`crate::fencing`] measures to self-fence before the lease can expire.
//! A new lease is published only after `alive` has been written on it.
//! Failed attempts are published too (the time they were made), so that the
//! agent can tell its peers at once that its session is not working.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use nubo_common::keys;
use nubo_common::model::{self, Node, NodeAlive, Resources};
use nubo_store::Etcd;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::fencing::rules::LeaseAck;
use crate::store::{self, Backoff, StoreError};

/// Delay before retrying a keep-alive that failed or timed out (much less
/// than the period, so one lost keep-alive does not make the agent fence).
pub const RETRY_AFTER_FAILED_KEEPALIVE: Duration = Duration::from_millis(100);

/// The agent's version, recorded in the node record.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The node's capacity: overrides where given, `sysinfo` otherwise (disk =
/// size of the filesystem holding `state_dir`).
pub fn capacity(cfg: &AgentConfig) -> Resources {
    let need_sys = cfg.capacity.vcpus.is_none() || cfg.capacity.ram_mb.is_none();
    let sys = need_sys.then(crate::telemetry::node_usage::system);
    let vcpus = cfg.capacity.vcpus.unwrap_or_else(|| {
        sys.as_ref()
            .map(|s| u32::try_from(s.cpus().len()).unwrap_or(u32::MAX))
            .unwrap_or_default()
    });
    let ram_mb = cfg.capacity.ram_mb.unwrap_or_else(|| {
        sys.as_ref()
            .map(|s| s.total_memory() / MIB)
            .unwrap_or_default()
    });
    let disk_gb = cfg
        .capacity
        .disk_gb
        .unwrap_or_else(|| disk_size_of(&cfg.state_dir) / GIB);
    Resources {
        vcpus,
        ram_mb,
        disk_gb,
    }
}

/// Total size in bytes of the filesystem whose mount point is the longest
/// prefix of `path` (0 if unknown).
fn disk_size_of(path: &Path) -> u64 {
    let disks = sysinfo::Disks::new_with_refreshed_list();
    crate::telemetry::node_usage::filesystem_of(&disks, path)
        .map(|(_, total, _)| total)
        .unwrap_or_default()
}

/// The node record for `cfg` with the given capacity.
pub fn node_record(cfg: &AgentConfig, capacity: Resources) -> Node {
    let mut labels = cfg.labels.clone();
    if let Some(ip) = cfg.storage_ip {
        labels.insert(model::STORAGE_IP_LABEL.to_string(), ip.to_string());
    }
    Node {
        name: cfg.node.clone(),
        underlay_ip: cfg.underlay_ip,
        underlay_mtu: cfg.underlay_mtu,
        availability_zone: cfg.availability_zone.clone(),
        labels,
        capacity,
        agent_version: AGENT_VERSION.to_string(),
        registered_at: model::now(),
    }
}

/// Two records describe the same node (registration time aside).
fn same_node(a: &Node, b: &Node) -> bool {
    Node {
        registered_at: b.registered_at,
        ..a.clone()
    } == *b
}

/// Writes `/nodes/<node>` unless an identical record is already there.
pub async fn put_node(etcd: &Etcd, node: &Node) -> Result<(), StoreError> {
    let key = keys::node(&node.name);
    if let Some(kv) = etcd.get_kv(&key).await? {
        if let Ok(existing) = model::decode::<Node>(&key, kv.value()) {
            if same_node(node, &existing) {
                return Ok(());
            }
        }
    }
    etcd.put(key.as_str(), model::encode(node), None).await?;
    info!(key, "node record written");
    Ok(())
}

/// Holds the liveness lease forever. Signals `registered` (true) once the
/// node record and `alive` key are written.
pub struct Liveness {
    etcd: Etcd,
    cfg: AgentConfig,
    since: model::Timestamp,
    registered: watch::Sender<bool>,
    acks: Option<watch::Sender<Option<LeaseAck>>>,
    failures: Option<watch::Sender<Option<Instant>>>,
}

/// The lease and its keep-alive stream.
struct Held {
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Liveness {
    /// A liveness task for the agent configured by `cfg`.
    pub fn new(etcd: Etcd, cfg: AgentConfig, registered: watch::Sender<bool>) -> Self {
        Self {
            etcd,
            cfg,
            since: model::now(),
            registered,
            acks: None,
            failures: None,
        }
    }

    /// Publishes every acknowledged keep-alive on `acks`.
    pub fn with_acks(mut self, acks: watch::Sender<Option<LeaseAck>>) -> Self {
        self.acks = Some(acks);
        self
    }

    /// Publishes the time of every failed keep-alive or registration
    /// attempt on `failures`.
    pub fn with_failures(mut self, failures: watch::Sender<Option<Instant>>) -> Self {
        self.failures = Some(failures);
        self
    }

    fn failed(&self) {
        if let Some(tx) = &self.failures {
            tx.send_replace(Some(Instant::now()));
        }
    }

    fn acked(&self, sent: Instant, lease: i64) {
        if let Some(tx) = &self.acks {
            tx.send_replace(Some(LeaseAck { sent, lease }));
        }
    }

    /// Bound of one keep-alive round trip: half the keep-alive period.
    fn keepalive_timeout(&self) -> Duration {
        (self.cfg.lease_ttl / 6).max(Duration::from_millis(150))
    }

    /// Grants a lease, writes the node record and `alive` on it.
    async fn register(&self) -> Result<i64, StoreError> {
        let node = node_record(&self.cfg, capacity(&self.cfg));
        put_node(&self.etcd, &node).await?;
        let ttl = i64::try_from(self.cfg.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut lc = self.etcd.client().lease_client();
        let sent = Instant::now();
        let lease = store::bounded(lc.grant(ttl, None)).await?.id();
        let alive = NodeAlive {
            lease,
            since: self.since,
            pid: std::process::id(),
        };
        self.etcd
            .put(
                keys::node_alive(&self.cfg.node),
                model::encode(&alive),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        info!(lease, ttl, "registered; liveness lease held");
        self.acked(sent, lease);
        self.registered.send_replace(true);
        Ok(lease)
    }

    /// One keep-alive round trip. `Ok(false)` = the lease no longer exists.
    async fn refresh(&self, held: &mut Held) -> Result<bool, StoreError> {
        let Some((keeper, stream)) = held.stream.as_mut() else {
            // Opening the stream is itself a keep-alive; the client reports a
            // lease that is gone as an error, so ask etcd what happened.
            let mut lc = self.etcd.client().lease_client();
            let sent = Instant::now();
            let timeout = self.keepalive_timeout();
            let opened = match tokio::time::timeout(timeout, lc.keep_alive(held.id)).await {
                Ok(r) => r.map_err(StoreError::from),
                Err(_) => Err(StoreError::Timeout(timeout)),
            };
            return match opened {
                // The client waits for the first answer and rejects a TTL ≤ 0.
                Ok(s) => {
                    held.stream = Some(s);
                    self.acked(sent, held.id);
                    Ok(true)
                }
                Err(e) => match self.lease_exists(held.id).await? {
                    true => Err(e),
                    false => Ok(false),
                },
            };
        };
        let sent = Instant::now();
        let r = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let timeout = self.keepalive_timeout();
        let r = match tokio::time::timeout(timeout, r).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        match r {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                self.acked(sent, held.id);
                Ok(true)
            }
            Ok(Some(_)) => Ok(false),
            Ok(None) => {
                held.stream = None;
                Err(StoreError::Etcd(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream closed".into(),
                )))
            }
            Err(e) => {
                held.stream = None;
                Err(e)
            }
        }
    }

    /// Whether etcd still knows the lease (`TimeToLive` answers -1 when not).
    async fn lease_exists(&self, id: i64) -> Result<bool, StoreError> {
        let mut lc = self.etcd.client().lease_client();
        let r = store::bounded(lc.time_to_live(id, None)).await?;
        Ok(r.ttl() > 0)
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let period = (self.cfg.lease_ttl / 3).max(Duration::from_millis(300));
        let mut backoff = Backoff::new(store::first_backoff(), period);
        let mut held: Option<Held> = None;
        // Keep-alive failures are retried every 100 ms while etcd is away:
        // log the first at warn, then a summary at most every 5 s.
        let mut failed_keepalives: u64 = 0;
        let mut last_warn: Option<std::time::Instant> = None;
        loop {
            match held.as_mut() {
                None => match self.register().await {
                    Ok(id) => {
                        held = Some(Held { id, stream: None });
                        backoff.reset();
                    }
                    Err(e) => {
                        self.failed();
                        let d = backoff.next_delay();
                        warn!(error = %e, retry_in = ?d, "registration failed; retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                },
                Some(h) => match self.refresh(h).await {
                    Ok(true) => {
                        if failed_keepalives > 0 {
                            info!(
                                lease = h.id,
                                failed = failed_keepalives,
                                "lease keep-alive recovered"
                            );
                            failed_keepalives = 0;
                            last_warn = None;
                        }
                    }
                    Ok(false) => {
                        self.failed();
                        warn!(lease = h.id, "liveness lease expired; granting a new one");
                        held = None;
                        continue;
                    }
                    Err(e) => {
                        self.failed();
                        failed_keepalives += 1;
                        if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                            warn!(lease = h.id, error = %e, failed = failed_keepalives, "lease keep-alive failing; retrying every 100 ms");
                            last_warn = Some(std::time::Instant::now());
                        } else {
                            debug!(lease = h.id, error = %e, "lease keep-alive failed");
                        }
                        tokio::time::sleep(RETRY_AFTER_FAILED_KEEPALIVE).await;
                        continue;
                    }
                },
            }
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CapacityOverride;
    use crate::testutil::node_name;

    #[test]
    fn overrides_win_and_sysinfo_fills_the_rest() {
        let mut cfg = AgentConfig::new(node_name("n1"), vec![]);
        cfg.state_dir = std::env::temp_dir();
        cfg.capacity = CapacityOverride {
            vcpus: Some(64),
            ram_mb: None,
            disk_gb: Some(1000),
        };
        let c = capacity(&cfg);
        assert_eq!(c.vcpus, 64);
        assert_eq!(c.disk_gb, 1000);
        assert!(c.ram_mb > 0, "sysinfo memory");
        cfg.capacity = CapacityOverride::default();
        let c = capacity(&cfg);
        assert!(c.vcpus > 0);
        assert!(c.disk_gb > 0, "disk of {:?}", cfg.state_dir);
    }

    #[test]
    fn registration_time_alone_does_not_make_a_new_record() {
        let cfg = AgentConfig::new(node_name("n1"), vec![]);
        let a = node_record(&cfg, Resources::default());
        let mut b = a.clone();
        b.registered_at = a.registered_at + chrono::Duration::seconds(5);
        assert!(same_node(&a, &b));
        b.underlay_mtu = 9000;
        assert!(!same_node(&a, &b));
    }
}
