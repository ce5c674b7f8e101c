//! Cluster status: this coordinator, the leader, the evacuation switch.

use nubo_common::proto::{self as pb, cluster_server};
use tonic::{Request, Response, Status};

use super::Ctx;

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl cluster_server::Cluster for Ctx {
    async fn status(&self, _r: Request<pb::Empty>) -> R<pb::ClusterStatus> {
        let evacuation_enabled = crate::failover::evacuation_enabled(self)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::ClusterStatus {
            coordinator_id: self.cfg.id.clone(),
            is_leader: self.leader.is_leader(),
            leader_id: self.leader.leader_id(),
            version: env!("CARGO_PKG_VERSION").into(),
            evacuation_enabled,
        }))
    }
}
