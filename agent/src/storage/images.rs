//! Image data on this node: downloads image parts from the coordinator
//! (server-streaming `ImageData.Download`) into the local
//! [`nubo_libvirt::ImageCache`], verified against the SHA-256 recorded in
//! the image.
//!
//! Parts are cached as `<state-dir>/images/<image id>` (disk),
//! `<image id>.kernel` and `<image id>.initrd`. A download is first written
//! to `<state-dir>/downloads/`, then copied into the cache by
//! [`nubo_libvirt::ImageCache::ensure_base`], which re-hashes it and only
//! renames it into place when the checksum matches. Concurrent requests for
//! the same part wait for one download.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use nubo_common::model::Image;
use nubo_common::proto::{image_data_client::ImageDataClient, DownloadImageRequest};
use nubo_libvirt::{ImageCache, ImageError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tracing::info;

/// Why an image could not be made available locally. The messages end up
/// in the instance's status, so they name the image and the cause.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The image record carries no checksum for a part it needs.
    #[error("image {image}: no sha256 recorded for its {part}; upload it with `nubo image create --file`")]
    NoChecksum {
        /// Image name (id).
        image: String,
        /// Part.
        part: &'static str,
    },
    /// The image is not active (data not uploaded, or upload failed).
    #[error("image {image} is {status}, not active{reason}")]
    NotActive {
        /// Image name (id).
        image: String,
        /// Its status.
        status: String,
        /// `": <status reason>"` or `""`.
        reason: String,
    },
    /// The coordinator could not be reached or refused the download.
    #[error("image {image}: download of {part} from {endpoint} failed: {message}")]
    Download {
        /// Image name (id).
        image: String,
        /// Part.
        part: &'static str,
        /// Coordinator endpoint.
        endpoint: String,
        /// The gRPC or I/O error.
        message: String,
    },
    /// The data does not match the recorded checksum.
    #[error("image {image} ({part}) checksum mismatch: downloaded data has sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        /// Image name (id).
        image: String,
        /// Part.
        part: &'static str,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The local cache failed.
    #[error("image {image}: {source}")]
    Cache {
        /// Image name (id).
        image: String,
        /// The cache error.
        #[source]
        source: ImageError,
    },
}

/// The local files of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// The verified disk.
    pub disk: PathBuf,
    /// The verified kernel, if the image has one.
    pub kernel: Option<PathBuf>,
    /// The verified initrd, if the image has one.
    pub initrd: Option<PathBuf>,
}

/// Downloads and caches image data.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    endpoint: String,
    auth: crate::config::ApiAuth,
    cache: ImageCache,
    downloads: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

/// An error and its sources, `: `-separated (a source whose text is
/// already there is left out): the TLS reason of a refused connection
/// (`invalid peer certificate: …`) reaches the message. Pure.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The parts of `img` to fetch: (part name, cache id, expected sha256).
/// Pure.
pub fn parts_of(img: &Image) -> Result<Vec<(&'static str, String, String)>, FetchError> {
    let label = format!("{} ({})", img.name, img.id);
    let disk = img
        .checksum_sha256
        .clone()
        .ok_or_else(|| FetchError::NoChecksum {
            image: label.clone(),
            part: "disk",
        })?;
    let mut out = vec![("disk", img.id.to_string(), disk)];
    if let Some(k) = &img.kernel_sha256 {
        out.push(("kernel", format!("{}.kernel", img.id), k.clone()));
    }
    if let Some(i) = &img.initrd_sha256 {
        out.push(("initrd", format!("{}.initrd", img.id), i.clone()));
    }
    Ok(out)
}

impl ImageFetcher {
    /// A fetcher downloading from `endpoint` into `state_dir`.
    pub fn new(endpoint: impl Into<String>, state_dir: &Path) -> Self {
        Self {
            endpoint: endpoint.into(),
            auth: crate::config::ApiAuth::default(),
            cache: ImageCache::new(state_dir),
            downloads: state_dir.join("downloads"),
            locks: Arc::default(),
        }
    }

    /// Authenticates downloads with `auth`: TLS against its CA, and a
    /// token issued for its application credential before each download.
    pub fn with_auth(mut self, auth: crate::config::ApiAuth) -> Self {
        self.auth = auth;
        self
    }

