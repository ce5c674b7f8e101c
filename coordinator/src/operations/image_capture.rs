//! Images from disks: a volume's data (Cinder's `os-volume_upload_image`)
//! or a server's root disk (Nova's `createImage`) becomes a new image.
//!
//! The point in time is an RBD snapshot (`capture-<image id>`) of the
//! disk, taken before the call answers: the disk stays usable (a running
//! guest keeps writing; what it had written when the snapshot was taken
//! is captured, as after a power cut: crash-consistent, which is what an
//! RBD-backed Nova snapshot gives without a guest agent to freeze file
//! systems). The new image is `queued` meanwhile. In the background the
//! snapshot is read into a sparse file in `<image dir>/capture/`,
//! converted with `qemu-img` when the image is qcow2, and stored in the
//! image store through the same path as an upload
//! ([`super::image_data::upload`]: hashed, checksum and size recorded,
//! `active`); the snapshot is removed as soon as it has been read. A
//! failure leaves the image in `error` with the reason. Volumes and root
//! disks made from the image later import it into Ceph as any uploaded
//! image.
//!
//! A server whose root disk is not on Ceph (a node's local disk) is
//! copied by its node's agent instead: [`super::local_capture`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use nubo_common::model::{Image, ImageStatus, VolumeStatus};
use nubo_common::ProjectId;
use nubo_storage::{BlockStore, DiskRef, SnapshotRef};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use super::images::{self, NewImage};
use super::volumes::{ceph, status_name};
use crate::error::{ApiError, ApiResult};
use crate::image_store::MAX_CHUNK;
use crate::state::Ctx;

const GIB: u64 = 1 << 30;

/// What the new image is called and how it is stored.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Image name.
    pub name: String,
    /// `raw` (also empty) or `qcow2`.
    pub disk_format: String,
    /// `private` (also empty), `shared`, `community`; `public` for a
    /// cloud admin.
    pub visibility: String,
    /// Properties of the image.
    pub properties: BTreeMap<String, String>,
}

/// The disk format of a capture (`raw` when empty). Pure.
fn format_of(c: &Capture) -> ApiResult<&'static str> {
    match c.disk_format.trim() {
        "" | "raw" => Ok("raw"),
        "qcow2" => Ok("qcow2"),
        other => Err(ApiError::InvalidArgument(format!(
            "disk format {other:?}: an image made from a disk is raw or qcow2"
        ))),
    }
}

/// Makes a new image of `project` from volume `volume` (id or name):
/// available, or in use with `force`.
pub async fn from_volume(
    ctx: &Ctx,
    project: &ProjectId,
    volume: &str,
    force: bool,
    c: Capture,
) -> ApiResult<Image> {
    let v = super::lookup::volume(ctx, project, volume).await?.value;
    match v.status {
        VolumeStatus::Available => {}
        VolumeStatus::InUse if force => {}
        VolumeStatus::InUse => {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is in use; capture it with force",
                v.name
            )))
        }
        s => {
            return Err(ApiError::FailedPrecondition(format!(
                "volume {:?} is {}; an image is made from an available or in-use volume",
                v.name,
                status_name(s)
            )))
        }
    }
    let disk = super::volumes::rbd(ctx)?.volume_ref(&v.id.to_string());
    let mut props = c.properties.clone();
    props
        .entry("source_volume_id".into())
        .or_insert_with(|| v.id.to_string());
    capture(
        ctx,
        project,
        disk,
        v.size_gb,
        Capture {
            properties: props,
            ..c
        },
    )
    .await
}

/// Makes a new image of `project` from server `server`'s root disk (its
/// boot volume, or its root disk in Ceph's disks pool; a root disk on its
/// node's local storage is copied by that node's agent,
/// [`super::local_capture`]).
pub async fn from_server(
    ctx: &Ctx,
    project: &ProjectId,
    server: &str,
    c: Capture,
) -> ApiResult<Image> {
    let inst = super::lookup::server(ctx, project, server).await?.value;
    let mut props = c.properties.clone();
    for (k, v) in [
        ("image_type", "snapshot".to_string()),
        ("instance_uuid", inst.id.to_string()),
        ("base_image_ref", inst.image.to_string()),
    ] {
        props.entry(k.into()).or_insert(v);
    }
    let c = Capture {
        properties: props,
        ..c
    };
    let (disk, min_disk) = match &inst.boot_volume {
        Some(b) => {
            let rbd = super::volumes::rbd(ctx).map_err(|_| {
                ApiError::FailedPrecondition(format!(
                    "server {:?} boots from a volume, and this coordinator has no Ceph to read it from",
                    inst.name
                ))
            })?;
            (rbd.volume_ref(&b.volume.to_string()), 0)
        }
        None => match root_in_ceph(ctx, &inst).await? {
            Some(disk) => (disk, inst.resources.disk_gb),
            None => {
                let new = NewImage {
                    name: c.name.clone(),
                    disk_format: format_of(&c)?.to_string(),
                    min_disk_gb: inst.resources.disk_gb,
                    visibility: c.visibility.clone(),
                    properties: c.properties.clone(),
                    ..NewImage::default()
                };
                return super::local_capture::request(ctx, project, &inst, new).await;
            }
        },
    };
    capture(ctx, project, disk, min_disk, c).await
}

