//! One channel per etcd member, a health table, and the tower service that
//! sends each request to a live member (crate docs).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::{Service, ServiceExt};

use crate::classify::{LOST, NOT_SENT};
use crate::config::EtcdConfig;
use crate::error::StoreError;

type Req = http::Request<tonic::body::Body>;
type Resp = http::Response<tonic::body::Body>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Probing cadence while a leader is wanted and unknown.
const FAST_PROBE: Duration = Duration::from_millis(100);

/// What the pool knows about one member (for logs, tests and health
/// endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Client URL.
    pub url: String,
    /// Usable: answered (or not failed yet) and has a leader.
    pub up: bool,
    /// The etcd member id (0 until probed).
    pub id: u64,
    /// True when this member is the raft leader as last seen.
    pub leader: bool,
    /// The last failure, if down.
    pub error: Option<String>,
    /// Requests go to this member now.
    pub in_use: bool,
}

struct Member {
    url: String,
    channel: Channel,
    /// A client over this member's channel only, for probes.
    probe: etcd_client::Client,
}

#[derive(Debug, Clone)]
struct Health {
    up: bool,
    error: Option<String>,
    id: u64,
}

#[derive(Debug)]
struct State {
    health: Vec<Health>,
    /// The member used while it works (sticky).
    current: usize,
    /// Member id of the raft leader, as last seen, and its term.
    leader: Option<(u64, u64)>,
    /// When the leader's member was lost (requests wait for a new leader).
    leader_lost: Option<Instant>,
    /// The (id, term) of that lost leader: followers keep naming it until
    /// their election timeout, which must not end the wait.
    lost: Option<(u64, u64)>,
}

/// The members and their health.
pub(crate) struct Pool {
    members: Vec<Member>,
    state: Mutex<State>,
    /// Bumped on every health or leader change (wakes held requests).
    generation: watch::Sender<u64>,
    /// Wakes the prober at once.
    wake: Arc<Notify>,
    prefer_leader: bool,
    probe_interval: Duration,
    probe_timeout: Duration,
    leader_hold: Duration,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Lets the prober notice that the pool is gone.
        self.wake.notify_one();
    }
}

/// Builds the tonic endpoint of one member URL.
fn endpoint(
    url: &str,
    cfg: &EtcdConfig,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, StoreError> {
    let full = if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else if tls.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    let mut ep = Endpoint::from_shared(full.clone())
        .map_err(|e| StoreError::Config(format!("bad etcd endpoint {url:?}: {e}")))?
        .connect_timeout(cfg.connect_timeout)
        .http2_keep_alive_interval(cfg.keep_alive.0)
        .keep_alive_timeout(cfg.keep_alive.1)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if full.starts_with("https://") {
        let tls = tls.cloned().unwrap_or_default();
        ep = ep
            .tls_config(tls)
            .map_err(|e| StoreError::Config(format!("TLS for {url}: {e}")))?;
    } else if tls.is_some() {
        return Err(StoreError::Config(format!(
            "etcd endpoint {url} is http:// but TLS is configured; use https://"
        )));
    }
    Ok(ep)
}

/// The tonic TLS configuration of `files`.
fn tls_config(files: &crate::config::TlsFiles) -> Result<ClientTlsConfig, StoreError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| StoreError::Config(format!("cannot read {}: {e}", p.display())))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    match (&files.cert, &files.key) {
        (Some(c), Some(k)) => {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Config(
                "etcd TLS: a client certificate needs its key (and the key its certificate)".into(),
            ))
        }
    }
    Ok(tls)
}

