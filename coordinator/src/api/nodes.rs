//! `Nodes`: the gRPC adapter of [`crate::operations::nodes`].

use nubo_common::proto::{self as pb, nodes_server};
use nubo_common::InstanceId;
use tonic::Request;

use super::{convert, page, reply, R};
use crate::error::ApiResult;
use crate::operations::moves::Moved;
use crate::operations::nodes::{self, DrainOutcome, MoveOutcome, NodeView};
use crate::state::Ctx;

fn result(id: InstanceId, r: ApiResult<Moved>) -> pb::MoveResult {
    match r {
        Ok(Moved::To(n)) => pb::MoveResult {
            server_id: id.to_string(),
            to_node: n.to_string(),
            ..Default::default()
        },
        Ok(Moved::AlreadyGone) => pb::MoveResult {
            server_id: id.to_string(),
            error: "no longer on this node (moved or deleted meanwhile)".into(),
            ..Default::default()
        },
        Err(e) => pb::MoveResult {
            server_id: id.to_string(),
            error: e.to_string(),
            ..Default::default()
        },
    }
}

fn drained((id, r, m): DrainOutcome) -> pb::MoveResult {
    let mut out = result(id, r);
    if let Some(m) = m {
        out.migration_id = m.id.to_string();
        out.downtime_ms = m.downtime_ms;
    }
    out
}

fn results(r: Vec<MoveOutcome>) -> Vec<pb::MoveResult> {
    r.into_iter().map(|(id, r)| result(id, r)).collect()
}

fn node_pb(ctx: &Ctx, (name, st): &NodeView) -> pb::Node {
    convert::node(name, st, ctx.placement.ratios())
}

#[tonic::async_trait]
impl nodes_server::Nodes for Ctx {
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Node> {
        let go = async {
            let n = nodes::get(self, &r.into_inner().r#ref)?;
            let usage = crate::operations::usage::of_node(self, &n.0).await;
            let mut pb = node_pb(self, &n);
            pb.observed_usage = usage.as_ref().map(convert::node_observed_usage);
            Ok(pb)
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListNodesResponse> {
        let p = nodes::list(self, &page(&r.into_inner()));
        reply(p.map(|p| pb::ListNodesResponse {
            nodes: p.items.iter().map(|n| node_pb(self, n)).collect(),
            next_page_token: p.next,
        }))
    }
    async fn set_enabled(&self, r: Request<pb::SetNodeEnabledRequest>) -> R<pb::Node> {
        let r = r.into_inner();
        let n = nodes::set_enabled(self, &r.name, r.enabled).await;
        reply(n.map(|n| node_pb(self, &n)))
    }
    async fn evacuate(&self, r: Request<pb::EvacuateNodeRequest>) -> R<pb::EvacuateNodeResponse> {
        let r = r.into_inner();
        let done = nodes::evacuate(self, &r.name, r.force).await;
        reply(done.map(|d| pb::EvacuateNodeResponse {
            results: results(d),
        }))
    }
    async fn drain(&self, r: Request<pb::DrainNodeRequest>) -> R<pb::DrainNodeResponse> {
        let r = r.into_inner();
        let done = nodes::drain(self, &r.name, r.stop_timeout_secs, r.live).await;
        reply(done.map(|d| pb::DrainNodeResponse {
            results: d.into_iter().map(drained).collect(),
        }))
    }
    async fn set_evacuation_enabled(
        &self,
        r: Request<pb::SetEvacuationEnabledRequest>,
    ) -> R<pb::EvacuationSettings> {
        let enabled = nodes::set_evacuation_enabled(self, r.into_inner().enabled).await;
        reply(enabled.map(|enabled| pb::EvacuationSettings { enabled }))
    }
}
