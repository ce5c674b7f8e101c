//! `nubo-bench member-loss`: API errors and latency around the SIGKILL of
//! one member of a 3-member etcd.
//!
//! A real 3-member etcd on loopback and one `nubo-coordinator`; simulated
//! nodes registered in etcd. An open-loop load (a fixed rate of calls, each
//! sent on its tick whatever the previous ones do, half single-server
//! creates, half `ListServers` of 100) runs throughout. A follower is
//! killed, then restarted; then the leader is killed. For each kill the
//! calls *sent* in the `window` seconds before and after it are counted:
//! errors, p50 / p99 / max latency.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nubo_common::proto::servers_client::ServersClient;
use nubo_common::proto::{CreateServerRequest, ListServersRequest};
use nubo_tests::ports::free_port;
use nubo_tests::{Etcd, EtcdOpts};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{FLAVOR_NAME, IMAGE_NAME, NETWORK_NAME};
use crate::coordinator::Coordinator;
use crate::report::percentile;

/// `nubo-bench member-loss` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// API calls offered per second (half creates, half lists), open loop.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    rate: u32,
    /// Seconds measured before and after each kill.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// etcd's `--election-timeout` in ms (the test harness's 500 by
    /// default; etcd's own default is 1000): how long the survivors wait
    /// before electing a new leader bounds the latency after a leader loss.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    etcd_election_ms: u64,
    /// The coordinator binary (default: nubo-coordinator next to this executable).
    #[arg(long)]
    pub coordinator_bin: Option<PathBuf>,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
}

/// One API call.
#[derive(Debug, Clone)]
struct Call {
    sent: Instant,
    latency: Duration,
    error: Option<String>,
}

/// The numbers of the calls sent in one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Calls sent in the window.
    pub calls: usize,
    /// Of which failed.
    pub errors: usize,
    /// Latency percentiles and maximum.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Up to three distinct error messages.
    pub samples: Vec<String>,
}

