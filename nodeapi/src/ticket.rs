//! Stream tickets: what authorizes one console or capture stream on one
//! node.
//!
//! A coordinator issues a ticket to a caller allowed to see the instance
//! (and records it in the audit trail), then opens the stream on the node
//! with it. The ticket names the node, the stream (console of an instance,
//! capture on a tap), who it was issued to, and a lifetime of seconds; it
//! is signed with the coordinators' Ed25519 ticket key (`ring`), whose
//! public half the nodes read from etcd
//! (`nubo_common::keys::ticket_verify_key`). A node accepts a ticket once:
//! [`SeenTickets`] remembers every accepted id until it expires.
//!
//! Text form: `<kid>.<base64url(JSON claims)>.<base64url(signature)>`; the
//! signature covers `nubo-ticket-v1.<kid>.<claims>` (domain-separated from
//! anything else the key could sign).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use nubo_common::{ImageId, InstanceId, NodeName};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The HTTP header a ticket travels in (`Authorization: Ticket <ticket>`).
pub const AUTH_SCHEME: &str = "Ticket";

/// The longest lifetime a node accepts, whatever the ticket says.
pub const MAX_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// Clock skew tolerated between the issuing coordinator and the node.
pub const CLOCK_SKEW_MS: u64 = 30 * 1000;

/// Tickets remembered at most at once by a node ([`SeenTickets`]).
pub const MAX_REMEMBERED: usize = 100_000;

const DOMAIN: &str = "nubo-ticket-v1";

/// Which stream a ticket opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StreamTarget {
    /// The serial console log of an instance.
    Console {
        /// The instance.
        instance: InstanceId,
    },
    /// A packet capture on a tap.
    Capture {
        /// The tap (`tap` + hex digits).
        tap: String,
    },
    /// The copy of a root disk a node made for a new image (read by the
    /// leading coordinator into the image store).
    #[serde(rename = "disk-capture")]
    DiskCapture {
        /// The image.
        image: ImageId,
    },
}

impl std::fmt::Display for StreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamTarget::Console { instance } => write!(f, "console of {instance}"),
            StreamTarget::Capture { tap } => write!(f, "capture on {tap}"),
            StreamTarget::DiskCapture { image } => write!(f, "disk capture for image {image}"),
        }
    }
}

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Unique id (single use; also the audit record's request id).
    pub id: String,
    /// The node the stream is on.
    pub node: NodeName,
    /// The stream.
    pub target: StreamTarget,
    /// Who it was issued to (`user@project`), for the node's log.
    pub issued_to: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Why a ticket was refused. The messages name the rule, never the ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// No ticket came with the request.
    #[error("a stream ticket is required (issued by a coordinator)")]
    Missing,
    /// Not three dot-separated base64 parts with a JSON body.
    #[error("malformed ticket: {0}")]
    Malformed(&'static str),
    /// The key id is not a coordinator ticket key this node can find.
    #[error("ticket signed with unknown key {0}")]
    UnknownKey(String),
    /// The key for the id could not be read (etcd unreachable).
    #[error("cannot read ticket key {kid}: {reason}")]
    KeyUnavailable {
        /// The key id.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The signature does not verify.
    #[error("bad ticket signature")]
    BadSignature,
    /// Issued for another node.
    #[error("ticket is for node {0}, not this one")]
    WrongNode(NodeName),
    /// Issued for another stream.
    #[error("ticket is for the {0}, not this stream")]
    WrongTarget(StreamTarget),
    /// Past its expiry.
    #[error("ticket expired")]
    Expired,
    /// Issued in the future or valid longer than [`MAX_LIFETIME_MS`].
    #[error("ticket lifetime out of bounds")]
    BadLifetime,
    /// Already used once.
    #[error("ticket already used")]
    Reused,
    /// [`MAX_REMEMBERED`] unexpired tickets already accepted.
    #[error("too many open tickets; try again later")]
    Busy,
}

/// What went wrong making or loading a signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `ring` refused the key material.
    #[error("invalid Ed25519 key: {0}")]
    Invalid(String),
    /// A key id that is not 1–32 lowercase hex digits.
    #[error("invalid ticket key id {0:?}")]
    BadKid(String),
}

/// Whether `kid` is a valid key id (1–32 lowercase hex digits: safe in an
/// etcd key). Pure.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The coordinators' signing key (private; lives only in coordinator-only
/// etcd keys and in the coordinators' memory).
pub struct TicketSigner {
    kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("kid", &self.kid)
            .field("key", &"<secret>")
            .finish()
    }
}

