//! `Volumes`: the gRPC adapter of [`crate::operations::volumes`] and
//! [`crate::operations::volume_snapshots`].

use nubo_common::proto::{self as pb, volumes_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::operations::lookup::ById;
use crate::operations::volume_admin as admin;
use crate::operations::volume_attrs as attrs;
use crate::operations::volume_snapshots as snapshots;
use crate::operations::volume_transfers as transfers;
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
            let from = volumes::CreateFrom {
                image_ref: r.image_ref,
                snapshot_id: r.snapshot_id,
                source_volume: r.source_volume,
                description: Some(r.description).filter(|d| !d.is_empty()),
                metadata: r.metadata.into_iter().collect(),
            };
            volumes::create(self, &p, &r.name, r.size_gb, &r.volume_type, from).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            volumes::get(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
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
        let go = async {
            volumes::delete(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn resize(&self, r: Request<pb::ResizeVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            volumes::resize(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
                r.size_gb,
            )
            .await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn attach(&self, r: Request<pb::AttachVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            let hint = Some(r.device.as_str()).filter(|d| !d.is_empty());
            volumes::attach(
                self,
                &p,
                &r.r#ref,
                &r.server_ref,
                r.delete_on_termination,
                hint,
            )
            .await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn detach(&self, r: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let how = volumes::Detach {
                if_attached: r.if_attached,
                force: false,
            };
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            volumes::detach_with(self, &p, &r.r#ref, how).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn create_snapshot(
        &self,
        r: Request<pb::VolumeSnapshotRequest>,
    ) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async {
            let info = snapshots::SnapshotInfo {
                description: r.description,
                metadata: r.metadata.into_iter().collect(),
            };
            snapshots::create(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
                &r.name,
                info,
            )
            .await
        };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
    async fn list_snapshots(
        &self,
        r: Request<pb::GetRequest>,
    ) -> R<pb::ListVolumeSnapshotsResponse> {
        let r = r.into_inner();
        let go = async {
            snapshots::list(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| pb::ListVolumeSnapshotsResponse {
            snapshots: s.iter().map(convert::volume_snapshot).collect(),
        }))
    }
    async fn delete_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            if r.id.is_empty() {
                snapshots::delete(self, &p, &r.r#ref, &r.name).await
            } else {
                snapshots::delete_by_id(self, &p, &r.id).await
            }
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn revert_snapshot(&self, r: Request<pb::VolumeSnapshotRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            if r.id.is_empty() {
                snapshots::revert(self, &p, &r.r#ref, &r.name).await
            } else {
                snapshots::revert_by_id(self, &p, &r.id).await
            }
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn update(&self, r: Request<pb::UpdateVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            let u = attrs::VolumeUpdate {
                name: r.name,
                description: r.description,
                replace_metadata: r.replace_metadata,
                metadata: r.metadata.into_iter().collect(),
                remove_metadata: r.remove_metadata,
                bootable: r.bootable,
                read_only: r.read_only,
                set_image_metadata: r.set_image_metadata.into_iter().collect(),
                unset_image_metadata: r.unset_image_metadata,
            };
            attrs::update(self, &p, &r.r#ref, u).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn reserve(&self, r: Request<pb::GetRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            attrs::reserve(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn unreserve(&self, r: Request<pb::GetRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            attrs::unreserve(
                self,
                &owner(self, &r.project, ById::Volume, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn get_snapshot(&self, r: Request<pb::GetRequest>) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async { snapshots::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
    async fn list_project_snapshots(
        &self,
        r: Request<pb::ListRequest>,
    ) -> R<pb::ListVolumeSnapshotsResponse> {
        let r = r.into_inner();
        let go = async { snapshots::list_project(self, &project(&r.project)?).await };
        reply(go.await.map(|s| pb::ListVolumeSnapshotsResponse {
            snapshots: s.iter().map(convert::volume_snapshot).collect(),
        }))
    }
    async fn update_snapshot(
        &self,
        r: Request<pb::UpdateVolumeSnapshotRequest>,
    ) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async {
            let u = snapshots::SnapshotUpdate {
                name: r.name,
                description: r.description,
                replace_metadata: r.replace_metadata,
                metadata: r.metadata.into_iter().collect(),
                remove_metadata: r.remove_metadata,
            };
            snapshots::update(self, &project(&r.project)?, &r.id, u).await
        };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
    async fn create_transfer(
        &self,
        r: Request<pb::CreateVolumeTransferRequest>,
    ) -> R<pb::VolumeTransfer> {
        let r = r.into_inner();
        let go = async { transfers::create(self, &project(&r.project)?, &r.volume, &r.name).await };
        reply(
            go.await
                .map(|t| convert::volume_transfer(&t.transfer, &t.auth_key)),
        )
    }
    async fn get_transfer(&self, r: Request<pb::GetRequest>) -> R<pb::VolumeTransfer> {
        let r = r.into_inner();
        let go = async { transfers::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|t| convert::volume_transfer(&t, "")))
    }
    async fn list_transfers(
        &self,
        r: Request<pb::ListRequest>,
    ) -> R<pb::ListVolumeTransfersResponse> {
        let r = r.into_inner();
        let go = async { transfers::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| {
            pb::ListVolumeTransfersResponse {
                transfers: p
                    .items
                    .iter()
                    .map(|t| convert::volume_transfer(t, ""))
                    .collect(),
                next_page_token: p.next,
            }
        }))
    }
    async fn delete_transfer(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { transfers::delete(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn accept_transfer(
        &self,
        r: Request<pb::AcceptVolumeTransferRequest>,
    ) -> R<pb::AcceptVolumeTransferResponse> {
        let r = r.into_inner();
        let go = async { transfers::accept(self, &project(&r.project)?, &r.id, &r.auth_key).await };
        reply(go.await.map(|(t, v)| pb::AcceptVolumeTransferResponse {
            transfer: Some(convert::volume_transfer(&t, "")),
            volume: Some(volume_pb(&v)),
        }))
    }
    async fn upload_to_image(&self, r: Request<pb::UploadVolumeToImageRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let c = crate::operations::image_capture::Capture {
                name: r.image_name,
                disk_format: r.disk_format,
                visibility: r.visibility,
                properties: r.properties.into_iter().collect(),
            };
            crate::operations::image_capture::from_volume(self, &p, &r.volume, r.force, c)
                .await
                .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }
    async fn reset_status(&self, r: Request<pb::ResetVolumeStatusRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            admin::reset_status(
                self,
                &p,
                &r.r#ref,
                &r.status,
                &r.attach_status,
                &r.migration_status,
            )
            .await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn force_delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            admin::force_delete(self, &p, &r.r#ref).await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn force_detach(&self, r: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Volume, &r.r#ref).await?;
            admin::force_detach(self, &p, &r.r#ref).await
        };
        reply(go.await.map(|v| volume_pb(&v)))
    }
    async fn reset_snapshot_status(
        &self,
        r: Request<pb::ResetSnapshotStatusRequest>,
    ) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async {
            admin::reset_snapshot_status(self, &project(&r.project)?, &r.r#ref, &r.status).await
        };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
    async fn force_delete_snapshot(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go =
            async { admin::force_delete_snapshot(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn update_snapshot_status(
        &self,
        r: Request<pb::UpdateSnapshotStatusRequest>,
    ) -> R<pb::VolumeSnapshot> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            admin::update_snapshot_status(self, &p, &r.r#ref, &r.status, &r.progress).await
        };
        reply(go.await.map(|s| convert::volume_snapshot(&s)))
    }
}
