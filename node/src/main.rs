//! The `sse-node` binary: load the config, set up logs, bind, run.
//!
//! Usage: `sse-node [--config PATH] [--check-config]`. `SSE_CONFIG` may name
//! the file instead. A bad configuration prints every problem and exits 64.

use std::{path::PathBuf, process::ExitCode};

use sse_node::{run, startup::Startup, telemetry};
use sse_shutdown::ShutdownSignals;
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let mut file: Option<PathBuf> = std::env::var_os("SSE_CONFIG").map(PathBuf::from);
    let mut check_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(path) => file = Some(PathBuf::from(path)),
                None => {
                    eprintln!("--config needs a path");
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            "--check-config" => check_only = true,
            "--version" => {
                println!("sse-node {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: sse-node [--config PATH] [--check-config]"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let startup = match Startup::load(file.as_deref()) {
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
