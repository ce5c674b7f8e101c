//! The node API: a small HTTP endpoint on each agent (`--node-api-listen`,
//! default `<underlay-ip>:7402`) for what only the node can answer:
//!
//! - `GET /v1/console/<instance id>[?follow=1]`: the serial console log
//!   (`<state-dir>/console/<id>.log`), followed while the client reads.
//! - `GET /v1/capture/<tap>[?count=N]`: `tcpdump -l -n -e` text on a local
//!   tap, streamed.
//! - `GET /v1/disk-capture/<image id>`: the complete copy of a root disk
//!   this node made for a new image (`<state-dir>/captures/<image>.img`,
//!   see [`crate::compute::capture`]), read by the leading coordinator
//!   into the image store.
//! - `GET /v1/etcd-status`: this agent's etcd session and self-fencing
//!   phase ([`nubo_common::model::EtcdSessionStatus`], JSON), read by the
//!   peer witnesses of the other agents and by the coordinator before it
//!   lifts a storage fence (`docs/failure-handling.md`).
//!
//! With an etcd client certificate (production: the one `nubo-coordinator
//! node enroll` issued) it serves mutual TLS: only holders of a
//! certificate of the cluster CA (coordinators, peer agents) get an
//! answer. Console and capture streams also need a single-use stream
//! ticket for exactly that stream, signed by the coordinators
//! ([`nubo_nodeapi::ticket`]): tenants reach them only through the
//! coordinator (`Servers.Console`, `Ports.Capture`), which checks who may
//! see the instance, audits the opening and relays the stream.
//!
//! Its address is published in the node record as the label
//! [`NODE_API_LABEL`] (`https://ip:port` with TLS).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nubo_common::keys;
use nubo_common::model::TicketVerifyKey;
use nubo_nodeapi::{NodeApiAddr, StreamTarget, TicketError, TicketGate, VerifyKeys};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info, warn, Instrument};

use crate::config::AgentConfig;
use crate::fencing::SessionWatch;

/// Node label carrying the node API address.
pub const NODE_API_LABEL: &str = nubo_common::model::NODE_API_LABEL;

#[derive(Clone)]
struct Ctx {
    console_dir: PathBuf,
    captures_dir: PathBuf,
    session: Option<SessionWatch>,
    gate: Arc<TicketGate>,
}

/// The coordinators' public ticket keys, read from etcd
/// ([`keys::ticket_verify_key`]) when a ticket names one first.
struct EtcdTicketKeys(nubo_store::Etcd);

#[async_trait::async_trait]
impl VerifyKeys for EtcdTicketKeys {
    async fn public_key(&self, kid: &str) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine;
        let resp = self
            .0
            .get(keys::ticket_verify_key(kid), None)
            .await
            .map_err(|e| e.to_string())?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let k: TicketVerifyKey = serde_json::from_slice(kv.value())
            .map_err(|e| format!("bad value at {}: {e}", keys::ticket_verify_key(kid)))?;
        base64::engine::general_purpose::STANDARD
            .decode(k.public_key)
            .map(Some)
            .map_err(|e| format!("bad public key {kid}: {e}"))
    }
}

/// The answer to a refused ticket: 401 without one, 503 when the key
/// cannot be read now, 403 otherwise. The reason names the rule only.
fn refused(e: &TicketError) -> Response {
    let code = match e {
        TicketError::Missing => StatusCode::UNAUTHORIZED,
        TicketError::KeyUnavailable { .. } | TicketError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    (code, format!("{e}\n")).into_response()
}

/// Admits a stream request with a valid ticket for `target`; logs who
/// opened it (the coordinator audited the issue).
async fn admit(ctx: &Ctx, headers: &HeaderMap, target: &StreamTarget) -> Result<(), Response> {
    match ctx
        .gate
        .admit(headers, target, nubo_nodeapi::ticket::now_ms())
        .await
    {
        Ok(c) => {
            info!(ticket = %c.id, issued_to = %c.issued_to, %target, "node API stream opened");
            Ok(())
        }
        Err(e) => {
            warn!(%target, reason = %e, "node API stream refused");
            Err(refused(&e))
        }
    }
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

/// Publishes the address as a label and serves the node API in `tasks`
/// (mutual TLS with the etcd client certificate when there is one);
/// `/v1/etcd-status` answers from `session` (404 without); ticket keys
/// are read through `etcd`. A bind failure or unusable TLS files are
/// logged, not fatal: instances matter more.
pub async fn spawn(
    cfg: &mut AgentConfig,
    tasks: &mut JoinSet<()>,
    session: Option<SessionWatch>,
    etcd: nubo_store::Etcd,
) {
    let addr = cfg.node_api();
    let tls = match cfg.node_api_tls() {
        None => {
            warn!(%addr, "node API serves plain HTTP: no etcd client certificate (development only)");
            None
        }
        Some(files) => match files.server_config() {
            Ok(c) => Some(c),
            Err(e) => {
                error!(%addr, error = %e, "node API not available: its TLS files are unusable");
                return;
            }
        },
    };
    let gate = Arc::new(TicketGate::new(
        cfg.node.clone(),
        Arc::new(EtcdTicketKeys(etcd)),
    ));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "node API not available");
            return;
        }
    };
    // The bound address (a configured port 0 gets a real one).
    let addr = listener.local_addr().unwrap_or(addr);
    cfg.labels.insert(
        NODE_API_LABEL.to_string(),
        NodeApiAddr::label(addr, tls.is_some()),
    );
    let app = router(
        cfg.state_dir.join("console"),
        crate::compute::capture::captures_dir(&cfg.state_dir),
        session,
        gate,
    );
    info!(%addr, tls = tls.is_some(), "node API listening");
    tasks.spawn(
        async move {
            if let Err(e) = nubo_nodeapi::server::serve(listener, app, tls).await {
                warn!(error = %e, "node API stopped");
            }
        }
        .in_current_span(),
    );
}

