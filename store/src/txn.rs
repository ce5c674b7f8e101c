//! Transactions whose answer was lost.
//!
//! A write sent to a member that then died, or answered "request timed
//! out", may or may not have been applied, and may even be applied later
//! (the proposal sits in the raft log). Retrying blindly is wrong both
//! ways: a transaction guarded by compares that *did* apply fails its
//! compares on the retry and would be reported as a conflict (the caller
//! re-plans and allocates again); one that did not apply must not be given
//! up. So, for a write transaction ([`txn`]):
//!
//! - **unguarded** (no compare: puts of fixed values, deletes): applying
//!   it twice leaves the same state, so it is simply sent again;
//! - **guarded**: etcd applies it at most once *if* applying it breaks its
//!   own compares, which holds for every allocating transaction of nubo (a
//!   create compares the key absent, an update compares the mod revision of
//!   a key it writes). After a lost answer the written keys are read back
//!   ([`Shape::applied`]): if they hold what the transaction wrote it
//!   applied, and the caller gets a success; otherwise it is sent again,
//!   and if that attempt fails its compares the keys are read back once
//!   more (the first attempt may have applied in between) before the
//!   failure is returned.
//!
//! "Hold what it wrote": a key the transaction requires absent and creates
//! (a witness: an instance id, an address → port, a client token) holds
//! exactly the written value; without such a key, every put key holds its
//! written value at one revision; a delete-only transaction has its keys
//! gone.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use etcd_client::proto::{
    PbCompare, PbDeleteResponse, PbPutResponse, PbRangeResponse, PbResponseHeader, PbResponseOp,
    PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use etcd_client::{Client, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::classify::Class;
use crate::error::StoreError;
use crate::retry::{attempt, terminal, Backoff, RetryPolicy};

/// Compare target "create revision" (etcd's `CompareTarget::CREATE`).
const TARGET_CREATE: i32 = 1;
/// Compare target "version".
const TARGET_VERSION: i32 = 0;
/// Compare result "equal".
const RESULT_EQUAL: i32 = 0;

/// Kind of one operation of the success branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Get,
    Put,
    Delete,
    Txn,
}

/// What a transaction reads, compares and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// The transaction has compares.
    pub guarded: bool,
    /// The success branch writes (puts, deletes, nested transactions).
    pub writes: bool,
    /// The failure branch writes.
    pub failure_writes: bool,
    /// A nested transaction writes (not resolvable by reading back).
    pub nested_writes: bool,
    /// Keys compared to be absent (create revision 0 or version 0).
    pub absent: HashSet<Vec<u8>>,
    /// Success-branch puts: key, value, whether the value is ignored.
    pub puts: Vec<(Vec<u8>, Vec<u8>, bool)>,
    /// Success-branch deletes: key and range end (empty for one key).
    pub deletes: Vec<(Vec<u8>, Vec<u8>)>,
    ops: Vec<OpKind>,
}

fn op_writes(op: &Option<PbTxnOpRequest>) -> bool {
    match op {
        Some(PbTxnOpRequest::RequestPut(_)) | Some(PbTxnOpRequest::RequestDeleteRange(_)) => true,
        Some(PbTxnOpRequest::RequestTxn(t)) => {
            t.success.iter().any(|o| op_writes(&o.request))
                || t.failure.iter().any(|o| op_writes(&o.request))
        }
        _ => false,
    }
}

fn is_absent_compare(c: &PbCompare) -> bool {
    c.range_end.is_empty()
        && c.result == RESULT_EQUAL
        && matches!(
            (c.target, &c.target_union),
            (TARGET_CREATE, Some(PbTargetUnion::CreateRevision(0)))
                | (TARGET_VERSION, Some(PbTargetUnion::Version(0)))
        )
}

