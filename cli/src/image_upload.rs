//! `nubo image create --file …`: hashing and client-streaming upload of
//! image parts (disk, kernel, initrd) in chunks of at most 1 MiB, never
//! holding a whole file in memory, with a progress line on a TTY.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use nubo_common::proto::{image_data_client::ImageDataClient, Image, ImageChunk};
use sha2::{Digest, Sha256};

use crate::api::Api;

/// Upload chunk size (the server's limit).
pub const CHUNK: usize = 1 << 20;

/// SHA-256 (hex) and size of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), n_total))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Guesses the disk format from the file's first bytes (qcow2 magic).
pub fn sniff_format(path: &Path) -> Result<&'static str> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// Streams `path` as `part` of `image` to the coordinator.
pub async fn upload(api: &Api, image: &str, part: &str, path: &Path) -> Result<Image> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ImageChunk>(4);
    let (image_s, project, part_s) = (image.to_string(), api.project.clone(), part.to_string());
    let label = format!("{part} {}", path.display());
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let tty = std::io::stderr().is_terminal();
        let mut sent = 0u64;
        let mut first = true;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf)?;
            if n == 0 && !first {
                break;
            }
            buf.truncate(n);
            sent += n as u64;
            let chunk = ImageChunk {
                image: if first {
                    image_s.clone()
                } else {
                    String::new()
                },
                project: if first {
                    project.clone()
                } else {
                    String::new()
                },
                part: if first { part_s.clone() } else { String::new() },
                size_bytes: if first { size } else { 0 },
                data: buf,
            };
            first = false;
            if tx.blocking_send(chunk).is_err() {
                // The call failed; its error is reported by the caller.
                break;
            }
            if tty {
                let pct = (sent * 100).checked_div(size).unwrap_or(100);
                eprint!("\rupload {label}: {pct:3}% ({sent}/{size} bytes)");
                let _ = std::io::stderr().flush();
            }
            if n == 0 {
                break;
            }
        }
        if tty {
            eprintln!();
        }
        Ok(())
    });
    let mut client = ImageDataClient::new(api.channel());
    let r = client
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await.context("upload reader task")??;
    Ok(r.map_err(|s| api.error(s))?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_in_chunks_and_sniffs_qcow2() {
        let dir = std::env::temp_dir().join(format!("nbt-cli-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.raw");
        let data: Vec<u8> = (0..(CHUNK * 2 + 7)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (sum, size) = hash_file(&p).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(sum, hex(&Sha256::digest(&data)));
        assert_eq!(sniff_format(&p).unwrap(), "raw");
        let q = dir.join("b.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(sniff_format(&q).unwrap(), "qcow2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