fn router(
    console_dir: PathBuf,
    captures_dir: PathBuf,
    session: Option<SessionWatch>,
    gate: Arc<TicketGate>,
) -> Router {
    Router::new()
        .route("/v1/console/{id}", get(console))
        .route("/v1/capture/{tap}", get(capture))
        .route("/v1/disk-capture/{image}", get(disk_capture))
        .route(
            nubo_common::model::EtcdSessionStatus::PATH,
            get(etcd_status),
        )
        .with_state(Ctx {
            console_dir,
            captures_dir,
            session,
            gate,
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

/// Sends what one read of a streamed file gave (its bytes, or its error)
/// to `tx`; false when the stream ends there (the receiver went away, or
/// the read failed).
async fn forward(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    read: std::io::Result<usize>,
    buf: &[u8],
) -> bool {
    match read {
        Ok(n) => tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_ok(),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            false
        }
    }
}

async fn console(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(instance) = id.parse::<nubo_common::InstanceId>() else {
        return (StatusCode::BAD_REQUEST, "bad instance id\n").into_response();
    };
    if let Err(r) = admit(&ctx, &headers, &StreamTarget::Console { instance }).await {
        return r;
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
                read => {
                    if !forward(&tx, read, &buf).await {
                        return;
                    }
                }
            }
        }
    });
    stream_body(rx)
}

async fn disk_capture(
    State(ctx): State<Ctx>,
    Path(image): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(image) = image.parse::<nubo_common::ImageId>() else {
        return (StatusCode::BAD_REQUEST, "bad image id\n").into_response();
    };
    if let Err(r) = admit(&ctx, &headers, &StreamTarget::DiskCapture { image }).await {
        return r;
    }
    let path = crate::compute::capture::copy_path(&ctx.captures_dir, &image);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::NOT_FOUND,
                format!("no complete disk capture for image {image} on this node: {e}\n"),
            )
                .into_response()
        }
    };
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        // Chunks the image store takes as they are (at most 1 MiB).
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => return,
                read => {
                    if !forward(&tx, read, &buf).await {
                        return;
                    }
                }
            }
        }
    });
    stream_body(rx)
}

