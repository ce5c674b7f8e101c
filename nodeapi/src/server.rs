//! The agent's side of the node API: serving a router over mutual TLS (or
//! plain HTTP without a certificate), and the [`TicketGate`] every console
//! and capture request passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use nubo_common::NodeName;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::ticket::{ParsedTicket, SeenTickets, StreamTarget, TicketClaims, TicketError};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a node trusts a public ticket key it read before reading it
/// again (a key deleted by a rotation stops being accepted within this).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(60);

/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener`: over TLS with `tls` (client certificates
/// required by its configuration), else plain HTTP. Runs until the
/// listener fails.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app).await;
    };
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "node API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "node API TLS handshake refused");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "node API TLS handshake timed out");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "node API connection ended");
            }
        });
    }
}

/// Where a node finds the coordinators' public ticket keys.
#[async_trait::async_trait]
pub trait VerifyKeys: Send + Sync {
    /// The public key with id `kid`; `Ok(None)` when there is none.
    async fn public_key(&self, kid: &str) -> Result<Option<Vec<u8>>, String>;
}

/// Admits a stream request only with a valid, unused ticket for this node
/// and this stream.
pub struct TicketGate {
    node: NodeName,
    keys: Arc<dyn VerifyKeys>,
    cache: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    seen: Mutex<SeenTickets>,
}

impl std::fmt::Debug for TicketGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketGate")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl TicketGate {
    /// The gate of `node`, reading keys from `keys` (cached for
    /// [`KEY_CACHE_TTL`] once found).
    pub fn new(node: NodeName, keys: Arc<dyn VerifyKeys>) -> Self {
        Self {
            node,
            keys,
            cache: Mutex::new(HashMap::new()),
            seen: Mutex::new(SeenTickets::default()),
        }
    }

    /// The ticket of a request's headers (`Authorization: Ticket …`).
    pub fn ticket(headers: &http::HeaderMap) -> Result<ParsedTicket, TicketError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(TicketError::Missing)?
            .to_str()
            .map_err(|_| TicketError::Malformed("header is not text"))?;
        let (scheme, ticket) = value
            .split_once(' ')
            .ok_or(TicketError::Malformed("expected `Ticket <ticket>`"))?;
        if !scheme.eq_ignore_ascii_case(crate::ticket::AUTH_SCHEME) {
            return Err(TicketError::Missing);
        }
        ParsedTicket::parse(ticket)
    }

    async fn key(&self, kid: &str) -> Result<Vec<u8>, TicketError> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(kid).cloned());
        if let Some((k, at)) = cached {
            if at.elapsed() < KEY_CACHE_TTL {
                return Ok(k);
            }
        }
        let key = self
            .keys
            .public_key(kid)
            .await
            .map_err(|reason| TicketError::KeyUnavailable {
                kid: kid.to_string(),
                reason,
            })?
            .ok_or_else(|| TicketError::UnknownKey(kid.to_string()))?;
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
            c.insert(kid.to_string(), (key.clone(), Instant::now()));
        }
        Ok(key)
    }

    /// Checks the request's ticket for `target` at `now_ms` and uses it up.
    pub async fn admit(
        &self,
        headers: &http::HeaderMap,
        target: &StreamTarget,
        now_ms: u64,
    ) -> Result<TicketClaims, TicketError> {
        let ticket = Self::ticket(headers)?;
        let key = self.key(ticket.kid()).await?;
        let claims = ticket.verify(&key, &self.node, target, now_ms)?;
        self.seen
            .lock()
            .map_err(|_| TicketError::Busy)?
            .use_once(&claims, now_ms)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ticket::TicketSigner;
    use nubo_common::InstanceId;

    struct Keys(HashMap<String, Vec<u8>>);

    #[async_trait::async_trait]
    impl VerifyKeys for Keys {
        async fn public_key(&self, kid: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(kid).cloned())
        }
    }

    fn headers(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Ticket {t}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn the_gate_admits_a_ticket_once_and_only_with_a_known_key() {
        let (signer, _) = TicketSigner::generate().unwrap();
        let (stranger, _) = TicketSigner::generate().unwrap();
        let keys = Keys([(signer.kid().to_string(), signer.public_key())].into());
        let n1 = NodeName::new("n1").unwrap();
        let gate = TicketGate::new(n1.clone(), Arc::new(keys));
        let target = StreamTarget::Console {
            instance: InstanceId::new_random(),
        };
        let claims = TicketClaims {
            id: "t1".into(),
            node: n1,
            target: target.clone(),
            issued_to: "alice@p1".into(),
            issued_at_ms: 1_000,
            expires_at_ms: 31_000,
        };
        assert_eq!(
            gate.admit(&http::HeaderMap::new(), &target, 2_000).await,
            Err(TicketError::Missing)
        );
        let t = signer.sign(&claims);
        assert_eq!(
            gate.admit(&headers(&t), &target, 2_000).await,
            Ok(claims.clone())
        );
        assert_eq!(
            gate.admit(&headers(&t), &target, 2_500).await,
            Err(TicketError::Reused)
        );
        let unknown = stranger.sign(&claims);
        assert_eq!(
            gate.admit(&headers(&unknown), &target, 2_000).await,
            Err(TicketError::UnknownKey(stranger.kid().to_string()))
        );
        let mut basic = http::HeaderMap::new();
        basic.insert(http::header::AUTHORIZATION, "Basic eDp5".parse().unwrap());
        assert_eq!(
            gate.admit(&basic, &target, 2_000).await,
            Err(TicketError::Missing)
        );
    }
}
