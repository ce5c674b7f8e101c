//! `ImageData`: the gRPC adapter of [`crate::operations::image_data`].

use futures::StreamExt;
use nubo_common::proto::{self as pb, image_data_server};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, project, reply, R};
use crate::error::ApiError;
use crate::operations::image_data;
use crate::state::Ctx;

#[tonic::async_trait]
impl image_data_server::ImageData for Ctx {
    async fn upload(&self, r: Request<Streaming<pb::ImageChunk>>) -> R<pb::Image> {
        let mut stream = r.into_inner();
        let go = async {
            // The first message names the image, project and part.
            let first = match stream.next().await {
                Some(Ok(c)) => c,
                Some(Err(s)) => return Err(ApiError::Unavailable(format!("upload aborted: {s}"))),
                None => return Err(ApiError::InvalidArgument("empty upload".into())),
            };
            let p = project(&first.project)?;
            let declared = (first.size_bytes > 0).then_some(first.size_bytes);
            let data = futures::stream::iter([Ok(first.data)])
                .chain(stream.map(|c| c.map(|c| c.data).map_err(|s| s.to_string())));
            image_data::upload(
                self,
                &p,
                &first.image,
                &first.part,
                declared,
                Box::pin(data),
            )
            .await
            .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }

    type DownloadStream = ReceiverStream<Result<pb::ImageChunk, Status>>;

    async fn download(
        &self,
        r: Request<pb::DownloadImageRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let r = r.into_inner();
        let caller = crate::caller::caller().map(|c| c.claims);
        let mut d = image_data::download(self, caller.as_ref(), &r.image_id, &r.part).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut size = Some(d.size);
            while let Some(chunk) = d.chunks.recv().await {
                let msg = chunk.map_err(Status::from).map(|data| pb::ImageChunk {
                    image: d.image.to_string(),
                    project: String::new(),
                    part: d.part.as_str().into(),
                    size_bytes: size.take().unwrap_or(0),
                    data,
                });
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
