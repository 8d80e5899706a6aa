//! The `sse-node` binary: load the config, set up logs, bind, run.
//!
//! Usage: `sse-node [--config PATH] [--check-config]`. `SSE_CONFIG` may name
//! the file instead. A bad configuration prints every problem and exits 64.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use sse_node::{open_files, run, startup::Startup, telemetry};
use sse_shutdown::ShutdownSignals;
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

/// jemalloc, not glibc's allocator: a burst of requests (a storm of
/// reconnections, HTTP/2 clients opening many streams with large cookies)
/// frees its memory between the streams that stay, and glibc keeps such
/// freed pages resident for good, while jemalloc's background thread gives
/// them back within seconds (its settings: `.cargo/config.toml`;
/// docs/benchmarks.md, "A browser's cookie jar").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "sse-node",
    version,
    about = "sse-cluster node: serves text/event-stream from NATS JetStream.",
    after_help = "Every key can also be set as SSE_<SECTION>__<KEY>, e.g. SSE_NATS__URL."
)]
struct Args {
    /// TOML file layered over the built-in defaults [env: SSE_CONFIG].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Load and validate the configuration, then exit 0 or 64.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // `--help` and `--version` come here too, to be printed on
            // stdout with success; a bad argument is a usage error.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let check_only = args.check_config;
    // An empty SSE_CONFIG names no file, as if unset.
    let file = args.config.or_else(|| {
        std::env::var_os("SSE_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let mut startup = match Startup::load(file.as_deref()) {
        Ok(startup) => startup,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let telemetry = telemetry::init(&startup.config.log, "sse-node");
    fit_streams_to_open_files(&mut startup.config.http.max_connections);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // The handlers are installed before the port opens: anyone who sees
        // the port listening may send SIGTERM and expect a graceful drain.
        let signals = match ShutdownSignals::install() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(&startup.config.http.listen).await {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(listen = %startup.config.http.listen, %error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
        match run(startup, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "node failed");
                ExitCode::FAILURE
            }
        }
    });
    // The batch exporter flushes on its own thread; it must not run inside
    // the runtime's context.
    telemetry.shutdown();
    code
}

/// Raises the open-file limit, and lowers `max_connections` to the streams
/// that fit under it: past it, clients would wait unanswered where they
/// should get 503 and try another node.
fn fit_streams_to_open_files(max_connections: &mut usize) {
    let limit = match open_files::raise_to_hard_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            return;
        }
    };
    let fit = open_files::streams_that_fit(limit);
    if *max_connections > fit {
        tracing::warn!(
            http.max_connections = *max_connections,
            open_file_limit = limit,
            streams = fit,
            "http.max_connections is more than the open-file limit allows: this node holds at most `streams` and answers 503 past them; raise the limit (ulimit -n, LimitNOFILE, the container's nofile ulimit) to hold more"
        );
        *max_connections = fit;
    }
}