async fn capture(
    State(ctx): State<Ctx>,
    Path(tap): Path<String>,
    Query(q): Query<CaptureQuery>,
    headers: HeaderMap,
) -> Response {
    if !valid_tap(&tap) {
        return (StatusCode::BAD_REQUEST, "bad tap name\n").into_response();
    }
    let target = StreamTarget::Capture { tap: tap.clone() };
    if let Err(r) = admit(&ctx, &headers, &target).await {
        return r;
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

    struct TestKeys(nubo_nodeapi::TicketSigner);

    #[async_trait::async_trait]
    impl VerifyKeys for TestKeys {
        async fn public_key(&self, kid: &str) -> Result<Option<Vec<u8>>, String> {
            Ok((kid == self.0.kid()).then(|| self.0.public_key()))
        }
    }

    /// A gate of node `n1` trusting a fresh key, and a signer of that key.
    fn test_gate() -> (Arc<TicketGate>, nubo_nodeapi::TicketSigner) {
        let (signer, pkcs8) = nubo_nodeapi::TicketSigner::generate().unwrap();
        let copy = nubo_nodeapi::TicketSigner::from_pkcs8(signer.kid(), &pkcs8).unwrap();
        let gate = TicketGate::new(
            nubo_common::NodeName::new("n1").unwrap(),
            Arc::new(TestKeys(copy)),
        );
        (Arc::new(gate), signer)
    }

    fn ticket(signer: &nubo_nodeapi::TicketSigner, target: StreamTarget, ttl_ms: u64) -> String {
        let now = nubo_nodeapi::ticket::now_ms();
        signer.sign(&nubo_nodeapi::TicketClaims {
            id: uuid::Uuid::new_v4().to_string(),
            node: nubo_common::NodeName::new("n1").unwrap(),
            target,
            issued_to: "alice@p1".into(),
            issued_at_ms: now,
            expires_at_ms: now + ttl_ms,
        })
    }

    #[tokio::test]
    async fn console_serves_the_log_only_with_a_ticket_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = nubo_common::InstanceId::new_random();
        std::fs::write(dir.path().join(format!("{id}.log")), "NUBO-GUEST-IP: x\n").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, signer) = test_gate();
        let app = router(
            dir.path().to_path_buf(),
            dir.path().to_path_buf(),
            None,
            gate,
        );
        let srv = tokio::spawn(async move { axum::serve(listener, app).await });
        let path = format!("/v1/console/{id}");
        let get = |t: Option<String>| {
            let path = path.clone();
            async move { http_get_with(addr, &path, t.as_deref()).await }
        };
        let body = get(None).await;
        assert!(body.contains("401"), "{body}");
        assert!(!body.contains("NUBO-GUEST-IP"), "{body}");

        let mine = ticket(&signer, StreamTarget::Console { instance: id }, 30_000);
        let body = get(Some(mine.clone())).await;
        assert!(body.contains("200 OK"), "{body}");
        assert!(body.contains("NUBO-GUEST-IP: x"), "{body}");
        // Single use.
        let body = get(Some(mine)).await;
        assert!(
            body.contains("403") && body.contains("already used"),
            "{body}"
        );

        // A ticket for another instance, for a capture, expired, forged.
        let other = nubo_common::InstanceId::new_random();
        let (stranger, _) = nubo_nodeapi::TicketSigner::generate().unwrap();
        for (t, why) in [
            (
                ticket(&signer, StreamTarget::Console { instance: other }, 30_000),
                "not this stream",
            ),
            (
                ticket(
                    &signer,
                    StreamTarget::Capture {
                        tap: "tap01".into(),
                    },
                    30_000,
                ),
                "not this stream",
            ),
            (
                ticket(&signer, StreamTarget::Console { instance: id }, 0),
                "expired",
            ),
            (
                ticket(&stranger, StreamTarget::Console { instance: id }, 30_000),
                "unknown key",
            ),
        ] {
            let body = get(Some(t)).await;
            assert!(body.contains("403") && body.contains(why), "{why}: {body}");
            assert!(!body.contains("NUBO-GUEST-IP"), "{body}");
        }

        // A valid ticket for an instance without a log: 404.
        let t = ticket(&signer, StreamTarget::Console { instance: other }, 30_000);
        let body = http_get_with(addr, &format!("/v1/console/{other}"), Some(&t)).await;
        assert!(body.contains("404"), "{body}");
        srv.abort();
    }

    #[tokio::test]
    async fn capture_needs_a_ticket_for_its_tap() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, signer) = test_gate();
        let app = router(std::env::temp_dir(), std::env::temp_dir(), None, gate);
        let srv = tokio::spawn(async move { axum::serve(listener, app).await });
        let body = http_get_with(addr, "/v1/capture/tap0a", None).await;
        assert!(body.contains("401"), "{body}");
        let t = ticket(
            &signer,
            StreamTarget::Capture {
                tap: "tap0b".into(),
            },
            30_000,
        );
        let body = http_get_with(addr, "/v1/capture/tap0a", Some(&t)).await;
        assert!(body.contains("403"), "{body}");
        srv.abort();
    }

    #[tokio::test]
    async fn disk_capture_serves_a_complete_copy_only_with_a_ticket_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = nubo_common::ImageId::new_random();
        let copy = crate::compute::capture::copy_path(dir.path(), &image);
        std::fs::write(&copy, b"NUBO-DISK-BYTES").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, signer) = test_gate();
        let app = router(std::env::temp_dir(), dir.path().to_path_buf(), None, gate);
        let srv = tokio::spawn(async move { axum::serve(listener, app).await });
        let path = nubo_nodeapi::disk_capture_path(&image);
        let body = http_get_with(addr, &path, None).await;
        assert!(
            body.contains("401") && !body.contains("NUBO-DISK"),
            "{body}"
        );
        let other = nubo_common::ImageId::new_random();
        let t = ticket(&signer, StreamTarget::DiskCapture { image: other }, 30_000);
        let body = http_get_with(addr, &path, Some(&t)).await;
        assert!(
            body.contains("403") && !body.contains("NUBO-DISK"),
            "{body}"
        );
        let t = ticket(&signer, StreamTarget::DiskCapture { image }, 30_000);
        let body = http_get_with(addr, &path, Some(&t)).await;
        assert!(
            body.contains("200 OK") && body.contains("NUBO-DISK-BYTES"),
            "{body}"
        );
        // A copy still being written (only `.part`) is not served.
        std::fs::remove_file(&copy).unwrap();
        let t = ticket(&signer, StreamTarget::DiskCapture { image }, 30_000);
        let body = http_get_with(addr, &path, Some(&t)).await;
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
        let app = router(
            std::env::temp_dir(),
            std::env::temp_dir(),
            Some(session),
            test_gate().0,
        );
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
        http_get_with(addr, path, None).await
    }

    async fn http_get_with(addr: std::net::SocketAddr, path: &str, ticket: Option<&str>) -> String {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = ticket
            .map(|t| format!("Authorization: Ticket {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
