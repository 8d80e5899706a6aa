//! `sse-node`: Server-Sent Events from NATS JetStream, resumable on any node.
//!
//! The path of an event through a node, file by file:
//!
//! - [`feed`]: one JetStream reader per topic receives it, [`event`] encodes
//!   it once as an SSE frame;
//! - [`history`]: the topic's recent events are held in memory for resumes;
//! - [`topics`]: which topics exist, discovered from JetStream;
//! - [`delivery`]: each client's stream catches up (memory or JetStream),
//!   then fans out live events from the topic's broadcast;
//! - [`http`]: the endpoints, request validation and error bodies;
//!   [`auth`] checks tokens for private topics;
//! - [`fastpath`]: HTTP/1.1 event streams, in cleartext or over TLS, written
//!   straight to the socket ([`tls_records`] seals them for TLS);
//!   [`connection`] accepts sockets, completes TLS
//!   handshakes and hands everything else (other endpoints, preflights,
//!   HTTP/2) to hyper; [`h2_stall`] resets HTTP/2 streams whose window
//!   stays shut.
//!
//! Around them: [`config`] (values, checked; imports nothing above it),
//! [`startup`] (what is built from the config once: verifier, TLS, CORS),
//! [`metrics`], [`node`] (shared state and readiness), [`report`] (the
//! cluster view, where [`clock`] measures the node's clock against NATS's) and [`telemetry`] (logs and traces).
//! [`run`] wires them together; `main.rs` only loads the config and calls it.

pub mod auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod event;
pub mod fastpath;
pub mod feed;
pub mod h2_stall;
pub mod history;
pub mod http;
pub mod metrics;
pub mod node;
pub mod open_files;
pub mod report;
pub mod startup;
pub mod telemetry;
pub mod tls_records;
pub mod topics;

use std::{sync::Arc, time::Duration};

use async_nats::{ConnectOptions, Event as NatsEvent, jetstream};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use sse_protocol::nats_unreachable::UnreachableReport;

use crate::{feed::FeedSettings, metrics::Metrics, node::Node, startup::Startup, topics::Topics};

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Binding or serving HTTP failed.
    #[error("http server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The NATS client could not be created.
    #[error("cannot set up the nats client for {url}: {reason}")]
    Nats {
        /// The configured URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The NATS client's connection task ended: the client would never
    /// reconnect, so the node stopped (after a drain) for its supervisor to
    /// start it again.
    #[error(
        "the nats client stopped for good; the node drained and stopped so that it can be restarted"
    )]
    NatsClientGone,
}

/// How watching the NATS connection's state ended.
#[derive(Debug, PartialEq, Eq)]
enum ConnectionWatch {
    /// The node stopped watching.
    Stopped,
    /// The client's connection task is gone: its events will never come
    /// again, so neither will a reconnection.
    ClientGone,
}

/// Hands each change of the NATS connection's state to `set_connected`
/// until `stop`, or until the client is gone. The client's event callback
/// holds the sender, and the client drops the callback only when its
/// connection task ends (a panic in it, say: async-nats 0.51 had one), after
/// which the last state seen would claim a connection forever.
async fn watch_connection(
    mut connected: watch::Receiver<bool>,
    stop: CancellationToken,
    set_connected: impl Fn(bool),
) -> ConnectionWatch {
    loop {
        set_connected(*connected.borrow_and_update());
        tokio::select! {
            _ = stop.cancelled() => return ConnectionWatch::Stopped,
            changed = connected.changed() => if changed.is_err() {
                set_connected(false);
                return ConnectionWatch::ClientGone;
            },
        }
    }
}

/// Extra time, after the drain window, for the HTTP server to close.
const SERVER_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Time, after the HTTP server closed, for the feeds' consumers to be
/// deleted. With [`SERVER_CLOSE_GRACE`] and [`LAST_FLUSH`], within the 3 s
/// past the drain window that the Helm chart gives a node to close.
const CONSUMER_DELETE_GRACE: Duration = Duration::from_millis(500);