fn window(calls: &[Call], from: Instant, to: Instant) -> Window {
    let mut lat: Vec<Duration> = Vec::new();
    let mut w = Window::default();
    for c in calls.iter().filter(|c| c.sent >= from && c.sent < to) {
        w.calls += 1;
        lat.push(c.latency);
        if let Some(e) = &c.error {
            w.errors += 1;
            if w.samples.len() < 3 && !w.samples.contains(e) {
                w.samples.push(e.clone());
            }
        }
    }
    lat.sort_unstable();
    w.p50 = percentile(&lat, 50.0);
    w.p99 = percentile(&lat, 99.0);
    w.max = lat.last().copied().unwrap_or_default();
    w
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Sends calls at `rate` per second until `stop`; returns every call.
async fn load(channel: Channel, rate: u32, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Call> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    while !*stop.borrow() {
        tick.tick().await;
        i += 1;
        let mut c = ServersClient::new(channel.clone());
        let calls = calls.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let error = if i.is_multiple_of(2) {
                let req = CreateServerRequest {
                    name: format!("ml-{i}"),
                    flavor: FLAVOR_NAME.into(),
                    image_ref: IMAGE_NAME.into(),
                    networks: vec![NETWORK_NAME.into()],
                    count: 1,
                    client_token: format!("ml-{i}"),
                    ..Default::default()
                };
                match c.create(req).await {
                    Err(s) => Some(s.message().to_string()),
                    Ok(r) => match r.into_inner().results.into_iter().next() {
                        Some(x) if x.server.is_some() => None,
                        Some(x) => Some(x.error),
                        None => Some("empty create response".into()),
                    },
                }
            } else {
                let req = ListServersRequest {
                    page_size: 100,
                    ..Default::default()
                };
                c.list(req).await.err().map(|s| s.message().to_string())
            };
            calls.lock().await.push(Call {
                sent,
                latency: sent.elapsed(),
                error,
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    // Calls still in flight are waited for (bounded: they carry the tail).
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let v = std::mem::take(&mut *calls.lock().await);
    v
}

fn step(msg: &str) {
    eprintln!("nubo-bench: {msg}");
}

/// Runs the benchmark and prints the report.
pub async fn run(args: &Args, bin: &Path) -> Result<()> {
    step(&format!(
        "starting a 3-member etcd (election timeout {} ms)",
        args.etcd_election_ms
    ));
    let election_timeout_ms = args.etcd_election_ms;
    let mut etcd = tokio::task::spawn_blocking(move || {
        Etcd::start_with(EtcdOpts {
            members: 3,
            election_timeout_ms,
            ..EtcdOpts::default()
        })
    })
    .await??;
    let client = etcd.client().await?;
    step(&format!("registering {} nodes", args.nodes));
    crate::cluster::register_nodes(&client, args.nodes).await?;
    let grpc = ([127, 0, 0, 1], free_port()).into();
    let health = ([127, 0, 0, 1], free_port()).into();
    let (bin2, ep, log) = (
        bin.to_path_buf(),
        etcd.endpoint(),
        etcd.dir().join("coordinator.log"),
    );
    let coord = tokio::task::spawn_blocking(move || {
        Coordinator::start(&bin2, &ep, grpc, health, crate::RATIOS, log)
    })
    .await??;
    let channel = Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator on {grpc}"))?;
    crate::cluster::create_resources(&channel).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    step(&format!("load: {} calls/s (creates and lists)", args.rate));
    let loader = tokio::spawn(load(channel.clone(), args.rate, stop_rx));
    let w = Duration::from_secs(args.window);
    tokio::time::sleep(w + Duration::from_secs(2)).await;

    let mut kills = Vec::new();
    for victim in ["follower", "leader"] {
        let leader = tokio::task::block_in_place(|| etcd.wait_leader(Duration::from_secs(30)))?;
        let target = if victim == "leader" {
            leader
        } else {
            (leader + 1) % 3
        };
        step(&format!("kill -9 of the etcd {victim} (member {target})"));
        let at = Instant::now();
        etcd.kill_member(target);
        kills.push((victim, at));
        tokio::time::sleep(w).await;
        if victim == "follower" {
            step("restarting it");
            tokio::task::block_in_place(|| etcd.restart_member(target))?;
            tokio::time::sleep(w).await;
        }
    }
    stop_tx.send_replace(true);
    let calls = loader.await.context("load task")?;
    drop(coord);
    drop(etcd);

    let rows: Vec<(String, Window)> = kills
        .iter()
        .flat_map(|(victim, at)| {
            [
                (
                    format!("{victim}: {}s before", args.window),
                    window(&calls, *at - w, *at),
                ),
                (
                    format!("{victim}: {}s after", args.window),
                    window(&calls, *at, *at + w),
                ),
            ]
        })
        .collect();
    if args.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, w)| {
                serde_json::json!({
                    "window": name, "calls": w.calls, "errors": w.errors,
                    "latency_ms": { "p50": ms(w.p50), "p99": ms(w.p99), "max": ms(w.max) },
                    "error_samples": w.samples,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "rate": args.rate, "windows": v }))?
        );
    } else {
        println!(
            "{:<24} {:>6} {:>7} {:>9} {:>9} {:>9}",
            "window (calls sent)", "calls", "errors", "p50 ms", "p99 ms", "max ms"
        );
        for (name, w) in &rows {
            println!(
                "{:<24} {:>6} {:>7} {:>9} {:>9} {:>9}",
                name,
                w.calls,
                w.errors,
                ms(w.p50),
                ms(w.p99),
                ms(w.max)
            );
            for s in &w.samples {
                println!("  error sample: {s}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_calls_by_the_time_they_were_sent() {
        let t0 = Instant::now();
        let call = |at: u64, ms: u64, err: bool| Call {
            sent: t0 + Duration::from_millis(at),
            latency: Duration::from_millis(ms),
            error: err.then(|| "boom".to_string()),
        };
        let calls = vec![
            call(0, 5, false),
            call(10, 50, true),
            call(20, 7, true),
            call(30, 1, false),
        ];
        let w = window(
            &calls,
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(30),
        );
        assert_eq!((w.calls, w.errors), (2, 2));
        assert_eq!(w.max, Duration::from_millis(50));
        assert_eq!(w.samples, vec!["boom".to_string()]);
    }
}
