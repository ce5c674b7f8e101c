//! How to reach etcd.

use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetryPolicy;

/// TLS material for etcd's `--client-cert-auth` (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that signed the etcd server certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

/// The connection settings of an [`crate::Etcd`].
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://ip:port`, `https://…`, or
    /// `ip:port`, then http unless `tls` is set).
    pub endpoints: Vec<String>,
    /// Client TLS (certificates of `[etcd_tls]`).
    pub tls: Option<TlsFiles>,
    /// Bound of one TCP/TLS connection attempt to a member.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval and timeout: a member that stops
    /// answering (frozen, partitioned) is dropped after about their sum.
    pub keep_alive: (Duration, Duration),
    /// Send requests to the raft leader (writes and linearizable reads then
    /// skip the follower → leader hop). Otherwise a member is chosen at
    /// random and kept while it works, which spreads many clients (agents)
    /// over the members.
    pub prefer_leader: bool,
    /// How often every member is probed with `Maintenance.Status` when
    /// `prefer_leader` is set or a member is down.
    pub probe_interval: Duration,
    /// Bound of one probe.
    pub probe_timeout: Duration,
    /// Longest wait for a new leader after the leader's member was lost
    /// (requests are held rather than sent to followers that still follow
    /// the dead leader; then they go anyway).
    pub leader_hold: Duration,
    /// Retries of every operation.
    pub retry: RetryPolicy,
}

impl EtcdConfig {
    /// Defaults for `endpoints`: connect 2 s, keep-alive 2 s/2 s, probes
    /// every second (500 ms bound), leader hold 3 s, [`RetryPolicy::default`].
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            keep_alive: (Duration::from_secs(2), Duration::from_secs(2)),
            prefer_leader: false,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            leader_hold: Duration::from_secs(3),
            retry: RetryPolicy::default(),
        }
    }

    /// With client TLS.
    pub fn with_tls(mut self, tls: Option<TlsFiles>) -> Self {
        self.tls = tls;
        self
    }

    /// Prefer the raft leader (see [`EtcdConfig::prefer_leader`]).
    pub fn prefer_leader(mut self, yes: bool) -> Self {
        self.prefer_leader = yes;
        self
    }

    /// With another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}
