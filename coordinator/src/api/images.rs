//! `Images`: the gRPC adapter of [`crate::operations::images`].

use nubo_common::proto::{self as pb, images_server};
use tonic::Request;

use super::{convert, page, project, reply, scope, R};
use crate::operations::images::{self, NewImage};
use crate::state::Ctx;

#[tonic::async_trait]
impl images_server::Images for Ctx {
    async fn create(&self, r: Request<pb::CreateImageRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let new = NewImage {
                name: r.name,
                disk_format: r.disk_format,
                size_bytes: r.size_bytes,
                checksum_sha256: r.checksum_sha256,
                min_disk_gb: r.min_disk_gb,
                min_ram_mb: r.min_ram_mb,
                kernel_sha256: r.kernel_sha256,
                initrd_sha256: r.initrd_sha256,
                kernel_cmdline: r.kernel_cmdline,
            };
            images::create(self, &p, new).await
        };
        reply(go.await.map(|i| convert::image(&i)))
    }
    async fn update(&self, r: Request<pb::UpdateImageRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let changes = images::ImageChanges {
                name: r.name,
                min_disk_gb: r.min_disk_gb,
                min_ram_mb: r.min_ram_mb,
            };
            images::update(self, &project(&r.project)?, &r.r#ref, &changes).await
        };
        reply(go.await.map(|i| convert::image(&i)))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async { images::get(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|i| convert::image(&i)))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListImagesResponse> {
        let r = r.into_inner();
        let go = async { images::list(self, &scope(&r)?, &page(&r)).await };
        reply(go.await.map(|p| pb::ListImagesResponse {
            images: p.items.iter().map(convert::image).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async { images::delete(self, &project(&r.project)?, &r.r#ref).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
}