impl TicketSigner {
    /// A new random key: the signer and its PKCS#8 document (to store).
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let doc =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let kid: String = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let signer = Self::from_pkcs8(&kid, doc.as_ref())?;
        Ok((signer, doc.as_ref().to_vec()))
    }

    /// The signer of a stored key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, KeyError> {
        if !valid_kid(kid) {
            return Err(KeyError::BadKid(kid.to_string()));
        }
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            kid: kid.to_string(),
            pair,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key (32 bytes), what nodes verify with.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The signed text of `claims`.
    pub fn sign(&self, claims: &TicketClaims) -> String {
        // Serializing plain strings and integers cannot fail.
        let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = self.pair.sign(signed_text(&self.kid, &body).as_bytes());
        format!("{}.{body}.{}", self.kid, B64.encode(sig.as_ref()))
    }
}

fn signed_text(kid: &str, body: &str) -> String {
    format!("{DOMAIN}.{kid}.{body}")
}

/// A ticket split into its parts, signature not yet checked.
#[derive(Debug, Clone)]
pub struct ParsedTicket {
    kid: String,
    body: String,
    sig: Vec<u8>,
}

impl ParsedTicket {
    /// Splits `text`. Pure.
    pub fn parse(text: &str) -> Result<Self, TicketError> {
        let mut parts = text.trim().split('.');
        let (Some(kid), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed("expected kid.claims.signature"));
        };
        if !valid_kid(kid) {
            return Err(TicketError::Malformed("bad key id"));
        }
        let sig = B64
            .decode(sig)
            .map_err(|_| TicketError::Malformed("signature is not base64url"))?;
        Ok(Self {
            kid: kid.to_string(),
            body: body.to_string(),
            sig,
        })
    }

    /// The id of the key that signed it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `public_key` and the claims against the
    /// node, the stream and the time `now_ms`. Pure: single use is
    /// [`SeenTickets`]'s.
    pub fn verify(
        &self,
        public_key: &[u8],
        node: &NodeName,
        target: &StreamTarget,
        now_ms: u64,
    ) -> Result<TicketClaims, TicketError> {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(signed_text(&self.kid, &self.body).as_bytes(), &self.sig)
            .map_err(|_| TicketError::BadSignature)?;
        let raw = B64
            .decode(&self.body)
            .map_err(|_| TicketError::Malformed("claims are not base64url"))?;
        let claims: TicketClaims = serde_json::from_slice(&raw)
            .map_err(|_| TicketError::Malformed("claims are not JSON"))?;
        if &claims.node != node {
            return Err(TicketError::WrongNode(claims.node));
        }
        if &claims.target != target {
            return Err(TicketError::WrongTarget(claims.target));
        }
        if claims.issued_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS)
            || claims.expires_at_ms < claims.issued_at_ms
            || claims.expires_at_ms - claims.issued_at_ms > MAX_LIFETIME_MS
        {
            return Err(TicketError::BadLifetime);
        }
        if now_ms >= claims.expires_at_ms {
            return Err(TicketError::Expired);
        }
        Ok(claims)
    }
}

/// The ids of the tickets a node accepted, until they expire: a second
/// use of one is refused.
#[derive(Debug, Default)]
pub struct SeenTickets {
    until: HashMap<String, u64>,
}

