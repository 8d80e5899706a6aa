//! Node configuration.
//!
//! Layers, lowest first: the commented `config.default.toml` built into the
//! binary, an optional TOML file, then `SSE_<SECTION>__<KEY>` environment
//! variables. Unknown keys are refused, and [`Config::validate`] names every
//! bad key, so a typo stops start-up instead of being ignored.

use std::{net::SocketAddr, path::Path, str::FromStr, time::Duration};

use async_nats::ServerAddr;
use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;
use sse_protocol::node_report;
pub use sse_token::{JwtConfig, Secret};

/// The built-in defaults, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("../config.default.toml");

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The HTTP server and per-connection behaviour.
    pub http: HttpConfig,
    /// Recent events held in memory.
    pub history: HistoryConfig,
    /// Per-client delivery.
    pub delivery: DeliveryConfig,
    /// Reporting to the cluster view.
    pub cluster: ClusterConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Tokens for private topics.
    pub auth: AuthConfig,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// TLS on the node itself.
    pub tls: TlsConfig,
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server URL or a comma-separated list.
    pub url: String,
    /// First token of every event subject.
    pub subject_prefix: String,
    /// Connection name shown by the server.
    pub connection_name: String,
    /// Seconds between full re-listings of topics.
    pub topic_refresh_seconds: u64,
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

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address, `host:port`.
    pub listen: String,
    /// Seconds a stream may be silent before a heartbeat comment.
    pub heartbeat_seconds: u64,
    /// Base of the `retry:` hint, in milliseconds; at most 1000 in the hint
    /// of a stream the node ends itself, so its client comes back at once.
    pub retry_ms: u64,
    /// Random jitter added to `retry_ms`.
    pub retry_jitter_ms: u64,
    /// Most open streams on this node.
    pub max_connections: usize,
    /// Most distinct `topic=` parameters per connection.
    pub max_topics_per_connection: usize,
    /// Longest accepted `Last-Event-ID`, in bytes.
    pub max_last_event_id_bytes: usize,
    /// Seconds after which a stream is closed so clients re-spread; 0 = never.
    pub max_connection_lifetime_seconds: u64,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1.1 request.
    pub max_headers: usize,
    /// Seconds a client has to send its whole request head.
    pub header_read_timeout_seconds: u64,
    /// Seconds a connection may move no byte either way before it is
    /// closed; 0 = never.
    pub idle_timeout_seconds: u64,
    /// Serve HTTP/1.1 event streams, cleartext or TLS, without hyper (see
    /// `fastpath`).
    pub fast_path: bool,
    /// Speak HTTP/2: by ALPN over TLS, and h2c with prior knowledge.
    pub h2: bool,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// New connections accepted per client IP per minute; 0 = no limit.
    pub max_connections_per_ip_per_minute: u32,
}

