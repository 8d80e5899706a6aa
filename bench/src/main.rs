//! `sse-bench` — subcommands:
//!
//! - `run --scenario S --target node|nchan --url HOST:PORT [--pid NAME=PID]… [flags]`:
//!   one measured run; prints a JSON result line (see `scenario`);
//! - `prefill --target node|nchan --topic T [--events N]`: history for `catchup`;
//! - `table FILE`: result lines to Markdown tables, one row per run;
//! - `check FILE`: exits non-zero, naming each failed run, if any run lost,
//!   duplicated or skipped an event or connected only part of its clients;
//! - `bare --listen HOST:PORT`: the bare write loop, a baseline server;
//! - `syscall-cost [--calls N]`: what a system call costs here (see
//!   `syscall_cost`);
//! - `worker`: internal, started by `run`.

use std::io::Read as _;

use sse_bench::{args::Args, bare, report, scenario, syscall_cost, worker};

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    match command.as_str() {
        "worker" => worker::run(),
        "table" | "check" => {
            let mut text = String::new();
            match argv.next() {
                Some(path) => text = std::fs::read_to_string(path)?,
                None => {
                    std::io::stdin().read_to_string(&mut text)?;
                }
            }
            if command == "table" {
                print!("{}", report::render(&text)?);
                return Ok(());
            }
            let failed = report::failures(&text)?;
            for line in &failed {
                eprintln!("{line}");
            }
            if !failed.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        "bare" => {
            let args = Args::parse(argv)?;
            bare::run(args.required("listen")?)
        }
        "syscall-cost" => syscall_cost::run(&Args::parse(argv)?),
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
                "usage: sse-bench run|prefill|table|check|bare|syscall-cost|worker [--flag value]…\n(see docs/benchmarks.md)"
            );
            std::process::exit(64);
        }
    }
}