/// The root disk of `inst` in Ceph's disks pool, if it is there (`None`:
/// on its node's local storage, or no Ceph here).
async fn root_in_ceph(
    ctx: &Ctx,
    inst: &nubo_common::model::Instance,
) -> ApiResult<Option<DiskRef>> {
    let Ok(rbd) = super::volumes::rbd(ctx) else {
        return Ok(None);
    };
    let disk = rbd.root_disk_ref(&inst.id.to_string());
    let d = disk.clone();
    Ok(ceph(ctx, move |s| s.disk_exists(&d)).await?.then_some(disk))
}

/// Snapshots `disk`, creates the image (`queued`) and starts the copy.
async fn capture(
    ctx: &Ctx,
    project: &ProjectId,
    disk: DiskRef,
    min_disk_gb: u64,
    c: Capture,
) -> ApiResult<Image> {
    let format = format_of(&c)?;
    let img = images::create(
        ctx,
        project,
        NewImage {
            name: c.name.clone(),
            disk_format: format.to_string(),
            min_disk_gb,
            visibility: c.visibility.clone(),
            properties: c.properties.clone(),
            ..NewImage::default()
        },
    )
    .await?;
    let snap_name = format!("capture-{}", img.id);
    let d = disk.clone();
    let snap = match ceph(ctx, move |s| s.snapshot_create(&d, &snap_name)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = images::delete(ctx, project, &img.id.to_string()).await;
            return Err(e);
        }
    };
    let span = tracing::info_span!("image.capture", image = %img.id, disk = %disk.spec());
    tracing::info!(parent: &span, "disk snapshot taken; copying it into the image store");
    let (ctx2, project2, img2) = (ctx.clone(), project.clone(), img.clone());
    tokio::spawn(
        async move {
            if let Err(e) = copy(&ctx2, &project2, &img2, snap, format).await {
                tracing::warn!(error = %e, "capturing the disk failed");
                let reason = format!("capture of {} failed: {e}", disk.spec());
                let _ = super::image_data::edit_image(&ctx2, &img2.id, move |i| {
                    if i.status == ImageStatus::Queued {
                        i.status = ImageStatus::Error;
                        i.status_reason = Some(reason.clone());
                    }
                })
                .await;
            }
        }
        .instrument(span),
    );
    Ok(img)
}

/// The background half of [`capture`]: snapshot → file → image store.
async fn copy(
    ctx: &Ctx,
    project: &ProjectId,
    img: &Image,
    snap: SnapshotRef,
    format: &'static str,
) -> ApiResult<()> {
    let dir = ctx.cfg.image_dir.join("capture");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Unavailable(format!("create {}: {e}", dir.display())))?;
    let raw = dir.join(format!("{}.raw", img.id));
    let _cleanup = Cleanup(vec![raw.clone(), dir.join(format!("{}.qcow2", img.id))]);
    let (s2, r2) = (snap.clone(), raw.clone());
    let exported = ceph(ctx, move |s| s.export_snapshot(&s2, &r2)).await;
    let s3 = snap.clone();
    if let Err(e) = ceph(ctx, move |s| s.snapshot_delete(&s3)).await {
        tracing::warn!(snapshot = %snap.spec(), error = %e, "capture snapshot left behind");
    }
    let size = exported?;
    tracing::info!(bytes = size, gib = size.div_ceil(GIB), "disk exported");
    let file = if format == "qcow2" {
        let out = dir.join(format!("{}.qcow2", img.id));
        let run = tokio::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&out)
            .output()
            .await
            .map_err(|e| ApiError::Unavailable(format!("run qemu-img convert: {e}")))?;
        if !run.status.success() {
            return Err(ApiError::Unavailable(format!(
                "qemu-img convert to qcow2: {}",
                String::from_utf8_lossy(&run.stderr).trim()
            )));
        }
        out
    } else {
        raw
    };
    let f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| ApiError::Unavailable(format!("open {}: {e}", file.display())))?;
    let chunks = futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(format!("read capture file: {e}")), f)),
        }
    })
    .boxed();
    let done =
        super::image_data::upload(ctx, project, &img.id.to_string(), "disk", None, chunks).await?;
    tracing::info!(bytes = done.size_bytes, status = ?done.status, "image captured");
    Ok(())
}

/// Removes the capture's scratch files when dropped.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_raw_or_qcow2() {
        let c = |f: &str| Capture {
            disk_format: f.into(),
            ..Capture::default()
        };
        assert_eq!(format_of(&c("")).unwrap(), "raw");
        assert_eq!(format_of(&c("raw")).unwrap(), "raw");
        assert_eq!(format_of(&c("qcow2")).unwrap(), "qcow2");
        assert!(format_of(&c("vmdk")).is_err());
    }
}
