//! Wiring: registration, the etcd mirror and the reconcile loop, until
//! shutdown.
//!
//! On shutdown the agent simply stops: instances keep running and the
//! liveness lease is not revoked (the node shows dead after the TTL), so a
//! restart is indistinguishable from a short hiccup and touches nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::compute::hypervisor::plug::{PlugWaiters, PLUG_RECHECK};
use crate::compute::hypervisor::{FakeHypervisor, Hypervisor, HypervisorError, NetnsHypervisor};
use crate::compute::plug_gate::PlugGate;
use crate::config::{AgentConfig, DriverKind};
use crate::node::registration::Liveness;
use crate::reconciler::{reconcile_all_observed, Reconcile};
use crate::state::desired;
use crate::state::mirror::{Mirror, MirrorHandle};
use crate::store::{self, StoreError};

/// Minimum gap between the end of a pass and the start of the next one
/// triggered by a change (coalesces bursts). A change arriving after at
/// least this long without a pass is reconciled at once; see
/// [`next_pass_at`].
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Delay before retrying after a subsystem failed.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hypervisor driver could not be opened.
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] HypervisorError),
    /// The etcd client could not be built (bad endpoint URL).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network subsystems could not be set up.
    #[error("network: {0}")]
    Network(String),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] nubo_metrics::EndpointError),
}

/// Opens the driver selected by `cfg.driver`.
pub fn open_driver(cfg: &AgentConfig) -> Result<Arc<dyn Hypervisor>, HypervisorError> {
    match cfg.driver {
        DriverKind::Fake => Ok(Arc::new(FakeHypervisor::open(
            &cfg.state_dir,
            cfg.fake_boot,
        )?)),
        DriverKind::Netns => Ok(Arc::new(open_netns(cfg)?)),
        // Needs an async connection: opened by [`run`].
        DriverKind::Libvirt => Err(HypervisorError::Unavailable("libvirt (use agent::run)")),
    }
}

/// The netns driver of the configuration.
fn open_netns(cfg: &AgentConfig) -> Result<NetnsHypervisor, HypervisorError> {
    NetnsHypervisor::open(
        &cfg.netns_prefix,
        &cfg.state_dir,
        u32::from(cfg.underlay_mtu.saturating_sub(50).max(68)),
    )
}

/// Runs the agent with the driver from the configuration until `shutdown`
/// completes.
pub async fn run(
    mut cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    // Tasks that live as long as this call (aborted on return).
    let mut side = JoinSet::new();
    // One etcd client for everything the agent runs.
    let etcd = store::connect_etcd(&cfg.etcd_endpoints, cfg.etcd_tls.as_ref()).await?;
    let mut plug = None;
    let mut resizer: Option<Arc<dyn crate::compute::Resizer>> = None;
    let hv: Arc<dyn Hypervisor> = match cfg.driver {
        DriverKind::Libvirt => {
            let lv = crate::compute::hypervisor::LibvirtHypervisor::open(&cfg).await?;
            if let Some(rx) = lv.guest_stops().await {
                side.spawn(
                    crate::compute::power_sync::run(etcd.clone(), cfg.node.clone(), rx)
                        .in_current_span(),
                );
            }
            plug = lv.plug_waiters();
            let lv = Arc::new(lv);
            resizer = Some(lv.clone());
            lv
        }
        DriverKind::Netns => {
            let ns = Arc::new(open_netns(&cfg)?);
            resizer = Some(ns.clone());
            ns
        }
        _ => open_driver(&cfg)?,
    };
    // The etcd session, shared by registration, fencing and the node API
    // (`/v1/etcd-status`, asked by the other agents' peer witnesses).
    let session = crate::fencing::session(&cfg, Arc::new(crate::fencing::rules::MonotonicClock));
    crate::node::api::spawn(&mut cfg, &mut side, Some(session.1.clone()), etcd.clone()).await;
    let r = run_inner(cfg, etcd, hv, plug, resizer, shutdown, session).await;
    side.shutdown().await;
    r
}

/// Runs the agent on the given hypervisor until `shutdown` completes. Only
/// a malformed configuration makes it return an error: etcd outages are
/// waited out.
pub async fn run_with_hypervisor(
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let session = crate::fencing::session(&cfg, Arc::new(crate::fencing::rules::MonotonicClock));
    let etcd = store::connect_etcd(&cfg.etcd_endpoints, cfg.etcd_tls.as_ref()).await?;
    run_inner(cfg, etcd, hv, None, None, shutdown, session).await
}

