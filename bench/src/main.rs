//! `nubo-bench`: measures nubo against real processes.
//!
//! `nubo-bench place` starts a real etcd and ONE `nubo-coordinator`,
//! registers simulated nodes directly in etcd, answers assignments with fake
//! in-process agents, drives instance creates through the gRPC API and
//! reports placement throughput, latencies, capacity safety and the
//! coordinator's memory; `--etcd-members 1,3` runs it once per etcd size
//! and compares; `--baseline-bin OLD --rounds N` runs it alternately
//! against an older coordinator binary and compares medians (see
//! [`compare`]). `nubo-bench member-loss` measures API errors and latency
//! around the SIGKILL of an etcd member.

mod agents;
mod cluster;
mod compare;
mod coordinator;
mod load;
mod member_loss;
mod raw;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nubo_tests::ports::free_port;
use nubo_tests::{Etcd, EtcdOpts};
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::Endpoint;

use crate::coordinator::{Coordinator, Ratios};
use crate::report::{percentile, Report};

/// Benchmarks of nubo.
#[derive(Debug, Parser)]
#[command(name = "nubo-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Placement throughput and safety of one coordinator.
    Place(PlaceArgs),
    /// The etcd ceiling: placement-shaped transactions straight to etcd.
    EtcdTxn(EtcdTxnArgs),
    /// API errors and latency when an etcd member of three is killed.
    MemberLoss(member_loss::Args),
}

#[derive(Debug, Args)]
struct EtcdTxnArgs {
    /// Transactions to send.
    #[arg(long, default_value_t = 10_000)]
    txns: usize,
    /// Transactions in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Distinct usage keys (nodes).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Placements per transaction (1 = one transaction per placement, as
    /// the coordinator does).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    group: u32,
}

#[derive(Debug, Args)]
struct PlaceArgs {
    /// Simulated nodes (16 vCPUs, 64 GiB, 1 TB each).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Instances to create (one create request each).
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Create requests in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// The coordinator binary (default: nubo-coordinator next to this executable).
    #[arg(long)]
    coordinator_bin: Option<PathBuf>,
    /// Seconds to wait, after the last create, for every instance to run.
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
    /// etcd sizes to run with, in this order, each on a fresh etcd and
    /// coordinator (e.g. `1,3`: the ratio of the last to the first is
    /// printed).
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u16).range(1..=7))]
    etcd_members: Vec<u16>,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    /// An older coordinator binary to compare with: runs alternate between
    /// it and the coordinator under test (`--rounds` pairs, on the first
    /// `--etcd-members` size) and the medians are compared.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Pairs of runs with `--baseline-bin`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

/// Ratios the coordinator runs with (its defaults, passed explicitly so the
/// capacity audit checks against exactly what the scheduler used).
const RATIOS: Ratios = Ratios {
    cpu: 4.0,
    ram: 1.0,
    disk: 1.0,
};

/// Processes to stop on exit, whatever the exit path. The coordinator is
/// declared first so that it is stopped before etcd.
#[derive(Default)]
struct Guards {
    coordinator: Option<Coordinator>,
    etcd: Option<Etcd>,
}

fn coordinator_bin(arg: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match arg {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("nubo-coordinator"),
    };
    if !bin.is_file() {
        bail!(
            "coordinator binary not found at {} (cargo build --release -p nubo-coordinator, \
             or pass --coordinator-bin)",
            bin.display()
        );
    }
    Ok(bin)
}

fn step(msg: &str) {
    eprintln!("nubo-bench: {msg}");
}

