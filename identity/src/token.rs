//! Signed bearer tokens.
//!
//! A token is `base64url(JSON claims) "." base64url(HMAC-SHA256(key, first part))`
//! (no padding). The key is the cluster secret in `/nubo/v1/private/secrets/token-key`
//! ([`TokenKeySet`]): 32+ random bytes created at bootstrap. Any coordinator
//! can verify any token without an etcd round trip; revocation before expiry
//! is done by rotating the key (tokens are short-lived, [`DEFAULT_TTL_SECS`]).
//!
//! Rotation: [`rotate`] makes a new current key and keeps the old one as
//! `previous` until `now + grace`; [`TokenSigner`] signs with the current
//! key and accepts either while the grace window lasts.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use nubo_common::model::{Role, Timestamp, TokenKeySet, UserName};
use nubo_common::ProjectId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted signing key, in bytes.
pub const MIN_KEY_LEN: usize = 32;
/// Length of keys made by [`generate_key`].
pub const KEY_LEN: usize = 32;
/// Default token lifetime: 1 hour.
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Longest token lifetime the coordinator should grant: 12 hours. Also the
/// natural grace window of a key rotation.
pub const MAX_TTL_SECS: i64 = 12 * 3600;
/// Clock skew tolerated between coordinators when checking `issued_at`.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;
/// Longest token accepted by [`TokenSigner::verify`] (bounds the work done
/// on garbage input).
pub const MAX_TOKEN_LEN: usize = 8192;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub user: UserName,
    /// The project the token is scoped to.
    pub project: ProjectId,
    /// Effective roles (see [`crate::authz::effective_roles`]): `admin`
    /// means cloud admin; `member`/`reader` apply to `project`.
    pub roles: Vec<Role>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the token is refused from this second on.
    pub expires_at: i64,
    /// Random id, for audit and logs.
    pub token_id: String,
    /// The application credential the token was issued for (`None`: a
    /// password login). Such a token may not create application
    /// credentials, so a leaked one cannot outlive its own revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_cred: Option<String>,
}

impl Claims {
    /// Claims valid from `now` for `ttl_secs`, with a random token id.
    pub fn new(
        user: UserName,
        project: ProjectId,
        roles: Vec<Role>,
        now: Timestamp,
        ttl_secs: i64,
    ) -> Self {
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        let issued_at = now.timestamp();
        Self {
            user,
            project,
            roles,
            issued_at,
            expires_at: issued_at.saturating_add(ttl_secs),
            token_id: URL_SAFE_NO_PAD.encode(id),
            app_cred: None,
        }
    }

    /// True when the bearer holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a token was refused (all map to gRPC `Unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `payload.signature`, bad base64 or bad JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not match any accepted key (forged, altered, or
    /// signed with a key rotated out).
    #[error("invalid token signature")]
    BadSignature,
    /// The token has expired.
    #[error("token expired at {expired_at} (unix seconds); get a new one")]
    Expired {
        /// `expires_at` of the claims.
        expired_at: i64,
    },
    /// `issued_at` is in the future beyond the tolerated clock skew.
    #[error("token issued in the future (unix {issued_at}); check the coordinators' clocks")]
    NotYetValid {
        /// `issued_at` of the claims.
        issued_at: i64,
    },
}

/// Why a signing key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Shorter than [`MIN_KEY_LEN`].
    #[error("token signing key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort(usize),
    /// The stored key is not valid base64.
    #[error("token signing key in etcd is not valid base64")]
    NotBase64,
}

/// A fresh random signing key.
pub fn generate_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut k);
    k
}

/// A new key set (bootstrap): `key` is current, no previous key.
pub fn new_key_set(key: &[u8], now: Timestamp) -> TokenKeySet {
    TokenKeySet {
        current: STANDARD.encode(key),
        rotated_at: now,
        previous: None,
        previous_valid_until: None,
    }
}

