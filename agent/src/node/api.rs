//! The node API: a small HTTP endpoint on each agent (`--node-api-listen`,
//! default `<underlay-ip>:7402`) for what only the node can answer:
//!
//! - `GET /v1/console/<instance id>[?follow=1]`: the serial console log
//!   (`<state-dir>/console/<id>.log`), followed while the client reads.
//! - `GET /v1/capture/<tap>[?count=N]`: `tcpdump -l -n -e` text on a local
//!   tap, streamed.
//! - `GET /v1/etcd-status`: this agent's etcd session and self-fencing
//!   phase ([`nubo_common::model::EtcdSessionStatus`], JSON), read by the
//!   peer witnesses of the other agents and by the coordinator before it
//!   lifts a storage fence (`docs/failure-handling.md`).
//!
//! Its address is published in the node record as the label
//! [`NODE_API_LABEL`], which `nubo server console` / `nubo port capture`
//! read after asking the coordinator where the instance or port lives.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn, Instrument};

use crate::config::AgentConfig;
use crate::fencing::SessionWatch;

/// Node label carrying the node API address.
pub const NODE_API_LABEL: &str = nubo_common::model::NODE_API_LABEL;

#[derive(Clone)]
struct Ctx {
    console_dir: PathBuf,
    session: Option<SessionWatch>,
}

#[derive(Debug, Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    follow: Option<u8>,
}

#[derive(Debug, Deserialize)]
struct CaptureQuery {
    #[serde(default)]
    count: Option<u32>,
}

/// Whether `s` is a tap name nubo creates (`tap` + hex digits). Pure.
pub fn valid_tap(s: &str) -> bool {
    s.len() <= 15
        && s.strip_prefix("tap")
            .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Publishes the address as a label and serves the node API in `tasks`;
/// `/v1/etcd-status` answers from `session` (404 without).
/// A bind failure is logged, not fatal: instances matter more.
pub async fn spawn(cfg: &mut AgentConfig, tasks: &mut JoinSet<()>, session: Option<SessionWatch>) {
    let addr = cfg.node_api();
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "node API not available");
            return;
        }
    };
    // The bound address (a configured port 0 gets a real one).
    let addr = listener.local_addr().unwrap_or(addr);
    cfg.labels
        .insert(NODE_API_LABEL.to_string(), addr.to_string());
    let app = router(cfg.state_dir.join("console"), session);
    info!(%addr, "node API listening");
    tasks.spawn(
        async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "node API stopped");
            }
        }
        .in_current_span(),
    );
}

fn router(console_dir: PathBuf, session: Option<SessionWatch>) -> Router {
    Router::new()
        .route("/v1/console/{id}", get(console))
        .route("/v1/capture/{tap}", get(capture))
        .route(
            nubo_common::model::EtcdSessionStatus::PATH,
            get(etcd_status),
        )
        .with_state(Ctx {
            console_dir,
            session,
        })
}

async fn etcd_status(State(ctx): State<Ctx>) -> Response {
    match &ctx.session {
        Some(s) => axum::Json(s.status()).into_response(),
        None => (StatusCode::NOT_FOUND, "no etcd session here\n").into_response(),
    }
}

fn stream_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    Body::from_stream(ReceiverStream::new(rx)).into_response()
}

async fn console(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Response {
    if id.parse::<nubo_common::InstanceId>().is_err() {
        return (StatusCode::BAD_REQUEST, "bad instance id\n").into_response();
    }
    let path = ctx.console_dir.join(format!("{id}.log"));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::NOT_FOUND,
                format!("no console log for {id} on this node: {e}\n"),
            )
                .into_response()
        }
    };
    let follow = q.follow.unwrap_or(0) != 0;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) if !follow => return,
                Ok(0) => {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    // Truncated (log rotated): start over.
                    if let (Ok(pos), Ok(meta)) =
                        (file.stream_position().await, file.metadata().await)
                    {
                        if meta.len() < pos {
                            let _ = file.seek(std::io::SeekFrom::Start(0)).await;
                        }
                    }
                }
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    stream_body(rx)
}

async fn capture(Path(tap): Path<String>, Query(q): Query<CaptureQuery>) -> Response {
    if !valid_tap(&tap) {
        return (StatusCode::BAD_REQUEST, "bad tap name\n").into_response();
    }
    let mut cmd = tokio::process::Command::new("tcpdump");
    cmd.args(["-l", "-n", "-e", "-i", &tap]);
    if let Some(c) = q.count {
        cmd.args(["-c", &c.to_string()]);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run tcpdump: {e}\n"),
            )
                .into_response()
        }
    };
    let Some(mut out) = child.stdout.take() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no tcpdump output\n").into_response();
    };
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match out.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        // The client left or tcpdump ended: make sure it is gone.
        let _ = child.kill().await;
    });
    stream_body(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names() {
        assert!(valid_tap("tap0123abcd"));
        assert!(!valid_tap("tap"));
        assert!(!valid_tap("eth0"));
        assert!(!valid_tap("tap01;rm"));
        assert!(!valid_tap("tap0123456789abcd"));
    }

    #[tokio::test]
    async fn console_serves_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let id = nubo_common::InstanceId::new_random();
        std::fs::write(dir.path().join(format!("{id}.log")), "NUBO-GUEST-IP: x\n").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(dir.path().to_path_buf(), None);
        let srv = tokio::spawn(async move { axum::serve(listener, app).await });
        let body = http_get(addr, &format!("/v1/console/{id}")).await;
        assert!(body.contains("200 OK"), "{body}");
        assert!(body.contains("NUBO-GUEST-IP: x"), "{body}");
        let body = http_get(
            addr,
            &format!("/v1/console/{}", nubo_common::InstanceId::new_random()),
        )
        .await;
        assert!(body.contains("404"), "{body}");
        srv.abort();
    }

    #[tokio::test]
    async fn etcd_status_reports_the_session() {
        use crate::fencing::rules::{Clock, LeaseAck, ManualClock};
        use nubo_common::model::{EtcdSessionStatus, FencePhase};
        let clock = std::sync::Arc::new(ManualClock::new(std::time::Instant::now()));
        let cfg = AgentConfig::new(crate::testutil::node_name("n1"), vec![]);
        let (tx, session) = crate::fencing::session(&cfg, clock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(std::env::temp_dir(), Some(session));
        let srv = tokio::spawn(async move { axum::serve(listener, app).await });
        let status = |body: String| -> EtcdSessionStatus {
            let (_, json) = body.split_once("\r\n\r\n").unwrap();
            serde_json::from_str(json).unwrap()
        };
        let st = status(http_get(addr, "/v1/etcd-status").await);
        assert_eq!(
            (st.healthy, st.last_ack_age_ms),
            (false, None),
            "never acked"
        );
        assert_eq!(st.node.as_str(), "n1");
        assert_eq!(st.phase, FencePhase::Normal, "no gate yet");
        tx.acks.send_replace(Some(LeaseAck {
            sent: clock.now(),
            lease: 1,
        }));
        clock.advance(std::time::Duration::from_millis(300));
        let st = status(http_get(addr, "/v1/etcd-status").await);
        assert_eq!((st.healthy, st.last_ack_age_ms), (true, Some(300)));
        // A later keep-alive failed: unhealthy at once.
        tx.failures.send_replace(Some(clock.now()));
        assert!(!status(http_get(addr, "/v1/etcd-status").await).healthy);
        srv.abort();
    }

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