    /// A channel to the coordinator (TLS with the configured CA for an
    /// https:// endpoint).
    async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let mut ep = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| format!("bad endpoint: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if self.endpoint.starts_with("https://") {
            let ca = self
                .auth
                .ca_cert
                .as_ref()
                .ok_or("an https:// api_endpoint needs api_ca_cert")?;
            let pem = tokio::fs::read(ca)
                .await
                .map_err(|e| format!("reading {}: {e}", ca.display()))?;
            ep = ep
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
                .map_err(|e| format!("TLS: {e}"))?;
        }
        ep.connect().await.map_err(|e| chain(&e))
    }

    /// A fresh token for the node's application credential, if one is
    /// configured (downloads are rare: no caching, no expiry to track).
    async fn token(&self, ch: &tonic::transport::Channel) -> Result<Option<String>, String> {
        let Some(path) = &self.auth.credential_file else {
            return Ok(None);
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("reading the API credential {}: {e}", path.display()))?;
        let (id, secret) = parse_credential(&text).ok_or_else(|| {
            format!(
                "{}: expected one line <application credential id>:<secret>",
                path.display()
            )
        })?;
        let t = nubo_common::proto::tokens_client::TokensClient::new(ch.clone())
            .issue(nubo_common::proto::IssueTokenRequest {
                application_credential_id: id.into(),
                application_credential_secret: secret.into(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("login with the node credential: {}", s.message()))?;
        Ok(Some(t.into_inner().token))
    }

    /// The local cache (overlays are made there too).
    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// Makes every part of `img` available locally, verified.
    pub async fn ensure(&self, img: &Image) -> Result<LocalImage, FetchError> {
        use nubo_common::model::ImageStatus;
        let label = format!("{} ({})", img.name, img.id);
        if img.status != ImageStatus::Active {
            return Err(FetchError::NotActive {
                image: label,
                status: format!("{:?}", img.status).to_lowercase(),
                reason: img
                    .status_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
            });
        }
        let mut local = LocalImage {
            disk: PathBuf::new(),
            kernel: None,
            initrd: None,
        };
        for (part, cache_id, sha) in parts_of(img)? {
            let path = self.ensure_part(img, &label, part, &cache_id, &sha).await?;
            match part {
                "kernel" => local.kernel = Some(path),
                "initrd" => local.initrd = Some(path),
                _ => local.disk = path,
            }
        }
        Ok(local)
    }

    async fn ensure_part(
        &self,
        img: &Image,
        label: &str,
        part: &'static str,
        cache_id: &str,
        sha: &str,
    ) -> Result<PathBuf, FetchError> {
        let cache_err = |source| FetchError::Cache {
            image: label.to_string(),
            source,
        };
        let dest = self.cache.base_path(cache_id).map_err(cache_err)?;
        if dest.is_file() {
            return Ok(dest);
        }
        let lock = {
            let mut m = self.locks.lock().await;
            m.entry(cache_id.to_string()).or_default().clone()
        };
        let _g = lock.lock().await;
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp = self.downloads.join(format!("{cache_id}.{}", uuid_suffix()));
        let r = self.download(img, label, part, &tmp, sha).await;
        let r = match r {
            Ok(()) => self
                .cache
                .ensure_base(cache_id, &tmp, sha)
                .await
                .map_err(|e| match e {
                    ImageError::ChecksumMismatch {
                        expected, actual, ..
                    } => FetchError::ChecksumMismatch {
                        image: label.to_string(),
                        part,
                        expected,
                        actual,
                    },
                    e => cache_err(e),
                }),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        r
    }

    /// Streams one part into `tmp`, hashing it; a mismatch is reported
    /// before the cache is touched.
    async fn download(
        &self,
        img: &Image,
        label: &str,
        part: &'static str,
        tmp: &Path,
        sha: &str,
    ) -> Result<(), FetchError> {
        let fail = |message: String| FetchError::Download {
            image: label.to_string(),
            part,
            endpoint: self.endpoint.clone(),
            message,
        };
        let started = std::time::Instant::now();
        tokio::fs::create_dir_all(&self.downloads)
            .await
            .map_err(|e| fail(format!("create {}: {e}", self.downloads.display())))?;
        let ch = self.channel().await.map_err(fail)?;
        let token = self.token(&ch).await.map_err(fail)?;
        let mut req = tonic::Request::new(DownloadImageRequest {
            image_id: img.id.to_string(),
            part: part.into(),
        });
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| fail("the issued token is not ASCII".into()))?;
            req.metadata_mut().insert("authorization", v);
        }
        let mut client = ImageDataClient::new(ch);
        let mut stream = client
            .download(req)
            .await
            .map_err(|s| fail(s.message().to_string()))?
            .into_inner();
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| fail(format!("create {}: {e}", tmp.display())))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| fail(s.message().to_string()))?;
            h.update(&chunk.data);
            n += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .await
                .map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
        let actual = hex(&h.finalize());
        if !actual.eq_ignore_ascii_case(sha) {
            return Err(FetchError::ChecksumMismatch {
                image: label.to_string(),
                part,
                expected: sha.to_string(),
                actual,
            });
        }
        info!(image = %img.id, part, bytes = n, ms = started.elapsed().as_millis() as u64, "image part downloaded");
        Ok(())
    }
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}.partial",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `<id>:<secret>` (surrounding whitespace ignored). Pure.
pub fn parse_credential(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.trim().split_once(':')?;
    let ok = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == ':');
    (ok(id) && ok(secret)).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::{self, DiskFormat, ImageStatus};

    #[test]
    fn chain_keeps_each_distinct_reason_once() {
        let inner = std::io::Error::other("invalid peer certificate: BadSignature");
        let outer = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        // io::Error displays its inner error: not repeated.
        assert_eq!(chain(&outer), "invalid peer certificate: BadSignature");
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Transport(#[source] std::io::Error);
        assert_eq!(
            chain(&Transport(outer)),
            "transport error: invalid peer certificate: BadSignature"
        );
    }

    #[test]
    fn credential_file_is_id_colon_secret() {
        assert_eq!(parse_credential(" a-b:c_d\n"), Some(("a-b", "c_d")));
        for bad in ["", "ab", ":s", "id:", "id:s:x", "id:s t"] {
            assert_eq!(parse_credential(bad), None, "{bad:?}");
        }
    }
    use nubo_common::{ImageId, ProjectId};

    fn image() -> Image {
        Image {
            id: ImageId::new_random(),
            name: "g".into(),
            project: ProjectId::default_project(),
            disk_format: DiskFormat::Raw,
            size_bytes: 1,
            checksum_sha256: Some("a".repeat(64)),
            min_disk_gb: 0,
            min_ram_mb: 0,
            status: ImageStatus::Active,
            created_at: model::now(),
            kernel_sha256: Some("b".repeat(64)),
            initrd_sha256: None,
            kernel_cmdline: None,
            status_reason: None,
            access: Default::default(),
            attrs: Default::default(),
        }
    }

    #[test]
    fn parts_follow_the_declared_checksums() {
        let img = image();
        let p = parts_of(&img).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], ("disk", img.id.to_string(), "a".repeat(64)));
        assert_eq!(p[1].0, "kernel");
        assert_eq!(p[1].1, format!("{}.kernel", img.id));
        let mut no_sum = image();
        no_sum.checksum_sha256 = None;
        assert!(matches!(
            parts_of(&no_sum),
            Err(FetchError::NoChecksum { part: "disk", .. })
        ));
    }

    #[tokio::test]
    async fn inactive_images_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = ImageFetcher::new("http://127.0.0.1:1", dir.path());
        let mut img = image();
        img.status = ImageStatus::Error;
        img.status_reason = Some("checksum mismatch".into());
        let e = f.ensure(&img).await.unwrap_err().to_string();
        assert!(e.contains("is error, not active: checksum mismatch"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_coordinator_is_a_download_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = ImageFetcher::new("http://127.0.0.1:1", dir.path());
        let e = f.ensure(&image()).await.unwrap_err();
        assert!(
            matches!(e, FetchError::Download { part: "disk", .. }),
            "{e}"
        );
    }
}
