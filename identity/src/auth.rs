//! Authentication of gRPC calls: the bearer token from the `authorization`
//! metadata, verified into [`Claims`].
//!
//! Wiring (coordinator): keep one [`SignerHandle`] (rebuilt from
//! `/nubo/v1/private/secrets/token-key` when a watch sees it change), wrap every
//! service except `Tokens` with
//! `XServer::with_interceptor(api.clone(), AuthInterceptor::new(handle.clone()))`,
//! and read the caller in handlers with [`claims_of`].

use std::sync::{Arc, RwLock};

use nubo_common::model::Timestamp;
use tonic::metadata::MetadataMap;

use crate::token::{Claims, TokenError, TokenSigner};

/// Why a call is not authenticated (all map to gRPC `Unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing authorization metadata: send `authorization: Bearer <token>` (get one with `nubo login`)")]
    Missing,
    /// The header is not printable ASCII.
    #[error("the authorization metadata is not valid ASCII")]
    NotAscii,
    /// Another scheme than `Bearer`, or no token after it.
    #[error("the authorization metadata must be `Bearer <token>`")]
    NotBearer,
    /// The token was refused.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The interceptor found no claims (a handler behind no interceptor).
    #[error("the call was not authenticated")]
    NoClaims,
    /// The token was revoked (`Tokens.Revoke`).
    #[error("the token was revoked; get a new one")]
    Revoked,
    /// The signer lock was poisoned by a panic elsewhere.
    #[error("the token verifier is unavailable")]
    SignerUnavailable,
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::SignerUnavailable => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// The token of an `authorization: Bearer <token>` metadata entry (scheme
/// case-insensitive, surrounding spaces ignored).
pub fn bearer_from_metadata(md: &MetadataMap) -> Result<&str, AuthError> {
    let value = md.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotAscii)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// Reads and verifies the bearer token of a call at `now`.
pub fn authenticate(
    signer: &TokenSigner,
    md: &MetadataMap,
    now: Timestamp,
) -> Result<Claims, AuthError> {
    Ok(signer.verify(bearer_from_metadata(md)?, now)?)
}

/// What `token` says if it is valid at `now`: signed by a key of
/// `signer`, not expired, and not in `revoked` — the one check of a caller's
/// bearer token and of a token to validate.
pub fn verify_token(
    signer: &SignerHandle,
    revoked: &crate::revocation::RevokedHandle,
    token: &str,
    now: Timestamp,
) -> Result<Claims, AuthError> {
    let claims = signer
        .read()
        .map_err(|_| AuthError::SignerUnavailable)?
        .verify(token, now)?;
    let list = revoked.read().map_err(|_| AuthError::SignerUnavailable)?;
    if list.is_revoked(&claims.token_id) {
        return Err(AuthError::Revoked);
    }
    Ok(claims)
}

/// The current token signer, shared by all interceptors and replaced on
/// key rotation (`*handle.write() = TokenSigner::from_key_set(&set)?`).
pub type SignerHandle = Arc<RwLock<TokenSigner>>;

/// A tonic interceptor: verifies the bearer token and stores the
/// [`Claims`] in the request extensions (read them with [`claims_of`]).
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    signer: SignerHandle,
}

impl AuthInterceptor {
    /// An interceptor verifying with `signer`.
    pub fn new(signer: SignerHandle) -> Self {
        Self { signer }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let claims = {
            let signer = self
                .signer
                .read()
                .map_err(|_| AuthError::SignerUnavailable)?;
            authenticate(&signer, req.metadata(), chrono::Utc::now())?
        };
        req.extensions_mut().insert(claims);
        Ok(req)
    }
}

/// The claims the [`AuthInterceptor`] stored in a request.
pub fn claims_of<T>(req: &tonic::Request<T>) -> Result<&Claims, AuthError> {
    req.extensions().get::<Claims>().ok_or(AuthError::NoClaims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use nubo_common::model::{Role, UserName};
    use nubo_common::ProjectId;
    use tonic::service::Interceptor;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn bearer_is_extracted() {
        assert_eq!(bearer_from_metadata(&md("Bearer abc.def")), Ok("abc.def"));
        assert_eq!(bearer_from_metadata(&md("bearer  abc ")), Ok("abc"));
        assert_eq!(
            bearer_from_metadata(&MetadataMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            bearer_from_metadata(&md("Basic dXNlcjpwdw==")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            bearer_from_metadata(&md("Bearer")),
            Err(AuthError::NotBearer)
        );
        assert_eq!(
            bearer_from_metadata(&md("Bearer  ")),
            Err(AuthError::NotBearer)
        );
        let status = tonic::Status::from(AuthError::Missing);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn interceptor_stores_claims_or_refuses() {
        let signer = TokenSigner::new(&[9; 32]).unwrap();
        let claims = Claims::new(
            UserName::new("alice").unwrap(),
            ProjectId::new("p1").unwrap(),
            vec![Role::Reader],
            chrono::Utc::now(),
            60,
        );
        let token = signer.sign(&claims);
        let mut icpt = AuthInterceptor::new(Arc::new(RwLock::new(signer)));

        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let req = icpt.call(req).unwrap();
        assert_eq!(claims_of(&req).unwrap(), &claims);

        let err = icpt.call(tonic::Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut bad = tonic::Request::new(());
        bad.metadata_mut()
            .insert("authorization", format!("Bearer x{token}").parse().unwrap());
        assert_eq!(
            icpt.call(bad).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            claims_of(&tonic::Request::new(())),
            Err(AuthError::NoClaims)
        );
    }

    #[test]
    fn authenticate_reports_expiry() {
        let signer = TokenSigner::new(&[9; 32]).unwrap();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let claims = Claims::new(
            UserName::new("a").unwrap(),
            ProjectId::new("p").unwrap(),
            vec![],
            t0,
            10,
        );
        let m = md(&format!("Bearer {}", signer.sign(&claims)));
        assert!(authenticate(&signer, &m, t0).is_ok());
        let late = DateTime::from_timestamp(1_000_010, 0).unwrap();
        assert_eq!(
            authenticate(&signer, &m, late),
            Err(AuthError::Token(TokenError::Expired {
                expired_at: 1_000_010
            }))
        );
    }
}
