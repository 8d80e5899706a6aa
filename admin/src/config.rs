//! Configuration: built-in defaults (`config.default.toml`) ← an optional
//! TOML file ← `SSE_…` environment variables, nested keys split on `__`.
//!
//! [`Config::load`] reads the layers, refuses unknown keys and runs
//! [`Config::validate`], which reports every bad value by its dotted key, so
//! an operator can fix them all in one go.

use std::{net::SocketAddr, path::Path, str::FromStr, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;
use sse_protocol::{
    nats_credentials::{NatsCredentialFiles, NatsCredentials},
    nats_tls::{NatsTls, NatsTlsFiles},
    node_report,
};

use crate::error::Error;

/// The built-in defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

/// The whole admin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS connection and subject layout.
    pub nats: NatsConfig,
    /// The HTTP listener.
    pub http: HttpConfig,
    /// The API itself: token, limits, dashboard.
    pub admin: AdminConfig,
    /// Where nodes report themselves.
    pub cluster: ClusterConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server URL or a comma-separated list.
    pub url: String,
    /// Prefix of every topic subject: `<prefix>.<topic>[.<path>]`.
    pub subject_prefix: String,
    /// Client name shown by the NATS server.
    pub connection_name: String,
    /// Time limit of one JetStream request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Seconds of silence from the server before the client pings it; three
    /// in a row and the connection is given up for another server.
    pub ping_interval_seconds: u64,
    /// PEM authorities trusted for the servers' certificates; asks for TLS.
    pub tls_ca_file: String,
    /// PEM client certificate for servers that verify clients; asks for TLS.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// A NATS credentials file (user JWT and nkey seed).
    pub creds_file: String,
    /// A file holding a user nkey seed.
    pub nkey_seed_file: String,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address, `host:port`.
    pub listen: String,
}

/// `[admin]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token every write needs.
    pub token: String,
    /// A second bearer token, for publishers: it may only publish events
    /// (`POST /v1/topics/{name}/events`); empty: none.
    pub publish_token: String,
    /// Largest event payload accepted for publishing, in bytes.
    pub max_event_bytes: u64,
    /// Period of the dashboard's live snapshots, in milliseconds.
    pub dashboard_interval_ms: u64,
    /// Dashboard streams open at once.
    pub max_dashboard_streams: usize,
    /// Consumer limit set on the stream of each topic created without one.
    pub topic_max_consumers: u64,
}

impl std::fmt::Debug for AdminConfig {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("publish_token", &"<redacted>")
            .field("max_event_bytes", &self.max_event_bytes)
            .field("dashboard_interval_ms", &self.dashboard_interval_ms)
            .field("max_dashboard_streams", &self.max_dashboard_streams)
            .field("topic_max_consumers", &self.topic_max_consumers)
            .finish()
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// KV bucket of node reports.
    pub nodes_bucket: String,
    /// Copies JetStream keeps of the bucket (one on an unclustered server).
    pub nodes_bucket_replicas: usize,
    /// Age after which a node report counts as gone, in seconds.
    pub node_ttl_seconds: u64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter.
    pub level: String,
}

/// Longest event payload the configuration may allow: NATS itself refuses
/// messages above its `max_payload` (1 MiB by default, 64 MiB at most).
const MAX_EVENT_BYTES_CEILING: u64 = 64 * 1024 * 1024;

impl Config {
    /// The layers: defaults, then `file` if given, then the environment.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Every key is `<section>.<key>`, so only `SSE_<SECTION>__<KEY>` can
        // name one: a misspelt nested key is still refused, while variables
        // such as `SSE_CONFIG` (the file) or another tool's `SSE_ADMIN_TOKEN`
        // do not stop start-up.
        figment.merge(
            Env::prefixed("SSE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
    }

    /// Loads and validates all layers.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        Self::from_figment(Self::figment(file))
    }

