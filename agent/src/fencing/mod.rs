//! Self-fencing at run time: the [`FenceGate`] (the [`FenceState`] machine
//! fed with the lease acknowledgements of [`crate::node::registration`] and a
//! [`Clock`]), the [`GatedHypervisor`] and [`GatedSubsystem`] wrappers that
//! keep compute from booting anything while fenced, and the [`Fencer`] task
//! that freezes instances and, on return, re-lists etcd and applies the
//! recovery plan. The peer witness ([`Witness`]) asks the other agents
//! about their etcd sessions while this one's keep-alives go unanswered,
//! and [`SessionWatch`] answers the same question for them (node API
//! `GET /v1/etcd-status`). The decisions themselves are in
//! [`crate::fencing::rules`].

pub mod rules;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nubo_common::model::{EtcdSessionStatus, EvacuationPolicy, FencePhase};
use nubo_common::{InstanceId, NodeName};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::compute::hypervisor::{Hypervisor, HypervisorError, ObservedInstance};
use crate::config::AgentConfig;
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::{self, DesiredInstance, DesiredNode};
use crate::state::mirror::MirrorHandle;
use rules::{Clock, FenceState, LeaseAck, Phase, RecoveryAction, Transition, WitnessRound};

/// How often the fencer re-evaluates the gate (and re-sweeps while fenced,
/// catching an instance a compute action already under way booted).
pub const FENCE_TICK: Duration = Duration::from_millis(100);
/// The freeze must be complete within this bound (the coordinator's default
/// `suspect_grace`, see `docs/failure-handling.md`); each hypervisor call of
/// a sweep is cut off at it.
pub const FENCE_BUDGET: Duration = Duration::from_secs(3);
/// How long recovery waits for the fresh list before asking again.
pub const RELIST_WAIT: Duration = Duration::from_secs(5);
/// Pause between two peer witness rounds while this node's etcd session
/// is not healthy (no probing otherwise).
pub const PEER_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A witness round counts for this long after it started: one pause and two
/// probe timeouts, so a round is always replaced before it goes stale.
pub fn witness_max_age(probe_timeout: Duration) -> Duration {
    PEER_PROBE_INTERVAL + probe_timeout * 2
}

/// Counters of self-fencing, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceCounters {
    /// Times the node fenced itself.
    pub fences: u64,
    /// Instances frozen (paused).
    pub frozen: u64,
    /// Instances hard-stopped because the driver cannot pause.
    pub hard_stopped: u64,
    /// Freeze or recovery operations that failed.
    pub failures: u64,
    /// Instances resumed on return.
    pub resumed: u64,
    /// Instances destroyed on return (no longer assigned here).
    pub destroyed: u64,
}

#[derive(Debug, Default)]
struct Stats {
    fences: AtomicU64,
    frozen: AtomicU64,
    hard_stopped: AtomicU64,
    failures: AtomicU64,
    resumed: AtomicU64,
    destroyed: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The live fencing decision, shared by the fencer task and the compute
/// wrappers. Every query re-evaluates the machine at the current time, so a
/// node waking up from a long freeze (SIGSTOP, VM host paused) is fenced by
/// whichever task looks first, before it can act on stale state.
pub struct FenceGate {
    node: NodeName,
    state: Mutex<FenceState>,
    acks: watch::Receiver<Option<LeaseAck>>,
    /// The latest peer witness round and how long a round counts (`None`:
    /// no witness, overdue always fences).
    witness: Option<(watch::Receiver<Option<WitnessRound>>, Duration)>,
    clock: Arc<dyn Clock>,
    stats: Stats,
}

impl FenceGate {
    /// A gate for `node` fencing after `self_fence_after` without an
    /// acknowledgement on `acks`, starting now.
    pub fn new(
        node: NodeName,
        self_fence_after: Duration,
        clock: Arc<dyn Clock>,
        acks: watch::Receiver<Option<LeaseAck>>,
    ) -> Arc<Self> {
        Self::with_witness(node, self_fence_after, clock, acks, None)
    }

