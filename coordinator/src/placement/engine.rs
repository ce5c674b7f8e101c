//! THE placement loop: claim a node, build the transaction, commit, retry
//! on conflict. Server creation, evacuation, drain and resize are [`Job`]s
//! run by [`Engine::place`]; a live migration will be one more.
//!
//! One attempt:
//! 1. [`Job::prepare`] reads what the attempt needs (addresses to try, the
//!    project's quota usage, the instance being moved) or ends the job;
//! 2. the node: the scheduler's pick among the best `top_k` that fit
//!    ([`Target::Scheduled`]; nodes with a placement in flight from this
//!    coordinator are avoided, see [`ClusterView::claim`]) or a given one
//!    ([`Target::Node`]);
//! 3. [`Job::build`] adds its compares and writes for that node; the engine
//!    adds the node's usage, compared at the revision the view knows and
//!    written with the job's new value;
//! 4. the transaction goes through the group committer; when it applied,
//!    the view records the node's new usage ([`Job::committed`]); when a
//!    compare failed, the view learns the node's current usage from the
//!    failure read, and [`Job::failed`] decides from its own guards.
//!
//! A node whose usage moved [`NODE_CONFLICTS`] times is set aside for the
//! rest of the job (all of them are tried again when nothing else fits).
//! Attempts lost to another placement that progressed (a concurrent one
//! from this coordinator on the same node, or the project's quota usage
//! moving) are not contention and do not count, up to [`Limits::rounds`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use nubo_common::keys;
use nubo_common::model::NodeUsage;
use nubo_common::NodeName;
use nubo_store::{Answer, Etcd, TxnBuilder};

use super::commit::{Committer, Member};
use super::scheduler::{Ratios, Request};
use super::view::{Claim, ClusterView};
use crate::config::Placement;
use crate::error::{ApiError, ApiResult};
use crate::telemetry::CoordinatorMetrics;

/// Conflicts on one node's usage before other nodes are preferred.
pub const NODE_CONFLICTS: u32 = 3;

/// Where a job wants its node.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The scheduler chooses among the nodes that fit `request`, never
    /// `avoid` (the node an instance moves off).
    Scheduled {
        /// What must fit.
        request: Request<'a>,
        /// A node never chosen.
        avoid: Option<&'a NodeName>,
    },
    /// This node (a resize on its node; a migration to a named node).
    Node(&'a NodeName),
}

/// The node chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The node.
    pub node: NodeName,
    /// Its usage as the view knows it (compared in the transaction).
    pub usage: NodeUsage,
    /// The revision of that usage (0: absent).
    pub usage_rev: i64,
}

/// What one attempt's transaction reserves on the chosen node.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    /// The node's usage once the transaction applies.
    pub usage: NodeUsage,
    /// Keys the transaction compares and writes that a concurrent
    /// placement may touch (besides the node's usage, added by the
    /// engine): transactions sharing one are never merged.
    pub contended: Vec<String>,
    /// False when the transaction must commit alone (its compares cover
    /// keys other placements write, or it must not wait for a group).
    pub mergeable: bool,
    /// Estimated size of the written values in bytes.
    pub bytes: usize,
}

/// What to do after a failed attempt.
#[derive(Debug)]
pub enum Retry<T> {
    /// Try again; the attempt counts.
    Again,
    /// Try again; something else progressed (not contention), so the
    /// attempt does not count.
    AgainFree,
    /// Stop with this outcome.
    Done(T),
}

/// Bounds of one job.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Attempts that count (contention).
    pub attempts: usize,
    /// Attempts in all, including those that do not count.
    pub rounds: usize,
    /// The best candidates among which one is chosen at random.
    pub top_k: usize,
}

/// One placement: what the engine asks of it (module docs).
pub trait Job: Send {
    /// What the job ends with.
    type Output: Send;

    /// Reads what this attempt needs before a node is chosen; `Some`
    /// ends the job without a transaction (nothing to do any more).
    fn prepare(&mut self) -> impl Future<Output = ApiResult<Option<Self::Output>>> + Send;

    /// Where to place in this attempt (after [`Job::prepare`]).
    fn target(&self) -> ApiResult<Target<'_>>;

    /// Adds this attempt's compares and writes for node `at` to `txn`.
    fn build(&mut self, at: &Chosen, txn: &mut TxnBuilder) -> ApiResult<Reservation>;

    /// The transaction applied at `revision`.
    fn committed(
        &mut self,
        at: &Chosen,
        revision: i64,
    ) -> impl Future<Output = ApiResult<Self::Output>> + Send;

    /// A compare failed: decide from the answer's failure reads.
    /// `node_lost`: the chosen node's usage had moved.
    fn failed(
        &mut self,
        at: &Chosen,
        answer: &Answer,
        node_lost: bool,
    ) -> ApiResult<Retry<Self::Output>>;

    /// The error when the attempts ran out.
    fn contention(&self) -> ApiError;
}

/// The placement engine (module docs); cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    view: Arc<ClusterView>,
    committer: Committer,
    etcd: Etcd,
    ratios: Ratios,
    policy: Placement,
    metrics: Arc<CoordinatorMetrics>,
}

impl Engine {
    /// An engine placing on `view`'s nodes (inside a tokio runtime: it
    /// starts the group committer's task); placements are counted in
    /// `metrics`.
    pub fn new(
        view: Arc<ClusterView>,
        etcd: Etcd,
        ratios: Ratios,
        policy: Placement,
        metrics: Arc<CoordinatorMetrics>,
    ) -> Self {
        Self {
            view,
            committer: Committer::start(etcd.clone()),
            etcd,
            ratios,
            policy,
            metrics,
        }
    }

