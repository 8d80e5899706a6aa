//! `ssectl`, the operator's command line for sse-cluster.
//!
//! How the parts fit:
//! - [`args`]: the commands and flags (clap derive).
//! - [`settings`]: where admin, the nodes and the admin token are: flags,
//!   then `SSECTL_*` environment variables, then an optional config file.
//! - [`client`]: HTTP calls to admin, every refusal turned into its error
//!   code and message.
//! - [`commands`]: one module per command group: topics, publishing,
//!   tailing a stream, tokens, cluster status.
//! - [`sse`]: an incremental `text/event-stream` reader that also reports
//!   id-only frames, which is what makes a tail resumable from the moment it
//!   connected.
//! - [`output`]: tables for people, JSON for scripts.
//! - [`units`]: durations (`90s`, `7d`) and sizes (`10MiB`).
//!
//! Exit codes: 0 done, 1 refused (by admin, a node, or a check that
//! failed), 2 usage error, 3 nothing could be reached.

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;
pub mod settings;
pub mod sse;
pub mod units;

pub use error::Error;

/// Runs one parsed command line.
pub async fn run(cli: args::Cli) -> Result<(), Error> {
    let out = output::Output::new(cli.global.output);
    // Commands that reach no server do not read the settings for reaching
    // one: a missing config file or an https URL does not stop them.
    let settings = || settings::Settings::resolve(&cli.global);
    match cli.command {
        args::Command::Topic { command } => commands::topic::run(&settings()?, out, command).await,
        args::Command::Pub(publish) => commands::publish::run(&settings()?, out, publish).await,
        args::Command::Tail(tail) => commands::tail::run(&settings()?, out, tail).await,
        args::Command::Token { command } => commands::token::run(out, command),
        args::Command::Status(status) => commands::status::run(&settings()?, out, status).await,
        args::Command::Completions { shell } => {
            commands::completions(shell);
            Ok(())
        }
    }
}
