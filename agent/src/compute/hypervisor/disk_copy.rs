//! Copying a root disk into a file of a given format, for captures
//! ([`super::Hypervisor::capture_root`]): `qemu-img convert`, which reads a
//! whole backing chain (a local qcow2 overlay and its cached base image)
//! into one self-contained file.

use std::path::Path;

use super::HypervisorError;

/// The formats a capture is written in. Pure.
pub fn valid_format(format: &str) -> bool {
    matches!(format, "raw" | "qcow2")
}

/// Converts `src` (of format `src_format`, probed when `None`) into `dest`
/// in `format`; `force_share` opens `src` without taking its lock (QEMU
/// holds it while the guest is defined and running; the caller made sure
/// nothing writes it meanwhile). Returns the size of `dest` in bytes.
pub async fn convert(
    src: &Path,
    src_format: Option<&str>,
    dest: &Path,
    format: &str,
    force_share: bool,
) -> Result<u64, HypervisorError> {
    if !valid_format(format) {
        return Err(HypervisorError::Unsupported(format!(
            "capture format {format:?} (raw or qcow2)"
        )));
    }
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["convert", "-q"]);
    if force_share {
        cmd.arg("-U");
    }
    if let Some(f) = src_format {
        cmd.args(["-f", f]);
    }
    cmd.args(["-O", format]).arg(src).arg(dest);
    let out = cmd
        .output()
        .await
        .map_err(|e| HypervisorError::Backend(format!("run qemu-img convert: {e}")))?;
    if !out.status.success() {
        return Err(HypervisorError::Backend(format!(
            "qemu-img convert {} to {format}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    file_size(dest).await
}

/// The size of `path` in bytes.
pub async fn file_size(path: &Path) -> Result<u64, HypervisorError> {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .map_err(|e| HypervisorError::Backend(format!("stat {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_raw_or_qcow2() {
        assert!(valid_format("raw"));
        assert!(valid_format("qcow2"));
        assert!(!valid_format("vmdk"));
        assert!(!valid_format(""));
    }
}