/// Rotates: `new_key` becomes current, the old current key stays accepted
/// until `now + grace_secs` (use [`MAX_TTL_SECS`] so no issued token breaks).
pub fn rotate(set: &TokenKeySet, new_key: &[u8], now: Timestamp, grace_secs: i64) -> TokenKeySet {
    TokenKeySet {
        current: STANDARD.encode(new_key),
        rotated_at: now,
        previous: Some(set.current.clone()),
        previous_valid_until: Some(now + chrono::Duration::seconds(grace_secs)),
    }
}

/// A keyed HMAC, cloned for each use.
struct Key(HmacSha256);

impl Key {
    fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        HmacSha256::new_from_slice(bytes)
            .map(Self)
            .map_err(|_| KeyError::TooShort(bytes.len()))
    }

    fn mac(&self) -> HmacSha256 {
        self.0.clone()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Signs and verifies tokens. Build one from the stored key set with
/// [`TokenSigner::from_key_set`] and rebuild it when the key changes.
#[derive(Debug)]
pub struct TokenSigner {
    current: Key,
    previous: Option<(Key, i64)>,
}

impl TokenSigner {
    /// A signer with one key (at least [`MIN_KEY_LEN`] bytes).
    pub fn new(key: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            current: Key::new(key)?,
            previous: None,
        })
    }

    /// Also accepts tokens signed with `previous` until `valid_until` (unix
    /// seconds, exclusive).
    pub fn with_previous(mut self, previous: &[u8], valid_until: i64) -> Result<Self, KeyError> {
        self.previous = Some((Key::new(previous)?, valid_until));
        Ok(self)
    }

    /// A signer for the stored key set.
    pub fn from_key_set(set: &TokenKeySet) -> Result<Self, KeyError> {
        let decode = |s: &str| STANDARD.decode(s).map_err(|_| KeyError::NotBase64);
        let mut signer = Self::new(&decode(&set.current)?)?;
        if let (Some(prev), Some(until)) = (&set.previous, set.previous_valid_until) {
            signer = signer.with_previous(&decode(prev)?, until.timestamp())?;
        }
        Ok(signer)
    }

    /// The token for `claims`, signed with the current key.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serialising plain data with string keys cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.current.mac();
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// Checks the signature (constant-time, current key then the previous
    /// one within its grace window), then the validity period at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (payload, sig) = token
            .split_once('.')
            .ok_or(TokenError::Malformed("expected <payload>.<signature>"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let now_s = now.timestamp();
        let ok = |k: &Key| {
            let mut mac = k.mac();
            mac.update(payload.as_bytes());
            mac.verify_slice(&sig).is_ok()
        };
        let valid = ok(&self.current)
            || self
                .previous
                .as_ref()
                .is_some_and(|(k, until)| now_s < *until && ok(k));
        if !valid {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("payload is not valid claims JSON"))?;
        if now_s >= claims.expires_at {
            return Err(TokenError::Expired {
                expired_at: claims.expires_at,
            });
        }
        if claims.issued_at > now_s.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid {
                issued_at: claims.issued_at,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims::new(
            UserName::new("alice").unwrap(),
            ProjectId::new("p1").unwrap(),
            vec![Role::Member],
            t(now),
            3600,
        )
    }

    const T0: i64 = 1_700_000_000;

    #[test]
    fn sign_then_verify_round_trips() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        let c = claims(T0);
        let tok = s.sign(&c);
        assert_eq!(s.verify(&tok, t(T0 + 10)).unwrap(), c);
        assert_eq!(c.expires_at, T0 + 3600);
        assert_eq!(c.token_id.len(), 16);
        assert_ne!(c.token_id, claims(T0).token_id);
    }

    #[test]
    fn the_app_cred_marker_is_signed_and_optional() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        let mut c = claims(T0);
        assert_eq!(s.verify(&s.sign(&c), t(T0 + 1)).unwrap().app_cred, None);
        c.app_cred = Some("cred-1".into());
        let tok = s.sign(&c);
        assert_eq!(
            s.verify(&tok, t(T0 + 1)).unwrap().app_cred.as_deref(),
            Some("cred-1")
        );
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        let tok = s.sign(&claims(T0));
        let bytes = tok.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20] {
                let mut b = bytes.to_vec();
                b[i] ^= flip;
                let Ok(tampered) = String::from_utf8(b) else {
                    continue;
                };
                let r = s.verify(&tampered, t(T0 + 1));
                assert!(
                    matches!(r, Err(TokenError::BadSignature | TokenError::Malformed(_))),
                    "byte {i} ^ {flip:#x} accepted: {r:?}"
                );
            }
        }
    }

    #[test]
    fn forged_payload_with_reused_signature_is_refused() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        let tok = s.sign(&claims(T0));
        let (_, sig) = tok.split_once('.').unwrap();
        let mut admin = claims(T0);
        admin.roles = vec![Role::Admin];
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
        assert_eq!(
            s.verify(&format!("{payload}.{sig}"), t(T0)),
            Err(TokenError::BadSignature)
        );
        let other = TokenSigner::new(&[8; 32]).unwrap();
        assert_eq!(other.verify(&tok, t(T0)), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_named() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        for bad in ["", "abc", "a.b.c", "!!.!!", &"a".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(
                matches!(
                    s.verify(bad, t(T0)),
                    Err(TokenError::Malformed(_) | TokenError::BadSignature)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            s.verify("abc", t(T0)),
            Err(TokenError::Malformed("expected <payload>.<signature>"))
        );
        // Correctly signed garbage JSON.
        let payload = URL_SAFE_NO_PAD.encode(b"{\"user\":1}");
        let mut mac = s.current.mac();
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            s.verify(&format!("{payload}.{sig}"), t(T0)),
            Err(TokenError::Malformed("payload is not valid claims JSON"))
        );
    }

    #[test]
    fn expiry_and_future_tokens() {
        let s = TokenSigner::new(&[7; 32]).unwrap();
        let tok = s.sign(&claims(T0));
        assert!(s.verify(&tok, t(T0 + 3599)).is_ok());
        assert_eq!(
            s.verify(&tok, t(T0 + 3600)),
            Err(TokenError::Expired {
                expired_at: T0 + 3600
            })
        );
        assert!(s.verify(&tok, t(T0 - MAX_CLOCK_SKEW_SECS)).is_ok());
        assert_eq!(
            s.verify(&tok, t(T0 - MAX_CLOCK_SKEW_SECS - 1)),
            Err(TokenError::NotYetValid { issued_at: T0 })
        );
    }

    #[test]
    fn rotation_accepts_the_previous_key_only_during_grace() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let set1 = new_key_set(&k1, t(T0));
        let old = TokenSigner::from_key_set(&set1).unwrap();
        let old_tok = old.sign(&claims(T0));

        let set2 = rotate(&set1, &k2, t(T0 + 100), 600);
        assert_eq!(set2.previous.as_deref(), Some(set1.current.as_str()));
        let new = TokenSigner::from_key_set(&set2).unwrap();
        assert!(new.verify(&old_tok, t(T0 + 699)).is_ok());
        assert_eq!(
            new.verify(&old_tok, t(T0 + 700)),
            Err(TokenError::BadSignature)
        );
        let new_tok = new.sign(&claims(T0 + 100));
        assert!(new.verify(&new_tok, t(T0 + 800)).is_ok());
        assert_eq!(
            old.verify(&new_tok, t(T0 + 150)),
            Err(TokenError::BadSignature)
        );

        // A second rotation drops k1 entirely.
        let set3 = rotate(&set2, &[3u8; 32], t(T0 + 200), 600);
        let newest = TokenSigner::from_key_set(&set3).unwrap();
        assert_eq!(
            newest.verify(&old_tok, t(T0 + 201)),
            Err(TokenError::BadSignature)
        );
        assert!(newest.verify(&new_tok, t(T0 + 201)).is_ok());
    }

    #[test]
    fn short_or_garbled_keys_are_refused() {
        assert_eq!(
            TokenSigner::new(&[0; 31]).err(),
            Some(KeyError::TooShort(31))
        );
        let mut set = new_key_set(&generate_key(), t(T0));
        set.current = "***".into();
        assert_eq!(
            TokenSigner::from_key_set(&set).err(),
            Some(KeyError::NotBase64)
        );
        assert_ne!(generate_key(), generate_key());
    }
}
