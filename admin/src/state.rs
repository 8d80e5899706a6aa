//! The shared application state: a cheap clone around one `Arc`.
//!
//! It holds the NATS client and JetStream context, the caches that only save
//! round trips (stream facts for publishing, the node-report bucket handle,
//! the last overview snapshot) and the metrics. Nothing in it is a source of
//! truth: dropping every cache changes no answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use async_nats::jetstream::{self, kv};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{Config, error::Error, metrics::Metrics, overview::Overview, publish::StreamFacts};

/// Shared state handed to every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The validated configuration.
    pub config: Config,
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream, with the configured request time-out.
    pub jetstream: jetstream::Context,
    /// Per-stream facts used when publishing, keyed by stream name.
    pub streams: Mutex<HashMap<String, StreamFacts>>,
    /// The node-report bucket, opened (or created) on first use.
    pub nodes_bucket: OnceCell<kv::Store>,
    /// The last overview snapshot, shared by all dashboard viewers.
    pub overview: tokio::sync::Mutex<Option<(Instant, Arc<Overview>)>>,
    /// Slots for open dashboard streams.
    pub dashboard_slots: Arc<Semaphore>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state around a (possibly not yet connected) client.
    pub fn new(config: Config, client: async_nats::Client, shutdown: CancellationToken) -> Self {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout())
            .build(client.clone());
        let slots = config.admin.max_dashboard_streams;
        Self(Arc::new(Inner {
            config,
            client,
            jetstream,
            streams: Mutex::new(HashMap::new()),
            nodes_bucket: OnceCell::new(),
            overview: tokio::sync::Mutex::new(None),
            dashboard_slots: Arc::new(Semaphore::new(slots)),
            metrics: Metrics::new(),
            shutdown,
        }))
    }

    /// Whether the NATS connection is up.
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// JetStream, or 503 at once when NATS is not connected (rather than
    /// making the caller wait for a time-out).
    pub fn jetstream(&self) -> Result<&jetstream::Context, Error> {
        if self.nats_connected() {
            Ok(&self.jetstream)
        } else {
            Err(Error::NatsUnavailable("not connected to nats".to_owned()))
        }
    }

    /// The configured subject prefix.
    pub fn prefix(&self) -> &str {
        &self.config.nats.subject_prefix
    }
}