    /// [`FenceGate::new`] that holds instead of fencing while the latest
    /// round on `witness.0`, at most `witness.1` old, shows the whole
    /// control plane down.
    pub fn with_witness(
        node: NodeName,
        self_fence_after: Duration,
        clock: Arc<dyn Clock>,
        acks: watch::Receiver<Option<LeaseAck>>,
        witness: Option<(watch::Receiver<Option<WitnessRound>>, Duration)>,
    ) -> Arc<Self> {
        let started = clock.now();
        Arc::new(Self {
            node,
            state: Mutex::new(FenceState::new(self_fence_after, started)),
            acks,
            witness,
            clock,
            stats: Stats::default(),
        })
    }

    /// Advances the machine to now and returns the phase (logging and
    /// counting transitions).
    pub fn poll(&self) -> Phase {
        let ack = *self.acks.borrow();
        let now = self.clock.now();
        let outage = self.witness.as_ref().is_some_and(|(rx, max_age)| {
            rx.borrow()
                .is_some_and(|r| r.shows_outage_at(now, *max_age))
        });
        let (phase, t) = match self.state.lock() {
            Ok(mut st) => {
                let t = st.observe_with(now, ack, outage);
                (st.phase(), t)
            }
            // A panic while holding the lock: stay on the safe side.
            Err(_) => (
                Phase::Fenced {
                    since: now,
                    lease: None,
                },
                None,
            ),
        };
        match t {
            Some(Transition::Fence { silent_for }) => {
                inc(&self.stats.fences);
                warn!(node = %self.node, ?silent_for,
                    "SELF-FENCING: no etcd keep-alive acknowledged in time; freezing instances \
                     (evacuation auto/manual), booting nothing");
            }
            Some(Transition::Hold { silent_for }) => {
                warn!(node = %self.node, ?silent_for,
                    "etcd unreachable here AND for every peer (control plane down, nobody can \
                     move instances): NOT freezing; instances keep running, nothing boots");
            }
            Some(Transition::Unhold) => {
                info!(node = %self.node, "etcd session back on the same lease; hold lifted");
            }
            Some(Transition::Recover { lease_kept }) => {
                info!(node = %self.node, lease_kept,
                    "liveness lease held again; re-listing etcd before resuming anything");
            }
            None => {}
        }
        phase
    }

    /// Whether instances may be booted or resumed now.
    pub fn boots_allowed(&self) -> bool {
        !matches!(self.poll(), Phase::Fenced { .. } | Phase::Held { .. })
    }

    /// The phase as reported to peers and the coordinator.
    pub fn reported_phase(&self) -> FencePhase {
        match self.poll() {
            Phase::Normal => FencePhase::Normal,
            Phase::Held { .. } => FencePhase::Held,
            Phase::Fenced { .. } => FencePhase::Fenced,
            Phase::Recovering { .. } => FencePhase::Recovering,
        }
    }

    /// Whether the compute reconciler may run now.
    pub fn compute_allowed(&self) -> bool {
        self.poll() == Phase::Normal
    }

    fn recovered(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.recovered();
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> FenceCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FenceCounters {
            fences: g(&self.stats.fences),
            frozen: g(&self.stats.frozen),
            hard_stopped: g(&self.stats.hard_stopped),
            failures: g(&self.stats.failures),
            resumed: g(&self.stats.resumed),
            destroyed: g(&self.stats.destroyed),
        }
    }
}

/// A [`Hypervisor`] that refuses to create, start, reboot or resume anything
/// while the node is fenced (stop, destroy, pause and list pass through).
/// Compute drives it, so even an action planned just before the fence
/// cannot boot an instance after it.
pub struct GatedHypervisor {
    inner: Arc<dyn Hypervisor>,
    gate: Arc<FenceGate>,
}

impl GatedHypervisor {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Hypervisor>, gate: Arc<FenceGate>) -> Self {
        Self { inner, gate }
    }

    fn check(&self, id: InstanceId) -> Result<(), HypervisorError> {
        if self.gate.boots_allowed() {
            Ok(())
        } else {
            Err(HypervisorError::Fenced(id))
        }
    }
}