/// [`run_with_hypervisor`], plus the plug gate when the driver starts
/// instances paused until their NICs are plugged (`plug`).
async fn run_inner(
    cfg: AgentConfig,
    etcd: nubo_store::Etcd,
    hv: Arc<dyn Hypervisor>,
    plug: Option<Arc<PlugWaiters>>,
    resizer: Option<Arc<dyn crate::compute::Resizer>>,
    shutdown: impl Future<Output = ()> + Send,
    (senders, session): (crate::fencing::SessionSenders, crate::fencing::SessionWatch),
) -> Result<(), AgentError> {
    let span = info_span!("agent", node = %cfg.node);
    async move {
        info!(driver = hv.driver(), endpoints = ?cfg.etcd_endpoints, "starting");
        let mut registry = crate::telemetry::registry();
        let metrics = crate::telemetry::AgentMetrics::register(&mut registry, &cfg);
        crate::telemetry::AgentMetrics::register_session(&mut registry, &cfg, session.clone());
        metrics
            .node
            .set_capacity(&crate::node::registration::capacity(&cfg));
        let vm_stats =
            crate::telemetry::vm_stats::VmStatsCollector::register(&mut registry, &cfg.node);
        let (mirror, handle) = Mirror::new(etcd.clone(), cfg.node.clone());
        let (registered_tx, registered) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(mirror.run().in_current_span());
        // Per-VM statistics and node usage (see `telemetry::vm_stats`), and
        // their usage record in etcd on the liveness lease.
        let (usage_tx, usage_rx) = watch::channel(None);
        tasks.spawn(
            crate::telemetry::vm_stats::VmStatsTask {
                node: cfg.node.clone(),
                state_dir: cfg.state_dir.clone(),
                period: cfg.usage_interval,
                hypervisor: hv.clone(),
                cache: handle.cache.clone(),
                collector: vm_stats,
                usage: usage_tx,
            }
            .run()
            .in_current_span(),
        );
        tasks.spawn(
            crate::telemetry::usage::publish(
                etcd.clone(),
                cfg.node.clone(),
                usage_rx,
                senders.acks.subscribe(),
                cfg.usage_interval,
            )
            .in_current_span(),
        );
        tasks.spawn(
            Liveness::new(etcd.clone(), cfg.clone(), registered_tx)
                .with_acks(senders.acks)
                .with_failures(senders.failures)
                .run()
                .in_current_span(),
        );
        // Self-fencing (docs/failure-handling.md): compute drives the gated
        // driver and does not run while the node is fenced.
        let clock: Arc<dyn crate::fencing::rules::Clock> =
            Arc::new(crate::fencing::rules::MonotonicClock);
        let fencing = crate::fencing::setup(&cfg, hv, handle.clone(), session, clock.clone());
        tasks.spawn(fencing.task.run().in_current_span());
        let heartbeat = crate::node::watchdog::Heartbeat::new(clock);
        let watchdog_period = sd_notify::watchdog_enabled();
        if let Some(period) = watchdog_period {
            tasks.spawn(
                crate::node::watchdog::run(
                    heartbeat.clone(),
                    period,
                    crate::node::watchdog::ping_systemd,
                )
                .in_current_span(),
            );
        }
        // Subsystems run in this order on every pass: compute creates the
        // guests and their taps, volumes plugs their disks, status reports
        // both (never while fenced), then overlay, firewall, DHCP, metadata
        // (skipped with `--no-network`); see `reconciler` module docs.
        let migrations = crate::compute::migration::Migrations::new(
            cfg.node.clone(),
            fencing.hypervisor.clone(),
            etcd.clone(),
            !cfg.no_network,
        )
        .map_err(|e| AgentError::Network(e.to_string()))?;
        let passwords: std::sync::Arc<dyn nubo_metadata::PasswordStore> = std::sync::Arc::new(
            crate::network::metadata::EtcdPasswords::new(etcd.clone(), cfg.node.clone()),
        );
        let captures = crate::compute::capture::Captures::new(
            cfg.node.clone(),
            fencing.hypervisor.clone(),
            etcd.clone(),
            &cfg.state_dir,
        );
        let (compute, volumes, status) =
            crate::compute::subsystems(cfg.node.clone(), fencing.hypervisor.clone(), etcd, resizer);
        let mut subsystems: Vec<Box<dyn Reconcile>> = vec![
            Box::new(crate::fencing::GatedSubsystem::new(
                compute,
                fencing.gate.clone(),
            )),
            Box::new(crate::fencing::GatedSubsystem::new(
                volumes,
                fencing.gate.clone(),
            )),
            Box::new(crate::fencing::GatedSubsystem::new(
                crate::compute::nics::Nics::new(fencing.hypervisor.clone()),
                fencing.gate.clone(),
            )),
            Box::new(crate::fencing::GatedSubsystem::new(
                status,
                fencing.gate.clone(),
            )),
        ];
        if !cfg.no_network {
            let probe = cfg
                .probe_interval
                .map(|_| crate::network::probe::ProbeIdentity {
                    node: cfg.node.to_string(),
                    netns_prefix: cfg.probe_netns_prefix.clone(),
                });
            let network = crate::network::subsystems(
                crate::network::NetworkOptions {
                    underlay_ip: cfg.underlay_ip,
                    underlay_mtu: cfg.underlay_mtu,
                    availability_zone: cfg.availability_zone.clone(),
                    physnets: cfg.physnets.clone(),
                    router_netns_prefix: cfg.router_netns_prefix.clone(),
                    probe: probe.clone(),
                    passwords: Some(passwords),
                },
                &metrics,
            )
            .map_err(|e| AgentError::Network(e.to_string()))?;
            let probes = network.probes_ready;
            subsystems.extend(network.subsystems);
            if let (Some(ident), Some(ready), Some(every)) = (probe, probes, cfg.probe_interval) {
                tasks.spawn(
                    crate::network::probe::run_checks(ident, ready, metrics.probe.clone(), every)
                        .in_current_span(),
                );
            }
        }
        // Last: resumes guests started paused once their taps are wired
        // (see `plug_gate`); like compute, never while fenced.
        let plug = plug.filter(|_| !cfg.no_network);
        if let Some(waiters) = &plug {
            subsystems.push(Box::new(crate::fencing::GatedSubsystem::new(
                PlugGate::new(waiters.clone(), fencing.hypervisor)
                    .map_err(|e| AgentError::Network(e.to_string()))?,
                fencing.gate.clone(),
            )));
        }
        // Last: this node's side of migrations (after the network
        // subsystems wired an incoming instance's ports); like compute,
        // never while fenced.
        subsystems.push(Box::new(crate::fencing::GatedSubsystem::new(
            migrations,
            fencing.gate.clone(),
        )));
        // Copies of root disks for new images (never while fenced: the
        // disk may be another node's by now).
        subsystems.push(Box::new(crate::fencing::GatedSubsystem::new(
            captures,
            fencing.gate.clone(),
        )));
        // Every family is registered: serve them.
        crate::telemetry::spawn_endpoint(&cfg, registry, &mut tasks).await?;
        tokio::select! {
            () = shutdown => info!("shutdown requested; leaving instances running"),
            () = reconcile_loop(&cfg, handle, registered, subsystems, Beat {
                heartbeat,
                every: crate::node::watchdog::beat_interval(watchdog_period),
            }, plug, metrics) => {}
        }
        tasks.shutdown().await;
        Ok(())
    }
    .instrument(span)
    .await
}