    /// Extracts and validates a configuration from any set of layers.
    pub fn from_figment(figment: Figment) -> Result<Self, Error> {
        let defaults = Figment::from(Toml::string(DEFAULT_TOML));
        let config: Config =
            sse_protocol::config_errors::extract_all(&defaults, &figment).map_err(Error::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// TLS to NATS from `nats.tls_*`, its files checked.
    pub fn nats_tls(&self) -> Result<NatsTls, Vec<String>> {
        NatsTls::load(NatsTlsFiles {
            ca_file: &self.nats.tls_ca_file,
            cert_file: &self.nats.tls_cert_file,
            key_file: &self.nats.tls_key_file,
        })
    }

    /// How to authenticate to NATS beyond `nats.url`, its files checked.
    pub fn nats_credentials(&self) -> Result<NatsCredentials, Vec<String>> {
        let url_has_credentials = self.nats_servers().iter().any(|url| {
            async_nats::ServerAddr::from_str(url).is_ok_and(|addr| addr.username().is_some())
        });
        NatsCredentials::load(
            NatsCredentialFiles {
                creds_file: &self.nats.creds_file,
                nkey_seed_file: &self.nats.nkey_seed_file,
            },
            url_has_credentials,
        )
    }

    /// Checks every value and names each bad key.
    pub fn validate(&self) -> Result<(), Error> {
        let mut bad = Vec::new();
        if let Err(problems) = self.nats_tls() {
            bad.extend(problems);
        }
        if let Err(problems) = self.nats_credentials() {
            bad.extend(problems);
        }
        if self.nats.url.split(',').all(|u| u.trim().is_empty()) {
            bad.push("nats.url: must name at least one server".to_owned());
        }
        for url in self.nats.url.split(',').map(str::trim) {
            if !url.is_empty()
                && let Err(why) = sse_protocol::nats_url::parse(url)
            {
                bad.push(format!("nats.url: {why}"));
            }
        }
        let prefix = &self.nats.subject_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !prefix_ok {
            bad.push(format!(
                "nats.subject_prefix: {prefix:?} must be dotted tokens of [A-Za-z0-9_-], no wildcards"
            ));
        }
        if self.nats.request_timeout_ms == 0 || self.nats.request_timeout_ms > 120_000 {
            bad.push("nats.request_timeout_ms: must be between 1 and 120000".to_owned());
        }
        if self.nats.ping_interval_seconds == 0 || self.nats.ping_interval_seconds > 3600 {
            bad.push("nats.ping_interval_seconds: must be between 1 and 3600".to_owned());
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            bad.push(format!(
                "http.listen: {:?} is not an address like 0.0.0.0:8090",
                self.http.listen
            ));
        }
        if self.admin.token.trim().is_empty() {
            bad.push("admin.token: must be set (for example through SSE_ADMIN__TOKEN)".to_owned());
        }
        let publish_token = &self.admin.publish_token;
        if !publish_token.is_empty() && publish_token.trim().is_empty() {
            bad.push("admin.publish_token: is blank; leave it empty for none".to_owned());
        }
        if !publish_token.is_empty() && publish_token == &self.admin.token {
            bad.push(
                "admin.publish_token: is admin.token itself; give publishers a token of their own"
                    .to_owned(),
            );
        }
        if self.admin.max_event_bytes == 0 || self.admin.max_event_bytes > MAX_EVENT_BYTES_CEILING {
            bad.push(format!(
                "admin.max_event_bytes: must be between 1 and {MAX_EVENT_BYTES_CEILING}"
            ));
        }
        if !(100..=60_000).contains(&self.admin.dashboard_interval_ms) {
            bad.push("admin.dashboard_interval_ms: must be between 100 and 60000".to_owned());
        }
        if i32::try_from(self.admin.topic_max_consumers).is_err() {
            bad.push(format!(
                "admin.topic_max_consumers: must be at most {} (0: the NATS server's default)",
                i32::MAX
            ));
        }
        if self.admin.max_dashboard_streams == 0 {
            bad.push("admin.max_dashboard_streams: must be at least 1".to_owned());
        }
        let bucket = &self.cluster.nodes_bucket;
        if !node_report::valid_bucket_name(bucket) {
            bad.push(format!(
                "cluster.nodes_bucket: {bucket:?} must be [A-Za-z0-9_-]+"
            ));
        }
        if !node_report::valid_replicas(self.cluster.nodes_bucket_replicas) {
            bad.push("cluster.nodes_bucket_replicas: must be between 1 and 5".to_owned());
        }
        if !(1..=3600).contains(&self.cluster.node_ttl_seconds) {
            bad.push("cluster.node_ttl_seconds: must be between 1 and 3600".to_owned());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bad.push(format!(
                "log.format: {:?} must be \"text\" or \"json\"",
                self.log.format
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad.push(format!(
                "log.level: {:?} is not a tracing filter",
                self.log.level
            ));
        } else if let Err(why) = sse_protocol::log_level::check_bare_words(&self.log.level) {
            bad.push(format!("log.level: {why}"));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(bad))
        }
    }

    /// The NATS servers, trimmed.
    pub fn nats_servers(&self) -> Vec<String> {
        self.nats
            .url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// `nats.request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.nats.request_timeout_ms)
    }

    /// `cluster.node_ttl_seconds` as a duration.
    pub fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.cluster.node_ttl_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(extra: &str) -> Result<Config, Error> {
        Config::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(extra)))
    }

    fn messages(err: Error) -> Vec<String> {
        match err {
            Error::Config(m) => m,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn the_publish_token_is_its_own() {
        assert!(with("[admin]\ntoken = \"s3cret\"\npublish_token = \"p\"").is_ok());
        for (publish, needle) in [("s3cret", "admin.token itself"), ("  ", "blank")] {
            let errors = messages(
                with(&format!(
                    "[admin]\ntoken = \"s3cret\"\npublish_token = \"{publish}\""
                ))
                .unwrap_err(),
            );
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("admin.publish_token") && e.contains(needle)),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn defaults_need_only_a_token() {
        let errors = messages(with("").unwrap_err());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("admin.token"), "{errors:?}");
        let c = with("[admin]\ntoken = \"s3cret\"").unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:8090");
        assert_eq!(c.nats.subject_prefix, "sse");
        // The bucket's defaults are the contract's, shared with the nodes.
        assert_eq!(c.cluster.nodes_bucket, node_report::DEFAULT_NODES_BUCKET);
        assert_eq!(
            c.cluster.nodes_bucket_replicas,
            node_report::DEFAULT_NODES_BUCKET_REPLICAS
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let errors = messages(
            with(
                "[admin]\ntoken = \"t\"\nmax_event_bytes = 0\n\
                 [nats]\nsubject_prefix = \"a.*\"\nurl = \" , \"\nping_interval_seconds = 0\n\
                 [http]\nlisten = \"nowhere\"\n\
                 [cluster]\nnode_ttl_seconds = 0\nnodes_bucket = \"a.b\"\n\
                 [log]\nformat = \"xml\"\nlevel = \"warning\"",
            )
            .unwrap_err(),
        );
        for key in [
            "admin.max_event_bytes",
            "nats.subject_prefix",
            "nats.url",
            "nats.ping_interval_seconds",
            "http.listen",
            "cluster.node_ttl_seconds",
            "cluster.nodes_bucket",
            "log.format",
            "log.level",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key}: {errors:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors = messages(with("[admin]\ntoken = \"t\"\ntokn = \"x\"").unwrap_err());
        assert!(errors.iter().any(|e| e.contains("tokn")), "{errors:?}");
    }

    #[test]
    fn token_is_not_debug_printed() {
        let c = with("[admin]\ntoken = \"s3cret\"").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
