//! Nodes: the view of hypervisors, their admin switch (evacuation and
//! drain: `failover`).

use etcd_client::Txn;
use nubo_common::keys::{self};
use nubo_common::model::NodeAdmin;
use nubo_common::proto::{self as pb, nodes_server};
use nubo_common::NodeName;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use nubo_store::kv::put;

type R<T> = Result<Response<T>, Status>;

impl Ctx {
    pub(crate) fn node_name(r: &str) -> ApiResult<NodeName> {
        NodeName::new(r.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
    }

    fn get_node(&self, r: &str) -> ApiResult<pb::Node> {
        let name = Self::node_name(r)?;
        match self.view.get(&name) {
            Some(st) if st.info.is_some() => Ok(convert::node(&name, &st, self.placement.ratios())),
            _ => Err(ApiError::NotFound(format!(
                "node {:?} not found",
                name.as_str()
            ))),
        }
    }

    fn list_nodes(&self, r: &pb::ListRequest) -> ApiResult<pb::ListNodesResponse> {
        let size = crate::paging::page_size_of(r.page_size)?;
        let after = match crate::paging::decode_token(&r.page_token, &keys::nodes_prefix())? {
            Some(raw) => {
                let k = String::from_utf8_lossy(&raw).into_owned();
                match keys::parse(&k) {
                    Some(keys::Key::Node(n)) => Some(n),
                    _ => {
                        return Err(ApiError::InvalidArgument(
                            "page_token is not valid for this list".into(),
                        ))
                    }
                }
            }
            None => None,
        };
        let (page, more) = self.view.page(after.as_ref(), size);
        let next = match (more, page.last()) {
            (true, Some((n, _))) => crate::paging::encode_token(keys::node(n).as_bytes()),
            _ => String::new(),
        };
        Ok(pb::ListNodesResponse {
            nodes: page
                .iter()
                .map(|(n, st)| convert::node(n, st, self.placement.ratios()))
                .collect(),
            next_page_token: next,
        })
    }

    async fn set_node_enabled(&self, r: pb::SetNodeEnabledRequest) -> ApiResult<pb::Node> {
        let name = Self::node_name(&r.name)?;
        if self.view.get(&name).and_then(|s| s.info).is_none() {
            return Err(ApiError::NotFound(format!(
                "node {:?} not found",
                name.as_str()
            )));
        }
        let admin = NodeAdmin {
            enabled: r.enabled,
            reason: (!r.enabled).then(|| "disabled through the API".to_string()),
        };
        self.store
            .txn(Txn::new().and_then([put(&keys::node_admin(&name), &admin)]))
            .await?;
        self.view.set_admin(&name, admin);
        tracing::info!(node = %name, enabled = r.enabled, "node admin switch set");
        self.get_node(name.as_str())
    }
}

#[tonic::async_trait]
impl nodes_server::Nodes for Ctx {
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Node> {
        reply(self.get_node(&r.into_inner().r#ref))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListNodesResponse> {
        reply(self.list_nodes(&r.into_inner()))
    }
    async fn set_enabled(&self, r: Request<pb::SetNodeEnabledRequest>) -> R<pb::Node> {
        reply(self.set_node_enabled(r.into_inner()).await)
    }
    async fn evacuate(&self, r: Request<pb::EvacuateNodeRequest>) -> R<pb::EvacuateNodeResponse> {
        reply(self.evacuate_node(r.into_inner()).await)
    }
    async fn drain(&self, r: Request<pb::DrainNodeRequest>) -> R<pb::DrainNodeResponse> {
        reply(self.drain_node(r.into_inner()).await)
    }
    async fn set_evacuation_enabled(
        &self,
        r: Request<pb::SetEvacuationEnabledRequest>,
    ) -> R<pb::EvacuationSettings> {
        reply(self.set_evacuation_enabled(r.into_inner()).await)
    }
}
