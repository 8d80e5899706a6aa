//! Where admin and the nodes are, and the admin token.
//!
//! Each setting comes from the first of: its flag, its environment variable
//! (`SSECTL_ADMIN_URL`, `SSECTL_URL`, `SSECTL_TOKEN`, `SSECTL_CA_FILE`; clap
//! reads both), the config file, the built-in default. The config file is
//! `--config` or `SSECTL_CONFIG` (which must exist), else
//! `~/.config/ssectl/config.toml` (or under `XDG_CONFIG_HOME`) when it
//! exists; a relative `ca_file` in it is read from the file's folder.
//!
//! URLs are `http://` or `https://`. Over https the server's certificate
//! must chain to an authority the system trusts or one in the CA file:
//! clusters behind an ingress, a load balancer that terminates TLS, or
//! nodes with `tls.cert_file` are reached as users reach them.

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
    ca_file: Option<PathBuf>,
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
    /// Certificate authorities trusted for https beside the system's.
    pub trusted: Vec<reqwest::Certificate>,
}

impl Settings {
    /// Layers flags and environment (in `global`) over the config file.
    pub fn resolve(global: &Global) -> Result<Self, Error> {
        let (file, file_folder) = match &global.config {
            Some(path) => (read_file(path)?, path.parent().map(Path::to_path_buf)),
            None => match default_file() {
                Some(path) if path.is_file() => {
                    (read_file(&path)?, path.parent().map(Path::to_path_buf))
                }
                _ => (File::default(), None),
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
        let ca_file = match global.ca_file.clone().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Some(path),
            None => file.ca_file.map(|path| match &file_folder {
                Some(folder) if path.is_relative() => folder.join(path),
                _ => path,
            }),
        };
        Ok(Self {
            admin_url: admin_url.trim_end_matches('/').to_owned(),
            stream_urls,
            admin_token: given(&global.admin_token)
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
            trusted: match ca_file {
                Some(path) => read_authorities(&path)?,
                None => Vec::new(),
            },
        })
    }
}

/// The certificates of a PEM file, at least one.
fn read_authorities(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Usage(format!("cannot read CA file {}: {e}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&bytes)
        .map_err(|e| Error::Usage(format!("CA file {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::Usage(format!(
            "CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certificates)
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

/// `http://` or `https://` URLs with a host.
fn check_url(url: &str) -> Result<(), Error> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            Ok(())
        }
        _ => Err(Error::Usage(format!(
            "{url:?} is not an http:// or https:// URL such as http://127.0.0.1:8090"
        ))),
    }
}