impl Shape {
    /// The shape of `txn`.
    pub fn of(txn: &Txn) -> Self {
        let pb: PbTxnRequest = txn.clone().into();
        let mut s = Shape {
            guarded: !pb.compare.is_empty(),
            absent: pb
                .compare
                .iter()
                .filter(|c| is_absent_compare(c))
                .map(|c| c.key.clone())
                .collect(),
            failure_writes: pb.failure.iter().any(|o| op_writes(&o.request)),
            ..Default::default()
        };
        for op in &pb.success {
            match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    s.writes = true;
                    s.puts
                        .push((p.key.clone(), p.value.clone(), p.ignore_value));
                    s.ops.push(OpKind::Put);
                }
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                    s.writes = true;
                    s.deletes.push((d.key.clone(), d.range_end.clone()));
                    s.ops.push(OpKind::Delete);
                }
                Some(PbTxnOpRequest::RequestTxn(_)) => {
                    if op_writes(&op.request) {
                        s.writes = true;
                        s.nested_writes = true;
                    }
                    s.ops.push(OpKind::Txn);
                }
                _ => s.ops.push(OpKind::Get),
            }
        }
        s
    }

    /// True when a lost answer can be resolved by reading back.
    pub fn resolvable(&self) -> bool {
        !self.nested_writes && !self.failure_writes
    }

    /// The read that tells whether the transaction applied: one get per
    /// put key, then one count per deleted key or range.
    fn check_txn(&self) -> Txn {
        let mut ops: Vec<TxnOp> = self
            .puts
            .iter()
            .map(|(k, _, _)| TxnOp::get(k.clone(), None))
            .collect();
        for (k, end) in &self.deletes {
            let mut o = GetOptions::new().with_count_only();
            if !end.is_empty() {
                o = o.with_range(end.clone());
            }
            ops.push(TxnOp::get(k.clone(), Some(o)));
        }
        Txn::new().and_then(ops)
    }

    /// Decides from the answer of the read-back (one get per put key, then
    /// one count per deleted key or range) whether the
    /// transaction applied; `Some(revision)` if it did (module docs).
    pub fn applied(&self, check: &TxnResponse) -> Option<i64> {
        let answers = check.op_responses();
        let mut found: HashMap<&[u8], (Vec<u8>, i64)> = HashMap::new();
        for ((k, _, _), r) in self.puts.iter().zip(answers.iter()) {
            if let TxnOpResponse::Get(g) = r {
                if let Some(kv) = g.kvs().first() {
                    found.insert(k.as_slice(), (kv.value().to_vec(), kv.mod_revision()));
                }
            }
        }
        let holds = |k: &[u8], v: &[u8], ignore: bool| -> Option<i64> {
            let (have, rev) = found.get(k)?;
            (ignore || have.as_slice() == v).then_some(*rev)
        };
        let witnesses: Vec<&(Vec<u8>, Vec<u8>, bool)> = self
            .puts
            .iter()
            .filter(|(k, _, ignore)| !ignore && self.absent.contains(k))
            .collect();
        if !witnesses.is_empty() {
            return witnesses.iter().find_map(|(k, v, _)| holds(k, v, false));
        }
        if !self.puts.is_empty() {
            let revs: Option<Vec<i64>> = self
                .puts
                .iter()
                .map(|(k, v, ignore)| holds(k, v, *ignore))
                .collect();
            let revs = revs?;
            let first = *revs.first()?;
            return revs.iter().all(|r| *r == first).then_some(first);
        }
        if !self.deletes.is_empty() {
            let gone = answers.iter().skip(self.puts.len()).all(|r| match r {
                TxnOpResponse::Get(g) => g.count() == 0,
                _ => false,
            });
            return gone.then(|| check.header().map(|h| h.revision()).unwrap_or(0));
        }
        None
    }

    /// The answer of an applied transaction whose real answer was lost:
    /// `succeeded`, the revision, one empty response per operation
    /// (a delete of one key counts 1).
    pub fn applied_response(&self, revision: i64) -> TxnResponse {
        let mut dels = self.deletes.iter();
        let responses = self
            .ops
            .iter()
            .map(|k| PbResponseOp {
                response: Some(match k {
                    OpKind::Get => PbTxnOpResponse::ResponseRange(PbRangeResponse::default()),
                    OpKind::Put => PbTxnOpResponse::ResponsePut(PbPutResponse::default()),
                    OpKind::Delete => PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                        deleted: match dels.next() {
                            Some((_, end)) if end.is_empty() => 1,
                            _ => 0,
                        },
                        ..Default::default()
                    }),
                    OpKind::Txn => PbTxnOpResponse::ResponseTxn(PbTxnResponse::default()),
                }),
            })
            .collect();
        TxnResponse(PbTxnResponse {
            header: Some(PbResponseHeader {
                revision,
                ..Default::default()
            }),
            succeeded: true,
            responses,
        })
    }
}

