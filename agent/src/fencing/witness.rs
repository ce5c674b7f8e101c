//! The peer witness: while this agent's etcd session is not healthy, it
//! asks the other nodes about theirs, so that a control plane down for
//! everyone holds the node instead of fencing it.

use std::sync::Arc;
use std::time::Duration;

use nubo_common::NodeName;
use nubo_nodeapi::NodeApiClient;
use tokio::sync::watch;
use tracing::{debug, info};

use super::rules::{Clock, WitnessRound};
use super::session::SessionWatch;
use crate::state::mirror::MirrorHandle;

/// Pause between two peer witness rounds while this node's etcd session
/// is not healthy (no probing otherwise).
pub const PEER_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A witness round counts for this long after it started: one pause and two
/// probe timeouts, so a round is always replaced before it goes stale.
pub fn witness_max_age(probe_timeout: Duration) -> Duration {
    PEER_PROBE_INTERVAL + probe_timeout * 2
}

/// The peer witness: while this agent's etcd session is not healthy, asks
/// every other node of the cache (its node API, `GET /v1/etcd-status`, each
/// bounded by the probe timeout) and publishes the [`WitnessRound`]s the
/// gate decides on.
pub struct Witness {
    pub(super) node: NodeName,
    pub(super) mirror: MirrorHandle,
    pub(super) session: SessionWatch,
    pub(super) rounds: watch::Sender<Option<WitnessRound>>,
    pub(super) timeout: Duration,
    pub(super) clock: Arc<dyn Clock>,
    /// Presents this node's certificate to the peers' node APIs.
    pub(super) client: NodeApiClient,
}

impl Witness {
    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut last: Option<(usize, usize, usize)> = None;
        loop {
            tokio::time::sleep(PEER_PROBE_INTERVAL).await;
            if self.session.healthy() {
                last = None;
                continue;
            }
            let peers: Vec<(NodeName, Option<String>)> = {
                let cache = self.mirror.cache.read().await;
                cache
                    .nodes
                    .values()
                    .filter(|n| n.name != self.node)
                    .map(|n| (n.name.clone(), n.node_api().map(str::to_owned)))
                    .collect()
            };
            let started = self.clock.now();
            let client = &self.client;
            let timeout = self.timeout;
            let answers = futures::future::join_all(peers.iter().map(|(name, api)| async move {
                let api = api.as_deref()?;
                let st = client
                    .etcd_status(name, api, timeout)
                    .await
                    .map_err(
                        |e| debug!(peer = %name, %api, error = %e, "peer witness probe failed"),
                    )
                    .ok()?;
                // An answer from another node (address reused) is no answer.
                (st.node == *name).then_some(st.healthy)
            }))
            .await;
            let round = WitnessRound {
                started,
                asked: peers.len(),
                answered: answers.iter().flatten().count(),
                healthy: answers.iter().flatten().filter(|h| **h).count(),
            };
            let summary = (round.asked, round.answered, round.healthy);
            if last != Some(summary) {
                info!(node = %self.node, asked = round.asked, answered = round.answered,
                    healthy = round.healthy, control_plane_down = round.control_plane_down(),
                    "peer witness: etcd sessions of the other nodes");
                last = Some(summary);
            }
            self.rounds.send_replace(Some(round));
        }
    }
}
