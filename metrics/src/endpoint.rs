//! The `/metrics` listener of a daemon.
//!
//! Served over TLS when a certificate is configured (optionally requiring
//! scraper certificates signed by `client_ca`), else plain HTTP for a
//! listener on a trusted address; an optional bearer token (Prometheus's
//! `authorization` / `bearer_token_file`) is compared in constant time.
//! The registry is encoded on the blocking pool with a deadline: a scrape
//! answers 503 rather than hang, whatever a collector does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nubo_nodeapi::tls::{self, TlsError};
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// The content type of the OpenMetrics text format `prometheus-client`
/// encodes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest a scrape waits for the registry to encode.
pub const ENCODE_DEADLINE: Duration = Duration::from_secs(5);

/// The `[metrics]` section of a daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Server certificate (PEM); with `tls_key`, the endpoint speaks TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// When set, scrapers must present a certificate signed by this CA.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// When set, scrapers must send `Authorization: Bearer <the file's
    /// content>` (surrounding whitespace ignored).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

impl EndpointConfig {
    /// A plain-HTTP endpoint on `listen` without authentication.
    pub fn plain(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            bearer_token_file: None,
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Only one of `tls_cert` and `tls_key` is set, or `client_ca`
    /// without them.
    #[error("metrics: {0}")]
    Incomplete(&'static str),
    /// The TLS material was refused.
    #[error("metrics TLS: {0}")]
    Tls(#[from] TlsError),
    /// The bearer token file could not be read or is empty.
    #[error("metrics bearer token {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The address could not be bound.
    #[error("metrics listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, configured `/metrics` endpoint, ready to serve a registry.
pub struct Endpoint {
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    token: Option<Arc<str>>,
}

impl Endpoint {
    /// Checks the configuration, reads its files and binds the address:
    /// every error surfaces at start, not at the first scrape.
    pub async fn bind(cfg: &EndpointConfig) -> Result<Self, EndpointError> {
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::server_config(cert, key, cfg.client_ca.as_deref())?)
            }
            (None, None) if cfg.client_ca.is_some() => {
                return Err(EndpointError::Incomplete(
                    "client_ca needs tls_cert and tls_key",
                ))
            }
            (None, None) => None,
            _ => {
                return Err(EndpointError::Incomplete(
                    "tls_cert and tls_key go together",
                ))
            }
        };
        let token = match &cfg.bearer_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| EndpointError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            tls,
            token,
        })
    }

    /// The address bound (the port chosen when configured as 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether the endpoint speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `GET /metrics` from `registry` until the listener fails.
    pub async fn serve(self, registry: Arc<Registry>) -> std::io::Result<()> {
        let app = axum::Router::new()
            .route("/metrics", get(scrape))
            .with_state(Scrape {
                registry,
                token: self.token,
            });
        nubo_nodeapi::server::serve(self.listener, app, self.tls).await
    }
}

fn read_token(path: &Path) -> Result<Arc<str>, EndpointError> {
    let err = |reason: String| EndpointError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let raw = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(token.into())
}

#[derive(Clone)]
struct Scrape {
    registry: Arc<Registry>,
    token: Option<Arc<str>>,
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

async fn scrape(State(s): State<Scrape>, headers: HeaderMap) -> Response {
    if let Some(token) = &s.token {
        if !authorized(&headers, token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    let registry = s.registry.clone();
    let encode = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).map(|()| out)
    });
    match tokio::time::timeout(ENCODE_DEADLINE, encode).await {
        Ok(Ok(Ok(body))) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "metrics: encoding failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the encoding task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response()
        }
        Err(_) => {
            tracing::warn!("metrics: encoding took longer than {ENCODE_DEADLINE:?}");
            (StatusCode::SERVICE_UNAVAILABLE, "metrics not ready\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn registry() -> (Arc<Registry>, Counter) {
        let mut r = Registry::with_prefix(crate::PREFIX);
        let c = Counter::<u64>::default();
        r.register("test_events", "Events seen by the test", c.clone());
        (Arc::new(r), c)
    }

    fn curl(args: &[&str]) -> (String, String) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let err = String::from_utf8_lossy(&out.stderr);
        (format!("{body}{err}"), code.to_string())
    }