/// Runs a transaction with retries (module docs): reads and unguarded
/// writes are retried like any idempotent request; a guarded write whose
/// answer was lost is resolved by reading back what it wrote.
pub async fn txn(client: &Client, p: &RetryPolicy, txn: Txn) -> Result<TxnResponse, StoreError> {
    let shape = Shape::of(&txn);
    if !shape.writes || !shape.guarded {
        let what = if shape.writes { "write" } else { "read" };
        return crate::retry::retry(p, what, || {
            let (mut kv, t) = (client.kv_client(), txn.clone());
            async move { kv.txn(t).await }
        })
        .await;
    }
    let start = Instant::now();
    let mut backoff = Backoff::of(p);
    let mut attempts = 0u32;
    // Set once an attempt may have reached etcd without an answer.
    let mut lost: Option<String> = None;
    loop {
        attempts += 1;
        let mut kv = client.kv_client();
        let f = match attempt(p, kv.txn(txn.clone())).await {
            Ok(resp) if resp.succeeded() || lost.is_none() => return Ok(resp),
            Ok(resp) => {
                // Failed compares after a lost answer: the lost attempt may
                // be what broke them.
                return match resolve(client, p, &shape, start).await {
                    Ok(Some(rev)) => {
                        tracing::info!(
                            revision = rev,
                            "a transaction whose answer was lost had applied"
                        );
                        Ok(shape.applied_response(rev))
                    }
                    Ok(None) => Ok(resp),
                    Err(check) => Err(StoreError::OutcomeUnknown {
                        cause: lost.unwrap_or_default(),
                        check: check.to_string(),
                    }),
                };
            }
            Err(f) => f,
        };
        let class = f.class();
        match class {
            Class::NotSent => {}
            Class::Lost if shape.resolvable() => {
                lost = Some(f.to_string());
                match resolve(client, p, &shape, start).await {
                    Ok(Some(rev)) => {
                        tracing::info!(revision = rev, error = %f, "a transaction whose answer was lost had applied");
                        return Ok(shape.applied_response(rev));
                    }
                    Ok(None) => {}
                    Err(check) => {
                        return Err(StoreError::OutcomeUnknown {
                            cause: f.to_string(),
                            check: check.to_string(),
                        })
                    }
                }
            }
            Class::Lost => {
                return Err(StoreError::OutcomeUnknown {
                    cause: f.to_string(),
                    check: "not checked: the transaction writes in a nested transaction or its failure branch".into(),
                })
            }
            _ => {
                // A definite refusal now; an earlier attempt may still have
                // applied.
                if lost.is_some() {
                    if let Ok(Some(rev)) = resolve(client, p, &shape, start).await {
                        return Ok(shape.applied_response(rev));
                    }
                }
                return Err(terminal(f));
            }
        }
        let d = backoff.next_delay();
        if start.elapsed() + d >= p.deadline {
            return Err(match lost {
                Some(cause) => StoreError::OutcomeUnknown {
                    cause,
                    check: format!("it had not applied when last read, and resending failed: {f}"),
                },
                None => StoreError::Unavailable {
                    what: "transaction",
                    attempts,
                    elapsed: start.elapsed(),
                    last: f.to_string(),
                },
            });
        }
        tracing::debug!(attempt = attempts, error = %f, retry_in = ?d, "etcd transaction failed; retrying");
        tokio::time::sleep(d).await;
    }
}

