//! Token signing keys: loaded on start with `auth = "token"`, and reloaded
//! every few seconds by every coordinator so a rotated key set is picked up
//! without a restart.

use std::time::Duration;

use nubo_common::model::TokenKeySet;
use nubo_identity::auth::SignerHandle;
use tokio::sync::watch;

use crate::error::ServeError;
use nubo_store::Etcd;

/// How often the key set is read again.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Reads the key set (missing = the cloud was never bootstrapped).
pub async fn load(store: &Etcd) -> Result<TokenKeySet, ServeError> {
    let key = nubo_common::keys::token_key();
    match store.read::<TokenKeySet>(&key).await {
        Ok(Some(v)) => Ok(v.value),
        Ok(None) => Err(ServeError::Config(format!(
            "auth = \"token\" but {key} is missing: run `nubo-coordinator bootstrap --admin-password-file F` first"
        ))),
        Err(e) => Err(ServeError::Config(format!("cannot read {key}: {e}"))),
    }
}

/// A signer for a key set.
pub fn signer(set: &TokenKeySet) -> Result<nubo_identity::TokenSigner, ServeError> {
    nubo_identity::TokenSigner::from_key_set(set)
        .map_err(|e| ServeError::Config(format!("unusable token signing key: {e}")))
}

/// Key rotation: replaces the signer behind `handle` whenever the stored
/// key set changes (`last` is the one it holds now), until shutdown.
pub async fn run_reload(
    store: Etcd,
    handle: SignerHandle,
    mut last: TokenKeySet,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        match load(&store).await {
            Ok(set) if set != last => match signer(&set) {
                Ok(s) => {
                    if let Ok(mut w) = handle.write() {
                        *w = s;
                        tracing::info!("token signing keys reloaded");
                    }
                    last = set;
                }
                Err(e) => tracing::warn!(error = %e, "unusable token key set"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reload the token keys"),
        }
    }
}
