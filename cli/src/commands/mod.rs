//! The commands, one module per group.

pub mod publish;
pub mod status;
pub mod tail;
pub mod token;
pub mod topic;

use clap::CommandFactory;

use crate::args::Cli;

/// `ssectl completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut command = Cli::command();
    // Written whole, then printed: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "ssectl", &mut script);
    crate::output::print_bytes(&script);
}