impl Pool {
    /// Opens a lazy channel per member (nothing is sent yet) and starts the
    /// prober. Must run inside a tokio runtime.
    pub(crate) async fn start(cfg: &EtcdConfig) -> Result<Arc<Self>, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint".into()));
        }
        let tls = cfg.tls.as_ref().map(tls_config).transpose()?;
        let mut members = Vec::new();
        for url in &cfg.endpoints {
            let url = url.trim().to_string();
            let channel = endpoint(&url, cfg, tls.as_ref())?.connect_lazy();
            let probe = etcd_client::Client::from_channel(
                etcd_client::Channel::Tonic(channel.clone()),
                None,
            )
            .await?;
            members.push(Member {
                url,
                channel,
                probe,
            });
        }
        let n = members.len();
        // Spread clients over the members unless they all go to the leader.
        let current = if cfg.prefer_leader || n == 1 {
            0
        } else {
            rand::random_range(0..n)
        };
        let (generation, _) = watch::channel(0);
        let pool = Arc::new(Self {
            members,
            state: Mutex::new(State {
                health: vec![
                    Health {
                        up: true,
                        error: None,
                        id: 0,
                    };
                    n
                ],
                current,
                leader: None,
                leader_lost: None,
                lost: None,
            }),
            generation,
            wake: Arc::new(Notify::new()),
            prefer_leader: cfg.prefer_leader,
            probe_interval: cfg.probe_interval,
            probe_timeout: cfg.probe_timeout,
            leader_hold: cfg.leader_hold,
        });
        tokio::spawn(prober(Arc::downgrade(&pool), pool.wake.clone()));
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The members' health.
    pub(crate) fn health(&self) -> Vec<MemberHealth> {
        let st = self.lock();
        let using = self.preferred(&st);
        self.members
            .iter()
            .zip(&st.health)
            .enumerate()
            .map(|(i, (m, h))| MemberHealth {
                in_use: Some(i) == using,
                url: m.url.clone(),
                up: h.up,
                id: h.id,
                leader: h.id != 0 && st.leader.map(|l| l.0) == Some(h.id),
                error: h.error.clone(),
            })
            .collect()
    }

    /// The leader's member if wanted and up, else the current one if up.
    fn preferred(&self, st: &State) -> Option<usize> {
        if self.prefer_leader {
            if let Some((lid, _)) = st.leader {
                if let Some(i) = st.health.iter().position(|h| h.id == lid && h.up) {
                    return Some(i);
                }
            }
        }
        st.health[st.current].up.then_some(st.current)
    }

    /// The member to send the next request to.
    fn pick(&self) -> usize {
        let mut st = self.lock();
        let n = self.members.len();
        if let Some(i) = self.preferred(&st) {
            return i;
        }
        for k in 1..n {
            let i = (st.current + k) % n;
            if st.health[i].up {
                st.current = i;
                return i;
            }
        }
        // Nothing known to work: go round, so every member gets tried.
        st.current = (st.current + 1) % n;
        st.current
    }

    /// Waits (at most `leader_hold` after the loss) while the leader's
    /// member was lost and no new leader has been seen.
    async fn hold(&self) {
        let mut rx = self.generation.subscribe();
        loop {
            let until = {
                let st = self.lock();
                match st.leader_lost {
                    Some(t) if st.leader.is_none() => t + self.leader_hold,
                    _ => return,
                }
            };
            let now = Instant::now();
            if now >= until {
                return;
            }
            if tokio::time::timeout(until - now, rx.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Takes member `i` out after a failure.
    fn failed(&self, i: usize, why: &str) {
        let mut st = self.lock();
        let was_up = st.health[i].up;
        st.health[i].up = false;
        st.health[i].error = Some(why.to_string());
        let id = st.health[i].id;
        if id != 0 && st.leader.map(|l| l.0) == Some(id) {
            st.lost = st.leader.take();
            st.leader_lost = Some(Instant::now());
        }
        if was_up {
            let next = (1..self.members.len())
                .map(|k| (i + k) % self.members.len())
                .find(|j| st.health[*j].up);
            if st.current == i {
                if let Some(j) = next {
                    st.current = j;
                }
            }
            tracing::warn!(
                member = %self.members[i].url,
                error = why,
                now_using = next.map(|j| self.members[j].url.as_str()).unwrap_or("none"),
                "etcd member taken out of rotation"
            );
        }
        drop(st);
        self.bump();
        self.wake.notify_one();
    }

    /// Records the answer (or not) of a probe of member `i`.
    fn probed(&self, i: usize, r: Result<etcd_client::StatusResponse, String>) {
        let mut st = self.lock();
        let was_up = st.health[i].up;
        let mut changed = false;
        match r {
            Ok(s) => {
                let id = s.header().map(|h| h.member_id()).unwrap_or(0);
                st.health[i].id = id;
                let leader = s.leader();
                let term = s.raft_term();
                if leader != 0 {
                    // One leader per term: a higher term is newer news, a
                    // lower one comes from a member that lags behind.
                    let stale = st.lost == Some((leader, term)) && id != leader;
                    if !stale && st.leader.is_none_or(|(_, t)| term >= t) {
                        if st.leader.map(|l| l.0) != Some(leader) {
                            tracing::info!(leader = %format!("{leader:x}"), term, "etcd leader seen");
                            changed = true;
                        }
                        st.leader = Some((leader, term));
                        st.leader_lost = None;
                        st.lost = None;
                    }
                    st.health[i].up = true;
                    st.health[i].error = None;
                } else {
                    st.health[i].up = false;
                    st.health[i].error = Some("member has no leader".into());
                }
            }
            Err(e) => {
                st.health[i].up = false;
                st.health[i].error = Some(e);
            }
        }
        let up = st.health[i].up;
        if up != was_up {
            changed = true;
            if up {
                tracing::info!(member = %self.members[i].url, "etcd member back in rotation");
            } else {
                tracing::warn!(member = %self.members[i].url,
                    error = st.health[i].error.as_deref().unwrap_or(""),
                    "etcd member taken out of rotation (probe)");
            }
        }
        drop(st);
        if changed {
            self.bump();
        }
    }

    /// How long the prober sleeps: fast while a lost leader is awaited
    /// (requests are held meanwhile), `probe_interval` when the leader is
    /// wanted or a member is down, until woken otherwise.
    fn probe_delay(&self) -> Option<Duration> {
        let st = self.lock();
        if st.leader.is_none()
            && st
                .leader_lost
                .is_some_and(|t| t.elapsed() < self.leader_hold * 2)
        {
            return Some(FAST_PROBE);
        }
        if self.prefer_leader || st.health.iter().any(|h| !h.up) {
            return Some(self.probe_interval);
        }
        None
    }

    async fn probe_all(self: &Arc<Self>) {
        let probes = self.members.iter().enumerate().map(|(i, m)| {
            let mut mc = m.probe.maintenance_client();
            let timeout = self.probe_timeout;
            async move {
                let r = match tokio::time::timeout(timeout, mc.status()).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer to a status probe within {timeout:?}")),
                };
                (i, r)
            }
        });
        for (i, r) in futures::future::join_all(probes).await {
            self.probed(i, r);
        }
    }
}

/// Probes the members while the pool lives (module docs).
async fn prober(pool: Weak<Pool>, wake: Arc<Notify>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        p.probe_all().await;
        let delay = p.probe_delay();
        drop(p);
        match delay {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// True when `headers` (response headers or trailers) carry etcd's "no
/// leader" status: the member is cut off from the quorum.
fn says_no_leader(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v == "14")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("no%20leader") || m.contains("no leader"))
}

/// True when the failure happened while connecting (the request never left).
fn is_connect_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn full_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let m = err.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = err.source();
    }
    s
}

