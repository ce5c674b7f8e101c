//! Guarded transactions with named handles.
//!
//! nubo's writes are etcd transactions guarded by compares ("this key is
//! still absent", "unchanged since the revision I read"). When one fails,
//! the caller must know *which* compare failed to retry only that part (a
//! node that filled up, an address taken meanwhile, a flavor changed). So a
//! guard added with [`TxnBuilder`] also adds a read of its key to the
//! failure branch, and hands back a [`Guard`]: on failure, [`Answer::held`]
//! says whether that compare held and [`Answer::current`] what the key
//! holds now. Plain reads of the failure branch are [`Probe`]s. No caller
//! decodes results by position.
//!
//! ```
//! use nubo_store::{Answer, TxnBuilder};
//! let mut t = TxnBuilder::new();
//! let ip = t.absent("/ipam/net/10.0.0.5");
//! let usage = t.unchanged_read("/nodes/n1/usage", 42);
//! t.put("/ipam/net/10.0.0.5", &"port-1");
//! let txn = t.build();
//! # let _ = (ip, usage, txn);
//! // ... after `etcd.commit(t)` failed:
//! // if !answer.held(ip) { pick another address }
//! // if let Some(kv) = answer.current(usage) { refresh the node's usage }
//! ```

use etcd_client::{Compare, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::error::StoreError;
use crate::etcd::Etcd;
use crate::kv;

/// A read of the failure branch (see [`Answer::kvs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe(usize);

/// A compare together with the read that tells, on failure, whether it held
/// (see [`Answer::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    probe: Probe,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The key's mod_revision is this (0: the key is absent).
    ModRev(i64),
    /// The key exists.
    Present,
    /// No key under the prefix changed after this revision.
    PrefixNotAfter(i64),
}

/// A transaction being built (module docs).
#[derive(Debug, Clone, Default)]
pub struct TxnBuilder {
    compares: Vec<Compare>,
    shared: Vec<(String, i64)>,
    ops: Vec<TxnOp>,
    probes: Vec<TxnOp>,
}

impl TxnBuilder {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    fn probe_op(&mut self, op: TxnOp) -> Probe {
        self.probes.push(op);
        Probe(self.probes.len() - 1)
    }

    fn keys_only(key: &str) -> TxnOp {
        TxnOp::get(key, Some(GetOptions::new().with_keys_only()))
    }

    /// Guard: `key` is unchanged since `rev` (0: still absent).
    pub fn unchanged(&mut self, key: &str, rev: i64) -> Guard {
        self.compares.push(kv::unchanged(key, rev));
        let probe = self.probe_op(Self::keys_only(key));
        Guard {
            probe,
            expect: Expect::ModRev(rev),
        }
    }

    /// [`TxnBuilder::unchanged`] whose failure read returns the value too
    /// (see [`Answer::current`]).
    pub fn unchanged_read(&mut self, key: &str, rev: i64) -> Guard {
        self.compares.push(kv::unchanged(key, rev));
        let probe = self.probe_op(TxnOp::get(key, None));
        Guard {
            probe,
            expect: Expect::ModRev(rev),
        }
    }

    /// Guard: `key` does not exist (its failure read returns the value
    /// that is there instead).
    pub fn absent(&mut self, key: &str) -> Guard {
        self.unchanged_read(key, 0)
    }

    /// Guard: `key` exists.
    pub fn present(&mut self, key: &str) -> Guard {
        self.compares.push(kv::present(key));
        let probe = self.probe_op(Self::keys_only(key));
        Guard {
            probe,
            expect: Expect::Present,
        }
    }

    /// Guard: no key under `prefix` changed or appeared after `rev`; the
    /// failure read returns every key-value under the prefix.
    pub fn prefix_unchanged_since(&mut self, prefix: &str, rev: i64) -> Guard {
        self.compares.push(kv::prefix_unchanged_since(prefix, rev));
        let probe = self.probe_op(TxnOp::get(prefix, Some(GetOptions::new().with_prefix())));
        Guard {
            probe,
            expect: Expect::PrefixNotAfter(rev),
        }
    }

    /// Guard: `key` is unchanged since `rev`, a compare that many
    /// transactions share (a flavor, an image read from a cache): when
    /// transactions are merged ([`merged`]), it is compared once.
    pub fn depends_on(&mut self, key: &str, rev: i64) -> Guard {
        self.shared.push((key.to_string(), rev));
        let probe = self.probe_op(Self::keys_only(key));
        Guard {
            probe,
            expect: Expect::ModRev(rev),
        }
    }

    /// A compare whose failure needs no explanation (a leader's lease).
    pub fn when(&mut self, c: Compare) {
        self.compares.push(c);
    }

