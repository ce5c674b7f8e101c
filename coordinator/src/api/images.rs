//! Images: metadata of the images servers boot from (their data: `image_data`).

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, DiskFormat, Image, ImageStatus};
use nubo_common::proto::{self as pb, images_server};
use nubo_common::ImageId;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::validate;
use nubo_store::kv::{absent, put, unchanged, Versioned};

type R<T> = Result<Response<T>, Status>;

impl Ctx {
    async fn create_image(&self, r: pb::CreateImageRequest) -> ApiResult<pb::Image> {
        let project = validate::project(&r.project)?;
        validate::name("image", &r.name)?;
        let disk_format = match r.disk_format.to_ascii_lowercase().as_str() {
            "" | "qcow2" => DiskFormat::Qcow2,
            "raw" => DiskFormat::Raw,
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "disk_format {other:?} must be \"raw\" or \"qcow2\""
                )))
            }
        };
        let checksum = match r.checksum_sha256.trim() {
            "" => None,
            c if c.len() == 64 && c.chars().all(|x| x.is_ascii_hexdigit()) => {
                Some(c.to_ascii_lowercase())
            }
            c => {
                return Err(ApiError::InvalidArgument(format!(
                    "checksum_sha256 {c:?} is not 64 hex digits"
                )))
            }
        };
        let img = Image {
            id: ImageId::new_random(),
            name: r.name.clone(),
            project: project.clone(),
            disk_format,
            size_bytes: r.size_bytes,
            checksum_sha256: checksum,
            min_disk_gb: r.min_disk_gb,
            min_ram_mb: r.min_ram_mb,
            status: ImageStatus::Queued,
            created_at: model::now(),
            kernel_sha256: crate::image_store::optional_sha256("kernel_sha256", &r.kernel_sha256)?,
            initrd_sha256: crate::image_store::optional_sha256("initrd_sha256", &r.initrd_sha256)?,
            kernel_cmdline: Some(r.kernel_cmdline.trim().to_string()).filter(|c| !c.is_empty()),
            status_reason: None,
        };
        let idx = keys::name_index(NameKind::Image, &project, &img.name);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([absent(&idx)])
                    .and_then([put(&idx, &img.id), put(&keys::image(&img.id), &img)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "image {:?} already exists in project {project}",
                img.name
            )));
        }
        Ok(convert::image(&img))
    }
}

impl Ctx {
    pub(crate) async fn image(
        &self,
        project: &nubo_common::ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<Image>> {
        self.resolve(NameKind::Image, "image", project, r, |u| {
            keys::image(&ImageId::from_uuid(u))
        })
        .await
    }

    async fn delete_image(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        let img = self.image(&project, &r.r#ref).await?;
        let idx = keys::name_index(NameKind::Image, &project, &img.value.name);
        let key = keys::image(&img.value.id);
        self.store
            .txn(Txn::new().when([unchanged(&key, img.mod_rev)]).and_then([
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(idx.as_str(), None),
            ]))
            .await?;
        // Its data goes with it (hook of the image-data feature).
        crate::image_store::ImageStore::new(&self.cfg.image_dir)
            .remove(&img.value.id.to_string())
            .await?;
        Ok(pb::Empty {})
    }
}

#[tonic::async_trait]
impl images_server::Images for Ctx {
    async fn create(&self, r: Request<pb::CreateImageRequest>) -> R<pb::Image> {
        reply(self.create_image(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::image(&self.image(&p, &r.r#ref).await?.value))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListImagesResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::images_prefix(), &r, convert::image)
            .await;
        reply(
            page.map(|(images, next_page_token)| pb::ListImagesResponse {
                images,
                next_page_token,
            }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_image(r.into_inner()).await)
    }
}
