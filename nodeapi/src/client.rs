//! The node API client of the coordinators (console and capture streams,
//! the unfence check) and of the peer witnesses (`/v1/etcd-status`).
//!
//! An agent publishes its address in its node record's `nubo.node-api`
//! label: `https://<ip>:<port>` when it serves TLS, bare `<ip>:<port>` when
//! it runs without a certificate (development clouds). A client holding a
//! certificate refuses a plain node API (a production cloud never falls
//! back to plain text); one without refuses a TLS node API with a clear
//! error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nubo_common::model::EtcdSessionStatus;
use nubo_common::NodeName;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{TlsError, TlsFiles};

/// The scheme prefix of a TLS node API label.
pub const HTTPS: &str = "https://";

/// Longest error body kept from a refusing node.
const MAX_ERROR_BODY: usize = 4096;

/// Longest `/v1/etcd-status` answer read.
const MAX_STATUS_BODY: usize = 64 * 1024;

/// A node API address as published in the node's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeApiAddr {
    /// `ip:port`, plain HTTP (an agent without a certificate).
    Plain(String),
    /// `https://ip:port`.
    Tls(String),
}

impl NodeApiAddr {
    /// Parses a label value. Pure.
    pub fn parse(label: &str) -> Result<Self, ClientError> {
        let (tls, hostport) = match label.strip_prefix(HTTPS) {
            Some(rest) => (true, rest),
            None => (false, label),
        };
        if hostport.parse::<std::net::SocketAddr>().is_err() {
            return Err(ClientError::BadAddress(label.to_string()));
        }
        Ok(if tls {
            Self::Tls(hostport.to_string())
        } else {
            Self::Plain(hostport.to_string())
        })
    }

    /// The label value an agent publishes for `addr`. Pure.
    pub fn label(addr: std::net::SocketAddr, tls: bool) -> String {
        if tls {
            format!("{HTTPS}{addr}")
        } else {
            addr.to_string()
        }
    }

    /// `ip:port`.
    pub fn host_port(&self) -> &str {
        match self {
            Self::Plain(a) | Self::Tls(a) => a,
        }
    }
}

/// What went wrong talking to a node API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The published address does not parse.
    #[error("node API address {0:?} is not ip:port or https://ip:port")]
    BadAddress(String),
    /// This client has a certificate; the node serves plain text.
    #[error("the node API of {node} ({addr}) is plain HTTP, but this cluster uses TLS: give the agent its certificate (nubo-coordinator node enroll) and restart it")]
    TlsRequired {
        /// The node.
        node: NodeName,
        /// Its address.
        addr: String,
    },
    /// The node serves TLS; this client has no certificate.
    #[error("the node API of {node} serves TLS, but no client certificate is configured here ([etcd_tls] cert/key)")]
    NoClientCertificate {
        /// The node.
        node: NodeName,
    },
    /// The node name is not usable as a TLS server name.
    #[error("node name {0} is not a valid TLS server name")]
    ServerName(NodeName),
    /// Connecting, the handshake or the exchange failed.
    #[error("node API {addr}: {reason}")]
    Io {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The node answered with an error.
    #[error("node API {addr} answered {status}: {body}")]
    Status {
        /// The address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The answer did not come in time.
    #[error("node API {addr} did not answer within {after:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// How long was waited.
        after: Duration,
    },
}

impl ClientError {
    /// The HTTP status a node refused with, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn io_err(addr: &str) -> impl Fn(String) -> ClientError {
    let addr = addr.to_string();
    move |reason| ClientError::Io {
        addr: addr.clone(),
        reason,
    }
}

/// A client of node APIs (cheap to clone).
#[derive(Clone, Default)]
pub struct NodeApiClient {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for NodeApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApiClient")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// An open stream: the body of a `200` answer, read chunk by chunk.
pub struct NodeStream {
    body: Incoming,
    addr: String,
    conn: tokio::task::JoinHandle<()>,
}

impl NodeStream {
    /// The next chunk of data; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Some(Ok(data));
                        }
                    }
                }
                Err(e) => return Some(Err(io_err(&self.addr)(e.to_string()))),
            }
        }
    }
}

impl Drop for NodeStream {
    fn drop(&mut self) {
        // The reader left: close the connection (the node ends the stream).
        self.conn.abort();
    }
}

/// A connected transport: plain TCP or TLS over it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

impl NodeApiClient {
    /// A client without a certificate (development clouds: plain node
    /// APIs only).
    pub fn plain() -> Self {
        Self { tls: None }
    }

