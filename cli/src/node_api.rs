//! The agents' node API (console logs, packet captures): the CLI asks the
//! coordinator where the instance or port lives, reads the node's API
//! address from its `nubo.node-api` label and streams the answer to
//! stdout.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{Api, Call};

/// Node label carrying the node API address (set by the agent).
pub const NODE_API_LABEL: &str = "nubo.node-api";

/// The node API address of `node`.
pub async fn address(api: &Api, node: &str) -> Result<String> {
    if node.is_empty() {
        bail!("not placed on a node yet");
    }
    let n = api.nodes().get(api.get_req(node)).await.or_fail(api)?;
    n.labels.get(NODE_API_LABEL).cloned().ok_or_else(|| {
        anyhow!("node {node} publishes no node API (agent too old or --node-api-listen unusable)")
    })
}

/// Splits an HTTP/1.0 response head from its body. Pure.
pub fn split_head(buf: &[u8]) -> Option<(u16, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, end))
}

/// GETs `path` from `addr` and copies the body to stdout as it arrives.
pub async fn stream(addr: &str, path: &str) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("node API {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = std::io::stdout();
    let mut body_started = false;
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if !body_started {
                bail!("node API {addr}: connection closed without an answer");
            }
            return Ok(());
        }
        if body_started {
            out.write_all(&chunk[..n])?;
            out.flush()?;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((code, end)) = split_head(&buf) {
            let body = &buf[end..];
            if code != 200 {
                let mut rest = body.to_vec();
                s.read_to_end(&mut rest).await?;
                bail!(
                    "node API {addr}: {code}: {}",
                    String::from_utf8_lossy(&rest).trim()
                );
            }
            out.write_all(body)?;
            out.flush()?;
            body_started = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_line() {
        let r = b"HTTP/1.0 404 Not Found\r\ncontent-type: text/plain\r\n\r\nno console";
        let (code, end) = split_head(r).unwrap();
        assert_eq!(code, 404);
        assert_eq!(&r[end..], b"no console");
        assert!(split_head(b"HTTP/1.0 200 OK\r\n").is_none());
    }
}
