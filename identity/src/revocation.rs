//! Tokens revoked before their expiry.
//!
//! Tokens are verified without an etcd round trip ([`crate::token`]), so a
//! revocation must reach every coordinator's memory: `Tokens.Revoke`
//! writes `/nubo/v1/private/revoked-tokens/<token id>` (leased until the
//! token's expiry) and every coordinator keeps the ids it watches in a
//! [`RevokedTokens`], consulted after the signature check. An entry past
//! its token's expiry is useless (the token is refused as expired) and is
//! pruned.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The ids of revoked, not yet expired tokens, with their expiry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevokedTokens {
    ids: HashMap<String, i64>,
}

impl RevokedTokens {
    /// Records token `id` (expiring at `expires_at`, unix seconds) as
    /// revoked.
    pub fn insert(&mut self, id: String, expires_at: i64) {
        self.ids.insert(id, expires_at);
    }

    /// Forgets token `id` (its record expired).
    pub fn remove(&mut self, id: &str) {
        self.ids.remove(id);
    }

    /// Replaces the whole list (a fresh listing).
    pub fn replace(&mut self, entries: impl IntoIterator<Item = (String, i64)>) {
        self.ids = entries.into_iter().collect();
    }

    /// True when token `id` was revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Drops the entries of tokens expired at `now` (unix seconds).
    pub fn prune(&mut self, now: i64) {
        self.ids.retain(|_, expires_at| *expires_at > now);
    }

    /// How many tokens are listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The list shared by the authentication layer and the watch feeding it.
pub type RevokedHandle = Arc<RwLock<RevokedTokens>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expired_then_pruned() {
        let mut r = RevokedTokens::default();
        assert!(!r.is_revoked("a"));
        r.insert("a".into(), 100);
        r.insert("b".into(), 200);
        assert!(r.is_revoked("a") && r.is_revoked("b"));
        r.prune(150);
        assert!(!r.is_revoked("a") && r.is_revoked("b"));
        r.replace([("c".to_string(), 300)]);
        assert!(!r.is_revoked("b") && r.is_revoked("c"));
        r.remove("c");
        assert!(r.is_empty());
    }
}
