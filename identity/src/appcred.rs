//! Application credentials: a random secret shown once to the user, stored
//! only as a SHA-256 hash (the secret has 256 bits of entropy, so a slow
//! password hash buys nothing) and compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nubo_common::model::{ApplicationCredential, Timestamp};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why an application credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppCredError {
    /// The secret does not match.
    #[error("the application credential secret is wrong")]
    BadSecret,
    /// Past its expiry.
    #[error("the application credential expired at {0}")]
    Expired(Timestamp),
}

/// A fresh secret (43 base64url characters) and the hash to store.
pub fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_secret(&secret);
    (secret, hash)
}

/// The stored form of a secret: `sha256:<base64url digest>`.
pub fn hash_secret(secret: &str) -> String {
    format!(
        "sha256:{}",
        URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
    )
}

/// Checks `secret` against the credential at `now` (constant-time compare).
pub fn verify(
    cred: &ApplicationCredential,
    secret: &str,
    now: Timestamp,
) -> Result<(), AppCredError> {
    let given = hash_secret(secret);
    if !bool::from(given.as_bytes().ct_eq(cred.secret_hash.as_bytes())) {
        return Err(AppCredError::BadSecret);
    }
    match cred.expires_at {
        Some(t) if now >= t => Err(AppCredError::Expired(t)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::{AppCredId, Role, UserName};
    use nubo_common::ProjectId;

    #[test]
    fn secret_verifies_wrong_or_expired_does_not() {
        let (secret, hash) = new_secret();
        assert_eq!(secret.len(), 43);
        let now = chrono::Utc::now();
        let mut cred = ApplicationCredential {
            id: AppCredId::new_random(),
            user: UserName::new("ci").unwrap(),
            project: ProjectId::new("p1").unwrap(),
            secret_hash: hash,
            expires_at: None,
            roles: vec![Role::Member],
            name: "ci".into(),
            created_at: Some(now),
        };
        verify(&cred, &secret, now).unwrap();
        assert_eq!(verify(&cred, "nope", now), Err(AppCredError::BadSecret));
        cred.expires_at = Some(now);
        assert_eq!(verify(&cred, &secret, now), Err(AppCredError::Expired(now)));
        assert_ne!(new_secret().0, secret);
    }
}