    /// A read of `key` on failure.
    pub fn read(&mut self, key: &str) -> Probe {
        self.probe_op(TxnOp::get(key, None))
    }

    /// Puts a JSON value.
    pub fn put<T: serde::Serialize>(&mut self, key: &str, value: &T) {
        self.ops.push(kv::put(key, value));
    }

    /// Deletes one key.
    pub fn delete(&mut self, key: &str) {
        self.ops.push(TxnOp::delete(key, None));
    }

    /// Deletes every key under `prefix`.
    pub fn delete_prefix(&mut self, prefix: &str) {
        self.ops.push(TxnOp::delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ));
    }

    /// Any other write.
    pub fn op(&mut self, op: TxnOp) {
        self.ops.push(op);
    }

    /// Number of compares (shared ones included).
    pub fn compare_count(&self) -> usize {
        self.compares.len() + self.shared.len()
    }

    /// Number of writes.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is compared (the transaction always applies).
    pub fn is_unguarded(&self) -> bool {
        self.compare_count() == 0
    }

    /// The etcd transaction: every compare, the writes, and the failure
    /// reads.
    pub fn build(&self) -> Txn {
        let mut compares = self.compares.clone();
        compares.extend(self.shared.iter().map(|(k, r)| kv::unchanged(k, *r)));
        Txn::new()
            .when(compares)
            .and_then(self.ops.clone())
            .or_else(self.probes.clone())
    }
}

/// ONE transaction doing what each of `parts` does: the union of their
/// compares (shared compares of one key and revision once) and of their
/// writes, without failure reads. It applies exactly when each part would
/// have applied on its own at that revision, provided no part writes a key
/// another compares or writes; when it fails, commit the parts alone to
/// learn which failed and why.
pub fn merged(parts: &[&TxnBuilder]) -> Txn {
    let mut compares = Vec::new();
    let mut seen: std::collections::HashSet<(&str, i64)> = std::collections::HashSet::new();
    let mut ops = Vec::new();
    for p in parts {
        compares.extend(p.compares.iter().cloned());
        for (k, r) in &p.shared {
            if seen.insert((k.as_str(), *r)) {
                compares.push(kv::unchanged(k, *r));
            }
        }
        ops.extend(p.ops.iter().cloned());
    }
    Txn::new().when(compares).and_then(ops)
}

/// What a transaction built with [`TxnBuilder`] answered.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    succeeded: bool,
    revision: i64,
    probes: Vec<Vec<KeyValue>>,
}

impl Answer {
    /// Reads etcd's answer to a transaction built with [`TxnBuilder::build`].
    pub fn of(resp: TxnResponse) -> Self {
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let succeeded = resp.succeeded();
        let probes = if succeeded {
            Vec::new()
        } else {
            resp.op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs(),
                    _ => Vec::new(),
                })
                .collect()
        };
        Self {
            succeeded,
            revision,
            probes,
        }
    }

    /// The answer of a transaction that applied at `revision`.
    pub fn applied(revision: i64) -> Self {
        Self {
            succeeded: true,
            revision,
            probes: Vec::new(),
        }
    }

    /// Every compare held: the writes applied.
    pub fn succeeded(&self) -> bool {
        self.succeeded
    }

    /// The store revision after the transaction.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// What a failure read returned (nothing after a success).
    pub fn kvs(&self, p: Probe) -> &[KeyValue] {
        self.probes.get(p.0).map_or(&[], Vec::as_slice)
    }

    /// The key-value a failure read of one key returned.
    pub fn first(&self, p: Probe) -> Option<&KeyValue> {
        self.kvs(p).first()
    }

    /// What the guarded key holds now (after a failure; with
    /// [`TxnBuilder::unchanged_read`] / [`TxnBuilder::absent`] its value,
    /// otherwise its key and revisions only).
    pub fn current(&self, g: Guard) -> Option<&KeyValue> {
        self.first(g.probe)
    }

    /// Every key-value the guard's failure read returned (a prefix guard's
    /// keys).
    pub fn current_all(&self, g: Guard) -> &[KeyValue] {
        self.kvs(g.probe)
    }

    /// Whether the guard's compare held (always after a success).
    pub fn held(&self, g: Guard) -> bool {
        if self.succeeded {
            return true;
        }
        let kvs = self.kvs(g.probe);
        match g.expect {
            Expect::ModRev(rev) => kvs.first().map_or(0, |kv| kv.mod_revision()) == rev,
            Expect::Present => !kvs.is_empty(),
            Expect::PrefixNotAfter(rev) => kvs.iter().all(|kv| kv.mod_revision() <= rev),
        }
    }
}

