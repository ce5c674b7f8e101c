//! `Images`: the gRPC adapter of [`crate::operations::images`].

use nubo_common::proto::{self as pb, images_server};
use tonic::Request;

use super::{convert, owner, page, project, reply, scope, R};
use crate::operations::images::{self, NewImage};
use crate::operations::lookup::ById;
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
                visibility: r.visibility,
                tags: r.tags,
                properties: r.properties.into_iter().collect(),
                protected: r.protected,
                hidden: r.hidden,
            };
            images::create(self, &p, new)
                .await
                .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }
    async fn update(&self, r: Request<pb::UpdateImageRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let changes = images::ImageChanges {
                name: r.name,
                min_disk_gb: r.min_disk_gb,
                min_ram_mb: r.min_ram_mb,
                visibility: r.visibility,
                add_tags: r.add_tags,
                remove_tags: r.remove_tags,
                set_properties: r.set_properties.into_iter().collect(),
                remove_properties: r.remove_properties,
                protected: r.protected,
                hidden: r.hidden,
                deactivated: r.deactivated,
                owner: r.owner,
            };
            let p = owner(self, &r.project, ById::Image, &r.r#ref).await?;
            images::update(self, &p, &r.r#ref, &changes)
                .await
                .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            images::get(self, &p, &r.r#ref)
                .await
                .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListImagesResponse> {
        let r = r.into_inner();
        let go = async {
            let s = scope(&r)?;
            let p = images::list(self, &s, &page(&r)).await?;
            Ok(pb::ListImagesResponse {
                images: p
                    .items
                    .iter()
                    .map(|i| convert::image_for(i, &s.project))
                    .collect(),
                next_page_token: p.next,
            })
        };
        reply(go.await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            images::delete(
                self,
                &owner(self, &r.project, ById::Image, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn list_members(&self, r: Request<pb::GetRequest>) -> R<pb::ListImageMembersResponse> {
        let r = r.into_inner();
        let go = async {
            let (img, ms) = images::list_members(self, &project(&r.project)?, &r.r#ref).await?;
            Ok(pb::ListImageMembersResponse {
                members: ms
                    .iter()
                    .map(|(p, m)| convert::image_member(&img.id, p, m))
                    .collect(),
            })
        };
        reply(go.await)
    }
    async fn get_member(&self, r: Request<pb::ImageMemberRequest>) -> R<pb::ImageMember> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let (id, m) = images::get_member(self, &p, &r.image, &r.member).await?;
            Ok(member_reply(&id, &r, &m))
        };
        reply(go.await)
    }
    async fn add_member(&self, r: Request<pb::ImageMemberRequest>) -> R<pb::ImageMember> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let (id, m) = images::add_member(self, &p, &r.image, &r.member).await?;
            Ok(member_reply(&id, &r, &m))
        };
        reply(go.await)
    }
    async fn set_member_status(&self, r: Request<pb::ImageMemberRequest>) -> R<pb::ImageMember> {
        let r = r.into_inner();
        let go = async {
            let p = project(&r.project)?;
            let (id, m) =
                images::set_member_status(self, &p, &r.image, &r.member, &r.status).await?;
            let mut r = r.clone();
            if r.member.trim().is_empty() {
                r.member = p.to_string();
            }
            Ok(member_reply(&id, &r, &m))
        };
        reply(go.await)
    }
    async fn remove_member(&self, r: Request<pb::ImageMemberRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go =
            async { images::remove_member(self, &project(&r.project)?, &r.image, &r.member).await };
        reply(go.await.map(|()| pb::Empty {}))
    }
}

/// The reply of a member call on image `id` (the request names the
/// member).
fn member_reply(
    id: &nubo_common::ImageId,
    r: &pb::ImageMemberRequest,
    m: &nubo_common::model::ImageMember,
) -> pb::ImageMember {
    pb::ImageMember {
        image: id.to_string(),
        member: r.member.trim().to_string(),
        status: m.status.as_str().into(),
        created_at: convert::ts(&m.created_at),
        updated_at: convert::ts(&m.updated_at),
    }
}
