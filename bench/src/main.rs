//! `sse-bench` — subcommands:
//!
//! - `run --scenario S --target node|nchan --url HOST:PORT [--pid NAME=PID]… [flags]`:
//!   one measured run; prints a JSON result line (see `scenario`);
//! - `prefill --target node|nchan --topic T [--events N]`: history for `catchup`;
//! - `table FILE`: result lines to Markdown tables;
//! - `worker`: internal, started by `run`.

use std::io::Read as _;

use sse_bench::{args::Args, report, scenario, worker};

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    match command.as_str() {
        "worker" => worker::run(),
        "table" => {
            let mut text = String::new();
            match argv.next() {
                Some(path) => text = std::fs::read_to_string(path)?,
                None => {
                    std::io::stdin().read_to_string(&mut text)?;
                }
            }
            print!("{}", report::render(&text)?);
            Ok(())
        }
        "run" | "prefill" => {
            let args = Args::parse(argv)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                if command == "run" {
                    let result = scenario::run(&args).await?;
                    println!("{result}");
                } else {
                    scenario::prefill(&args).await?;
                }
                anyhow::Ok(())
            })
        }
        _ => {
            eprintln!(
                "usage: sse-bench run|prefill|table|worker [--flag value]…\n(see docs/benchmarks.md)"
            );
            std::process::exit(64);
        }
    }
}