/// `[history]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Bytes of encoded events every live topic together keeps in memory;
    /// the coldest topic's history is evicted first when it is exceeded.
    pub max_bytes: usize,
    /// Bytes of encoded events each topic keeps in memory.
    pub max_bytes_per_topic: usize,
    /// Events each topic keeps in memory.
    pub max_events_per_topic: usize,
    /// Events read into memory when a topic is first read; none for a topic
    /// quiet for `delivery.feed_doze_seconds`.
    pub warm_events: u64,
    /// Concurrent resumes that read JetStream.
    pub max_concurrent_jetstream_reads: usize,
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Events a client may lag behind a topic's live feed before it is cut.
    pub client_queue_events: usize,
    /// The same for a client of one concrete path, counted in that path's
    /// events (each such path holds a queue of this size while read).
    pub path_queue_events: usize,
    /// Largest payload delivered as is.
    pub max_event_bytes: usize,
    /// Least time between two writes to a busy client (one whose events
    /// come more than twice per window), in milliseconds; 0 = write every
    /// event at once.
    pub write_pacing_ms: u64,
    /// Whether lean-path streams in step with their topic park their
    /// socket with the topic feed's writer.
    pub park_streams: bool,
    /// Seconds a socket may refuse writes before the connection is dropped,
    /// or an HTTP/2 stream's window stay shut before the stream is reset.
    pub write_stall_seconds: u64,
    /// Bytes a client's socket may hold that TCP has not sent yet
    /// (`TCP_NOTSENT_LOWAT`).
    pub max_unsent_bytes: u32,
    /// Seconds a client stream, or a topic's feed, may make no progress
    /// while it is behind before it is closed (the client resumes
    /// elsewhere) or its consumer re-created.
    pub no_progress_seconds: u64,
    /// Seconds a topic's feed keeps running after its last client on this
    /// node left.
    pub feed_linger_seconds: u64,
    /// Seconds a topic may go without a new event (counted from its last
    /// event's JetStream timestamp) before its feed lets its JetStream
    /// consumer go: it then reads the topic's next events with direct gets
    /// until the topic gets more than ten a second; 0 = never.
    pub feed_doze_seconds: u64,
    /// The same for a topic whose stream allows direct gets, where a wake
    /// costs NATS no consumer: the shorter of the two applies; 0 = as
    /// `feed_doze_seconds`.
    pub feed_direct_doze_seconds: u64,
    /// Paths of one topic read on their own (a consumer each) before the
    /// node reads the whole topic instead; 0 always reads whole topics.
    pub max_path_feeds_per_topic: usize,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Key-value bucket holding one entry per live node.
    pub nodes_bucket: String,
    /// Copies JetStream keeps of the bucket (one on an unclustered server).
    pub nodes_bucket_replicas: usize,
    /// Seconds between reports.
    pub report_seconds: u64,
    /// Seconds an entry lives without being renewed.
    pub node_ttl_seconds: u64,
    /// Address shown for this node; empty means the listen address.
    pub advertise_address: String,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Window over which open streams are closed on SIGTERM.
    pub drain_seconds: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter directive.
    pub level: String,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Cookie that may carry a token.
    pub cookie_name: String,
    /// Whether a token may come in the `access_token` query parameter.
    pub query_parameter: bool,
    /// Keys and claims.
    pub jwt: JwtConfig,
}

/// `[cors]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to read streams from a browser; empty = CORS off,
    /// `["*"]` = any origin (without credentials). Compared without regard
    /// to case, as browsers send scheme and host in lowercase.
    pub allowed_origins: Vec<String>,
    /// Whether browsers may send cookies (`withCredentials`).
    pub allow_credentials: bool,
    /// Seconds a browser may cache a preflight answer.
    pub max_age_seconds: u64,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = cleartext HTTP (and h2c).
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// Seconds a client has to finish the TLS handshake.
    pub handshake_timeout_seconds: u64,
}

/// Whether `origin` is a serialized origin: `scheme://host[:port]`, no
/// path, as browsers send in `Origin`.
pub fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '*'])
        && axum::http::HeaderValue::from_str(origin).is_ok()
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Largest `http.max_header_bytes`: a request head is read into a buffer of
/// up to this size.
const MAX_HEADER_BYTES: usize = 1 << 20;
/// Largest `http.max_headers`: each request is parsed into that many slots.
const MAX_HEADERS: usize = 1024;
/// Largest `history.max_concurrent_jetstream_reads`.
const MAX_JETSTREAM_READS: usize = 1 << 16;
/// Largest `delivery.client_queue_events` and `delivery.path_queue_events`:
/// a grown queue is allocated whole.
const MAX_QUEUE_EVENTS: usize = 1 << 20;

/// The longest time any setting may name, in seconds: 100 years.
pub const MAX_DURATION_SECONDS: u64 = 100 * 365 * 24 * 3600;
/// The longest `retry:` hint, and jitter, a node may send: an hour. A
/// client told more would stay away for no reason a setting could have.
const MAX_RETRY_MS: u64 = 3_600_000;
/// The longest drain: an hour, far beyond any orchestrator's grace period.
const MAX_DRAIN_SECONDS: u64 = 3600;

