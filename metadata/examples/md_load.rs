//! Load generator for the metadata service, for benchmarks.
//!
//! Run it inside a guest namespace:
//! `ip netns exec <guest> md_load [clients] [seconds] [path] [keep-alive|close]`
//! (defaults: 32, 5, /openstack/latest/meta_data.json, keep-alive). It sends
//! to 169.254.169.254:80 and prints requests/s and latency percentiles.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

#[path = "../tests/support/load.rs"]
mod load;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let (Ok(clients), Ok(seconds)) = (arg(0, "32").parse::<usize>(), arg(1, "5").parse::<u64>())
    else {
        eprintln!("usage: md_load [clients] [seconds] [path] [keep-alive|close]");
        return ExitCode::FAILURE;
    };
    let path = arg(2, "/openstack/latest/meta_data.json");
    let keep_alive = match arg(3, "keep-alive").as_str() {
        "keep-alive" => true,
        "close" => false,
        other => {
            eprintln!("unknown connection mode {other:?}: use keep-alive or close");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot build the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(load::run_load(
        SocketAddr::from(([169, 254, 169, 254], 80)),
        &path,
        clients.max(1),
        Duration::from_secs(seconds),
        keep_alive,
    ));
    println!("{clients} clients, {}: {report}", arg(3, "keep-alive"));
    if report.errors == 0 && report.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