impl SeenTickets {
    /// Records the first use of `claims` at `now_ms`; refuses a second
    /// one. Expired ids are forgotten first (they are refused as expired
    /// anyway).
    pub fn use_once(&mut self, claims: &TicketClaims, now_ms: u64) -> Result<(), TicketError> {
        if self.until.contains_key(&claims.id) {
            return Err(TicketError::Reused);
        }
        if self.until.len() >= MAX_REMEMBERED {
            self.until.retain(|_, exp| *exp > now_ms);
            if self.until.len() >= MAX_REMEMBERED {
                return Err(TicketError::Busy);
            }
        }
        self.until.insert(claims.id.clone(), claims.expires_at_ms);
        Ok(())
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claims(node: &str, target: StreamTarget, now: u64, ttl: u64) -> TicketClaims {
        TicketClaims {
            id: uuid::Uuid::new_v4().to_string(),
            node: NodeName::new(node).unwrap(),
            target,
            issued_to: "alice@p1".into(),
            issued_at_ms: now,
            expires_at_ms: now + ttl,
        }
    }

    fn console(i: InstanceId) -> StreamTarget {
        StreamTarget::Console { instance: i }
    }

    #[test]
    fn a_ticket_verifies_for_its_node_and_stream_only() {
        let (signer, pkcs8) = TicketSigner::generate().unwrap();
        let pk = signer.public_key();
        let i = InstanceId::new_random();
        let n1 = NodeName::new("n1").unwrap();
        let c = claims("n1", console(i), 1_000, 30_000);
        let t = signer.sign(&c);
        let p = ParsedTicket::parse(&t).unwrap();
        assert_eq!(p.kid(), signer.kid());
        assert_eq!(p.verify(&pk, &n1, &console(i), 2_000).unwrap(), c);
        // The same key reloaded signs verifiable tickets too.
        let again = TicketSigner::from_pkcs8(signer.kid(), &pkcs8).unwrap();
        let t2 = again.sign(&c);
        assert!(ParsedTicket::parse(&t2)
            .unwrap()
            .verify(&pk, &n1, &console(i), 2_000)
            .is_ok());

        let n2 = NodeName::new("n2").unwrap();
        assert_eq!(
            p.verify(&pk, &n2, &console(i), 2_000),
            Err(TicketError::WrongNode(n1.clone()))
        );
        let other = InstanceId::new_random();
        assert!(matches!(
            p.verify(&pk, &n1, &console(other), 2_000),
            Err(TicketError::WrongTarget(_))
        ));
        let tap = StreamTarget::Capture {
            tap: "tap01".into(),
        };
        assert!(matches!(
            p.verify(&pk, &n1, &tap, 2_000),
            Err(TicketError::WrongTarget(_))
        ));
        assert_eq!(
            p.verify(&pk, &n1, &console(i), 31_000),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn forged_and_altered_tickets_are_refused() {
        let (signer, _) = TicketSigner::generate().unwrap();
        let (mallory, _) = TicketSigner::generate().unwrap();
        let i = InstanceId::new_random();
        let n1 = NodeName::new("n1").unwrap();
        let c = claims("n1", console(i), 1_000, 30_000);
        // Signed by another key, presented under the real key's id.
        let forged = mallory.sign(&c);
        let (_, rest) = forged.split_once('.').unwrap();
        let forged = format!("{}.{rest}", signer.kid());
        assert_eq!(
            ParsedTicket::parse(&forged).unwrap().verify(
                &signer.public_key(),
                &n1,
                &console(i),
                2_000
            ),
            Err(TicketError::BadSignature)
        );
        // Claims changed after signing (a longer life).
        let t = signer.sign(&c);
        let parts: Vec<&str> = t.split('.').collect();
        let mut longer = c.clone();
        longer.expires_at_ms += 1_000_000;
        let body = B64.encode(serde_json::to_vec(&longer).unwrap());
        let altered = format!("{}.{body}.{}", parts[0], parts[2]);
        assert_eq!(
            ParsedTicket::parse(&altered).unwrap().verify(
                &signer.public_key(),
                &n1,
                &console(i),
                2_000
            ),
            Err(TicketError::BadSignature)
        );
        for bad in ["", "a.b", "a.b.c.d", "XY.e30.AA", "ab.e30.%%"] {
            assert!(
                matches!(ParsedTicket::parse(bad), Err(TicketError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn lifetimes_beyond_the_bounds_are_refused() {
        let (signer, _) = TicketSigner::generate().unwrap();
        let i = InstanceId::new_random();
        let n1 = NodeName::new("n1").unwrap();
        let verify = |c: &TicketClaims, now| {
            ParsedTicket::parse(&signer.sign(c)).unwrap().verify(
                &signer.public_key(),
                &n1,
                &console(i),
                now,
            )
        };
        let long = claims("n1", console(i), 1_000, MAX_LIFETIME_MS + 1);
        assert_eq!(verify(&long, 2_000), Err(TicketError::BadLifetime));
        let future = claims("n1", console(i), 100_000, 30_000);
        assert_eq!(verify(&future, 1_000), Err(TicketError::BadLifetime));
        // Within the skew: accepted.
        let skewed = claims("n1", console(i), 20_000, 30_000);
        assert!(verify(&skewed, 1_000).is_ok());
    }

    #[test]
    fn a_ticket_is_used_once() {
        let mut seen = SeenTickets::default();
        let c = claims("n1", console(InstanceId::new_random()), 0, 1_000);
        assert_eq!(seen.use_once(&c, 10), Ok(()));
        assert_eq!(seen.use_once(&c, 20), Err(TicketError::Reused));
        let d = claims("n1", console(InstanceId::new_random()), 0, 1_000);
        assert_eq!(seen.use_once(&d, 20), Ok(()));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn key_ids_are_hex_only() {
        assert!(valid_kid("0123abcd"));
        assert!(!valid_kid(""));
        assert!(!valid_kid("../x"));
        assert!(!valid_kid("ABC"));
        assert!(!valid_kid(&"a".repeat(33)));
        assert!(matches!(
            TicketSigner::from_pkcs8("x/y", b""),
            Err(KeyError::BadKid(_))
        ));
    }
}
