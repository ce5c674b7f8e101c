//! HTTP health endpoints: `/healthz` (200 when etcd answers) and `/readyz`
//! (200 with body "leader" or "follower" once serving).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::election::LeaderState;
use crate::placement::view::ClusterView;
use nubo_store::Etcd;

/// State shared with the health handlers.
#[derive(Clone)]
pub struct Health {
    /// etcd.
    pub store: Etcd,
    /// Election state.
    pub leader: Arc<LeaderState>,
    /// Node view (ready after the first listing).
    pub view: Arc<ClusterView>,
}

/// The router.
pub fn router(h: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(h)
}

async fn etcd_ok(h: &Health) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), h.store.status()).await,
        Ok(Ok(_))
    )
}

async fn healthz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if etcd_ok(&h).await {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "etcd unreachable")
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if !h.view.is_ready() || !h.leader.is_registered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    if h.leader.is_leader() {
        (StatusCode::OK, "leader")
    } else {
        (StatusCode::OK, "follower")
    }
}