    /// The overcommit ratios nodes are filled to.
    pub fn ratios(&self) -> &Ratios {
        &self.ratios
    }

    /// The group committer (its counters).
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    fn claim(
        &self,
        target: Target<'_>,
        excluded: &HashSet<NodeName>,
        top_k: usize,
    ) -> Result<Claim<'_>, Claimed> {
        match target {
            Target::Node(n) => self.view.claim_node(n).ok_or_else(|| {
                Claimed::Error(ApiError::FailedPrecondition(format!(
                    "node {n} not registered"
                )))
            }),
            Target::Scheduled { request, avoid } => {
                let avoided;
                let exclude = match avoid {
                    Some(a) => {
                        avoided = {
                            let mut s = excluded.clone();
                            s.insert(a.clone());
                            s
                        };
                        &avoided
                    }
                    None => excluded,
                };
                match self
                    .view
                    .claim(&request, &self.ratios, self.policy, exclude, top_k)
                {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => Err(Claimed::Error(ApiError::ResourceExhausted(
                        "no capacity: no candidate node".into(),
                    ))),
                    Err(_) if !excluded.is_empty() => Err(Claimed::TryAll),
                    Err(rej) => Err(Claimed::Error(ApiError::ResourceExhausted(
                        rej.explain(&request),
                    ))),
                }
            }
        }
    }

    /// Runs `job` until it is placed, ends, fails, or its attempts run out
    /// (module docs); counts the result (`nubo_coordinator_placements_total`).
    pub async fn place<J: Job>(&self, job: &mut J, limits: Limits) -> ApiResult<J::Output> {
        let mut ran_out = false;
        let r = self.place_inner(job, limits, &mut ran_out).await;
        self.metrics.placement(match &r {
            Ok(_) => "placed",
            Err(_) if ran_out => "contention",
            Err(ApiError::ResourceExhausted(_)) => "no_capacity",
            Err(_) => "error",
        });
        r
    }

    async fn place_inner<J: Job>(
        &self,
        job: &mut J,
        limits: Limits,
        ran_out: &mut bool,
    ) -> ApiResult<J::Output> {
        let mut conflicts: HashMap<NodeName, u32> = HashMap::new();
        let mut excluded: HashSet<NodeName> = HashSet::new();
        let (mut attempts, mut rounds) = (0, 0);
        while attempts < limits.attempts && rounds < limits.rounds {
            attempts += 1;
            rounds += 1;
            if let Some(out) = job.prepare().await? {
                return Ok(out);
            }
            // Held until this attempt's transaction is answered and the
            // view updated: other placements from here avoid the node.
            let claim = match self.claim(job.target()?, &excluded, limits.top_k) {
                Ok(c) => c,
                Err(Claimed::TryAll) => {
                    excluded.clear();
                    continue;
                }
                Err(Claimed::Error(e)) => return Err(e),
            };
            let at = Chosen {
                node: claim.node.clone(),
                usage: claim.usage.clone(),
                usage_rev: claim.usage_rev,
            };
            let mut txn = TxnBuilder::new();
            let mut r = job.build(&at, &mut txn)?;
            let ukey = keys::node_usage(&at.node);
            let usage = txn.unchanged_read(&ukey, at.usage_rev);
            txn.put(&ukey, &r.usage);
            r.contended.push(ukey);
            let answer = self
                .committer
                .commit(Member {
                    txn,
                    contended: r.contended,
                    mergeable: r.mergeable,
                    bytes: r.bytes,
                })
                .await?;
            if answer.succeeded() {
                self.view
                    .record_usage(&at.node, Some(r.usage), answer.revision());
                drop(claim);
                return job.committed(&at, answer.revision()).await;
            }
            match answer.current(usage) {
                Some(kv) if kv.mod_revision() != at.usage_rev => {
                    self.view.apply_usage_kv(&at.node, kv)
                }
                None if at.usage_rev != 0 => {
                    self.view.record_usage(&at.node, None, answer.revision())
                }
                _ => {}
            }
            let node_lost = !answer.held(usage);
            let free = match job.failed(&at, &answer, node_lost)? {
                Retry::Done(out) => return Ok(out),
                Retry::Again => false,
                Retry::AgainFree => !node_lost,
            };
            if (node_lost && claim.shared) || free {
                // Another placement progressed: not contention.
                attempts -= 1;
            } else if node_lost {
                let c = conflicts.entry(at.node.clone()).or_default();
                *c += 1;
                if *c >= NODE_CONFLICTS {
                    excluded.insert(at.node.clone());
                }
            }
        }
        *ran_out = true;
        Err(job.contention())
    }

    /// Commits a transaction that gives resources back (a deletion): the
    /// node's new usage, written by `txn`, is recorded in the view when it
    /// applied. `false`: a compare failed, read again.
    pub async fn release(
        &self,
        txn: &TxnBuilder,
        usage: Option<(NodeName, NodeUsage)>,
    ) -> ApiResult<bool> {
        let answer = self.etcd.commit(txn).await?;
        if !answer.succeeded() {
            return Ok(false);
        }
        if let Some((node, nu)) = usage {
            self.view.record_usage(&node, Some(nu), answer.revision());
        }
        Ok(true)
    }
}

/// Why no node was claimed.
enum Claimed {
    /// Nothing fits outside the nodes set aside: try them all again.
    TryAll,
    /// Nothing fits at all, or the node asked for is unknown.
    Error(ApiError),
}
