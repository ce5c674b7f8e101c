//! Image data: client-streamed upload and streamed download of image parts
//! (see [`crate::image_store`]).

use etcd_client::Txn;
use futures::{Stream, StreamExt};
use nubo_common::keys;
use nubo_common::model::{Image, ImageStatus, Role};
use nubo_common::{ImageId, ProjectId};
use nubo_identity::Claims;
use nubo_store::kv::{put, unchanged};
use tokio::io::AsyncReadExt;

use crate::error::{ApiError, ApiResult};
use crate::image_store::{ImageStore, Part, MAX_CHUNK};
use crate::state::Ctx;

/// This coordinator's image store.
fn image_store(ctx: &Ctx) -> ImageStore {
    ImageStore::new(&ctx.cfg.image_dir)
}

/// Applies `edit` to the image record with a compare-and-swap loop.
pub(crate) async fn edit_image(
    ctx: &Ctx,
    id: &ImageId,
    edit: impl Fn(&mut Image),
) -> ApiResult<Image> {
    let key = keys::image(id);
    for _ in 0..16 {
        let Some(mut cur) = ctx.store.read::<Image>(&key).await? else {
            return Err(ApiError::NotFound(format!("image {id} was deleted")));
        };
        edit(&mut cur.value);
        let resp = ctx
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

/// Stores one part (`disk`, `kernel`, `initrd`) of image `image` of
/// `project` from `data`, chunk by chunk (each at most 1 MiB; an `Err` is
/// the client aborting). With a `declared_size`, data beyond it or ending
/// short of it is refused and nothing is stored; without one the end of
/// the stream decides. The image becomes `active` once every part it
/// declares is stored; a checksum mismatch marks it `error`.
pub async fn upload(
    ctx: &Ctx,
    project: &ProjectId,
    image: &str,
    part: &str,
    declared_size: Option<u64>,
    mut data: impl Stream<Item = Result<Vec<u8>, String>> + Unpin + Send,
) -> ApiResult<Image> {
    let part = Part::parse(part)?;
    let img = super::lookup::image(ctx, project, image).await?.value;
    let span = tracing::info_span!("image_upload", image = %img.id, part = part.as_str());
    let _enter = span.enter();
    if img.status == ImageStatus::Active && image_store(ctx).has(&img.id.to_string(), part).await {
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
    let mut up = image_store(ctx).begin(&id, part).await?;
    loop {
        let c = match data.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => {
                up.abort().await;
                return Err(ApiError::Unavailable(format!("upload aborted: {s}")));
            }
            None => break,
        };
        if c.len() > MAX_CHUNK {
            up.abort().await;
            return Err(ApiError::InvalidArgument(format!(
                "chunk of {} bytes exceeds 1 MiB",
                c.len()
            )));
        }
        if let Err(e) = up.write(&c).await {
            up.abort().await;
            return Err(e);
        }
        if let Some(d) = declared_size.filter(|d| up.written() > *d) {
            up.abort().await;
            return Err(ApiError::InvalidArgument(format!(
                "upload is larger than its declared size of {d} bytes; nothing stored"
            )));
        }
    }
    let size = up.written();
    if let Some(d) = declared_size.filter(|d| size < *d) {
        up.abort().await;
        return Err(ApiError::InvalidArgument(format!(
            "upload ended after {size} of its declared {d} bytes; nothing stored"
        )));
    }
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
            edit_image(ctx, &img.id, move |i| {
                i.status = ImageStatus::Error;
                i.status_reason = Some(r.clone());
            })
            .await?;
            Err(ApiError::FailedPrecondition(reason))
        }
        Ok(actual) => {
            let store = image_store(ctx);
            let mut present = Vec::new();
            for p in Part::all_of(&img) {
                present.push((p, store.has(&id, p).await));
            }
            let img = edit_image(ctx, &img.id, |i| {
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
            Ok(img)
        }
    }
}

/// An image part being read (see [`download`]).
#[derive(Debug)]
pub struct Download {
    /// The image.
    pub image: ImageId,
    /// The part.
    pub part: Part,
    /// Its size in bytes.
    pub size: u64,
    /// Its data, in chunks of at most 1 MiB (one empty chunk for an empty
    /// part); an `Err` ends it.
    pub chunks: tokio::sync::mpsc::Receiver<ApiResult<Vec<u8>>>,
}

/// Reads part `part` of image `image_id`. `caller`: the authenticated
/// caller, if any: agents (node role) and admins fetch any image, a tenant
/// its own project's and those it may use (public, community, shared with
/// it; another project's answers like a missing one), never a deactivated
/// one.
pub async fn download(
    ctx: &Ctx,
    caller: Option<&Claims>,
    image_id: &str,
    part: &str,
) -> ApiResult<Download> {
    let id: ImageId = image_id
        .trim()
        .parse()
        .map_err(|_| ApiError::InvalidArgument(format!("bad image id {image_id:?}")))?;
    let part = Part::parse(part)?;
    let Some(img) = ctx.store.read::<Image>(&keys::image(&id)).await? else {
        return Err(ApiError::NotFound(format!("image {id} does not exist")));
    };
    if let Some(c) = caller {
        let cloud_wide = c.has(Role::Admin) || c.has(Role::Node);
        if !cloud_wide && c.project != img.value.project && !img.value.access.usable_by(&c.project)
        {
            return Err(ApiError::NotFound(format!("image {id} does not exist")));
        }
        if !cloud_wide && img.value.attrs.deactivated {
            return Err(ApiError::PermissionDenied(format!(
                "image {id} is deactivated: its data is served to cloud admins only"
            )));
        }
    }
    let path = image_store(ctx).path(&id.to_string(), part);
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
                        .send(Err(ApiError::Unavailable(format!("reading image: {e}"))))
                        .await;
                    return;
                }
            };
            if n == 0 && !first {
                return;
            }
            buf.truncate(n);
            first = false;
            if tx.send(Ok(buf)).await.is_err() || n == 0 {
                return;
            }
        }
    });
    Ok(Download {
        image: id,
        part,
        size,
        chunks: rx,
    })
}