impl Config {
    /// Loads defaults, then `file` if given, then `SSE_*` variables from the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, before extraction; tests add their own layers.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Every key is `<section>.<key>`, so only `SSE_<SECTION>__<KEY>` can
        // name one: a misspelt nested key is still refused, while variables
        // such as `SSE_CONFIG` (the file) or those Kubernetes sets for each
        // Service of the namespace (`SSE_CLUSTER_NODE_SERVICE_HOST` beside a
        // Service named `sse-cluster-node`) do not stop start-up.
        figment.merge(
            Env::prefixed("SSE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
    }

    /// Extracts and validates a configuration from layered sources.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config = Self::extract(figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Extracts a configuration from layered sources: types and unknown keys
    /// checked, values not yet.
    pub fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let defaults = Figment::from(Toml::string(DEFAULT_TOML));
        sse_protocol::config_errors::extract_all(&defaults, &figment).map_err(ConfigError)
    }

    /// Checks the values serde cannot, naming each bad key. Only the values
    /// themselves: what needs a file read (JWT keys, TLS certificate) is
    /// checked when `crate::startup` builds it, once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                errors.push(format!("{key}: {why}"));
            }
        };
        if let Err(e) = self.nats.server_addrs() {
            check(false, "nats.url", &e);
        }
        let prefix = &self.nats.subject_prefix;
        check(
            !prefix.is_empty()
                && prefix.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                }),
            "nats.subject_prefix",
            &format!(
                "{:?} must be dotted tokens of [A-Za-z0-9_-], no wildcards",
                self.nats.subject_prefix
            ),
        );
        check(
            self.nats.topic_refresh_seconds > 0,
            "nats.topic_refresh_seconds",
            "must be at least 1",
        );
        check(
            self.nats.ping_interval_seconds > 0,
            "nats.ping_interval_seconds",
            "must be at least 1",
        );
        check(
            SocketAddr::from_str(&self.http.listen).is_ok(),
            "http.listen",
            &format!(
                "{:?} is not an IP address and port (such as 0.0.0.0:8080 or [::]:8080)",
                self.http.listen
            ),
        );
        check(
            self.http.heartbeat_seconds > 0,
            "http.heartbeat_seconds",
            "must be at least 1",
        );
        check(
            self.http.max_connections > 0,
            "http.max_connections",
            "must be at least 1",
        );
        check(
            self.http.max_topics_per_connection > 0,
            "http.max_topics_per_connection",
            "must be at least 1",
        );
        check(
            self.http.max_last_event_id_bytes >= 32,
            "http.max_last_event_id_bytes",
            "must be at least 32",
        );
        // Upper bounds where a value is allocated per request or up front:
        // past them a request would take the node's memory, or a buffer
        // could not be made at all.
        check(
            (8192..=MAX_HEADER_BYTES).contains(&self.http.max_header_bytes),
            "http.max_header_bytes",
            "must be 8192 to 1048576",
        );
        check(
            (8..=MAX_HEADERS).contains(&self.http.max_headers),
            "http.max_headers",
            "must be 8 to 1024",
        );
        check(
            (1..=3600).contains(&self.http.header_read_timeout_seconds),
            "http.header_read_timeout_seconds",
            "must be 1 to 3600",
        );
        check(
            self.http.idle_timeout_seconds == 0
                || (self.http.idle_timeout_seconds > self.http.heartbeat_seconds
                    && self.http.idle_timeout_seconds <= 7 * 24 * 3600),
            "http.idle_timeout_seconds",
            "must be 0, or longer than http.heartbeat_seconds (or idle streams would be cut) and at most a week",
        );
        check(
            self.http.h2_max_concurrent_streams > 0,
            "http.h2_max_concurrent_streams",
            "must be at least 1",
        );
        check(
            !self.auth.cookie_name.is_empty()
                && self
                    .auth
                    .cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "auth.cookie_name",
            "must be a cookie name of [A-Za-z0-9_-]",
        );
        let cors = &self.cors;
        let any_origin = cors.allowed_origins.iter().any(|o| o == "*");
        check(
            !(any_origin && cors.allow_credentials),
            "cors.allow_credentials",
            "cannot be true while cors.allowed_origins holds \"*\"; list the origins",
        );
        check(
            !(cors.allowed_origins.is_empty() && cors.allow_credentials),
            "cors.allow_credentials",
            "does nothing while cors.allowed_origins is empty (no CORS at all); list the origins that may send cookies",
        );
        check(
            !any_origin || cors.allowed_origins.len() == 1,
            "cors.allowed_origins",
            "\"*\" allows every origin and stands alone: give [\"*\"] or list the origins",
        );
        for origin in cors.allowed_origins.iter().filter(|o| *o != "*") {
            check(
                valid_origin(origin),
                "cors.allowed_origins",
                &format!("{origin:?} is not an origin such as https://app.example.com"),
            );
        }
        check(
            self.tls.cert_file.is_empty() == self.tls.key_file.is_empty(),
            "tls.key_file",
            "tls.cert_file and tls.key_file are set together",
        );
        check(
            (1..=3600).contains(&self.tls.handshake_timeout_seconds),
            "tls.handshake_timeout_seconds",
            "must be 1 to 3600",
        );
        check(
            (1..=MAX_JETSTREAM_READS).contains(&self.history.max_concurrent_jetstream_reads),
            "history.max_concurrent_jetstream_reads",
            "must be 1 to 65536",
        );
        check(
            (16..=MAX_QUEUE_EVENTS).contains(&self.delivery.client_queue_events),
            "delivery.client_queue_events",
            "must be 16 to 1048576 (a feed's queue holds 32 bytes per event it may hold)",
        );
        check(
            (16..=MAX_QUEUE_EVENTS).contains(&self.delivery.path_queue_events),
            "delivery.path_queue_events",
            "must be 16 to 1048576 (a path's queue holds 32 bytes per event it may hold)",
        );
        check(
            self.delivery.write_pacing_ms <= 1000,
            "delivery.write_pacing_ms",
            "must be at most 1000",
        );
        check(
            self.delivery.write_stall_seconds > 0,
            "delivery.write_stall_seconds",
            "must be at least 1",
        );
        check(
            self.delivery.max_unsent_bytes >= 16 * 1024,
            "delivery.max_unsent_bytes",
            "must be at least 16384",
        );
        check(
            self.delivery.no_progress_seconds > 0,
            "delivery.no_progress_seconds",
            "must be at least 1",
        );
        check(
            self.delivery.max_event_bytes > 0,
            "delivery.max_event_bytes",
            "must be at least 1",
        );
        check(
            node_report::valid_bucket_name(&self.cluster.nodes_bucket),
            "cluster.nodes_bucket",
            "must be a bucket name of [A-Za-z0-9_-]",
        );
        check(
            node_report::valid_replicas(self.cluster.nodes_bucket_replicas),
            "cluster.nodes_bucket_replicas",
            "must be between 1 and 5",
        );
        check(
            self.cluster.advertise_address.is_empty()
                || !self
                    .cluster
                    .advertise_address
                    .contains(|c: char| c.is_whitespace() || c.is_control()),
            "cluster.advertise_address",
            &format!(
                "{:?} is not an address such as 10.0.0.7:8080 (no spaces); leave it empty for the listen address",
                self.cluster.advertise_address
            ),
        );
        check(
            self.http.retry_ms <= MAX_RETRY_MS,
            "http.retry_ms",
            "must be at most 3600000 (an hour): clients wait that long before coming back",
        );
        check(
            self.http.retry_jitter_ms <= MAX_RETRY_MS,
            "http.retry_jitter_ms",
            "must be at most 3600000 (an hour): clients wait up to that long before coming back",
        );
        check(
            self.shutdown.drain_seconds <= MAX_DRAIN_SECONDS,
            "shutdown.drain_seconds",
            "must be at most 3600 (an hour): a node takes that long to stop",
        );
        check(
            self.auth.jwt.leeway_seconds <= sse_token::MAX_LEEWAY_SECONDS,
            "auth.jwt.leeway_seconds",
            "must be at most 600: an expired token is taken for that long after its exp",
        );
        check(
            self.cluster.report_seconds > 0,
            "cluster.report_seconds",
            "must be at least 1",
        );
        check(
            self.cluster.node_ttl_seconds > self.cluster.report_seconds,
            "cluster.node_ttl_seconds",
            "must be longer than cluster.report_seconds",
        );
        check(
            matches!(self.log.format.as_str(), "text" | "json"),
            "log.format",
            &format!("{:?} is not text or json", self.log.format),
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            &format!("{:?} is not a tracing filter", self.log.level),
        );
        if let Err(why) = sse_protocol::log_level::check_bare_words(&self.log.level) {
            check(false, "log.level", &why);
        }
        // Deadlines are instants: a time so far off that adding it to now
        // overflows would fail each stream (or the drain) at run time.
        for (key, seconds) in [
            (
                "nats.topic_refresh_seconds",
                self.nats.topic_refresh_seconds,
            ),
            (
                "nats.ping_interval_seconds",
                self.nats.ping_interval_seconds,
            ),
            ("http.heartbeat_seconds", self.http.heartbeat_seconds),
            ("http.retry_ms", self.http.retry_ms / 1000),
            ("http.retry_jitter_ms", self.http.retry_jitter_ms / 1000),
            (
                "http.max_connection_lifetime_seconds",
                self.http.max_connection_lifetime_seconds,
            ),
            (
                "http.header_read_timeout_seconds",
                self.http.header_read_timeout_seconds,
            ),
            ("http.idle_timeout_seconds", self.http.idle_timeout_seconds),
            (
                "delivery.write_pacing_ms",
                self.delivery.write_pacing_ms / 1000,
            ),
            (
                "delivery.write_stall_seconds",
                self.delivery.write_stall_seconds,
            ),
            (
                "delivery.no_progress_seconds",
                self.delivery.no_progress_seconds,
            ),
            (
                "delivery.feed_linger_seconds",
                self.delivery.feed_linger_seconds,
            ),
            (
                "delivery.feed_doze_seconds",
                self.delivery.feed_doze_seconds,
            ),
            (
                "delivery.feed_direct_doze_seconds",
                self.delivery.feed_direct_doze_seconds,
            ),
            ("cluster.report_seconds", self.cluster.report_seconds),
            ("cluster.node_ttl_seconds", self.cluster.node_ttl_seconds),
            ("shutdown.drain_seconds", self.shutdown.drain_seconds),
            ("cors.max_age_seconds", self.cors.max_age_seconds),
            (
                "tls.handshake_timeout_seconds",
                self.tls.handshake_timeout_seconds,
            ),
            ("auth.jwt.leeway_seconds", self.auth.jwt.leeway_seconds),
        ] {
            check(
                seconds <= MAX_DURATION_SECONDS,
                key,
                "is more than 100 years (3153600000 s); where a key may mean never, its comment in config.default.toml says how",
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.http.heartbeat_seconds)
    }

    /// The drain window.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.shutdown.drain_seconds)
    }
}

