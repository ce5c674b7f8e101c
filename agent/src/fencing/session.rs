//! This agent's etcd session as seen by the others: the channels the
//! registration feeds ([`SessionSenders`]) and the reading side
//! ([`SessionWatch`]) that the node API serves as `GET /v1/etcd-status`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nubo_common::model::{EtcdSessionStatus, FencePhase};
use nubo_common::NodeName;
use tokio::sync::watch;

use super::gate::FenceGate;
use super::rules::{self, Clock, LeaseAck};
use crate::config::AgentConfig;

/// The writing ends of the etcd session channels, for
/// [`crate::node::registration::Liveness`].
pub struct SessionSenders {
    /// Acknowledged keep-alives ([`crate::node::registration::Liveness::with_acks`]).
    pub acks: watch::Sender<Option<LeaseAck>>,
    /// Failed attempts ([`crate::node::registration::Liveness::with_failures`]).
    pub failures: watch::Sender<Option<Instant>>,
}

/// The reading side of this agent's etcd session: whether it is healthy
/// ([`rules::session_healthy`]) and, once [`super::setup`] ran, the fencing
/// phase. Cheap to clone; the node API serves [`SessionWatch::status`].
#[derive(Clone)]
pub struct SessionWatch {
    node: NodeName,
    pub(super) acks: watch::Receiver<Option<LeaseAck>>,
    failures: watch::Receiver<Option<Instant>>,
    healthy_within: Duration,
    clock: Arc<dyn Clock>,
    pub(super) gate: Arc<OnceLock<Arc<FenceGate>>>,
}

/// The session channels of the agent configured by `cfg`.
pub fn session(cfg: &AgentConfig, clock: Arc<dyn Clock>) -> (SessionSenders, SessionWatch) {
    let (acks_tx, acks) = watch::channel(None);
    let (failures_tx, failures) = watch::channel(None);
    (
        SessionSenders {
            acks: acks_tx,
            failures: failures_tx,
        },
        SessionWatch {
            node: cfg.node.clone(),
            acks,
            failures,
            healthy_within: cfg.session_healthy_within(),
            clock,
            gate: Arc::new(OnceLock::new()),
        },
    )
}

impl SessionWatch {
    /// Whether this agent's keep-alives are being acknowledged now.
    pub fn healthy(&self) -> bool {
        rules::session_healthy(
            self.clock.now(),
            *self.acks.borrow(),
            *self.failures.borrow(),
            self.healthy_within,
        )
    }

    /// The answer of `GET /v1/etcd-status`.
    pub fn status(&self) -> EtcdSessionStatus {
        let now = self.clock.now();
        let ack = *self.acks.borrow();
        EtcdSessionStatus {
            node: self.node.clone(),
            healthy: self.healthy(),
            last_ack_age_ms: ack.map(|a| {
                u64::try_from(now.saturating_duration_since(a.sent).as_millis()).unwrap_or(u64::MAX)
            }),
            phase: self
                .gate
                .get()
                .map_or(FencePhase::Normal, |g| g.reported_phase()),
        }
    }
}
