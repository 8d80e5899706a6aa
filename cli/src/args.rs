//! The command line, declared with clap's derive.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "ssectl",
    version,
    about = "The operator's command line for sse-cluster.",
    after_help = "Settings: flags, then SSECTL_ADMIN_URL, SSECTL_URL, SSECTL_TOKEN, \
                  SSECTL_CA_FILE, then the config file (--config, SSECTL_CONFIG, or \
                  ~/.config/ssectl/config.toml with keys admin_url, url, admin_token, ca_file).\n\
                  URLs may be http:// or https://; https trusts the system's certificate \
                  authorities and those of --ca-file.\n\
                  Exit codes: 0 done, 1 refused, 2 usage error, 3 nothing reachable."
)]
pub struct Cli {
    /// Settings every command shares.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Admin's base URL [default: http://127.0.0.1:8090].
    #[arg(long, global = true, env = "SSECTL_ADMIN_URL", value_name = "URL")]
    pub admin_url: Option<String>,
    /// Where streams are read: a node or the load balancer; a comma-separated
    /// list is tried in turn [default: http://127.0.0.1:8080].
    #[arg(long, global = true, env = "SSECTL_URL", value_name = "URL[,URL…]")]
    pub url: Option<String>,
    /// Admin's bearer token, needed for every admin call.
    #[arg(
        long,
        global = true,
        env = "SSECTL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// PEM file of certificate authorities to trust for https:// URLs, beside
    /// the system's (a private CA, a self-signed certificate).
    #[arg(long, global = true, env = "SSECTL_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Config file (TOML: admin_url, url, admin_token, ca_file).
    #[arg(long, global = true, env = "SSECTL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (`tail`: one object per line).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, change, list, inspect, purge and remove topics.
    Topic {
        /// What to do with topics.
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Publish an event through admin; prints its client-visible id.
    Pub(Publish),
    /// Print a stream's events as they arrive, resuming by itself when it
    /// drops.
    Tail(Tail),
    /// Mint a token, or check whether a node would accept one.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Nodes, NATS and topics at a glance; exits 3 when admin does not
    /// answer, 1 when NATS is unreachable.
    Status(Status),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `ssectl topic …`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(TopicCreate),
    /// Change a topic's retention, size limits or access; what is not
    /// given stays as it is.
    Update(TopicUpdate),
    /// List topics.
    Ls,
    /// Show one topic.
    Info {
        /// Topic name.
        name: String,
    },
    /// Remove a topic's events (asks on a terminal unless --yes).
    Purge {
        /// Topic name.
        name: String,
        /// Only this subject path (wildcards allowed), e.g. `orders.42`.
        #[arg(long, value_name = "PATH")]
        subject: Option<String>,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove a topic and its events (asks on a terminal unless --yes).
    Rm {
        /// Topic name.
        name: String,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

/// `ssectl topic create`
#[derive(Debug, Args)]
pub struct TopicCreate {
    /// Topic name, `[a-z0-9_-]{1,64}`.
    pub name: String,
    /// 1 or 3.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u64>,
    /// Retention and size limits.
    #[command(flatten)]
    pub limits: TopicLimits,
    /// Store events in memory rather than on disk.
    #[arg(long)]
    pub memory: bool,
    /// Only holders of a token may read it.
    #[arg(long)]
    pub private: bool,
}

/// `ssectl topic update`
#[derive(Debug, Args)]
pub struct TopicUpdate {
    /// Topic name.
    pub name: String,
    /// Retention and size limits to change; those not given stay.
    #[command(flatten)]
    pub limits: TopicLimits,
    /// Only holders of a token may read it from now on.
    #[arg(long, conflicts_with = "public")]
    pub private: bool,
    /// Anyone may read it from now on.
    #[arg(long)]
    pub public: bool,
}

/// A topic's retention and size limits, as `topic create` sets them and
/// `topic update` changes them.
#[derive(Debug, Args)]
pub struct TopicLimits {
    /// Drop events older than this, e.g. `90s`, `12h`, `7d` (whole seconds);
    /// `0`: no limit.
    #[arg(long, value_name = "DUR", value_parser = crate::units::parse_age_limit)]
    pub max_age: Option<std::time::Duration>,
    /// Drop the oldest events beyond this size, e.g. `500MiB`, `2GB`;
    /// `0`: no limit.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_bytes: Option<u64>,
    /// Drop the oldest events beyond this many; `0`: no limit.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Keep only the last N events of each subject path, each new one
    /// replacing the oldest, which no client is told of (README, "`reset`":
    /// events removed from within a topic are not announced); `0`: no
    /// limit.
    #[arg(long, value_name = "N")]
    pub max_messages_per_subject: Option<u64>,
    /// Refuse a single event larger than this (data and headers), e.g.
    /// `64KiB`; default: the NATS server's `max_payload`.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub max_message_bytes: Option<u64>,
    /// Consumers the topic's stream may hold (node feeds and resumes);
    /// default: admin's `topic_max_consumers`; 0: the NATS server's default.
    #[arg(long, value_name = "N")]
    pub max_consumers: Option<u64>,
}

/// `ssectl pub`
#[derive(Debug, Args)]
pub struct Publish {
    /// Subject path, e.g. `orders.42`; its first token is the topic.
    pub path: String,
    /// The event's data; `-` or absent: read from stdin, less one final
    /// line ending (the one `echo` adds).
    pub data: Option<String>,
    /// SSE event name.
    #[arg(long, value_name = "NAME")]
    pub event: Option<String>,
    /// De-duplication id (`Nats-Msg-Id`).
    #[arg(long, value_name = "MSGID", conflicts_with = "lines")]
    pub id: Option<String>,
    /// Publish each line of stdin as an event, and report the rate.
    #[arg(long, conflicts_with = "data")]
    pub lines: bool,
}

/// `ssectl tail`
#[derive(Debug, Args)]
pub struct Tail {
    /// Subject paths (wildcards allowed), e.g. `orders.*` `news`.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Start after this event id.
    #[arg(long, value_name = "ID", group = "start")]
    pub from: Option<String>,
    /// Start from the oldest event each topic holds.
    #[arg(long, group = "start")]
    pub from_start: bool,
    /// Start with the last N events of each topic (counted over the whole
    /// topic, so a narrower path may show fewer).
    #[arg(long, value_name = "N", group = "start")]
    pub last: Option<u64>,
    /// Stop after this many events (`reset` notices not counted).
    #[arg(short = 'n', long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// A JWT for private topics.
    #[arg(
        long,
        value_name = "JWT",
        env = "SSECTL_STREAM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Give up after this long without any node answering.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = crate::units::parse_duration)]
    pub give_up_after: std::time::Duration,
    /// Resume elsewhere after this long without a byte from the node (it
    /// sends a heartbeat every `http.heartbeat_seconds`, 15 s): a node that
    /// hangs keeps the connection open but says nothing.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = crate::units::parse_duration)]
    pub silence_timeout: std::time::Duration,
}

/// `ssectl token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a token granting subject patterns.
    Mint(Mint),
    /// Say whether a node with the given key configuration accepts a token,
    /// and why not.
    Check(Check),
}

/// `ssectl token mint`
#[derive(Debug, Args)]
pub struct Mint {
    /// `sub`: who holds the token.
    #[arg(long, value_name = "SUB")]
    pub sub: String,
    /// Patterns the holder may read, e.g. `orders.alice.>` (repeat or list).
    #[arg(long, value_name = "PATTERN", required = true, num_args = 1..)]
    pub grant: Vec<String>,
    /// Lifetime, e.g. `15m`, `24h`.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = crate::units::parse_whole_seconds)]
    pub ttl: std::time::Duration,
    /// `aud`, when nodes check one (`auth.jwt.audience`).
    #[arg(long, value_name = "AUD")]
    pub aud: Option<String>,
    /// `iss`, when nodes check one (`auth.jwt.issuer`).
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// `kid` header, to pick a key from a node's JWKS.
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
    /// The signing key.
    #[command(flatten)]
    pub key: SigningKeyArgs,
}

/// Where the signing key comes from; exactly one flag, or without a flag
/// exactly one of the variables `SSECTL_HS256_SECRET_FILE`,
/// `SSECTL_RS256_KEY`, `SSECTL_ES256_KEY` and `SSECTL_HS256_SECRET` (the
/// HS256 secret itself: never a flag, as flags show in `ps`). A flag wins
/// over the environment.
#[derive(Debug, Args)]
pub struct SigningKeyArgs {
    /// File holding the HS256 shared secret (a final newline is ignored)
    /// [env: SSECTL_HS256_SECRET_FILE].
    #[arg(long, value_name = "FILE")]
    pub hs256_secret_file: Option<PathBuf>,
    /// RS256 private key, PEM file [env: SSECTL_RS256_KEY].
    #[arg(long, value_name = "FILE")]
    pub rs256_key: Option<PathBuf>,
    /// ES256 (P-256) private key, PKCS#8 PEM file [env: SSECTL_ES256_KEY].
    #[arg(long, value_name = "FILE")]
    pub es256_key: Option<PathBuf>,
}

/// `ssectl token check`
#[derive(Debug, Args)]
pub struct Check {
    /// The token.
    pub token: String,
    /// Also check that the token grants these subject paths.
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
    /// The nodes' key configuration (`[auth.jwt]`).
    #[command(flatten)]
    pub keys: VerifyKeyArgs,
}

/// The key configuration of the nodes a token is checked against; the same
/// fields as a node's `[auth.jwt]` section.
#[derive(Debug, Args)]
pub struct VerifyKeyArgs {
    /// `auth.jwt.hs256_secret_file`.
    #[arg(
        long = "hs256-secret-file",
        id = "check_hs256_secret_file",
        value_name = "FILE",
        env = "SSECTL_HS256_SECRET_FILE"
    )]
    pub hs256_secret_file: Option<PathBuf>,
    /// `auth.jwt.rs256_public_key_file`.
    #[arg(long, value_name = "FILE")]
    pub rs256_public_key: Option<PathBuf>,
    /// `auth.jwt.es256_public_key_file`.
    #[arg(long, value_name = "FILE")]
    pub es256_public_key: Option<PathBuf>,
    /// `auth.jwt.jwks_file`.
    #[arg(long, value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// `auth.jwt.audience`.
    #[arg(long, value_name = "AUD")]
    pub aud: Option<String>,
    /// `auth.jwt.issuer`.
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// `auth.jwt.leeway_seconds` (a node's default unless given; at most
    /// 600, as a node allows).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = sse_token::DEFAULT_LEEWAY_SECONDS,
        value_parser = clap::value_parser!(u64).range(0..=sse_token::MAX_LEEWAY_SECONDS)
    )]
    pub leeway: u64,
}

/// `ssectl status`
#[derive(Debug, Args)]
pub struct Status {
    /// How long to watch node reports to compute delivered/s; `0s` skips it.
    #[arg(long, value_name = "DUR", default_value = "6s", value_parser = crate::units::parse_duration)]
    pub rate_window: std::time::Duration,
    /// List every topic, not only the ones with the most subscribers.
    #[arg(long)]
    pub all: bool,
}