impl NatsConfig {
    /// Whether a URL of `nats.url` carries a user or token.
    pub fn url_has_credentials(&self) -> bool {
        self.server_addrs()
            .is_ok_and(|addrs| addrs.iter().any(|addr| addr.username().is_some()))
    }

    /// The servers named by `url`, split on commas.
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, String> {
        let addrs: Result<Vec<ServerAddr>, String> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(sse_protocol::nats_url::parse)
            .collect();
        match addrs {
            Ok(list) if list.is_empty() => Err("no server given".into()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn with(key: &str, value: impl serde::Serialize) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML)).merge(Serialized::default(key, value)),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = with("nats.url", "nats://a:4222, nats://b:4222").unwrap();
        assert_eq!(c.nats.server_addrs().unwrap().len(), 2);
        // The bucket's defaults are the contract's, shared with admin.
        assert_eq!(c.cluster.nodes_bucket, node_report::DEFAULT_NODES_BUCKET);
        assert_eq!(
            c.cluster.nodes_bucket_replicas,
            node_report::DEFAULT_NODES_BUCKET_REPLICAS
        );
        // `ssectl token check` judges expiry with the same default.
        assert_eq!(c.auth.jwt.leeway_seconds, sse_token::DEFAULT_LEEWAY_SECONDS);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, needle) in [
            ("http.listen", "nowhere", "http.listen"),
            ("nats.url", "", "nats.url"),
            ("log.format", "xml", "log.format"),
            ("nats.subject_prefix", "a..b", "nats.subject_prefix"),
        ] {
            let err = with(key, value).unwrap_err().to_string();
            assert!(err.contains(needle), "{key}: {err}");
        }
        let err = with("http.heartbeat_seconds", "soon")
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_seconds"), "{err}");
        let err = with("http.bogus", 1).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        for key in [
            "shutdown.drain_seconds",
            "http.heartbeat_seconds",
            "http.max_connection_lifetime_seconds",
            "delivery.feed_linger_seconds",
            "http.retry_ms",
        ] {
            let err = with(key, u64::MAX).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("100 years"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn settings_past_any_sense_are_refused_where_they_would_be_taken() {
        for (key, too_much, most) in [
            ("http.retry_ms", 3_600_001, 3_600_000),
            ("http.retry_jitter_ms", 3_600_001, 3_600_000),
            ("shutdown.drain_seconds", 3601, 3600),
            ("auth.jwt.leeway_seconds", 601, 600),
            ("http.max_header_bytes", 1_048_577, 1_048_576),
            ("http.max_headers", 1025, 1024),
            ("history.max_concurrent_jetstream_reads", 65_537, 65_536),
            ("delivery.client_queue_events", 1_048_577, 1_048_576),
            ("delivery.path_queue_events", 1_048_577, 1_048_576),
        ] {
            let err = with(key, too_much).unwrap_err().to_string();
            assert!(
                err.contains(key) && (err.contains("at most") || err.contains(" to ")),
                "{key}: {err}"
            );
            assert!(with(key, most).is_ok(), "{key} = {most}");
        }
        let err = with("delivery.max_unsent_bytes", 1024)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery.max_unsent_bytes") && err.contains("16384"),
            "{err}"
        );
        assert!(with("delivery.max_unsent_bytes", 16384).is_ok());
        for blank in ["   ", "10.0.0.7 :8080"] {
            let err = with("cluster.advertise_address", blank)
                .unwrap_err()
                .to_string();
            assert!(err.contains("cluster.advertise_address"), "{err}");
        }
        assert!(with("cluster.advertise_address", "sse-node-0.sse:8080").is_ok());
    }

    #[test]
    fn security_settings_name_their_key() {
        // Keys and certificates are checked where they are built:
        // `startup`'s tests.
        for (key, value, needle) in [
            ("auth.cookie_name", "a b", "auth.cookie_name"),
            ("tls.cert_file", "/no/cert.pem", "tls.key_file"),
        ] {
            let err = with(key, value).unwrap_err().to_string();
            assert!(err.contains(needle), "{key}: {err}");
        }
        for (key, value) in [
            ("http.idle_timeout_seconds", u64::MAX),
            ("http.idle_timeout_seconds", 5),
            ("http.header_read_timeout_seconds", u64::MAX),
            ("tls.handshake_timeout_seconds", 0),
        ] {
            let err = with(key, value).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let err = with("http.max_header_bytes", 1024).unwrap_err().to_string();
        assert!(err.contains("http.max_header_bytes"), "{err}");
        let err = with("cors.allowed_origins", ["https://a.example/path"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cors.allowed_origins"), "{err}");
        let both = Config::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Serialized::default("cors.allowed_origins", ["*"]))
                .merge(Serialized::default("cors.allow_credentials", true)),
        );
        let err = both.unwrap_err().to_string();
        assert!(err.contains("cors.allow_credentials"), "{err}");
        let err = with("cors.allow_credentials", true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cors.allow_credentials") && err.contains("empty"),
            "{err}"
        );
        let err = with("cors.allowed_origins", ["https://a.example", "*"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cors.allowed_origins") && err.contains("stands alone"),
            "{err}"
        );
        with("cors.allowed_origins", ["HTTPS://A.Example:8443"]).unwrap();
        let secret = with("auth.jwt.hs256_secret", "0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(format!("{:?}", secret.auth.jwt.hs256_secret), "<redacted>");
    }

    #[test]
    fn config_imports_no_module_above_it() {
        let source = include_str!("config.rs");
        let code: String = source[..source.find("#[cfg(test)]").unwrap()]
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect();
        for upper in [
            "auth",
            "connection",
            "http",
            "startup",
            "node",
            "fastpath",
            "subscriber",
        ] {
            assert!(
                !code.contains(&format!("crate::{upper}")),
                "config.rs uses crate::{upper}"
            );
        }
    }
}
