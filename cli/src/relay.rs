//! Console logs and packet captures, relayed by the coordinator from the
//! node that has them (`Servers.Console`, `Ports.Capture`): the CLI never
//! talks to a hypervisor. Chunks are written to stdout as they come.

use std::io::Write;

use anyhow::Result;
use nubo_common::proto::StreamChunk;
use tonic::Streaming;

use crate::api::Api;

/// Copies a relayed stream to stdout until it ends (or fails: the error
/// names what the coordinator or the node said).
pub async fn copy_to_stdout(api: &Api, mut stream: Streaming<StreamChunk>) -> Result<()> {
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.message().await.map_err(|s| api.error(s))? {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}