    #[tokio::test]
    async fn a_bearer_token_is_required_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let mut cfg = EndpointConfig::plain("127.0.0.1:0".parse().unwrap());
        cfg.bearer_token_file = Some(token);
        let ep = Endpoint::bind(&cfg).await.unwrap();
        let url = format!("http://{}/metrics", ep.local_addr().unwrap());
        let (reg, c) = registry();
        c.inc_by(41);
        c.inc();
        tokio::spawn(ep.serve(reg));
        let u = url.clone();
        let (body, code) =
            tokio::task::spawn_blocking(move || curl(&["-H", "Authorization: Bearer s3cret", &u]))
                .await
                .unwrap();
        assert_eq!(code, "200", "{body}");
        assert!(body.contains("nubo_test_events_total 42"), "{body}");
        for auth in [
            "Authorization: Bearer wrong",
            "Authorization: Basic czNjcmV0",
        ] {
            let u = url.clone();
            let (body, code) = tokio::task::spawn_blocking(move || curl(&["-H", auth, &u]))
                .await
                .unwrap();
            assert_eq!(code, "401", "{auth}: {body}");
        }
        let (_, code) = tokio::task::spawn_blocking(move || curl(&[&url]))
            .await
            .unwrap();
        assert_eq!(code, "401");
    }

    #[tokio::test]
    async fn tls_with_a_client_ca_refuses_scrapers_without_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nubo test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            let (c, k) = (
                dir.path().join(format!("{name}.pem")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let (server_cert, server_key) = issue("localhost");
        let (client_cert, client_key) = issue("scraper");
        let cfg = EndpointConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(server_cert),
            tls_key: Some(server_key),
            client_ca: Some(ca_path.clone()),
            bearer_token_file: None,
        };
        let ep = Endpoint::bind(&cfg).await.unwrap();
        assert!(ep.is_tls());
        let port = ep.local_addr().unwrap().port();
        tokio::spawn(ep.serve(registry().0));
        let url = format!("https://localhost:{port}/metrics");
        let ca_arg = ca_path.display().to_string();
        let (c, k) = (
            client_cert.display().to_string(),
            client_key.display().to_string(),
        );
        let (u, ca2) = (url.clone(), ca_arg.clone());
        let (body, code) = tokio::task::spawn_blocking(move || {
            curl(&["--cacert", &ca2, "--cert", &c, "--key", &k, &u])
        })
        .await
        .unwrap();
        assert_eq!(code, "200", "{body}");
        assert!(body.contains("nubo_test_events_total 0"), "{body}");
        let (_, code) = tokio::task::spawn_blocking(move || curl(&["--cacert", &ca_arg, &url]))
            .await
            .unwrap();
        assert_eq!(
            code, "000",
            "the handshake must fail without a client certificate"
        );
    }

    #[tokio::test]
    async fn incomplete_or_unreadable_settings_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let mut cfg = EndpointConfig::plain(listen);
        cfg.tls_cert = Some(dir.path().join("cert.pem"));
        assert!(matches!(
            Endpoint::bind(&cfg).await,
            Err(EndpointError::Incomplete(_))
        ));
        let mut cfg = EndpointConfig::plain(listen);
        cfg.client_ca = Some(dir.path().join("ca.pem"));
        assert!(matches!(
            Endpoint::bind(&cfg).await,
            Err(EndpointError::Incomplete(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let mut cfg = EndpointConfig::plain(listen);
        cfg.bearer_token_file = Some(empty);
        assert!(matches!(
            Endpoint::bind(&cfg).await,
            Err(EndpointError::Token { .. })
        ));
        let mut cfg = EndpointConfig::plain(listen);
        cfg.tls_cert = Some(dir.path().join("missing.pem"));
        cfg.tls_key = Some(dir.path().join("missing.key"));
        assert!(matches!(
            Endpoint::bind(&cfg).await,
            Err(EndpointError::Tls(_))
        ));
    }
}
