//! The audit trail: one [`AuditRecord`] per mutating or refused API call,
//! under `/nubo/v1/private/audit/<id>` where `<id>` sorts by time, so
//! `etcdctl get --prefix /nubo/v1/private/audit/` prints the trail oldest first.
//!
//! Writing: after the call, the coordinator puts the record with a plain
//! put (best effort: a failure is logged, never turned into an API error;
//! the call already happened). Reads are not audited.
//!
//! Retention: the leading coordinator keeps the newest [`RETENTION`]
//! records. Every few minutes it counts the prefix (`count_only`), and when
//! [`excess`] says so, gets that many oldest keys (`keys_only`, `limit`,
//! ascending) and deletes the range from the prefix up to
//! [`delete_range_end`] of the last of them.

use nubo_common::model::{AuditOutcome, AuditRecord, Timestamp, UserName};
use nubo_common::ProjectId;
use rand::Rng;

use crate::token::Claims;

/// How many audit records are kept (newest first).
pub const RETENTION: usize = 10_000;

/// A time-ordered key suffix: 20 zero-padded decimal digits of unix
/// nanoseconds, `-`, 4 hex digits of `rand` (so two records in the same
/// nanosecond on two coordinators do not collide). Times before 1970 sort
/// as 0; after 2262 as the largest value.
pub fn audit_id(time: Timestamp, rand: u16) -> String {
    let nanos = match time.timestamp_nanos_opt() {
        Some(n) => u64::try_from(n).unwrap_or(0),
        None if time.timestamp() > 0 => u64::MAX,
        None => 0,
    };
    format!("{nanos:020}-{rand:04x}")
}

/// [`audit_id`] with a random suffix.
pub fn new_audit_id(time: Timestamp) -> String {
    audit_id(time, rand::rng().random())
}

/// How many of `count` stored records to delete to keep `keep`; `None`
/// when nothing needs pruning.
pub fn excess(count: u64, keep: usize) -> Option<u64> {
    let keep = u64::try_from(keep).unwrap_or(u64::MAX);
    count.checked_sub(keep).filter(|n| *n > 0)
}

/// The exclusive end of a delete range that ends with `last_key`
/// inclusive (`last_key` followed by a NUL byte).
pub fn delete_range_end(last_key: &str) -> Vec<u8> {
    let mut end = last_key.as_bytes().to_vec();
    end.push(0);
    end
}

/// The outcome of a gRPC call, for [`AuditBuilder::finish`].
pub fn outcome_of<T>(result: &Result<T, tonic::Status>) -> AuditOutcome {
    match result {
        Ok(_) => AuditOutcome::Ok,
        Err(s) => AuditOutcome::Error {
            code: format!("{:?}", s.code()),
            message: s.message().to_string(),
        },
    }
}

/// Builds an [`AuditRecord`].
#[derive(Debug, Clone)]
pub struct AuditBuilder {
    user: Option<UserName>,
    project: Option<ProjectId>,
    action: String,
    resource_kind: String,
    resource_id: Option<String>,
    request_id: String,
}

impl AuditBuilder {
    /// A record of `action` (e.g. "servers.create") on `resource_kind`
    /// (e.g. "server") for request `request_id`.
    pub fn new(
        action: impl Into<String>,
        resource_kind: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Self {
        Self {
            user: None,
            project: None,
            action: action.into(),
            resource_kind: resource_kind.into(),
            resource_id: None,
            request_id: request_id.into(),
        }
    }

    /// The authenticated caller (user and project of its token).
    pub fn caller(mut self, claims: &Claims) -> Self {
        self.user = Some(claims.user.clone());
        self.project = Some(claims.project.clone());
        self
    }

    /// The resource's id or name.
    pub fn resource_id(mut self, id: impl Into<String>) -> Self {
        self.resource_id = Some(id.into());
        self
    }

    /// The record, with its outcome and time.
    pub fn finish(self, outcome: AuditOutcome, time: Timestamp) -> AuditRecord {
        AuditRecord {
            time,
            user: self.user,
            project: self.project,
            acted_in: None,
            action: self.action,
            resource_kind: self.resource_kind,
            resource_id: self.resource_id,
            outcome,
            request_id: self.request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use nubo_common::model::Role;

    #[test]
    fn ids_sort_like_times() {
        let times = [
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(9, 999_999_999).unwrap(),
            DateTime::from_timestamp(10, 0).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 5).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 6).unwrap(),
            DateTime::from_timestamp(4_000_000_000, 0).unwrap(),
        ];
        let ids: Vec<String> = times
            .iter()
            .rev()
            .map(|t| new_audit_id(*t))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(audit_id(times[2], 0xab), "00000000010000000000-00ab");
        let before_1970 = DateTime::from_timestamp(-5, 0).unwrap();
        assert_eq!(audit_id(before_1970, 1), "00000000000000000000-0001");
        let far = DateTime::from_timestamp(10_000_000_000, 0).unwrap();
        assert_eq!(audit_id(far, 1), format!("{}-0001", u64::MAX));
    }

    #[test]
    fn keys_of_equal_times_differ_and_stay_in_order() {
        let t = DateTime::from_timestamp(100, 0).unwrap();
        let a = audit_id(t, 1);
        let b = audit_id(t, 2);
        assert!(a < b);
        assert!(b < audit_id(DateTime::from_timestamp(100, 1).unwrap(), 0));
    }

    #[test]
    fn retention_arithmetic() {
        assert_eq!(excess(10_000, RETENTION), None);
        assert_eq!(excess(10_005, RETENTION), Some(5));
        assert_eq!(excess(3, RETENTION), None);
        let end = delete_range_end("/nubo/v1/private/audit/0001-00ab");
        assert!(end.as_slice() > "/nubo/v1/private/audit/0001-00ab".as_bytes());
        assert!(end.as_slice() < "/nubo/v1/private/audit/0001-00ac".as_bytes());
        assert!(end.as_slice() < "/nubo/v1/private/audit/0001-00ab0".as_bytes());
    }

    #[test]
    fn builder_records_caller_and_outcome() {
        let t = DateTime::from_timestamp(1, 0).unwrap();
        let claims = Claims::new(
            UserName::new("alice").unwrap(),
            ProjectId::new("p1").unwrap(),
            vec![Role::Reader],
            t,
            60,
        );
        let denied: Result<(), tonic::Status> = Err(tonic::Status::permission_denied("no"));
        let r = AuditBuilder::new("servers.delete", "server", "req-1")
            .caller(&claims)
            .resource_id("web-1")
            .finish(outcome_of(&denied), t);
        assert_eq!(r.user.as_ref().map(|u| u.as_str()), Some("alice"));
        assert_eq!(r.project.as_ref().map(|p| p.as_str()), Some("p1"));
        assert_eq!(r.resource_id.as_deref(), Some("web-1"));
        assert_eq!(
            r.outcome,
            AuditOutcome::Error {
                code: "PermissionDenied".into(),
                message: "no".into()
            }
        );
        let anon = AuditBuilder::new("tokens.issue", "token", "req-2")
            .finish(outcome_of(&Ok::<(), tonic::Status>(())), t);
        assert_eq!(anon.user, None);
        assert_eq!(anon.outcome, AuditOutcome::Ok);
        let json = serde_json::to_string(&anon).unwrap();
        assert!(json.contains(r#""outcome":{"status":"ok"}"#), "{json}");
    }
}