#[async_trait]
impl Hypervisor for GatedHypervisor {
    fn driver(&self) -> &'static str {
        self.inner.driver()
    }
    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        self.inner.list().await
    }
    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        self.check(spec.id())?;
        self.inner.create(spec).await
    }
    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.start(id).await
    }
    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.stop(id).await
    }
    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.reboot(id).await
    }
    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.destroy(id).await
    }
    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.inner.pause(id).await
    }
    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.check(id)?;
        self.inner.resume(id).await
    }
    // Volumes: forwarded as they are (compute, their only caller, does not
    // run while the node is fenced).
    async fn volumes(
        &self,
        id: InstanceId,
    ) -> Result<Vec<crate::compute::hypervisor::AttachedVolume>, HypervisorError> {
        self.inner.volumes(id).await
    }
    async fn attach_volume(
        &self,
        id: InstanceId,
        volume: &crate::compute::hypervisor::VolumeToAttach,
    ) -> Result<(), HypervisorError> {
        self.inner.attach_volume(id, volume).await
    }
    async fn detach_volume(
        &self,
        id: InstanceId,
        volume: nubo_common::VolumeId,
    ) -> Result<(), HypervisorError> {
        self.inner.detach_volume(id, volume).await
    }
    async fn set_disk_qos(
        &self,
        id: InstanceId,
        volume: nubo_common::VolumeId,
        qos: nubo_common::model::Qos,
    ) -> Result<(), HypervisorError> {
        self.inner.set_disk_qos(id, volume, qos).await
    }
}

/// A [`Subsystem`] that only runs while the node is not fenced or
/// recovering. A skipped pass counts as a failure, so the reconcile loop
/// retries it shortly after the fence is lifted.
pub struct GatedSubsystem<S> {
    inner: S,
    gate: Arc<FenceGate>,
}

impl<S> GatedSubsystem<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, gate: Arc<FenceGate>) -> Self {
        Self { inner, gate }
    }
}

#[async_trait]
impl<S: Subsystem> Subsystem for GatedSubsystem<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError> {
        match self.gate.poll() {
            Phase::Normal => self.inner.reconcile(desired).await,
            Phase::Fenced { .. } => Err(SubsystemError::Other(
                "node is self-fenced (no etcd lease); not reconciling".into(),
            )),
            Phase::Recovering { .. } => Err(SubsystemError::Other(
                "returning from a self-fence; waiting for the fresh etcd list".into(),
            )),
            Phase::Held { .. } => Err(SubsystemError::Other(
                "etcd unreachable here and for every peer; holding (instances keep running)".into(),
            )),
        }
    }
}

/// The fencing task: freezes while fenced, recovers on return.
pub struct Fencer {
    gate: Arc<FenceGate>,
    hv: Arc<dyn Hypervisor>,
    mirror: MirrorHandle,
    node: NodeName,
    underlay_mtu: u16,
    /// The fence being handled: when it began, and whether its completion
    /// was logged.
    fence_began: Option<(Instant, bool)>,
    /// Instances known to have policy `never` (not rebuilt every sweep).
    never: BTreeSet<InstanceId>,
    /// When the fresh list for the current recovery was requested.
    relist_requested: Option<Instant>,
    /// The peer witness, run alongside.
    witness: Option<Witness>,
}

impl Fencer {
    /// A fencer acting on `hv` (the raw driver, not the gated one).
    pub fn new(
        cfg: &AgentConfig,
        gate: Arc<FenceGate>,
        hv: Arc<dyn Hypervisor>,
        mirror: MirrorHandle,
    ) -> Self {
        Self {
            gate,
            hv,
            mirror,
            node: cfg.node.clone(),
            underlay_mtu: cfg.underlay_mtu,
            fence_began: None,
            never: BTreeSet::new(),
            relist_requested: None,
            witness: None,
        }
    }

    /// Runs until the task is dropped (with the peer witness, if any).
    pub async fn run(mut self) {
        match self.witness.take() {
            Some(w) => {
                futures::future::join(self.fence_loop(), w.run()).await;
            }
            None => self.fence_loop().await,
        }
    }

    async fn fence_loop(mut self) {
        let mut tick = tokio::time::interval(FENCE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.gate.poll() {
                Phase::Normal | Phase::Held { .. } => {
                    self.fence_began = None;
                    self.relist_requested = None;
                }
                Phase::Fenced { .. } => {
                    self.relist_requested = None;
                    if self.fence_began.is_none() {
                        self.fence_began = Some((Instant::now(), false));
                        self.never.clear();
                    }
                    self.sweep().await;
                }
                Phase::Recovering { lease_kept, .. } => self.recover(lease_kept).await,
            }
        }
    }

