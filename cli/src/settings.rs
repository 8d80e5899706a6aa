//! Where admin and the nodes are, and the admin token.
//!
//! Each setting comes from the first of: its flag, its environment variable
//! (`SSECTL_ADMIN_URL`, `SSECTL_URL`, `SSECTL_TOKEN`; clap reads both), the
//! config file, the built-in default. The config file is `--config` or
//! `SSECTL_CONFIG` (which must exist), else `~/.config/ssectl/config.toml`
//! (or under `XDG_CONFIG_HOME`) when it exists.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, args::Global};

/// Admin's address when nothing says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8090";
/// A node's address when nothing says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The settings file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    admin_url: Option<String>,
    url: Option<String>,
    admin_token: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Admin's base URL, without a trailing `/`.
    pub admin_url: String,
    /// Nodes or load balancers for streams, tried in turn.
    pub stream_urls: Vec<String>,
    /// Admin's bearer token, if any was given.
    pub admin_token: Option<String>,
}

impl Settings {
    /// Layers flags and environment (in `global`) over the config file.
    pub fn resolve(global: &Global) -> Result<Self, Error> {
        let file = match &global.config {
            Some(path) => read_file(path)?,
            None => match default_file() {
                Some(path) if path.is_file() => read_file(&path)?,
                _ => File::default(),
            },
        };
        // An empty variable (`SSECTL_URL=`) counts as unset.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let admin_url = given(&global.admin_url)
            .or(file.admin_url)
            .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned());
        let urls = given(&global.url)
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let stream_urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        for url in std::iter::once(&admin_url).chain(&stream_urls) {
            check_url(url)?;
        }
        if stream_urls.is_empty() {
            return Err(Error::Usage("--url names no address".to_owned()));
        }
        Ok(Self {
            admin_url: admin_url.trim_end_matches('/').to_owned(),
            stream_urls,
            admin_token: given(&global.admin_token)
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
        })
    }
}

fn read_file(path: &Path) -> Result<File, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::Usage(format!("config file {}: {e}", path.display())))
}

fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ssectl").join("config.toml"))
}

/// Only plain `http://` URLs: the client is built without TLS, as the
/// cluster's tools talk to admin and nodes inside the network.
fn check_url(url: &str) -> Result<(), Error> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "http" && parsed.host().is_some() => Ok(()),
        Ok(parsed) if parsed.scheme() == "https" => Err(Error::Usage(format!(
            "{url}: https is not supported by ssectl; reach admin or the nodes over http"
        ))),
        _ => Err(Error::Usage(format!(
            "{url:?} is not an http:// URL such as http://127.0.0.1:8090"
        ))),
    }
}