    /// A client presenting `files.cert`, trusting `files.ca`.
    pub fn with_tls(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            tls: Some(TlsConnector::from(files.client_config()?)),
        })
    }

    /// [`Self::with_tls`] when `files` is given, else [`Self::plain`].
    pub fn new(files: Option<&TlsFiles>) -> Result<Self, TlsError> {
        files.map_or_else(|| Ok(Self::plain()), Self::with_tls)
    }

    /// Whether this client uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    async fn connect(
        &self,
        node: &NodeName,
        label: &str,
    ) -> Result<(Box<dyn Transport>, String), ClientError> {
        let addr = NodeApiAddr::parse(label)?;
        let hostport = addr.host_port().to_string();
        let err = io_err(&hostport);
        match (&addr, &self.tls) {
            (NodeApiAddr::Plain(_), Some(_)) => Err(ClientError::TlsRequired {
                node: node.clone(),
                addr: hostport,
            }),
            (NodeApiAddr::Tls(_), None) => {
                Err(ClientError::NoClientCertificate { node: node.clone() })
            }
            (NodeApiAddr::Plain(_), None) => {
                let tcp = TcpStream::connect(&hostport)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok((Box::new(tcp), hostport))
            }
            (NodeApiAddr::Tls(_), Some(tls)) => {
                let name = ServerName::try_from(node.as_str().to_string())
                    .map_err(|_| ClientError::ServerName(node.clone()))?;
                let tcp = TcpStream::connect(&hostport)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| err(format!("TLS: {e}")))?;
                Ok((Box::new(stream), hostport))
            }
        }
    }

    /// `GET path` on `node`'s API (`label` as published), with `ticket`
    /// when given; a `200` answer's body as a stream, anything else an
    /// error carrying the node's message.
    pub async fn get(
        &self,
        node: &NodeName,
        label: &str,
        path: &str,
        ticket: Option<&str>,
    ) -> Result<NodeStream, ClientError> {
        let (io, addr) = self.connect(node, label).await?;
        let err = io_err(&addr);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::get(path).header(http::header::HOST, addr.as_str());
        if let Some(t) = ticket {
            req = req.header(
                http::header::AUTHORIZATION,
                format!("{} {t}", crate::ticket::AUTH_SCHEME),
            );
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let mut stream = NodeStream {
            body: resp.into_body(),
            addr: addr.clone(),
            conn,
        };
        if status != 200 {
            let mut body = Vec::new();
            while let Some(Ok(c)) = stream.next_chunk().await {
                body.extend_from_slice(&c);
                if body.len() >= MAX_ERROR_BODY {
                    body.truncate(MAX_ERROR_BODY);
                    break;
                }
            }
            return Err(ClientError::Status {
                addr,
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(stream)
    }

    /// `GET /v1/etcd-status` on `node`, within `timeout`.
    pub async fn etcd_status(
        &self,
        node: &NodeName,
        label: &str,
        timeout: Duration,
    ) -> Result<EtcdSessionStatus, ClientError> {
        let go = async {
            let mut s = self.get(node, label, EtcdSessionStatus::PATH, None).await?;
            let mut body = Vec::new();
            while let Some(c) = s.next_chunk().await {
                body.extend_from_slice(&c?);
                if body.len() > MAX_STATUS_BODY {
                    return Err(io_err(&s.addr)("etcd-status answer too large".into()));
                }
            }
            serde_json::from_slice(&body)
                .map_err(|e| io_err(&s.addr)(format!("bad etcd-status body: {e}")))
        };
        tokio::time::timeout(timeout, go)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: label.to_string(),
                after: timeout,
            })?
    }
}

/// Shared handle to a client.
pub type SharedClient = Arc<NodeApiClient>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_round_trip() {
        let a: std::net::SocketAddr = "10.0.0.1:7402".parse().unwrap();
        assert_eq!(NodeApiAddr::label(a, true), "https://10.0.0.1:7402");
        assert_eq!(
            NodeApiAddr::parse("https://10.0.0.1:7402").unwrap(),
            NodeApiAddr::Tls("10.0.0.1:7402".into())
        );
        assert_eq!(
            NodeApiAddr::parse(&NodeApiAddr::label(a, false)).unwrap(),
            NodeApiAddr::Plain("10.0.0.1:7402".into())
        );
        for bad in ["", "x", "http://10.0.0.1:1", "https://", "10.0.0.1"] {
            assert!(NodeApiAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
