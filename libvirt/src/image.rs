//! Local image store: verified base images and per-instance qcow2 overlays.
//!
//! Layout under the state directory:
//! `images/<image id>` (immutable, verified bases) and
//! `instances/<instance id>/disk.qcow2` (copy-on-write overlays).
//! Directories are world-traversable because libvirt runs QEMU as an
//! unprivileged user that must read the backing chain.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::process::Command;

const GIB: u64 = 1 << 30;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An id that cannot be used as a file name.
    #[error("invalid {kind} id {id:?} (allowed: ASCII letters, digits, '-', '_', '.'; not starting with '.')")]
    InvalidId {
        /// "image" or "instance".
        kind: &'static str,
        /// Offending id.
        id: String,
    },
    /// The expected checksum is not 64 hex digits.
    #[error("image {image_id}: expected sha256 {expected:?} is not 64 hex digits")]
    BadExpectedChecksum {
        /// Image concerned.
        image_id: String,
        /// Offending value.
        expected: String,
    },
    /// The copied data does not match the expected checksum.
    #[error("image {image_id}: {source_path} is corrupt: sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        /// Image concerned.
        image_id: String,
        /// Where it was copied from.
        source_path: PathBuf,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `qemu-img` exited with an error.
    #[error("qemu-img {op} on {path} failed ({status}): {stderr}")]
    QemuImg {
        /// Sub-command (`info`, `create`).
        op: &'static str,
        /// Image concerned.
        path: PathBuf,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// `qemu-img info` printed something unexpected.
    #[error("qemu-img info on {path}: unexpected output: {source}")]
    QemuImgOutput {
        /// Image concerned.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
    /// The flavor's disk is smaller than the image.
    #[error("disk of {requested_gb} GiB is smaller than the virtual size of image {base} ({virtual_size} bytes)")]
    DiskTooSmall {
        /// Base image.
        base: PathBuf,
        /// Its virtual size in bytes.
        virtual_size: u64,
        /// Requested disk size.
        requested_gb: u64,
    },
    /// A blocking task panicked or was cancelled.
    #[error("image store worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}

/// What `qemu-img info --output=json` tells us.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageInfo {
    /// Disk format (`raw`, `qcow2`, …).
    pub format: String,
    /// Virtual size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// The local image store under one state directory.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    /// A store rooted at `state_dir` (created lazily).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ImageCache {
            root: state_dir.into(),
        }
    }

    /// Where the base of `image_id` lives.
    pub fn base_path(&self, image_id: &str) -> Result<PathBuf, ImageError> {
        check_id("image", image_id)?;
        Ok(self.root.join("images").join(image_id))
    }

    /// Where the overlay of `instance_id` lives.
    pub fn overlay_path(&self, instance_id: &str) -> Result<PathBuf, ImageError> {
        check_id("instance", instance_id)?;
        Ok(self
            .root
            .join("instances")
            .join(instance_id)
            .join("disk.qcow2"))
    }

    /// Makes sure the verified base image `image_id` is in the store,
    /// copying it from `source` if needed: streamed, hashed on the way,
    /// fsynced and renamed into place only if the sha256 matches. An image
    /// already in place was verified when it was stored and is reused.
    pub async fn ensure_base(
        &self,
        image_id: &str,
        source: &Path,
        expected_sha256: &str,
    ) -> Result<PathBuf, ImageError> {
        let dest = self.base_path(image_id)?;
        let expected = expected_sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ImageError::BadExpectedChecksum {
                image_id: image_id.to_owned(),
                expected: expected_sha256.to_owned(),
            });
        }
        if dest.is_file() {
            return Ok(dest);
        }
        let (image_id, source) = (image_id.to_owned(), source.to_path_buf());
        tokio::task::spawn_blocking(move || copy_verified(&image_id, &source, &dest, &expected))
            .await?
    }

    /// Creates the qcow2 overlay of `instance_id` on top of `base`, with a
    /// virtual size of `size_gb` GiB. Returns the existing overlay unchanged
    /// if there is one (it holds the instance's data).
    pub async fn create_overlay(
        &self,
        base: &Path,
        instance_id: &str,
        size_gb: u64,
    ) -> Result<PathBuf, ImageError> {
        let overlay = self.overlay_path(instance_id)?;
        if overlay.is_file() {
            return Ok(overlay);
        }
        let info = image_info(base).await?;
        let requested = size_gb.saturating_mul(GIB);
        if requested < info.virtual_size {
            return Err(ImageError::DiskTooSmall {
                base: base.to_path_buf(),
                virtual_size: info.virtual_size,
                requested_gb: size_gb,
            });
        }
        let dir = overlay.parent().unwrap_or(&self.root).to_path_buf();
        make_dirs(&dir)?;
        let tmp = dir.join("disk.qcow2.partial");
        let out = Command::new("qemu-img")
            .arg("create")
            .args(["-q", "-f", "qcow2", "-F", &info.format, "-b"])
            .arg(base)
            .arg(&tmp)
            .arg(requested.to_string())
            .output()
            .await
            .map_err(io_err("run qemu-img create for", &tmp))?;
        if !out.status.success() {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::QemuImg {
                op: "create",
                path: overlay,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &tmp))?;
        fs::rename(&tmp, &overlay).map_err(io_err("rename into place", &overlay))?;
        Ok(overlay)
    }

    /// Deletes the overlay of `instance_id` and its directory; missing is fine.
    pub async fn remove_overlay(&self, instance_id: &str) -> Result<(), ImageError> {
        let overlay = self.overlay_path(instance_id)?;
        let Some(dir) = overlay.parent().map(Path::to_path_buf) else {
            return Ok(());
        };
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::Io {
                op: "remove",
                path: dir,
                source: e,
            }),
        }
    }
}

/// Runs `qemu-img info --output=json` on `path`.
pub async fn image_info(path: &Path) -> Result<ImageInfo, ImageError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .await
        .map_err(io_err("run qemu-img info for", path))?;
    if !out.status.success() {
        return Err(ImageError::QemuImg {
            op: "info",
            path: path.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|source| ImageError::QemuImgOutput {
        path: path.to_path_buf(),
        source,
    })
}

fn check_id(kind: &'static str, id: &str) -> Result<(), ImageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidId {
            kind,
            id: id.to_owned(),
        })
    }
}

fn make_dirs(dir: &Path) -> Result<(), ImageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

fn copy_verified(
    image_id: &str,
    source: &Path,
    dest: &Path,
    expected: &str,
) -> Result<PathBuf, ImageError> {
    let dir = dest.parent().unwrap_or(Path::new("/"));
    make_dirs(dir)?;
    let tmp = dir.join(format!(".{image_id}.partial-{}", std::process::id()));
    let result = (|| {
        let mut src = File::open(source).map_err(io_err("open", source))?;
        let mut out = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).map_err(io_err("read", source))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err("write", &tmp))?;
        }
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != expected {
            return Err(ImageError::ChecksumMismatch {
                image_id: image_id.to_owned(),
                source_path: source.to_path_buf(),
                expected: expected.to_owned(),
                actual,
            });
        }
        out.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &tmp))?;
        out.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, dest).map_err(io_err("rename into place", dest))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))?;
        Ok(dest.to_path_buf())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_plain_file_names() {
        assert!(check_id("image", "cirros-0.6.2_x86.qcow2").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b"] {
            assert!(
                matches!(check_id("image", bad), Err(ImageError::InvalidId { .. })),
                "{bad:?}"
            );
        }
    }
}