async fn place(
    args: &PlaceArgs,
    bin: &Path,
    members: usize,
    guards: &mut Guards,
) -> Result<Report> {
    let bin = bin.to_path_buf();
    step(&format!("starting etcd ({members} member(s))"));
    let etcd = tokio::task::spawn_blocking(move || {
        Etcd::start_with(EtcdOpts {
            members,
            ..EtcdOpts::default()
        })
    })
    .await??;
    let etcd_endpoint = etcd.endpoint();
    let log = etcd.dir().join("coordinator.log");
    let client = etcd.client().await?;
    guards.etcd = Some(etcd);

    step(&format!("registering {} nodes", args.nodes));
    cluster::register_nodes(&client, args.nodes).await?;

    step(&format!("starting {}", bin.display()));
    let grpc = ([127, 0, 0, 1], free_port()).into();
    let health = ([127, 0, 0, 1], free_port()).into();
    let coord = tokio::task::spawn_blocking(move || {
        Coordinator::start(&bin, &etcd_endpoint, grpc, health, RATIOS, log)
    })
    .await??;
    let pid = coord.pid();
    guards.coordinator = Some(coord);

    let channel = Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator on {grpc}"))?;
    cluster::create_resources(&channel).await?;
    let observed = Arc::new(agents::Observed::default());
    agents::start(&client, observed.clone()).await?;

    step(&format!(
        "creating {} instances, {} at a time (coordinator pid {pid})",
        args.instances, args.concurrency
    ));
    let etcd_pids: Vec<u32> = guards
        .etcd
        .as_ref()
        .map(|e| (0..e.size()).filter_map(|i| e.member_pid(i)).collect())
        .unwrap_or_default();
    let etcd_cpu = || -> Option<f64> { etcd_pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let procs = [Some(pid), Some(std::process::id())];
    let cpu0 = procs.map(|p| p.and_then(cpu_seconds));
    let etcd0 = etcd_cpu();
    let t0 = Instant::now();
    let load = load::run(channel, args.instances, args.concurrency as usize).await;
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    while observed.running_count() < load.accepted.len() && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = t0.elapsed();
    let cpu1 = procs.map(|p| p.and_then(cpu_seconds));
    let etcd1 = etcd_cpu();
    let cpu_used = |i: usize| match (cpu0[i], cpu1[i]) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };

    step("auditing node capacity");
    let audit = cluster::audit(&client, args.nodes, RATIOS).await?;
    let (hwm, rss) = guards
        .coordinator
        .as_ref()
        .map(Coordinator::memory_kib)
        .transpose()?
        .unwrap_or_default();

    let assigned = observed
        .assigned
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let running = observed
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut api: Vec<Duration> = load.accepted.iter().map(|a| a.latency).collect();
    api.sort_unstable();
    let mut to_running: Vec<Duration> = load
        .accepted
        .iter()
        .filter_map(|a| {
            running
                .get(&a.id)
                .map(|t| t.saturating_duration_since(a.sent))
        })
        .collect();
    to_running.sort_unstable();
    let placed = load
        .accepted
        .iter()
        .filter(|a| assigned.contains_key(&a.id))
        .count();
    let last_assigned = assigned.values().max().copied();
    let placements_per_sec = match last_assigned {
        Some(t) if t > t0 => placed as f64 / t.duration_since(t0).as_secs_f64(),
        _ => 0.0,
    };
    let mut error_samples: Vec<String> = Vec::new();
    for e in &load.errors {
        if error_samples.len() < 3 && !error_samples.contains(e) {
            error_samples.push(e.clone());
        }
    }
    Ok(Report {
        etcd_members: members,
        nodes: args.nodes,
        instances: args.instances,
        concurrency: args.concurrency as usize,
        accepted: load.accepted.len(),
        errors: load.errors.len(),
        error_samples,
        placed,
        placements_per_sec,
        api_p50: percentile(&api, 50.0),
        api_p99: percentile(&api, 99.0),
        running: to_running.len(),
        running_p50: percentile(&to_running, 50.0),
        running_p99: percentile(&to_running, 99.0),
        over_capacity: audit.over_capacity,
        usage_mismatch: audit.usage_mismatch,
        min_per_node: audit.min_per_node,
        max_per_node: audit.max_per_node,
        coordinator_hwm_kib: hwm,
        coordinator_rss_kib: rss,
        coordinator_cpu_s: cpu_used(0),
        etcd_cpu_s: match (etcd0, etcd1) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        },
        bench_cpu_s: cpu_used(1),
        wall,
    })
}