/// Time left for the node's report to be deleted and what the node last
/// sent to NATS to leave, after the feeds' consumers were deleted.
const LAST_FLUSH: Duration = Duration::from_millis(500);

/// Runs a node on `listener` until `shutdown` is cancelled and the drain is
/// over, with the parts [`Startup`] built from the configuration.
pub async fn run(
    startup: Startup,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let Startup {
        config,
        verifier,
        tls,
        cors,
        nats_tls,
        nats_credentials,
    } = startup;
    let metrics = Arc::new(Metrics::new());
    let dropped_spans = metrics.trace_spans_dropped.clone();
    sse_protocol::otel::count_dropped_spans_with(move |reason, spans| {
        dropped_spans.with_label_values(&[reason]).inc_by(spans);
    });
    let (connected_tx, connected_rx) = watch::channel(false);
    let (reconnections_tx, reconnections) = watch::channel(0u64);
    let reconnects = metrics.nats_reconnects.clone();
    let ever_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs = config
        .nats
        .server_addrs()
        .map_err(|reason| NodeError::Nats {
            url: sse_protocol::nats_url::redact(&config.nats.url),
            reason,
        })?;
    let shown_url = sse_protocol::nats_url::redact(&config.nats.url);
    let options = sse_protocol::nats_url::with_url_credentials(ConnectOptions::new(), &addrs);
    let options = nats_credentials
        .apply(options)
        .map_err(|reason| NodeError::Nats {
            url: sse_protocol::nats_url::redact(&config.nats.url),
            reason,
        })?;
    let options = nats_tls.apply(options);
    // What a probe of another server connects with: the same credentials
    // and TLS, none of the callbacks below.
    let probe_options = options
        .clone()
        .name(format!("{}-probe", config.nats.connection_name));
    let unreachable = UnreachableReport::new(probe_options.clone(), addrs.clone(), shown_url);
    let next_server = sse_protocol::nats_switch::NextServer::default();
    let client = next_server
        .install(options)
        .name(&config.nats.connection_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(config.nats.ping_interval_seconds))
        .reconnect_delay_callback(|attempt| Duration::from_millis((100 * attempt as u64).min(2000)))
        .event_callback(move |event| {
            let connected_tx = connected_tx.clone();
            let reconnections_tx = reconnections_tx.clone();
            let reconnects = reconnects.clone();
            let ever_connected = ever_connected.clone();
            let unreachable = unreachable.clone();
            async move {
                match event {
                    NatsEvent::Connected => {
                        connected_tx.send_replace(true);
                        // The first connection is not a reconnection.
                        if ever_connected.swap(true, std::sync::atomic::Ordering::AcqRel) {
                            reconnects.inc();
                            reconnections_tx.send_modify(|n| *n += 1);
                            info!("reconnected to nats");
                        } else {
                            info!("connected to nats");
                        }
                    }
                    NatsEvent::Disconnected => {
                        connected_tx.send_replace(false);
                        warn!("disconnected from nats");
                    }
                    // A refused subscription (a quiet feed listening for
                    // its topic's next publish) is only ever said here.
                    NatsEvent::ServerError(error) => warn!(%error, "nats server error"),
                    // Failed attempts to connect: said at warn, with where
                    // and why, as the node is not ready meanwhile; not at
                    // every try.
                    NatsEvent::ClientError(error) if !*connected_tx.borrow() => {
                        unreachable.attempt_failed(error.to_string());
                    }
                    other => info!(event = %other, "nats event"),
                }
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| NodeError::Nats {
            url: sse_protocol::nats_url::redact(&config.nats.url),
            reason: e.to_string(),
        })?;
    let js = jetstream::new(client.clone());
    let settings = FeedSettings {
        subject_prefix: config.nats.subject_prefix.clone(),
        max_bytes: config.history.max_bytes_per_topic,
        max_events: config.history.max_events_per_topic,
        warm_events: config.history.warm_events,
        client_queue_events: config.delivery.client_queue_events,
        path_queue_events: config.delivery.path_queue_events,
        max_event_bytes: config.delivery.max_event_bytes,
        no_progress: Duration::from_secs(config.delivery.no_progress_seconds),
        doze_after: (config.delivery.feed_doze_seconds > 0)
            .then(|| Duration::from_secs(config.delivery.feed_doze_seconds)),
        direct_doze_after: (config.delivery.feed_direct_doze_seconds > 0)
            .then(|| Duration::from_secs(config.delivery.feed_direct_doze_seconds)),
        reconnections,
        budget: Arc::new(history::HistoryBudget::new(config.history.max_bytes)),
    };
    let topics = Topics::new(
        js.clone(),
        settings,
        Duration::from_secs(config.delivery.feed_linger_seconds),
        config.delivery.max_path_feeds_per_topic,
        metrics.clone(),
    );
    let local = listener.local_addr()?;
    let address = shown_address(&config.cluster.advertise_address, local);
    let id = node_id(local.port());
    let node = Node::new(
        id,
        config.clone(),
        metrics,
        js,
        topics.clone(),
        shutdown.clone(),
    );
    info!(node = node.id(), %address, "node starting");

    let background = CancellationToken::new();
    let client_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let node = node.clone();
        let stop = background.clone();
        let shutdown = shutdown.clone();
        let client_gone = client_gone.clone();
        tokio::spawn(async move {
            let ended = watch_connection(connected_rx, stop, |connected| {
                node.set_nats_connected(connected)
            })
            .await;
            if ended == ConnectionWatch::ClientGone {
                tracing::error!(
                    "the nats client's connection task ended; it will not reconnect, so the node drains and stops"
                );
                client_gone.store(true, std::sync::atomic::Ordering::Release);
                shutdown.cancel();
            }
        });
    }
    {
        let node_for_latch = node.clone();
        let refresh = Duration::from_secs(config.nats.topic_refresh_seconds);
        tokio::spawn(
            topics.watch(client.clone(), refresh, background.clone(), move || {
                node_for_latch.set_topics_loaded()
            }),
        );
    }
    let switch = sse_protocol::nats_switch::ServerSwitch::new(
        client.clone(),
        probe_options,
        next_server,
        format!("KV_{}", config.cluster.nodes_bucket),
    );
    // The cluster view hears of a drain at once, not at the next report:
    // a drain may be over before it.
    let drain_started = CancellationToken::new();
    let reporting = tokio::spawn(report::report_loop(
        node.clone(),
        address,
        switch,
        drain_started.clone(),
        background.clone(),
    ));

    let server_drain = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let http_state = http::state(node.clone(), verifier, cors);
    let serving = tokio::spawn(connection::serve(
        listener,
        http_state,
        tls,
        server_drain.clone(),
        server_stop.clone(),
    ));

    shutdown.cancelled().await;
    node.set_draining();
    drain_started.cancel();
    server_drain.cancel();
    for feed in node.topics().feeds() {
        feed.announce_drain();
    }
    let drain = config.drain();
    info!(
        connections = node.connections(),
        drain_seconds = drain.as_secs(),
        "draining"
    );
    let deadline = tokio::time::Instant::now() + drain;
    while node.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    background.cancel();
    let stopped = tokio::time::Instant::now();
    server_stop.cancel();
    match tokio::time::timeout(SERVER_CLOSE_GRACE, serving).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => warn!(error = %join, "http server task failed"),
        Err(_) => warn!("http server did not close in time; exiting anyway"),
    }
    // The topic watch, stopped above, closes every feed; closed here too, in
    // case it has not yet. Their readers end, and their consumers are
    // deleted before the process exits.
    let feeds = node.topics().feeds();
    for feed in &feeds {
        feed.close();
    }
    if !feed::finish_consumer_work(CONSUMER_DELETE_GRACE).await {
        warn!(
            feeds = feeds.len(),
            "not every consumer was deleted in time; NATS removes the rest within 30 s"
        );
    }
    // The report loop, stopped above with the other background work,
    // deletes this node's report as it ends: waited for, or a report being
    // written at the stop (up to its write timeout on a slow NATS) would
    // outlive the process, and the cluster view list a node that left
    // until the report expires (`cluster.node_ttl_seconds`).
    let by = stopped + SERVER_CLOSE_GRACE + CONSUMER_DELETE_GRACE + LAST_FLUSH;
    if tokio::time::timeout_at(by, reporting).await.is_err() {
        warn!(
            "the node's report was not deleted in time; the cluster view drops it when it expires"
        );
    }
    let _ = tokio::time::timeout_at(by, client.flush()).await;
    info!("node stopped");
    if client_gone.load(std::sync::atomic::Ordering::Acquire) {
        return Err(NodeError::NatsClientGone);
    }
    Ok(())
}

