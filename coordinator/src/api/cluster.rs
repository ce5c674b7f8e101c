//! `Cluster`: the gRPC adapter of [`crate::operations::cluster`].

use nubo_common::proto::{self as pb, cluster_server};
use tonic::Request;

use super::{reply, R};
use crate::operations::cluster;
use crate::state::Ctx;

#[tonic::async_trait]
impl cluster_server::Cluster for Ctx {
    async fn status(&self, _r: Request<pb::Empty>) -> R<pb::ClusterStatus> {
        reply(cluster::status(self).await.map(|s| pb::ClusterStatus {
            coordinator_id: s.coordinator_id,
            is_leader: s.is_leader,
            leader_id: s.leader_id,
            version: s.version,
            evacuation_enabled: s.evacuation_enabled,
        }))
    }
}