    async fn desired(&self) -> DesiredNode {
        let cache = self.mirror.cache.read().await;
        desired::build(&cache, &self.node, self.underlay_mtu)
    }

    /// Freezes every instance [`rules::fence_plan`] selects.
    async fn sweep(&mut self) {
        let observed = match tokio::time::timeout(FENCE_BUDGET, self.hv.list()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                inc(&self.gate.stats.failures);
                error!(error = %e, "self-fence: cannot list instances");
                return;
            }
            Err(_) => {
                inc(&self.gate.stats.failures);
                error!("self-fence: listing instances timed out");
                return;
            }
        };
        let candidates = rules::fence_plan(&observed, &Default::default());
        if candidates.iter().all(|id| self.never.contains(id)) {
            self.log_complete();
            return;
        }
        let policies = rules::policies(&self.desired().await);
        self.never = policies
            .iter()
            .filter(|(_, p)| **p == EvacuationPolicy::Never)
            .map(|(id, _)| *id)
            .collect();
        let plan = rules::fence_plan(&observed, &policies);
        let ops = plan.into_iter().map(|id| {
            let hv = self.hv.clone();
            let gate = self.gate.clone();
            async move {
                let span = info_span!("self_fence", instance = %id);
                freeze(hv, &gate, id).instrument(span).await;
            }
        });
        futures::future::join_all(ops).await;
        self.log_complete();
    }

    /// Logs, once per fence, how long the freeze took.
    fn log_complete(&mut self) {
        if let Some((began, logged)) = self.fence_began.as_mut().filter(|(_, l)| !*l) {
            *logged = true;
            let took = began.elapsed();
            let c = self.gate.counters();
            if took > FENCE_BUDGET {
                error!(?took, budget = ?FENCE_BUDGET, frozen_total = c.frozen,
                    hard_stopped_total = c.hard_stopped, "self-fence completed late");
            } else {
                warn!(
                    ?took,
                    frozen_total = c.frozen,
                    hard_stopped_total = c.hard_stopped,
                    failures_total = c.failures,
                    "self-fence complete"
                );
            }
        }
    }

    /// Re-lists etcd (once per recovery), then destroys what is no longer
    /// assigned here and resumes the rest.
    async fn recover(&mut self, lease_kept: bool) {
        let requested = match self.relist_requested {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.relist_requested = Some(t);
                self.mirror.request_relist();
                t
            }
        };
        let mut listed = self.mirror.listed.clone();
        let fresh = tokio::time::timeout(
            RELIST_WAIT,
            listed.wait_for(|l| l.is_some_and(|l| l >= requested)),
        )
        .await
        .map(|r| r.map(drop));
        match fresh {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                warn!("fresh etcd list not done yet; asking again");
                self.relist_requested = None;
                return;
            }
        }
        if !matches!(self.gate.poll(), Phase::Recovering { .. }) {
            return;
        }
        let desired = self.desired().await;
        let observed = match self.hv.list().await {
            Ok(o) => o,
            Err(e) => {
                inc(&self.gate.stats.failures);
                warn!(error = %e, "recovery: cannot list instances; retrying");
                return;
            }
        };
        let plan = rules::recovery_plan(&observed, &desired);
        let mut ok = true;
        for action in plan {
            ok &= self.apply(action).await;
        }
        if ok {
            self.gate.recovered();
            let c = self.gate.counters();
            info!(
                lease_kept,
                resumed_total = c.resumed,
                destroyed_total = c.destroyed,
                "self-fence lifted; compute resumes"
            );
        }
    }

    async fn apply(&self, action: RecoveryAction) -> bool {
        let (id, what) = match action {
            RecoveryAction::Destroy(id) => (id, "destroy (no longer assigned here)"),
            RecoveryAction::Stop(id) => (id, "stop (frozen, desired stopped)"),
            RecoveryAction::Resume(id) => (id, "resume (still assigned here)"),
        };
        let span = info_span!("recover", instance = %id);
        async {
            let r = match action {
                RecoveryAction::Destroy(_) => self.hv.destroy(id).await,
                RecoveryAction::Stop(_) => self.hv.stop(id).await,
                RecoveryAction::Resume(_) => {
                    // Re-checked at the last moment: the lease may be gone again.
                    if !self.gate.boots_allowed() {
                        return false;
                    }
                    match self.hv.resume(id).await {
                        Err(e) => {
                            // Compute boots it again from a clean stop.
                            warn!(error = %e, "resume failed; stopping it for compute to start");
                            self.hv.stop(id).await
                        }
                        ok => ok,
                    }
                }
            };
            match r {
                Ok(()) => {
                    match action {
                        RecoveryAction::Destroy(_) => inc(&self.gate.stats.destroyed),
                        RecoveryAction::Resume(_) => inc(&self.gate.stats.resumed),
                        RecoveryAction::Stop(_) => {}
                    }
                    info!("{what}: done");
                    true
                }
                Err(e) => {
                    inc(&self.gate.stats.failures);
                    warn!(error = %e, "{what}: failed; retrying");
                    false
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Pauses `id`, hard-stopping it if the driver cannot pause; bounded by
/// [`FENCE_BUDGET`].
async fn freeze(hv: Arc<dyn Hypervisor>, gate: &FenceGate, id: InstanceId) {
    let paused = tokio::time::timeout(FENCE_BUDGET, hv.pause(id)).await;
    let r = match paused {
        Ok(Ok(())) => {
            inc(&gate.stats.frozen);
            warn!("instance frozen (self-fence)");
            return;
        }
        Ok(Err(HypervisorError::Unsupported(why))) => {
            warn!(%why, "cannot pause; hard-stopping instead (definition and disk kept)");
            tokio::time::timeout(FENCE_BUDGET, hv.stop(id)).await
        }
        Ok(Err(e)) => Ok(Err(e)),
        Err(elapsed) => Err(elapsed),
    };
    match r {
        Ok(Ok(())) => {
            inc(&gate.stats.hard_stopped);
            warn!("instance stopped (self-fence)");
        }
        Ok(Err(e)) => {
            inc(&gate.stats.failures);
            error!(error = %e, "self-fence could not stop the instance");
        }
        Err(_) => {
            inc(&gate.stats.failures);
            error!(budget = ?FENCE_BUDGET, "self-fence: hypervisor call timed out");
        }
    }
}

/// Everything [`crate::agent`] needs: the gate, the gated driver for
/// compute, and the fencer task (to spawn).
pub struct Fencing {
    /// The shared gate.
    pub gate: Arc<FenceGate>,
    /// The driver compute must use.
    pub hypervisor: Arc<dyn Hypervisor>,
    /// The task to spawn.
    pub task: Fencer,
}

/// Builds the fencing pieces for the agent configured by `cfg`, fed by the
/// etcd session `session` (whose node API answers get the gate's phase).
pub fn setup(
    cfg: &AgentConfig,
    hv: Arc<dyn Hypervisor>,
    mirror: MirrorHandle,
    session: SessionWatch,
    clock: Arc<dyn Clock>,
) -> Fencing {
    let (witness, rounds) = if cfg.peer_witness {
        let (tx, rx) = watch::channel(None);
        let w = Witness {
            node: cfg.node.clone(),
            mirror: mirror.clone(),
            session: session.clone(),
            rounds: tx,
            timeout: cfg.peer_probe_timeout,
            clock: clock.clone(),
        };
        (Some(w), Some((rx, witness_max_age(cfg.peer_probe_timeout))))
    } else {
        (None, None)
    };
    let gate = FenceGate::with_witness(
        cfg.node.clone(),
        cfg.self_fence_after(),
        clock,
        session.acks.clone(),
        rounds,
    );
    // Only the first gate of a session is reported (one per agent).
    let _ = session.gate.set(gate.clone());
    info!(self_fence_after = ?cfg.self_fence_after(), lease_ttl = ?cfg.lease_ttl,
        peer_witness = cfg.peer_witness, peer_probe_timeout = ?cfg.peer_probe_timeout,
        "self-fencing armed");
    let mut task = Fencer::new(cfg, gate.clone(), hv.clone(), mirror);
    task.witness = witness;
    Fencing {
        hypervisor: Arc::new(GatedHypervisor::new(hv, gate.clone())),
        task,
        gate,
    }
}

/// The writing ends of the etcd session channels, for
/// [`crate::node::registration::Liveness`].
pub struct SessionSenders {
    /// Acknowledged keep-alives ([`crate::node::registration::Liveness::with_acks`]).
    pub acks: watch::Sender<Option<LeaseAck>>,
    /// Failed attempts ([`crate::node::registration::Liveness::with_failures`]).
    pub failures: watch::Sender<Option<Instant>>,
}

/// The reading side of this agent's etcd session: whether it is healthy
/// ([`rules::session_healthy`]) and, once [`setup`] ran, the fencing
/// phase. Cheap to clone; the node API serves [`SessionWatch::status`].
#[derive(Clone)]
pub struct SessionWatch {
    node: NodeName,
    acks: watch::Receiver<Option<LeaseAck>>,
    failures: watch::Receiver<Option<Instant>>,
    healthy_within: Duration,
    clock: Arc<dyn Clock>,
    gate: Arc<OnceLock<Arc<FenceGate>>>,
}

/// The session channels of the agent configured by `cfg`.
pub fn session(cfg: &AgentConfig, clock: Arc<dyn Clock>) -> (SessionSenders, SessionWatch) {
    let (acks_tx, acks) = watch::channel(None);
    let (failures_tx, failures) = watch::channel(None);
    (
        SessionSenders {
            acks: acks_tx,
            failures: failures_tx,
        },
        SessionWatch {
            node: cfg.node.clone(),
            acks,
            failures,
            healthy_within: cfg.session_healthy_within(),
            clock,
            gate: Arc::new(OnceLock::new()),
        },
    )
}

impl SessionWatch {
    /// Whether this agent's keep-alives are being acknowledged now.
    pub fn healthy(&self) -> bool {
        rules::session_healthy(
            self.clock.now(),
            *self.acks.borrow(),
            *self.failures.borrow(),
            self.healthy_within,
        )
    }

    /// The answer of `GET /v1/etcd-status`.
    pub fn status(&self) -> EtcdSessionStatus {
        let now = self.clock.now();
        let ack = *self.acks.borrow();
        EtcdSessionStatus {
            node: self.node.clone(),
            healthy: self.healthy(),
            last_ack_age_ms: ack.map(|a| {
                u64::try_from(now.saturating_duration_since(a.sent).as_millis()).unwrap_or(u64::MAX)
            }),
            phase: self
                .gate
                .get()
                .map_or(FencePhase::Normal, |g| g.reported_phase()),
        }
    }
}

/// The peer witness: while this agent's etcd session is not healthy, asks
/// every other node of the cache (its node API, `GET /v1/etcd-status`, each
/// bounded by the probe timeout) and publishes the [`WitnessRound`]s the
/// gate decides on.
pub struct Witness {
    node: NodeName,
    mirror: MirrorHandle,
    session: SessionWatch,
    rounds: watch::Sender<Option<WitnessRound>>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl Witness {
    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut last: Option<(usize, usize, usize)> = None;
        loop {
            tokio::time::sleep(PEER_PROBE_INTERVAL).await;
            if self.session.healthy() {
                last = None;
                continue;
            }
            let peers: Vec<(NodeName, Option<String>)> = {
                let cache = self.mirror.cache.read().await;
                cache
                    .nodes
                    .values()
                    .filter(|n| n.name != self.node)
                    .map(|n| (n.name.clone(), n.node_api().map(str::to_owned)))
                    .collect()
            };
            let started = self.clock.now();
            let answers = futures::future::join_all(peers.iter().map(|(name, api)| async move {
                let api = api.as_deref()?;
                let st = tokio::time::timeout(self.timeout, get_etcd_status(api))
                    .await
                    .ok()?
                    .map_err(
                        |e| debug!(peer = %name, %api, error = %e, "peer witness probe failed"),
                    )
                    .ok()?;
                // An answer from another node (address reused) is no answer.
                (st.node == *name).then_some(st.healthy)
            }))
            .await;
            let round = WitnessRound {
                started,
                asked: peers.len(),
                answered: answers.iter().flatten().count(),
                healthy: answers.iter().flatten().filter(|h| **h).count(),
            };
            let summary = (round.asked, round.answered, round.healthy);
            if last != Some(summary) {
                info!(node = %self.node, asked = round.asked, answered = round.answered,
                    healthy = round.healthy, control_plane_down = round.control_plane_down(),
                    "peer witness: etcd sessions of the other nodes");
                last = Some(summary);
            }
            self.rounds.send_replace(Some(round));
        }
    }
}

/// `GET http://<api>/v1/etcd-status` (HTTP/1.0, no keep-alive).
async fn get_etcd_status(api: &str) -> std::io::Result<EtcdSessionStatus> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(api).await?;
    s.write_all(EtcdSessionStatus::http_request(api).as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf).await?;
    EtcdSessionStatus::from_http_response(&buf).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::hypervisor::{FakeHypervisor, ObservedPower};
    use crate::testutil::*;
    use rules::ManualClock;

    #[tokio::test]
    async fn the_gated_driver_refuses_boots_while_fenced_and_allows_stops() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (tx, rx) = watch::channel(None);
        let gate = FenceGate::new(node_name("n1"), Duration::from_secs(4), clock.clone(), rx);
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeHypervisor::open(dir.path(), Duration::ZERO).unwrap());
        let hv = GatedHypervisor::new(fake.clone(), gate.clone());
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let (a, _) = w.instance_on(&n, net, &[]);
        let (b, _) = w.instance_on(&n, net, &[]);
        let d = crate::state::desired::build(&w.cache, &n, 1500);
        hv.create(&d.instances[&a]).await.unwrap();

        clock.advance(Duration::from_secs(5));
        assert!(matches!(
            hv.create(&d.instances[&b]).await,
            Err(HypervisorError::Fenced(_))
        ));
        assert!(matches!(
            hv.reboot(a).await,
            Err(HypervisorError::Fenced(_))
        ));
        hv.pause(a).await.unwrap();
        assert!(matches!(
            hv.resume(a).await,
            Err(HypervisorError::Fenced(_))
        ));
        assert_eq!(gate.counters().fences, 1);

        // Acknowledged keep-alive sent after the fence: boots allowed for the
        // recovery, compute still held until recovered().
        tx.send_replace(Some(LeaseAck {
            sent: clock.now(),
            lease: 9,
        }));
        assert!(gate.boots_allowed());
        assert!(!gate.compute_allowed());
        hv.resume(a).await.unwrap();
        gate.recovered();
        assert!(gate.compute_allowed());
        let st = fake.snapshot().await;
        assert_eq!(st.instances[&a].power, ObservedPower::Running);
        assert_eq!(st.instances[&a].boot_count, 1);
    }

    #[tokio::test]
    async fn the_gate_holds_on_a_fresh_witnessed_outage_and_fences_when_it_goes_stale() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (acks_tx, acks) = watch::channel(None);
        let (rounds_tx, rounds) = watch::channel(None);
        let max_age = witness_max_age(Duration::from_millis(500));
        let gate = FenceGate::with_witness(
            node_name("n1"),
            Duration::from_secs(4),
            clock.clone(),
            acks,
            Some((rounds, max_age)),
        );
        acks_tx.send_replace(Some(LeaseAck {
            sent: clock.now(),
            lease: 3,
        }));
        clock.advance(Duration::from_secs(5));
        let down = WitnessRound {
            started: clock.now(),
            asked: 2,
            answered: 2,
            healthy: 0,
        };
        rounds_tx.send_replace(Some(down));
        assert_eq!(gate.reported_phase(), FencePhase::Held);
        assert!(!gate.boots_allowed() && !gate.compute_allowed());
        assert_eq!(gate.counters().fences, 0, "a hold is not a fence");
        // No newer round: the old one goes stale and the hold becomes a fence.
        clock.advance(max_age + Duration::from_millis(1));
        assert_eq!(gate.reported_phase(), FencePhase::Fenced);
        assert_eq!(gate.counters().fences, 1);
    }

    struct CountingSubsystem(usize);

    #[async_trait]
    impl Subsystem for CountingSubsystem {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn reconcile(&mut self, _: &DesiredNode) -> Result<usize, SubsystemError> {
            self.0 += 1;
            Ok(0)
        }
    }

    #[tokio::test]
    async fn a_gated_subsystem_does_not_run_while_fenced() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (_tx, rx) = watch::channel(None);
        let gate = FenceGate::new(node_name("n1"), Duration::from_secs(4), clock.clone(), rx);
        let mut s = GatedSubsystem::new(CountingSubsystem(0), gate);
        let d = DesiredNode::default();
        s.reconcile(&d).await.unwrap();
        clock.advance(Duration::from_secs(5));
        assert!(s.reconcile(&d).await.is_err());
        assert_eq!(s.inner.0, 1);
    }
}
