//! The `sse-node` binary: load the config, set up logs, bind, run.
//!
//! Usage: `sse-node [--config PATH] [--check-config]`. `SSE_CONFIG` may name
//! the file instead. A bad configuration prints every problem and exits 64.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use sse_node::{config::Config, run, telemetry};
use tokio_util::sync::CancellationToken;

const EXIT_CONFIG: u8 = 64;

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
    let config = match Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if check_only {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let telemetry = telemetry::init(&config.log, "sse-node");
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
        let listener = match tokio::net::TcpListener::bind(&config.http.listen).await {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(listen = %config.http.listen, %error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
        match run(config, listener, shutdown).await {
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

/// SIGTERM and SIGINT, registered with the runtime.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Either signal starts a graceful shutdown.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::info!("shutdown signal received");
        shutdown.cancel();
    }
}
