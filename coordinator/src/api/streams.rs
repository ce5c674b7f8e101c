//! Relaying a node's stream (console, capture) to a gRPC caller: chunks
//! are forwarded as they come; when the caller leaves, the node connection
//! is dropped, which ends the stream on the node.

use nubo_common::proto as pb;
use nubo_nodeapi::NodeStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// The gRPC stream type of relayed node streams.
pub type Relay = ReceiverStream<Result<pb::StreamChunk, Status>>;

/// Forwards `stream` to the caller.
pub fn relay(mut stream: NodeStream) -> Relay {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                // The caller left: drop the node connection now rather
                // than at the node's next chunk.
                _ = tx.closed() => return,
                c = stream.next_chunk() => c,
            };
            let Some(msg) = msg else { return };
            let msg = msg
                .map(|data| pb::StreamChunk {
                    data: data.to_vec(),
                })
                .map_err(|e| Status::unavailable(e.to_string()));
            let end = msg.is_err();
            if tx.send(msg).await.is_err() || end {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
