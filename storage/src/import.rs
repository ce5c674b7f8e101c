//! Reading image data for an RBD import: RBD images are raw, so a qcow2
//! file is converted first (by `qemu-img convert`, package `qemu-utils`).

use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// A reader of the image's raw bytes and their length, ready for
/// [`crate::RbdStore::ensure_image`]: the file itself when `format` is
/// `raw`, else a raw copy made with `qemu-img convert` in `scratch`
/// (unlinked at once; the open handle keeps it readable, so nothing is
/// left behind even if the import fails). `image_id` names the copy.
pub fn raw_image_reader(
    disk: &Path,
    format: &str,
    scratch: &Path,
    image_id: &str,
) -> Result<(Box<dyn Read>, u64)> {
    let io = |op: &'static str, p: &Path| {
        let object = p.display().to_string();
        move |source| Error::Io { op, object, source }
    };
    let path = if format == "raw" {
        disk.to_path_buf()
    } else {
        std::fs::create_dir_all(scratch).map_err(io("create", scratch))?;
        let tmp = scratch.join(format!("{image_id}.raw.partial"));
        let out = Command::new("qemu-img")
            .args(["convert", "-q", "-f", format, "-O", "raw"])
            .arg(disk)
            .arg(&tmp)
            .output()
            .map_err(io("run qemu-img convert for", &tmp))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Io {
                op: "convert to raw",
                object: disk.display().to_string(),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        tmp
    };
    let file = std::fs::File::open(&path).map_err(io("open", &path))?;
    let size = file.metadata().map_err(io("stat", &path))?.len();
    if path != disk {
        let _ = std::fs::remove_file(&path);
    }
    Ok((Box::new(std::io::BufReader::new(file)), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_files_are_read_as_they_are() {
        let dir = std::env::temp_dir().join(format!("nubo-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.raw");
        std::fs::write(&f, b"0123456789").unwrap();
        let (mut r, size) = raw_image_reader(&f, "raw", &dir, "a").unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!((size, got.as_slice()), (10, &b"0123456789"[..]));
        assert!(f.exists(), "the source is never removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_conversion_failure_names_the_file_and_leaves_no_copy() {
        let dir = std::env::temp_dir().join(format!("nubo-import-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("b.qcow2");
        std::fs::write(&f, b"not a qcow2 file").unwrap();
        match raw_image_reader(&f, "qcow2", &dir, "b") {
            Err(Error::Io { op, object, .. }) => {
                assert!(
                    op == "convert to raw" || op == "run qemu-img convert for",
                    "{op}"
                );
                assert!(object.contains("b"), "{object}");
            }
            Ok(_) => panic!("garbage converted"),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(!dir.join("b.raw.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
