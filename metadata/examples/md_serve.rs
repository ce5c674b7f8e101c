//! Serves metadata on bridges of the current network namespace from a JSON
//! table, for benchmarks and VM tests:
//! `ip netns exec <host> md_serve table.json br1 [br2 ...]`
//!
//! `table.json` is a list of `{"bridge": "...", "instance": InstanceMeta}`
//! (see `nubo_metadata::InstanceMeta`'s serde form). Stops on Ctrl-C/SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::ExitCode;

use nubo_metadata::{InstanceMeta, InstanceTable, MetadataServer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    bridge: String,
    instance: InstanceMeta,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nubo_metadata=info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((table_path, bridges)) = args.split_first().filter(|(_, b)| !b.is_empty()) else {
        eprintln!("usage: md_serve table.json bridge [bridge ...]");
        return ExitCode::FAILURE;
    };
    let entries: Vec<Entry> = match std::fs::read(table_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("cannot load {table_path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let table = InstanceTable::new();
    table.replace_all(entries.into_iter().map(|e| (e.bridge, e.instance)));

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot build the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match MetadataServer::start(table) {
            Ok(server) => server,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        };
        for bridge in bridges {
            if let Err(err) = server.add_bridge(bridge) {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        }
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    eprintln!("cannot watch SIGTERM: {err}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
