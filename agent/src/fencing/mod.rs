//! Self-fencing (`docs/failure-handling.md`, "Agent side"), one job per
//! module:
//!
//! - [`rules`]: the decisions, pure (when to fence, hold, recover; what to
//!   freeze; what to do with each instance on return);
//! - [`gate`]: the [`FenceGate`] that applies them at run time;
//! - [`gated`]: the [`GatedHypervisor`] and [`GatedSubsystem`] wrappers that
//!   keep compute from booting anything while fenced;
//! - [`task`]: the [`Fencer`] task, which [`freeze`]s instances while fenced
//!   and runs the [`recovery`] on return;
//! - [`mod@session`]: this agent's etcd session as the others see it
//!   ([`SessionWatch`], node API `GET /v1/etcd-status`);
//! - [`witness`]: the peer [`Witness`] asking the others about theirs.
//!
//! [`setup`] builds them for the agent.

pub mod freeze;
pub mod gate;
pub mod gated;
pub mod recovery;
pub mod rules;
pub mod session;
pub mod task;
pub mod witness;

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::compute::hypervisor::Hypervisor;
use crate::config::AgentConfig;
use crate::state::mirror::MirrorHandle;

pub use gate::{FenceCounters, FenceGate};
pub use gated::{GatedHypervisor, GatedSubsystem};
pub use rules::{Clock, ManualClock, MonotonicClock};
pub use session::{session, SessionSenders, SessionWatch};
pub use task::Fencer;
pub use witness::{witness_max_age, Witness};

/// Everything [`crate::agent`] needs: the gate, the gated driver for
/// compute, and the fencer task (to spawn).
pub struct Fencing {
    /// The shared gate.
    pub gate: Arc<FenceGate>,
    /// The driver compute must use.
    pub hypervisor: Arc<dyn Hypervisor>,
    /// The task to spawn.
    pub task: Fencer,
}

/// The client of the peers' node APIs: this node's certificate when it
/// has one. Unusable TLS files leave a plain client, whose refusals of
/// the peers' TLS APIs say why (the node API itself logs the file error).
fn peer_client(cfg: &AgentConfig) -> nubo_nodeapi::NodeApiClient {
    nubo_nodeapi::NodeApiClient::new(cfg.node_api_tls().as_ref()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "peer witness: TLS files unusable, probing without a certificate");
        nubo_nodeapi::NodeApiClient::plain()
    })
}

/// Builds the fencing pieces for the agent configured by `cfg`, fed by the
/// etcd session `session` (whose node API answers get the gate's phase).
pub fn setup(
    cfg: &AgentConfig,
    hv: Arc<dyn Hypervisor>,
    mirror: MirrorHandle,
    session: SessionWatch,
    clock: Arc<dyn Clock>,
) -> Fencing {
    let (witness, rounds) = if cfg.peer_witness {
        let (tx, rx) = watch::channel(None);
        let w = Witness {
            node: cfg.node.clone(),
            mirror: mirror.clone(),
            session: session.clone(),
            rounds: tx,
            timeout: cfg.peer_probe_timeout,
            clock: clock.clone(),
            client: peer_client(cfg),
        };
        (Some(w), Some((rx, witness_max_age(cfg.peer_probe_timeout))))
    } else {
        (None, None)
    };
    let gate = FenceGate::with_witness(
        cfg.node.clone(),
        cfg.self_fence_after(),
        clock,
        session.acks.clone(),
        rounds,
    );
    // Only the first gate of a session is reported (one per agent).
    let _ = session.gate.set(gate.clone());
    info!(self_fence_after = ?cfg.self_fence_after(), lease_ttl = ?cfg.lease_ttl,
        peer_witness = cfg.peer_witness, peer_probe_timeout = ?cfg.peer_probe_timeout,
        "self-fencing armed");
    let mut task = Fencer::new(cfg, gate.clone(), hv.clone(), mirror);
    task.witness = witness;
    Fencing {
        hypervisor: Arc::new(GatedHypervisor::new(hv, gate.clone())),
        task,
        gate,
    }
}
