//! sse-admin: the admin service of sse-cluster.
//!
//! Operators manage topics and watch the cluster through it; backends that
//! would rather not speak NATS publish through it. It keeps no state of its
//! own: a topic is its JetStream stream, a live node is its entry in the
//! `sse_nodes` key-value bucket, so any number of replicas show the same.
//!
//! How the parts fit:
//! - [`config`]: the layered configuration and its validation.
//! - [`http`]: the router, the bearer-token gate and the probes.
//! - [`topics`]: topic life cycle, one JetStream stream per topic.
//! - [`publish`]: `POST /v1/topics/{name}/events`, answering with the event id
//!   clients will see.
//! - [`cluster`]: the live nodes, read from the node-report bucket.
//! - [`overview`]: the read-only snapshot, the dashboard page and its live
//!   stream.
//! - [`metrics`]: Prometheus figures, computed at scrape time.
//! - [`openapi`]: the OpenAPI document generated from the handlers.
//! - [`state`]: the shared, cheaply cloned application state.
//!
//! `main.rs` only loads the config, starts logging, binds and calls [`run`].

pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod overview;
pub mod publish;
pub mod state;
pub mod telemetry;
pub mod topics;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;
use sse_protocol::nats_switch::{NextServer, ServerSwitch, Verdict};
use sse_protocol::nats_unreachable::UnreachableReport;
use state::AppState;

/// Exit code for a bad configuration or command line (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Longest wait for open requests once shutdown has begun.
const DRAIN_CAP: Duration = Duration::from_secs(10);
/// Longest wait for NATS to take buffered messages at exit.
const FLUSH_CAP: Duration = Duration::from_secs(2);

fn state_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Serves the admin API on `listener` until `shutdown` is cancelled.
///
/// NATS is connected in the background: the API answers 503 (and `/readyz`
/// reports not ready) until the connection is up, so admin starts in any
/// order with NATS.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (client, switch) = connect(&config).await?;
    let state = AppState::new(config, client.clone(), shutdown.clone());
    state.metrics.count_dropped_spans();
    tokio::spawn(follow_jetstream(state.clone(), switch));
    tokio::spawn(publish::watch_stream_advisories(state.clone()));
    tokio::spawn(topics::republish_older_topics(state.clone()));

    let address = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%address, "admin listening");
    for (key, token) in [
        ("admin.token", &state.config.admin.token),
        ("admin.publish_token", &state.config.admin.publish_token),
    ] {
        let length = token.chars().count();
        if length > 0 && length < SHORT_TOKEN_CHARS {
            tracing::warn!(
                key,
                length,
                "a token this short can be guessed; give it 32 random characters or more"
            );
        }
    }
    let app = http::router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    accept(listener, app, &graceful, &shutdown).await;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_CAP) => tracing::warn!("drain time cap reached; closing open requests"),
    }
    // Flushing waits for a connection; with NATS down there is none.
    if state_connected(&client) {
        match tokio::time::timeout(FLUSH_CAP, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(%err, "nats flush at shutdown failed"),
            Err(_) => tracing::debug!("nats flush at shutdown timed out"),
        }
    }
    tracing::info!("admin stopped");
    Ok(())
}

/// Most connections admin serves at once; past it, new ones wait in the
/// listen queue, holding no file of admin's, probes included. So that slow
/// clients cannot keep it full, a head must come within
/// [`HEADER_READ_TIMEOUT`] and a body within [`http::BODY_READ_TIMEOUT`]
/// (one declared over the body limit is refused from its head).
const MAX_CONNECTIONS: usize = 1024;

/// Longest a client may take to send its request head, on a new connection
/// or between two requests on one kept alive: one that sends nothing, or a
/// byte at a time, cannot hold a connection for good.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections until `shutdown`, each watched by `graceful`.
async fn accept(
    listener: TcpListener,
    app: axum::Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    shutdown: &CancellationToken,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto,
        service::TowerToHyperService,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of files, say: a pause rather than a busy loop.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's timeout on the head starts once it knows the protocol
            // from the first bytes: a client that sends none is dropped here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return drop(slot);
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Bearer tokens shorter than this are warned about at start.
const SHORT_TOKEN_CHARS: usize = 16;

/// How often admin asks JetStream about the node-report bucket, to notice a
/// NATS server that answers but cannot reach JetStream.
const JETSTREAM_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Asks JetStream about the node-report bucket every
/// [`JETSTREAM_CHECK_EVERY`] while connected, until shutdown; `switch`
/// moves admin to another NATS server when its own is cut off from its
/// peers, where every API call would answer 503 until the cut healed.
async fn follow_jetstream(state: AppState, mut switch: ServerSwitch) {
    let mut ticker = tokio::time::interval(JETSTREAM_CHECK_EVERY);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !state_connected(&state.client) {
            continue;
        }
        if sse_protocol::nats_switch::jetstream_answers(&state.client, switch.stream()).await {
            switch.answered();
        } else if switch.failed().await == Verdict::Switched {
            state.metrics.nats_server_switched();
        }
    }
}

/// Opens the NATS connection, retrying in the background until it is up,
/// with the switch that leaves a server cut off from its peers.
async fn connect(config: &Config) -> Result<(async_nats::Client, ServerSwitch), Error> {
    let servers: Vec<async_nats::ServerAddr> = config
        .nats_servers()
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|err| Error::Config(vec![format!("nats.url: {err}")]))?;
    // Both checked when the configuration was loaded.
    let tls = config.nats_tls().map_err(Error::Config)?;
    let credentials = config.nats_credentials().map_err(Error::Config)?;
    let options =
        sse_protocol::nats_url::with_url_credentials(async_nats::ConnectOptions::new(), &servers);
    let options = credentials
        .apply(options)
        .map_err(|why| Error::Config(vec![why]))?;
    let options = tls.apply(options);
    let probe_options = options
        .clone()
        .name(format!("{}-probe", config.nats.connection_name));
    let unreachable = UnreachableReport::new(
        probe_options.clone(),
        servers.clone(),
        sse_protocol::nats_url::redact(&config.nats.url),
    );
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next_server = NextServer::default();
    let client = next_server
        .install(options)
        .name(&config.nats.connection_name)
        // Said in admin's log as in a node's: an admin that cannot reach
        // NATS answers 503 and is not ready, and its log says why.
        .event_callback(move |event| {
            use std::sync::atomic::Ordering;
            let unreachable = unreachable.clone();
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if !connected.swap(true, Ordering::AcqRel) {
                            tracing::info!("connected to nats");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        connected.store(false, Ordering::Release);
                        tracing::warn!("disconnected from nats");
                    }
                    async_nats::Event::ServerError(error) => {
                        tracing::warn!(%error, "nats server error");
                    }
                    async_nats::Event::ClientError(error) if !connected.load(Ordering::Acquire) => {
                        unreachable.attempt_failed(error.to_string());
                    }
                    other => tracing::info!(event = %other, "nats event"),
                }
            }
        })
        .request_timeout(Some(config.request_timeout()))
        .ping_interval(Duration::from_secs(config.nats.ping_interval_seconds))
        // A frozen server still accepts TCP connections (the kernel does)
        // but never says hello: give it up soon for the next one.
        .connection_timeout(Duration::from_secs(2))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|err| Error::NatsUnavailable(err.to_string()))?;
    let switch = ServerSwitch::new(
        client.clone(),
        probe_options,
        next_server,
        format!("KV_{}", config.cluster.nodes_bucket),
    );
    Ok((client, switch))
}