/// The tower service handed to `etcd_client::Client::from_channel`.
#[derive(Clone)]
pub(crate) struct FailoverChannel {
    pub(crate) pool: Arc<Pool>,
}

impl Service<Req> for FailoverChannel {
    type Response = Resp;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            pool.hold().await;
            let i = pool.pick();
            let url = pool.members[i].url.clone();
            let mut ch = pool.members[i].channel.clone();
            if let Err(e) = ch.ready().await {
                let why = full_chain(&e);
                pool.failed(i, &why);
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "{NOT_SENT}: etcd member {url}: {why}"
                ))) as BoxError);
            }
            match ch.call(req).await {
                Ok(resp) => {
                    if says_no_leader(resp.headers()) {
                        pool.failed(i, "etcdserver: no leader");
                    }
                    let (parts, body) = resp.into_parts();
                    let body = Watched {
                        inner: body,
                        pool: Arc::downgrade(&pool),
                        member: i,
                    };
                    Ok(http::Response::from_parts(
                        parts,
                        tonic::body::Body::new(body),
                    ))
                }
                Err(e) => {
                    let why = full_chain(&e);
                    pool.failed(i, &why);
                    let marker = if is_connect_error(&e) { NOT_SENT } else { LOST };
                    Err(Box::new(tonic::Status::unavailable(format!(
                        "{marker}: etcd member {url}: {why}"
                    ))) as BoxError)
                }
            }
        })
    }
}

/// A response body that reports its member's failures to the pool: a
/// transport error while streaming (member killed under a watch or a
/// keep-alive stream), or trailers saying "no leader".
struct Watched {
    inner: tonic::body::Body,
    pool: Weak<Pool>,
    member: usize,
}

impl http_body::Body for Watched {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Err(e))) => {
                if let Some(p) = self.pool.upgrade() {
                    p.failed(self.member, &e.to_string());
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    if says_no_leader(t) {
                        if let Some(p) = self.pool.upgrade() {
                            p.failed(self.member, "etcdserver: no leader");
                        }
                    }
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_leader_is_recognised_in_headers_and_trailers() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        h.insert("grpc-message", "etcdserver:%20no%20leader".parse().unwrap());
        assert!(says_no_leader(&h));
        h.insert(
            "grpc-message",
            "etcdserver:%20leader%20changed".parse().unwrap(),
        );
        assert!(!says_no_leader(&h));
        h.insert("grpc-status", "0".parse().unwrap());
        h.insert("grpc-message", "etcdserver:%20no%20leader".parse().unwrap());
        assert!(!says_no_leader(&h));
    }

    #[test]
    fn endpoints_get_a_scheme_and_tls_mismatches_are_refused() {
        let cfg = EtcdConfig::new(vec![]);
        assert_eq!(
            endpoint("127.0.0.1:2379", &cfg, None)
                .unwrap()
                .uri()
                .to_string(),
            "http://127.0.0.1:2379/"
        );
        assert!(endpoint("http://127.0.0.1:2379", &cfg, Some(&ClientTlsConfig::new())).is_err());
        assert!(endpoint("not a url", &cfg, None).is_err());
    }
}
