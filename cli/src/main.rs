//! The `ssectl` binary: parse the command line, run it, map the outcome to
//! an exit code (0 done, 1 refused, 2 usage error, 3 nothing reachable).

use std::process::ExitCode;

use clap::Parser;
use ssectl::args::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // `--help` and `--version` come here too (exit 0); anything else
            // is a usage error, exit 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            ssectl::errln!("ssectl: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ssectl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            ssectl::errln!("ssectl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
