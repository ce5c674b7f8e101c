//! The coordinator's image data store: uploaded image parts as plain files
//! under `--image-dir` (`<dir>/<image id>/<part>`).
//!
//! Several coordinators must share the directory (NFS or similar); Ceph RBD
//! replaces it in the storage issue. Writes go to a `.partial` file that is
//! hashed while written and renamed into place only when its SHA-256 matches
//! the one declared when the image was created.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// Largest chunk accepted or sent (1 MiB).
pub const MAX_CHUNK: usize = 1 << 20;

/// The parts an image can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The disk (always present).
    Disk,
    /// Kernel for direct kernel boot.
    Kernel,
    /// Initrd for direct kernel boot.
    Initrd,
}

impl Part {
    /// Parses `disk`, `kernel` or `initrd` (`""` = disk).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s.trim() {
            "" | "disk" => Ok(Part::Disk),
            "kernel" => Ok(Part::Kernel),
            "initrd" => Ok(Part::Initrd),
            other => Err(ApiError::InvalidArgument(format!(
                "image part {other:?} must be disk, kernel or initrd"
            ))),
        }
    }

    /// File name of the part.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Disk => "disk",
            Part::Kernel => "kernel",
            Part::Initrd => "initrd",
        }
    }

    /// The SHA-256 the image declares for this part (`None` = the image
    /// has no such part, or no checksum for its disk).
    pub fn declared(self, img: &nubo_common::model::Image) -> Option<&str> {
        match self {
            Part::Disk => img.checksum_sha256.as_deref(),
            Part::Kernel => img.kernel_sha256.as_deref(),
            Part::Initrd => img.initrd_sha256.as_deref(),
        }
    }

    /// The parts `img` declares.
    pub fn all_of(img: &nubo_common::model::Image) -> Vec<Part> {
        [Part::Disk, Part::Kernel, Part::Initrd]
            .into_iter()
            .filter(|p| *p == Part::Disk || p.declared(img).is_some())
            .collect()
    }
}

/// Validates an optional SHA-256 field of a request (`""` = none).
pub fn optional_sha256(field: &str, v: &str) -> Result<Option<String>, ApiError> {
    match v.trim() {
        "" => Ok(None),
        c if c.len() == 64 && c.chars().all(|x| x.is_ascii_hexdigit()) => {
            Ok(Some(c.to_ascii_lowercase()))
        }
        c => Err(ApiError::InvalidArgument(format!(
            "{field} {c:?} is not 64 hex digits"
        ))),
    }
}

/// Hex encoding of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// An upload in progress: data goes to a `.partial` file, hashed on the way.
#[derive(Debug)]
pub struct Upload {
    tmp: PathBuf,
    dest: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    ApiError::Unavailable(format!("image store: {what} {}: {e}", path.display()))
}

impl ImageStore {
    /// A store rooted at `root` (created on first upload).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where `part` of `image_id` lives.
    pub fn path(&self, image_id: &str, part: Part) -> PathBuf {
        self.root.join(image_id).join(part.as_str())
    }

    /// Whether `part` of `image_id` is stored.
    pub async fn has(&self, image_id: &str, part: Part) -> bool {
        tokio::fs::metadata(self.path(image_id, part))
            .await
            .is_ok_and(|m| m.is_file())
    }

    /// Starts writing `part` of `image_id`.
    pub async fn begin(&self, image_id: &str, part: Part) -> Result<Upload, ApiError> {
        let dest = self.path(image_id, part);
        let dir = self.root.join(image_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io("create", &dir, e))?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            part.as_str(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io("create", &tmp, e))?;
        Ok(Upload {
            tmp,
            dest,
            file,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Removes every part of `image_id`; missing is fine.
    pub async fn remove(&self, image_id: &str) -> Result<(), ApiError> {
        let dir = self.root.join(image_id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir, e)),
        }
    }
}

impl Upload {
    /// Appends a chunk.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ApiError> {
        self.hasher.update(data);
        self.written += data.len() as u64;
        self.file
            .write_all(data)
            .await
            .map_err(|e| io("write", &self.tmp, e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Finishes the upload: the file is renamed into place if its SHA-256
    /// is `expected` (or nothing is expected) and the digest is returned;
    /// otherwise it is deleted and the actual digest is returned as the
    /// inner error.
    pub async fn finish(
        mut self,
        expected: Option<&str>,
    ) -> Result<Result<String, String>, ApiError> {
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if expected.is_some_and(|e| !actual.eq_ignore_ascii_case(e)) {
            self.abort().await;
            return Ok(Err(actual));
        }
        self.file
            .sync_all()
            .await
            .map_err(|e| io("fsync", &self.tmp, e))?;
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(|e| io("rename", &self.dest, e))?;
        Ok(Ok(actual))
    }

    /// Deletes the partial file.
    pub async fn abort(self) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_and_checksums_validate() {
        assert_eq!(Part::parse("").unwrap(), Part::Disk);
        assert_eq!(Part::parse("initrd").unwrap(), Part::Initrd);
        assert!(Part::parse("nope").is_err());
        assert_eq!(optional_sha256("x", "").unwrap(), None);
        assert_eq!(
            optional_sha256("x", &"AB".repeat(32)).unwrap(),
            Some("ab".repeat(32))
        );
        assert!(optional_sha256("x", "abc").is_err());
    }

    #[tokio::test]
    async fn upload_is_kept_only_when_the_checksum_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let good = hex(&Sha256::digest(b"hello"));
        let mut up = store.begin("img1", Part::Kernel).await.unwrap();
        up.write(b"hel").await.unwrap();
        up.write(b"lo").await.unwrap();
        assert_eq!(up.written(), 5);
        assert_eq!(up.finish(Some(&good)).await.unwrap(), Ok(good.clone()));
        assert!(store.has("img1", Part::Kernel).await);
        assert_eq!(
            std::fs::read(store.path("img1", Part::Kernel)).unwrap(),
            b"hello"
        );

        let mut up = store.begin("img1", Part::Disk).await.unwrap();
        up.write(b"tampered").await.unwrap();
        let r = up.finish(Some(&good)).await.unwrap();
        assert!(r.is_err());
        assert!(!store.has("img1", Part::Disk).await);
        // No partial file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("img1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kernel")]);
        store.remove("img1").await.unwrap();
        assert!(!dir.path().join("img1").exists());
    }
}
