//! The load: `instances` creates (count=1 each) through the real gRPC API,
//! `concurrency` in flight at a time on one HTTP/2 connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nubo_common::proto::{servers_client::ServersClient, CreateServerRequest};
use nubo_common::InstanceId;
use tonic::transport::Channel;

use crate::cluster::{FLAVOR_NAME, IMAGE_NAME, NETWORK_NAME};

/// One accepted create.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// The new instance.
    pub id: InstanceId,
    /// When the request was sent.
    pub sent: Instant,
    /// How long the API took to answer.
    pub latency: Duration,
}

/// Everything the load produced.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Accepted creates.
    pub accepted: Vec<Accepted>,
    /// Failed creates: their messages.
    pub errors: Vec<String>,
}

/// Issues `instances` creates with `concurrency` workers.
pub async fn run(channel: Channel, instances: usize, concurrency: usize) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let mut client = ServersClient::new(channel.clone());
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= instances {
                    return out;
                }
                let sent = Instant::now();
                let resp = client.create(request(i)).await;
                let latency = sent.elapsed();
                match resp.map(tonic::Response::into_inner) {
                    Err(status) => out.errors.push(status.message().to_string()),
                    Ok(r) => match r.results.into_iter().next() {
                        None => out.errors.push("empty create response".into()),
                        Some(res) => match res.server.map(|s| s.id.parse::<InstanceId>()) {
                            Some(Ok(id)) => out.accepted.push(Accepted { id, sent, latency }),
                            Some(Err(e)) => out.errors.push(e.to_string()),
                            None => out.errors.push(res.error),
                        },
                    },
                }
            }
        }));
    }
    let mut all = LoadResult::default();
    for w in workers {
        match w.await {
            Ok(r) => {
                all.accepted.extend(r.accepted);
                all.errors.extend(r.errors);
            }
            Err(e) => all.errors.push(format!("worker failed: {e}")),
        }
    }
    all
}

/// The create request for instance `i`.
fn request(i: usize) -> CreateServerRequest {
    CreateServerRequest {
        name: format!("bench-{i}"),
        flavor: FLAVOR_NAME.into(),
        image_ref: IMAGE_NAME.into(),
        networks: vec![NETWORK_NAME.into()],
        count: 1,
        ..Default::default()
    }
}
