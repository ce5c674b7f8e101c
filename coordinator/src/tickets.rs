//! The coordinators' stream ticket key (`nubo_nodeapi::ticket`): made by
//! the first coordinator that needs one (create-if-absent, its private
//! half under `private/secrets/ticket-key`, its public half under
//! `ticket-keys/<kid>` where nodes read it) and shared by all of them.
//! Every coordinator re-reads it after [`RELOAD_AFTER`]: to rotate it,
//! delete both halves (`etcdctl del /nubo/v1/private/secrets/ticket-key`,
//! `etcdctl del --prefix /nubo/v1/ticket-keys/`); within a minute every
//! coordinator signs with a new key and every node refuses the old one
//! (tickets live seconds: nothing in flight is lost).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nubo_common::keys;
use nubo_common::model::{now, TicketSigningKey, TicketVerifyKey};
use nubo_nodeapi::TicketSigner;
use nubo_store::{Etcd, TxnBuilder};
use tokio::sync::Mutex;

use crate::error::{ApiError, ApiResult};

/// How long a coordinator signs with the key it read before reading it
/// again (a rotation takes effect within this time).
pub const RELOAD_AFTER: Duration = Duration::from_secs(60);

/// The coordinators' ticket signer, loaded (or made) on first use and
/// re-read every [`RELOAD_AFTER`].
#[derive(Debug, Default)]
pub struct TicketKeys {
    signer: Mutex<Option<(Arc<TicketSigner>, Instant)>>,
}

impl TicketKeys {
    /// The signer, read from etcd (or made there) when not read within
    /// [`RELOAD_AFTER`].
    pub async fn signer(&self, store: &Etcd) -> ApiResult<Arc<TicketSigner>> {
        let mut held = self.signer.lock().await;
        if let Some((s, at)) = held.as_ref() {
            if at.elapsed() < RELOAD_AFTER {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(load_or_create(store).await?);
        *held = Some((s.clone(), Instant::now()));
        Ok(s)
    }
}

fn key_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("stream ticket key unusable: {e}"))
}

/// Reads the stored ticket key, or makes one (with its public half, in
/// one create-if-absent transaction: concurrent coordinators agree on the
/// winner's).
async fn load_or_create(store: &Etcd) -> ApiResult<TicketSigner> {
    let key = keys::ticket_signing_key();
    for _ in 0..4 {
        if let Some(v) = store.read::<TicketSigningKey>(&key).await? {
            let pkcs8 = B64.decode(&v.value.pkcs8).map_err(key_err)?;
            return TicketSigner::from_pkcs8(&v.value.kid, &pkcs8).map_err(key_err);
        }
        let (signer, pkcs8) = TicketSigner::generate().map_err(key_err)?;
        let at = now();
        let mut t = TxnBuilder::new();
        t.absent(&key);
        t.put(
            &key,
            &TicketSigningKey {
                kid: signer.kid().to_string(),
                pkcs8: B64.encode(&pkcs8),
                created_at: at,
            },
        );
        t.put(
            &keys::ticket_verify_key(signer.kid()),
            &TicketVerifyKey {
                public_key: B64.encode(signer.public_key()),
                created_at: at,
            },
        );
        if store.commit(&t).await?.succeeded() {
            tracing::info!(kid = signer.kid(), "stream ticket key made");
            return Ok(signer);
        }
    }
    Err(ApiError::Unavailable(
        "stream ticket key: lost every race to create it".into(),
    ))
}