fn print(reports: &[Report], json: bool) -> Result<()> {
    let ratio = match (reports.first(), reports.last()) {
        (Some(a), Some(b)) if reports.len() > 1 && a.placements_per_sec > 0.0 => {
            Some(b.placements_per_sec / a.placements_per_sec)
        }
        _ => None,
    };
    let text = if json {
        let mut v = serde_json::json!({
            "runs": reports.iter().map(Report::json).collect::<Vec<_>>(),
        });
        if let Some(r) = ratio {
            v["placements_per_sec_ratio_last_to_first"] =
                serde_json::json!((r * 100.0).round() / 100.0);
        }
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        let mut t = reports
            .iter()
            .map(Report::table)
            .collect::<Vec<_>>()
            .join("\n");
        if let (Some(r), Some(a), Some(b)) = (ratio, reports.first(), reports.last()) {
            t.push_str(&format!(
                "\nplacements/s with {} etcd members: {:.1}; with {}: {:.1}; ratio {:.2}\n",
                b.etcd_members, b.placements_per_sec, a.etcd_members, a.placements_per_sec, r
            ));
        }
        t
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// CPU time (user + system) used so far by process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line; the
/// command name (field 2) may contain spaces, so fields are counted after
/// its closing parenthesis.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn etcd_txn(args: &EtcdTxnArgs, guards: &mut Guards) -> Result<()> {
    step("starting etcd");
    let etcd = tokio::task::spawn_blocking(Etcd::start).await??;
    let client = etcd.client().await?;
    let epid = etcd.pid();
    guards.etcd = Some(etcd);
    step(&format!(
        "{} placement-shaped transactions, {} at a time",
        args.txns, args.concurrency
    ));
    let c0 = epid.and_then(cpu_seconds);
    let b0 = cpu_seconds(std::process::id());
    let r = raw::run(
        &client,
        args.txns,
        args.concurrency as usize,
        args.group as usize,
        args.nodes,
    )
    .await;
    let c1 = epid.and_then(cpu_seconds);
    let b1 = cpu_seconds(std::process::id());
    let diff = |a: Option<f64>, b: Option<f64>| b.zip(a).map_or(0.0, |(b, a)| b - a);
    println!(
        "placements/s                 {:.1}\ncommitted / failed           {} / {}\nelapsed                      {:.2} s\netcd CPU                     {:.2} s\nbench CPU                    {:.2} s",
        r.per_sec(),
        r.committed,
        r.failed,
        r.elapsed.as_secs_f64(),
        diff(c0, c1),
        diff(b0, b1),
    );
    Ok(())
}

/// One `place` run on a fresh etcd of `members` and a fresh coordinator,
/// both stopped on every path (also on SIGINT/SIGTERM).
async fn place_once(args: &PlaceArgs, bin: &Path, members: u16) -> Result<Report> {
    let mut guards = Guards::default();
    let mut sigterm = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = place(args, bin, usize::from(members), &mut guards) => r.map(Some),
        _ = tokio::signal::ctrl_c() => Ok(None),
        _ = sigterm.recv() => Ok(None),
    };
    // Stop the coordinator, then etcd, on every path.
    drop(guards);
    match outcome? {
        Some(report) => Ok(report),
        None => bail!("interrupted; coordinator and etcd stopped"),
    }
}

async fn run(cli: Cli) -> Result<()> {
    let args = match cli.cmd {
        Cmd::Place(args) => args,
        Cmd::EtcdTxn(args) => {
            let mut guards = Guards::default();
            let r = etcd_txn(&args, &mut guards).await;
            drop(guards);
            return r;
        }
        Cmd::MemberLoss(args) => {
            let bin = coordinator_bin(args.coordinator_bin.clone())?;
            let mut sigterm = signal(SignalKind::terminate())?;
            return tokio::select! {
                r = member_loss::run(&args, &bin) => r,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
                _ = sigterm.recv() => bail!("interrupted"),
            };
        }
    };
    let bin = coordinator_bin(args.coordinator_bin.clone())?;
    let mut reports = Vec::new();
    if let Some(baseline) = &args.baseline_bin {
        let baseline = coordinator_bin(Some(baseline.clone()))?;
        let members = args.etcd_members.first().copied().unwrap_or(1);
        let mut runs = Vec::new();
        for side in compare::schedule(args.rounds as usize) {
            let b = match side {
                compare::Side::Baseline => &baseline,
                compare::Side::Candidate => &bin,
            };
            let report = place_once(&args, b, members).await?;
            step(&format!(
                "{side:?}: {:.1} placements/s, coordinator CPU {:.2} s",
                report.placements_per_sec, report.coordinator_cpu_s
            ));
            reports.push(report.clone());
            runs.push((side, report));
        }
        let c = compare::Comparison::of(&runs);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&c.json())?);
        } else {
            print!("{}", c.text());
        }
    } else {
        for members in args.etcd_members.clone() {
            reports.push(place_once(&args, &bin, members).await?);
        }
        print(&reports, args.json)?;
    }
    let over: usize = reports.iter().map(|r| r.over_capacity).sum();
    if over > 0 {
        bail!("{over} node(s) over capacity");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.trim_end());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_brief() {
        let Cmd::Place(a) = Cli::try_parse_from(["nubo-bench", "place"]).unwrap().cmd else {
            panic!("not place");
        };
        assert_eq!((a.nodes, a.instances, a.concurrency), (1000, 10_000, 64));
        assert_eq!(a.etcd_members, vec![1]);
        let Cmd::Place(a) = Cli::try_parse_from(["nubo-bench", "place", "--etcd-members", "1,3"])
            .unwrap()
            .cmd
        else {
            panic!("not place");
        };
        assert_eq!(a.etcd_members, vec![1, 3]);
        assert!(Cli::try_parse_from(["nubo-bench", "place", "--concurrency", "0"]).is_err());
    }

    #[test]
    fn proc_stat_cpu_fields_are_read_after_the_command_name() {
        let line = "42 (nubo (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1";
        assert_eq!(stat_ticks(line), Some(175));
        assert_eq!(stat_ticks("garbage"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn missing_coordinator_binary_is_explained() {
        let err = coordinator_bin(Some("/nonexistent/nubo-coordinator".into())).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("coordinator binary not found at /nonexistent/nubo-coordinator"));
    }
}