/// The address the cluster view shows for this node: `advertise` as given,
/// the listen address when it is empty. An IPv6 address with a port put
/// after it without brackets, as `$(POD_IP):8080` makes on an IPv6 pod
/// (the chart's and the manifests' setting), gets the brackets that tell
/// the port from the address: `[fd00::7]:8080`, not `fd00::7:8080`.
fn shown_address(advertise: &str, local: std::net::SocketAddr) -> String {
    if advertise.is_empty() {
        return local.to_string();
    }
    match advertise.rsplit_once(':') {
        Some((host, port))
            if host.contains(':')
                && host.parse::<std::net::Ipv6Addr>().is_ok()
                && port.parse::<u16>().is_ok() =>
        {
            format!("[{host}]:{port}")
        }
        _ => advertise.to_owned(),
    }
}

/// A node id that stays readable in the cluster view and is unique per
/// process: host name, port and a random suffix.
fn node_id(port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{port}-{:06x}", fastrand::u32(..0xff_ffff))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn an_ipv6_advertise_address_with_a_port_gets_brackets() {
        let local: std::net::SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(shown_address("", local), "[::1]:9000");
        assert_eq!(shown_address("fd00::7:8080", local), "[fd00::7]:8080");
        assert_eq!(shown_address("[fd00::7]:8080", local), "[fd00::7]:8080");
        assert_eq!(shown_address("10.0.0.7:8080", local), "10.0.0.7:8080");
        assert_eq!(
            shown_address("sse-node-0.sse:8080", local),
            "sse-node-0.sse:8080"
        );
        // No port after it: left as it is.
        assert_eq!(shown_address("fd00::7", local), "fd00::7");
    }

    #[tokio::test]
    async fn a_client_gone_for_good_is_told_apart_from_a_stop() {
        let watched = async {
            let (sender, receiver) = watch::channel(false);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = {
                let seen = seen.clone();
                move |connected| seen.lock().unwrap().push(connected)
            };
            let watching =
                tokio::spawn(watch_connection(receiver, CancellationToken::new(), record));
            sender.send_replace(true);
            while !seen.lock().unwrap().contains(&true) {
                tokio::task::yield_now().await;
            }
            // The client drops its event callback, and the sender with it.
            drop(sender);
            assert_eq!(watching.await.unwrap(), ConnectionWatch::ClientGone);
            assert_eq!(seen.lock().unwrap().last(), Some(&false), "no longer ready");

            let (_sender, receiver) = watch::channel(true);
            let stop = CancellationToken::new();
            let watching = tokio::spawn(watch_connection(receiver, stop.clone(), |_| {}));
            stop.cancel();
            assert_eq!(watching.await.unwrap(), ConnectionWatch::Stopped);
        };
        tokio::time::timeout(Duration::from_secs(10), watched)
            .await
            .expect("bounded");
    }
}
