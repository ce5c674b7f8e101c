//! The local image store against the real `qemu-img`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;

use nubo_libvirt::{image_info, ImageCache, ImageError};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_source(dir: &Path, len: usize) -> (std::path::PathBuf, String) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let path = dir.join("source.raw");
    std::fs::write(&path, &data).expect("write source");
    (path, sha256_hex(&data))
}

#[tokio::test]
async fn base_is_copied_verified_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, sha) = write_source(dir.path(), 3 * MIB as usize + 17);
    let cache = ImageCache::new(dir.path().join("state"));

    let base = cache
        .ensure_base("img-1", &src, &sha.to_uppercase())
        .await
        .expect("ensure_base");
    assert_eq!(base, cache.base_path("img-1").expect("path"));
    assert_eq!(
        std::fs::read(&base).expect("read base"),
        std::fs::read(&src).expect("read src")
    );
    // Second call reuses the stored copy even if the source is gone.
    std::fs::remove_file(&src).expect("rm src");
    assert_eq!(
        cache.ensure_base("img-1", &src, &sha).await.expect("reuse"),
        base
    );
}

#[tokio::test]
async fn corrupt_source_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, _) = write_source(dir.path(), 4096);
    let cache = ImageCache::new(dir.path().join("state"));
    let wrong = "0".repeat(64);
    let err = cache
        .ensure_base("img-2", &src, &wrong)
        .await
        .expect_err("must fail");
    assert!(
        matches!(&err, ImageError::ChecksumMismatch { image_id, expected, .. } if image_id == "img-2" && *expected == wrong),
        "{err}"
    );
    let images = dir.path().join("state/images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .expect("images dir")
        .collect::<Result<_, _>>()
        .expect("entries");
    assert!(left.is_empty(), "leftovers: {left:?}");

    let err = cache
        .ensure_base("img-2", &src, "abc")
        .await
        .expect_err("bad checksum string");
    assert!(
        matches!(err, ImageError::BadExpectedChecksum { .. }),
        "{err}"
    );
    let err = cache
        .ensure_base("../x", &src, &wrong)
        .await
        .expect_err("bad id");
    assert!(matches!(err, ImageError::InvalidId { .. }), "{err}");
}

#[tokio::test]
async fn overlay_uses_detected_base_format_and_size_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A raw base with a 1 GiB + 1 MiB virtual size (sparse).
    let raw = dir.path().join("big.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len((1 << 30) + MIB))
        .expect("sparse file");
    let cache = ImageCache::new(dir.path().join("state"));
    let id = "6a1c3b7e-0000-4000-8000-00000000abcd";

    let err = cache
        .create_overlay(&raw, id, 1)
        .await
        .expect_err("1 GiB < image");
    assert!(
        matches!(err, ImageError::DiskTooSmall { requested_gb: 1, virtual_size, .. } if virtual_size == (1 << 30) + MIB),
        "{err}"
    );
    assert!(!cache.overlay_path(id).expect("path").exists());

    let overlay = cache.create_overlay(&raw, id, 2).await.expect("overlay");
    let info = image_info(&overlay).await.expect("info");
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 2 << 30);
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .expect("qemu-img");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["backing-filename-format"], "raw");
    assert_eq!(json["backing-filename"], raw.to_str().expect("utf8"));

    // A qcow2 base is detected as qcow2.
    let id2 = "6a1c3b7e-0000-4000-8000-00000000abce";
    let overlay2 = cache.create_overlay(&overlay, id2, 2).await.expect("chain");
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay2)
        .output()
        .expect("qemu-img");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["backing-filename-format"], "qcow2");

    cache.remove_overlay(id2).await.expect("remove");
    assert!(!overlay2.exists());
    cache
        .remove_overlay(id2)
        .await
        .expect("remove is idempotent");

    let err = cache
        .create_overlay(&dir.path().join("missing"), "x-1", 1)
        .await
        .expect_err("missing base");
    assert!(
        matches!(err, ImageError::QemuImg { op: "info", .. }),
        "{err}"
    );
}