/// Reads back what the transaction wrote; retried until the policy's
/// deadline (extended by two attempts: an unknown outcome is worse than a
/// slow answer).
async fn resolve(
    client: &Client,
    p: &RetryPolicy,
    shape: &Shape,
    start: Instant,
) -> Result<Option<i64>, StoreError> {
    let budget = p
        .deadline
        .saturating_sub(start.elapsed())
        .max(p.attempt_timeout * 2);
    let rp = RetryPolicy {
        deadline: budget,
        ..*p
    };
    let check = shape.check_txn();
    let resp = crate::retry::retry(&rp, "read-back of a transaction", || {
        let (mut kv, t) = (client.kv_client(), check.clone());
        async move { kv.txn(t).await }
    })
    .await?;
    Ok(shape.applied(&resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbKeyValue, PbRangeResponse};
    use etcd_client::{Compare, CompareOp, DeleteOptions};

    fn get_resp(kv: Option<(&str, &str, i64)>) -> PbResponseOp {
        PbResponseOp {
            response: Some(PbTxnOpResponse::ResponseRange(PbRangeResponse {
                kvs: kv
                    .map(|(k, v, rev)| PbKeyValue {
                        key: k.into(),
                        value: v.into(),
                        mod_revision: rev,
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                count: i64::from(kv.is_some()),
                ..Default::default()
            })),
        }
    }

    fn check(answers: Vec<PbResponseOp>) -> TxnResponse {
        TxnResponse(PbTxnResponse {
            header: Some(PbResponseHeader {
                revision: 99,
                ..Default::default()
            }),
            succeeded: true,
            responses: answers,
        })
    }

    /// A placement: usage compared by revision, instance created.
    fn placement() -> Txn {
        Txn::new()
            .when([
                Compare::mod_revision("/usage/n1", CompareOp::Equal, 7),
                Compare::create_revision("/inst/a", CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put("/usage/n1", "u+1", None),
                TxnOp::put("/inst/a", "spec-a", None),
            ])
            .or_else([TxnOp::get("/usage/n1", None)])
    }

    #[test]
    fn shapes_tell_reads_from_guarded_and_unguarded_writes() {
        let s = Shape::of(&placement());
        assert!(s.guarded && s.writes && s.resolvable());
        assert_eq!(s.absent, HashSet::from([b"/inst/a".to_vec()]));
        assert_eq!(s.puts.len(), 2);
        let r = Shape::of(&Txn::new().and_then([TxnOp::get("/a", None)]));
        assert!(!r.writes && !r.guarded);
        let d = Shape::of(&Txn::new().and_then([TxnOp::delete("/a", None)]));
        assert!(d.writes && !d.guarded);
        let f = Shape::of(
            &Txn::new()
                .when([Compare::version("/a", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("/a", "x", None)])
                .or_else([TxnOp::put("/b", "y", None)]),
        );
        assert!(f.failure_writes && !f.resolvable());
        assert_eq!(
            f.absent,
            HashSet::from([b"/a".to_vec()]),
            "version 0 is absent too"
        );
    }

    #[test]
    fn a_witness_with_our_value_means_applied_even_if_other_keys_moved_on() {
        let s = Shape::of(&placement());
        // Usage changed since (another placement), instance is ours.
        let r = check(vec![
            get_resp(Some(("/usage/n1", "u+2", 12))),
            get_resp(Some(("/inst/a", "spec-a", 10))),
        ]);
        assert_eq!(s.applied(&r), Some(10));
        // The instance key holds something else: someone else's create.
        let r = check(vec![
            get_resp(Some(("/usage/n1", "u+1", 10))),
            get_resp(Some(("/inst/a", "spec-b", 10))),
        ]);
        assert_eq!(s.applied(&r), None);
        // Absent: not applied.
        let r = check(vec![get_resp(Some(("/usage/n1", "u", 7))), get_resp(None)]);
        assert_eq!(s.applied(&r), None);
    }

    #[test]
    fn without_a_witness_every_put_must_hold_our_value_at_one_revision() {
        let s = Shape::of(
            &Txn::new()
                .when([Compare::mod_revision("/a", CompareOp::Equal, 3)])
                .and_then([TxnOp::put("/a", "1", None), TxnOp::put("/b", "2", None)]),
        );
        let ok = check(vec![
            get_resp(Some(("/a", "1", 8))),
            get_resp(Some(("/b", "2", 8))),
        ]);
        assert_eq!(s.applied(&ok), Some(8));
        let split = check(vec![
            get_resp(Some(("/a", "1", 8))),
            get_resp(Some(("/b", "2", 9))),
        ]);
        assert_eq!(s.applied(&split), None);
        let other = check(vec![
            get_resp(Some(("/a", "1", 8))),
            get_resp(Some(("/b", "3", 8))),
        ]);
        assert_eq!(s.applied(&other), None);
    }

    #[test]
    fn a_guarded_delete_applied_when_its_keys_are_gone() {
        let s = Shape::of(
            &Txn::new()
                .when([Compare::mod_revision("/a", CompareOp::Equal, 3)])
                .and_then([
                    TxnOp::delete("/a", None),
                    TxnOp::delete("/p/", Some(DeleteOptions::new().with_prefix())),
                ]),
        );
        let gone = check(vec![get_resp(None), get_resp(None)]);
        assert_eq!(s.applied(&gone), Some(99));
        let there = check(vec![get_resp(Some(("/a", "x", 3))), get_resp(None)]);
        assert_eq!(s.applied(&there), None);
        let r = s.applied_response(99);
        assert!(r.succeeded());
        assert_eq!(r.header().map(|h| h.revision()), Some(99));
        let deleted: Vec<i64> = r
            .op_responses()
            .into_iter()
            .map(|o| match o {
                TxnOpResponse::Delete(d) => d.deleted(),
                _ => -1,
            })
            .collect();
        assert_eq!(deleted, vec![1, 0]);
    }
}
