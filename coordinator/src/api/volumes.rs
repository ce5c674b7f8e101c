//! `Volumes`: the gRPC adapter of [`crate::operations::volumes`] and
//! [`crate::operations::volume_snapshots`].

use nubo_common::proto::{self as pb, volumes_server};
use tonic::Request;

use super::{convert, page, project, reply, scope, R};
use crate::operations::volume_snapshots as snapshots;
use crate::operations::volumes::{self, VolumeView};
use crate::state::Ctx;

fn volume_pb(v: &VolumeView) -> pb::Volume {
    convert::volume(
        &v.volume,
        v.rbd_image.clone(),
        v.attachment.as_ref().map(|(a, boot)| (a, *boot)),
    )
}

#[tonic::async_trait]
impl volumes_server::Volumes for Ctx {
    async fn create(&self, r: Request<pb::CreateVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            volumes::create(self, &p, &r.name, r.size_gb, &r.volume_type, &r.image_ref).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async { volumes::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListVolumesResponse> {
        let r = r.into_inner();
        let go = async { volumes::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListVolumesResponse {
            volumes: p.items.iter().map(volume_pb).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { volumes::delete(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn resize(&self, r: Request<pb::ResizeVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async { volumes::resize(self, &project(&r.project)?, &r.r#ref, r.size_gb).await };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn attach(&self, r: Request<pb::AttachVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            volumes::attach(self, &p, &r.r#ref, &r.server_ref, r.delete_on_termination).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn detach(&self, r: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async { volumes::detach(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn create_snapshot(
        &self,
        r: Request<pb::VolumeSnapshotRequest>,
    ) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async { snapshots::create(self, &project(&r.project)?, &r.r#ref, &r.name).await };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
    async fn list_snapshots(
        &self,
        r: Request<pb::GetRequest>,
    ) -> R<pb::ListVolumeSnapshotsResponse> {
        let r = r.into_inner();
        let go = async { snapshots::list(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|s| pb::ListVolumeSnapshotsResponse {
            snapshots: s.iter().map(convert::volume_snapshot).collect(),
        }))
    }
    async fn delete_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { snapshots::delete(self, &project(&r.project)?, &r.r#ref, &r.name).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn revert_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async { snapshots::revert(self, &project(&r.project)?, &r.r#ref, &r.name).await };
        reply(go.await.map(|v| volume_pb(&v)))
    }
}