impl Etcd {
    /// Runs a transaction built with [`TxnBuilder`] (retried and resolved
    /// like [`Etcd::txn`]).
    pub async fn commit(&self, t: &TxnBuilder) -> Result<Answer, StoreError> {
        Ok(Answer::of(self.txn(t.build()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbRangeResponse, PbResponseOp, PbTxnOpResponse, PbTxnResponse};

    fn kv(key: &str, mod_rev: i64) -> etcd_client::proto::PbKeyValue {
        etcd_client::proto::PbKeyValue {
            key: key.as_bytes().to_vec(),
            mod_revision: mod_rev,
            create_revision: 1,
            version: 1,
            ..Default::default()
        }
    }

    /// etcd's answer to a failed transaction whose failure reads return
    /// `reads` in order.
    fn failed(reads: Vec<Vec<etcd_client::proto::PbKeyValue>>) -> Answer {
        let pb = PbTxnResponse {
            header: None,
            succeeded: false,
            responses: reads
                .into_iter()
                .map(|kvs| PbResponseOp {
                    response: Some(PbTxnOpResponse::ResponseRange(PbRangeResponse {
                        count: kvs.len() as i64,
                        kvs,
                        ..Default::default()
                    })),
                })
                .collect(),
        };
        Answer::of(TxnResponse(pb))
    }

    #[test]
    fn guards_name_their_compares_whatever_the_order() {
        let mut t = TxnBuilder::new();
        let usage = t.unchanged_read("/u/n1", 7);
        let ip = t.absent("/ipam/a");
        let mac = t.absent("/macs/m");
        let flavor = t.depends_on("/flavors/f", 3);
        let vol = t.present("/volume-types/t");
        let group = t.prefix_unchanged_since("/members/g/", 10);
        let other = t.read("/x");
        t.put("/ipam/a", &"p1");
        assert_eq!((t.compare_count(), t.op_count()), (6, 1));
        // The usage moved on, the address was taken, the MAC is free, the
        // flavor is unchanged, the type is gone, a member joined.
        let a = failed(vec![
            vec![kv("/u/n1", 9)],
            vec![kv("/ipam/a", 8)],
            vec![],
            vec![kv("/flavors/f", 3)],
            vec![],
            vec![kv("/members/g/1", 4), kv("/members/g/2", 11)],
            vec![kv("/x", 2)],
        ]);
        assert!(!a.succeeded());
        assert!(!a.held(usage));
        assert_eq!(a.current(usage).unwrap().mod_revision(), 9);
        assert!(!a.held(ip));
        assert!(a.held(mac));
        assert!(a.current(mac).is_none());
        assert!(a.held(flavor));
        assert!(!a.held(vol));
        assert!(!a.held(group));
        assert_eq!(a.current_all(group).len(), 2);
        assert_eq!(a.first(other).unwrap().key(), b"/x");
        // Nothing joined: the group guard held.
        let a = failed(vec![
            vec![],
            vec![],
            vec![],
            vec![],
            vec![kv("/volume-types/t", 5)],
            vec![kv("/members/g/1", 4)],
            vec![],
        ]);
        assert!(a.held(group) && a.held(vol) && a.held(ip));
        // An absent key expected at a revision: the guard failed.
        assert!(!a.held(usage));
    }

    #[test]
    fn after_a_success_every_guard_held_and_nothing_was_read() {
        let mut t = TxnBuilder::new();
        let g = t.unchanged("/k", 5);
        let p = t.read("/k");
        let a = Answer::applied(12);
        assert!(a.succeeded() && a.held(g));
        assert_eq!(a.revision(), 12);
        assert!(a.kvs(p).is_empty());
    }

    #[test]
    fn merged_transactions_compare_shared_keys_once() {
        let mut a = TxnBuilder::new();
        a.unchanged("/u/n1", 1);
        a.depends_on("/flavors/f", 3);
        a.put("/i/1", &1);
        let mut b = TxnBuilder::new();
        b.unchanged("/u/n2", 2);
        b.depends_on("/flavors/f", 3);
        b.depends_on("/images/i", 4);
        b.put("/i/2", &2);
        let pb: etcd_client::proto::PbTxnRequest = merged(&[&a, &b]).into();
        assert_eq!(pb.compare.len(), 4, "the flavor is compared once");
        assert_eq!(pb.success.len(), 2);
        assert!(pb.failure.is_empty(), "no failure reads in a merged txn");
        let pb: etcd_client::proto::PbTxnRequest = b.build().into();
        assert_eq!((pb.compare.len(), pb.failure.len()), (3, 3));
    }
}
