//! `nubo-agent` binary: parse flags, set up logging, run until SIGTERM/SIGINT.
//!
//! Memory set-up before the runtime starts (docs/benchmarks.md, "Compute",
//! agent RSS): at most [`MAX_WORKER_THREADS`] tokio workers, glibc's malloc
//! limited to [`MALLOC_ARENAS`] arenas and a fixed [`MMAP_THRESHOLD`]. Each
//! gives way to its standard environment variable: `TOKIO_WORKER_THREADS`,
//! `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`.

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

/// Allocations from this size up get their own `mmap`, returned to the
/// kernel on free (glibc's default starts here too but raises the threshold
/// up to 32 MiB after each large free, so the agent's transient large
/// buffers — image download chunks, gRPC/HTTP bodies — then stay in the heap
/// as free but resident memory). Fixing it also fixes the heap trim
/// threshold. Measured 3–5 MB less RSS with 10 VMs.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets one glibc malloc parameter unless `env` is set (glibc reads that
/// itself). Returns the value set, or `None` when left alone or refused.
/// Must run before any other thread exists.
#[cfg(target_env = "gnu")]
fn mallopt_unless_env(env: &str, param: i32, value: i32) -> Option<i32> {
    if std::env::var_os(env).is_some() {
        return None;
    }
    // SAFETY: called first thing in `main`, before any other thread exists;
    // mallopt only changes glibc's malloc parameters.
    let ok = unsafe { libc::mallopt(param, value) };
    (ok == 1).then_some(value)
}

/// glibc malloc parameters set: ([`MALLOC_ARENAS`], [`MMAP_THRESHOLD`]),
/// each `None` when left to glibc.
#[cfg(target_env = "gnu")]
fn tune_malloc() -> (Option<i32>, Option<i32>) {
    (
        mallopt_unless_env("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, MALLOC_ARENAS),
        mallopt_unless_env(
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
    )
}

/// Not glibc: nothing to set.
#[cfg(not(target_env = "gnu"))]
fn tune_malloc() -> (Option<i32>, Option<i32>) {
    (None, None)
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
    let malloc = tune_malloc();
    runtime()
        .context("starting the tokio runtime")?
        .block_on(agent_main(malloc))
}

async fn agent_main(malloc: (Option<i32>, Option<i32>)) -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = AgentConfig::load(&cli).context("loading configuration")?;
    init_logging(cfg.log_format);
    tracing::debug!(
        arenas = ?malloc.0,
        mmap_threshold = ?malloc.1,
        "glibc malloc parameters set (None: glibc default or its environment variable)"
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