/// The watchdog heartbeat of the reconcile loop and its idle period.
struct Beat {
    heartbeat: crate::node::watchdog::Heartbeat,
    every: Duration,
}

/// When a pass triggered by a change seen at `now` starts, given when the
/// previous pass ended: at once after a quiet period (an isolated API update
/// is not delayed), else [`DEBOUNCE`] after the previous pass (bursts, e.g.
/// a batch of instances, are coalesced as before). Pure.
pub fn next_pass_at(last_pass_end: Instant, now: Instant) -> Instant {
    (last_pass_end + DEBOUNCE).max(now)
}

async fn reconcile_loop(
    cfg: &AgentConfig,
    mut handle: MirrorHandle,
    mut registered: watch::Receiver<bool>,
    mut subsystems: Vec<Box<dyn Reconcile>>,
    beat: Beat,
    plug: Option<Arc<PlugWaiters>>,
    metrics: Arc<crate::telemetry::AgentMetrics>,
) {
    // Never reconcile from an empty cache: that would destroy everything.
    loop {
        beat.heartbeat.beat();
        tokio::select! {
            r = handle.synced.wait_for(|s| *s) => match r {
                Ok(_) => break,
                Err(_) => return,
            },
            () = tokio::time::sleep(beat.every) => {}
        }
    }
    let mut ready = false;
    let mut first_pass = true;
    // The desired state of the previous pass: a pending instance keeps its
    // resolution from there (see `DesiredNode::pending`).
    let mut previous: Option<desired::DesiredNode> = None;
    loop {
        beat.heartbeat.beat();
        handle.changes.borrow_and_update();
        // The oldest change this pass applies (for the reconcile lag).
        let changed_at = handle.take_changed_at();
        let started = Instant::now();
        let desired = {
            let cache = handle.cache.read().await;
            desired::rebuild(&cache, &cfg.node, cfg.underlay_mtu, previous.as_ref())
        };
        if previous.as_ref().map(|p| &p.awaited) != Some(&desired.awaited) {
            if !desired.pending.is_empty() {
                debug!(pending = ?desired.pending, "instances wait for objects not received yet");
            }
            handle.set_awaited(desired.awaited.clone());
        }
        let built = started.elapsed();
        let span = info_span!("reconcile", revision = desired.revision);
        let outcome = reconcile_all_observed(&mut subsystems, &desired, |name, took, ok| {
            metrics.node.subsystem_pass(name, took, ok)
        })
        .instrument(span.clone())
        .await;
        let pass_end = Instant::now();
        metrics.node.set_allocated(&desired);
        metrics
            .node
            .pass_done(changed_at.map(|at| pass_end.into_std().saturating_duration_since(at)));
        previous = Some(desired);
        span.in_scope(|| {
            debug!(
                desired_us = built.as_micros() as u64,
                pass_us = (pass_end - started).as_micros() as u64,
                "reconcile pass timing"
            );
        });
        if std::mem::take(&mut first_pass) {
            // On a converged node (e.g. after a restart) this says 0.
            info!(
                actions = outcome.actions,
                failures = outcome.failures,
                "first reconcile pass done"
            );
        } else if outcome.actions > 0 {
            info!(actions = outcome.actions, "reconcile pass done");
        }
        let mut next_periodic = Instant::now()
            + if outcome.failures > 0 {
                RETRY_AFTER_FAILURE
            } else {
                cfg.resync_interval
            };
        if plug.as_ref().is_some_and(|p| p.recheck_soon()) {
            // A guest waits paused for its NICs: look again soon.
            next_periodic = next_periodic.min(Instant::now() + PLUG_RECHECK);
        }
        loop {
            if !ready && *registered.borrow() {
                ready = true;
                info!("nubo-agent ready node={}", cfg.node);
                // Without $NOTIFY_SOCKET (not run by systemd) nothing is sent.
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    warn!(error = %e, "systemd notification failed");
                }
            }
            tokio::select! {
                r = handle.changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let seen = Instant::now();
                    let at = next_pass_at(pass_end, seen);
                    if at > seen {
                        // (Not when due already: the timer would round up
                        // to its next 1 ms tick.)
                        tokio::time::sleep_until(at).await;
                    }
                    debug!(
                        generation = *handle.changes.borrow(),
                        waited_us = seen.elapsed().as_micros() as u64,
                        "change seen; reconciling"
                    );
                    break;
                }
                () = tokio::time::sleep_until(next_periodic) => break,
                () = tokio::time::sleep(beat.every) => beat.heartbeat.beat(),
                r = registered.changed(), if !ready => {
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_change_runs_at_once_bursts_wait_for_the_debounce() {
        let end = Instant::now();
        // Long after the last pass: no delay.
        let later = end + DEBOUNCE * 3;
        assert_eq!(next_pass_at(end, later), later);
        // Right after a pass: wait until DEBOUNCE after its end.
        let soon = end + DEBOUNCE / 5;
        assert_eq!(next_pass_at(end, soon), end + DEBOUNCE);
        assert_eq!(next_pass_at(end, end), end + DEBOUNCE);
    }
}
