//! The revoked tokens every coordinator refuses: listed at start (before
//! the first call is served), then followed by a watch, so a revocation
//! made on one coordinator reaches the others within the watch latency.
//! Each record is leased until its token's expiry: etcd deletes it then,
//! and the watch drops it here.

use nubo_common::keys;
use nubo_common::model::RevokedToken;
use nubo_store::kv::decode_or_skip;
use nubo_store::ListWatch;
use tokio::sync::watch;

use crate::error::ServeError;
use crate::state::Ctx;

/// The token id of a `revoked-tokens/<id>` key.
fn token_id(key: &[u8]) -> Option<String> {
    match keys::parse(std::str::from_utf8(key).ok()?)? {
        keys::Key::RevokedToken(id) => Some(id),
        _ => None,
    }
}

/// The (token id, expiry) of a record; `None` (logged by the decoder) for
/// a malformed one.
fn entry(kv: &etcd_client::KeyValue) -> Option<(String, i64)> {
    let id = token_id(kv.key())?;
    let rec: RevokedToken = decode_or_skip(kv)?;
    Some((id, rec.expires_at))
}

fn replace(ctx: &Ctx, kvs: &[etcd_client::KeyValue]) {
    let now = chrono::Utc::now().timestamp();
    let mut list = ctx.revoked.write().unwrap_or_else(|e| e.into_inner());
    list.replace(kvs.iter().filter_map(entry));
    list.prune(now);
    tracing::debug!(revoked = list.len(), "revoked tokens listed");
}

/// Fills the list once (at start).
pub async fn load(ctx: &Ctx) -> Result<(), ServeError> {
    let kvs = ctx
        .store
        .list_all(&keys::revoked_tokens_prefix(), |kv| Some(kv.clone()))
        .await?;
    replace(ctx, &kvs);
    Ok(())
}

/// Follows the records until `shutdown`.
pub async fn run(ctx: Ctx, shutdown: watch::Receiver<bool>) {
    ListWatch::new(ctx.store.clone(), vec![keys::revoked_tokens_prefix()])
        .follow(
            "revoked tokens",
            shutdown,
            |_, kvs| replace(&ctx, kvs),
            |kv, deleted| {
                let mut list = ctx.revoked.write().unwrap_or_else(|e| e.into_inner());
                if deleted {
                    if let Some(id) = token_id(kv.key()) {
                        list.remove(&id);
                    }
                } else if let Some((id, expires_at)) = entry(kv) {
                    list.insert(id, expires_at);
                }
            },
        )
        .await;
}
