//! The `sse-admin` binary: load the config, start logging, bind, run.

use std::process::ExitCode;

use clap::Parser;
use sse_admin::{Config, EXIT_CONFIG, Error, cli::Args, telemetry};
use sse_shutdown::ShutdownSignals;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let config = match Config::load(args.config_file().as_deref()) {
        Ok(config) => config,
        Err(Error::Config(errors)) => {
            for error in errors {
                eprintln!("sse-admin: config error: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(other) => {
            eprintln!("sse-admin: {other}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("sse-admin: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let telemetry = telemetry::init(&config.log);
    let code = match serve(config) {
        Ok(()) => {
            tracing::info!("exiting");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "admin failed");
            ExitCode::FAILURE
        }
    };
    // The last spans reach the collector before the process ends.
    telemetry.shutdown();
    code
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    // The handlers are installed before the port opens: anyone who sees the
    // port listening may send SIGTERM and expect a graceful stop.
    let signals = ShutdownSignals::install()?;
    let listener = TcpListener::bind(&config.http.listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    sse_admin::run(config, listener, shutdown).await?;
    Ok(())
}
