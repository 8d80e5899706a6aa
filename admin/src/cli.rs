//! The command line: `sse-admin [--config PATH] [--check-config]`.
//!
//! The config file may also be named by `SSE_CONFIG`; `--config` wins.

use std::{ffi::OsString, path::PathBuf};

/// Usage text for `--help` and bad arguments.
pub const USAGE: &str = "usage: sse-admin [--config PATH] [--check-config]

  --config PATH    TOML file layered over the built-in defaults (or SSE_CONFIG)
  --check-config   load and validate the configuration, then exit 0 or 64
  --help           this text
  --version        the version

Every key can also be set as SSE_<SECTION>__<KEY>, e.g. SSE_ADMIN__TOKEN.";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// The TOML file, from `--config` or `SSE_CONFIG`.
    pub config: Option<PathBuf>,
    /// Validate and exit.
    pub check_config: bool,
    /// Print usage and exit.
    pub help: bool,
    /// Print the version and exit.
    pub version: bool,
}

impl Args {
    /// Parses arguments (without the program name); `env_config` is the
    /// value of `SSE_CONFIG`, if set.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env_config: Option<OsString>,
    ) -> Result<Self, String> {
        let mut parsed = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy();
            match text.as_ref() {
                "--check-config" => parsed.check_config = true,
                "--help" | "-h" => parsed.help = true,
                "--version" | "-V" => parsed.version = true,
                "--config" => {
                    let path = args.next().ok_or("--config needs a path")?;
                    parsed.config = Some(PathBuf::from(path));
                }
                other => match other.strip_prefix("--config=") {
                    Some(path) if !path.is_empty() => parsed.config = Some(PathBuf::from(path)),
                    _ => return Err(format!("unknown argument {other:?}")),
                },
            }
        }
        if parsed.config.is_none() {
            parsed.config = env_config.filter(|p| !p.is_empty()).map(PathBuf::from);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Option<&str>) -> Result<Args, String> {
        Args::parse(args.iter().map(OsString::from), env.map(OsString::from))
    }

    #[test]
    fn flags_and_paths() {
        let a = parse(&["--config", "a.toml", "--check-config"], None).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("a.toml")));
        assert!(a.check_config);
        let b = parse(&["--config=b.toml"], Some("env.toml")).unwrap();
        assert_eq!(b.config, Some(PathBuf::from("b.toml")));
        let c = parse(&[], Some("env.toml")).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("env.toml")));
        assert!(parse(&["--config"], None).is_err());
        assert!(parse(&["--nope"], None).is_err());
    }
}
