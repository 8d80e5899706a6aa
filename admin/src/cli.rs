//! The command line: `sse-admin [--config PATH] [--check-config]`.
//!
//! The config file may also be named by `SSE_CONFIG`; `--config` wins. Parsed
//! with clap like `sse-node` and `ssectl`, so all three share one style of
//! `--help`, `--version` and errors; a bad argument exits with
//! [`crate::EXIT_CONFIG`] (64, `EX_USAGE`) as a bad configuration does.

use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq, clap::Parser)]
#[command(
    name = "sse-admin",
    version,
    about = "sse-cluster admin: topics, cluster view, HTTP publish, dashboard.",
    after_help = "Every key can also be set as SSE_<SECTION>__<KEY>, e.g. SSE_ADMIN__TOKEN."
)]
pub struct Args {
    /// TOML file layered over the built-in defaults [env: SSE_CONFIG].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Load and validate the configuration, then exit 0 or 64.
    #[arg(long)]
    pub check_config: bool,
}

impl Args {
    /// The config file: `--config`, else a non-empty `SSE_CONFIG`.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            std::env::var_os("SSE_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_and_paths() {
        let a =
            Args::try_parse_from(["sse-admin", "--config", "a.toml", "--check-config"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("a.toml")));
        assert!(a.check_config);
        let b = Args::try_parse_from(["sse-admin", "--config=b.toml"]).unwrap();
        assert_eq!(b.config, Some(PathBuf::from("b.toml")));
        assert!(Args::try_parse_from(["sse-admin", "--config"]).is_err());
        assert!(Args::try_parse_from(["sse-admin", "--nope"]).is_err());
    }
}
