//! The `ImageData` service: client-streaming upload and server-streaming
//! download of image parts (see [`crate::image_store`]).

use etcd_client::Txn;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{Image, ImageStatus, Role};
use nubo_common::proto::{self as pb, image_data_server};
use nubo_common::ImageId;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{reply, Ctx};
use crate::caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::image_store::{ImageStore, Part, MAX_CHUNK};
use crate::validate;
use nubo_store::kv::{put, unchanged};

impl Ctx {
    fn image_store(&self) -> ImageStore {
        ImageStore::new(&self.cfg.image_dir)
    }

    /// Applies `edit` to the image record with a compare-and-swap loop.
    async fn edit_image(&self, id: &ImageId, edit: impl Fn(&mut Image)) -> ApiResult<Image> {
        let key = keys::image(id);
        for _ in 0..16 {
            let Some(mut cur) = self.store.read::<Image>(&key).await? else {
                return Err(ApiError::NotFound(format!("image {id} was deleted")));
            };
            edit(&mut cur.value);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, cur.mod_rev)])
                        .and_then([put(&key, &cur.value)]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(cur.value);
            }
        }
        Err(ApiError::Unavailable(
            "the image changed concurrently too often; retry".into(),
        ))
    }

    async fn upload(&self, mut stream: Streaming<pb::ImageChunk>) -> ApiResult<pb::Image> {
        let first = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => return Err(ApiError::Unavailable(format!("upload aborted: {s}"))),
            None => return Err(ApiError::InvalidArgument("empty upload".into())),
        };
        let project = validate::project(&first.project)?;
        let part = Part::parse(&first.part)?;
        let img = self.image(&project, &first.image).await?.value;
        let span = tracing::info_span!("image_upload", image = %img.id, part = part.as_str());
        let _enter = span.enter();
        if img.status == ImageStatus::Active
            && self.image_store().has(&img.id.to_string(), part).await
        {
            return Err(ApiError::FailedPrecondition(format!(
                "image {}: {} is already uploaded",
                img.name,
                part.as_str()
            )));
        }
        let declared = part.declared(&img).map(str::to_owned);
        if part != Part::Disk && declared.is_none() {
            return Err(ApiError::InvalidArgument(format!(
                "image {} declares no {} (give its checksum at creation)",
                img.name,
                part.as_str()
            )));
        }
        let id = img.id.to_string();
        let mut up = self.image_store().begin(&id, part).await?;
        let mut chunk = Some(first);
        loop {
            let c = match chunk.take() {
                Some(c) => c,
                None => match stream.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(s)) => {
                        up.abort().await;
                        return Err(ApiError::Unavailable(format!("upload aborted: {s}")));
                    }
                    None => break,
                },
            };
            if c.data.len() > MAX_CHUNK {
                up.abort().await;
                return Err(ApiError::InvalidArgument(format!(
                    "chunk of {} bytes exceeds 1 MiB",
                    c.data.len()
                )));
            }
            if let Err(e) = up.write(&c.data).await {
                up.abort().await;
                return Err(e);
            }
        }
        let size = up.written();
        // With no declared disk checksum the actual one is recorded.
        let outcome = up.finish(declared.as_deref()).await?;
        match outcome {
            Err(actual) => {
                let reason = format!(
                    "image {} ({}): checksum mismatch: uploaded data has sha256 {actual}, expected {}",
                    img.name,
                    part.as_str(),
                    declared.as_deref().unwrap_or_default()
                );
                tracing::warn!(%reason, "upload rejected");
                let r = reason.clone();
                self.edit_image(&img.id, move |i| {
                    i.status = ImageStatus::Error;
                    i.status_reason = Some(r.clone());
                })
                .await?;
                Err(ApiError::FailedPrecondition(reason))
            }
            Ok(actual) => {
                let store = self.image_store();
                let mut present = Vec::new();
                for p in Part::all_of(&img) {
                    present.push((p, store.has(&id, p).await));
                }
                let img = self
                    .edit_image(&img.id, |i| {
                        if part == Part::Disk {
                            i.size_bytes = size;
                            if i.checksum_sha256.is_none() {
                                i.checksum_sha256 = Some(actual.clone());
                            }
                        }
                        if present.iter().all(|(_, ok)| *ok) && i.status == ImageStatus::Queued {
                            i.status = ImageStatus::Active;
                        }
                    })
                    .await?;
                tracing::info!(bytes = size, status = ?img.status, "image part stored");
                Ok(convert::image(&img))
            }
        }
    }

    async fn download(
        &self,
        r: pb::DownloadImageRequest,
    ) -> ApiResult<ReceiverStream<Result<pb::ImageChunk, Status>>> {
        let id: ImageId = r
            .image_id
            .trim()
            .parse()
            .map_err(|_| ApiError::InvalidArgument(format!("bad image id {:?}", r.image_id)))?;
        let part = Part::parse(&r.part)?;
        let Some(img) = self.store.read::<Image>(&keys::image(&id)).await? else {
            return Err(ApiError::NotFound(format!("image {id} does not exist")));
        };
        // Agents (node role) and admins fetch any image; a tenant only its
        // own project's, and another project's answers like a missing one.
        if let Some(c) = caller::caller() {
            let cloud_wide = c.claims.has(Role::Admin) || c.claims.has(Role::Node);
            if !cloud_wide && c.claims.project != img.value.project {
                return Err(ApiError::NotFound(format!("image {id} does not exist")));
            }
        }
        let path = self.image_store().path(&id.to_string(), part);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            ApiError::NotFound(format!(
                "image {id}: {} is missing from the coordinator's image store ({e})",
                part.as_str()
            ))
        })?;
        let size = file
            .metadata()
            .await
            .map_err(|e| ApiError::Unavailable(format!("stat {}: {e}", path.display())))?
            .len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let mut buf = vec![0u8; MAX_CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!("reading image: {e}"))))
                            .await;
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                buf.truncate(n);
                let chunk = pb::ImageChunk {
                    image: id.to_string(),
                    project: String::new(),
                    part: part.as_str().into(),
                    size_bytes: if first { size } else { 0 },
                    data: buf,
                };
                first = false;
                if tx.send(Ok(chunk)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl image_data_server::ImageData for Ctx {
    async fn upload(
        &self,
        r: Request<Streaming<pb::ImageChunk>>,
    ) -> Result<Response<pb::Image>, Status> {
        reply(Ctx::upload(self, r.into_inner()).await)
    }

    type DownloadStream = ReceiverStream<Result<pb::ImageChunk, Status>>;

    async fn download(
        &self,
        r: Request<pb::DownloadImageRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        reply(Ctx::download(self, r.into_inner()).await)
    }
}
