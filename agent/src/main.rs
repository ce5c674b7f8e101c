//! `nubo-agent` binary: parse flags, set up logging, run until SIGTERM/SIGINT.
//!
//! Memory set-up before the runtime starts (docs/benchmarks.md, "Compute",
//! agent RSS): at most [`MAX_WORKER_THREADS`] tokio workers, and glibc's
//! malloc limited to [`MALLOC_ARENAS`] arenas. Both give way to the standard
//! environment variables `TOKIO_WORKER_THREADS` and `MALLOC_ARENA_MAX`.

use anyhow::Context;
use clap::Parser;
use nubo_agent::{AgentConfig, Cli, LogFormat};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Tokio worker threads at most (fewer on smaller hosts). A node agent
/// waits on etcd, netlink, libvirt and a few sockets; blocking work goes to
/// `spawn_blocking` threads anyway. One worker per core (tokio's default)
/// would mean dozens on a hypervisor, each with its stack and, with glibc, a
/// malloc arena of its own.
const MAX_WORKER_THREADS: usize = 4;

/// glibc malloc arenas (its default is 8 per core: every thread that meets
/// a locked arena makes a new one, each keeping freed memory for itself).
/// Two keep the agent's heap compact at no measurable cost for its
/// allocation rate; measured ~3 MB less RSS with 10 VMs.
const MALLOC_ARENAS: i32 = 2;

/// Sets [`MALLOC_ARENAS`] unless `MALLOC_ARENA_MAX` is set (glibc reads that
/// itself). Returns the value set, or `None` when left alone or refused.
/// Must run before any other thread exists.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() -> Option<i32> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    // SAFETY: called first thing in `main`, before any other thread exists;
    // mallopt only changes glibc's malloc parameters.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    (ok == 1).then_some(MALLOC_ARENAS)
}

/// Not glibc: nothing to set.
#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() -> Option<i32> {
    None
}

/// The runtime: `TOKIO_WORKER_THREADS` if set (tokio reads it), else as
/// many workers as cores, at most [`MAX_WORKER_THREADS`].
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads(cores.clamp(1, MAX_WORKER_THREADS));
    }
    builder.build()
}

fn main() -> anyhow::Result<()> {
    let arenas = limit_malloc_arenas();
    runtime()
        .context("starting the tokio runtime")?
        .block_on(agent_main(arenas))
}

async fn agent_main(malloc_arenas: Option<i32>) -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = AgentConfig::load(&cli).context("loading configuration")?;
    init_logging(cfg.log_format);
    tracing::debug!(
        ?malloc_arenas,
        "glibc malloc arenas set (None: glibc default or MALLOC_ARENA_MAX)"
    );
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    nubo_agent::run(cfg, shutdown).await.context("nubo-agent")?;
    Ok(())
}
