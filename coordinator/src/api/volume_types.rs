//! `VolumeTypes`: the gRPC adapter of [`crate::operations::volume_types`].

use nubo_common::proto::{self as pb, volume_types_server};
use tonic::Request;

use super::{convert, page, reply, R};
use crate::operations::volume_types::{self, QosUpdate};
use crate::state::Ctx;

fn qos_update(q: Option<&pb::VolumeQos>) -> QosUpdate {
    q.map(|q| QosUpdate {
        read_iops_sec: q.read_iops_sec,
        write_iops_sec: q.write_iops_sec,
        read_bytes_sec: q.read_bytes_sec,
        write_bytes_sec: q.write_bytes_sec,
    })
    .unwrap_or_default()
}

#[tonic::async_trait]
impl volume_types_server::VolumeTypes for Ctx {
    async fn create(&self, r: Request<pb::CreateVolumeTypeRequest>) -> R<pb::VolumeType> {
        let r = r.into_inner();
        let t = volume_types::create(self, &r.name, &qos_update(r.qos.as_ref())).await;
        reply(t.map(|t| convert::volume_type(&t)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::VolumeType> {
        let t = volume_types::get(self, &r.into_inner().r#ref).await;
        reply(t.map(|t| convert::volume_type(&t)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListVolumeTypesResponse> {
        let p = volume_types::list(self, &page(&r.into_inner())).await;
        reply(p.map(|p| pb::ListVolumeTypesResponse {
            volume_types: p.items.iter().map(convert::volume_type).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let done = volume_types::delete(self, &r.into_inner().r#ref).await;
        reply(done.map(|()| pb::Empty {}))
    }
    async fn set_qos(&self, r: Request<pb::SetVolumeTypeQosRequest>) -> R<pb::VolumeType> {
        let r = r.into_inner();
        let t = volume_types::set_qos(self, &r.name, &qos_update(r.qos.as_ref())).await;
        reply(t.map(|t| convert::volume_type(&t)))
    }
}
