//! The node's shared state: a cheap clone handed to every request.
//!
//! Readiness is a set of latches: NATS connected, JetStream answering
//! through it, topics loaded, not draining. `/readyz` answers 200 only
//! while all four hold.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{config::Config, delivery::merged::MergedFeeds, metrics::Metrics, topics::Topics};

/// Shared state of one running node.
#[derive(Clone)]
pub struct Node(Arc<Inner>);

struct Inner {
    id: String,
    config: Config,
    metrics: Arc<Metrics>,
    jetstream: jetstream::Context,
    topics: Topics,
    jetstream_reads: Arc<Semaphore>,
    /// Resumes waiting for a slot of `jetstream_reads`.
    jetstream_read_waiters: AtomicUsize,
    connections: AtomicUsize,
    nats_connected: AtomicBool,
    /// Since when JetStream has answered through no NATS server the node
    /// can reach, while connected ([`Node::jetstream_unanswered`]).
    jetstream_unanswered_since: Mutex<Option<Instant>>,
    topics_loaded: AtomicBool,
    draining: AtomicBool,
    shutdown: CancellationToken,
    merged_feeds: MergedFeeds,
}

/// How long JetStream may go unanswered through every NATS server the
/// node can reach before the node says it is not ready: longer than a
/// leader election of the report bucket, about as long as a NATS server
/// that stops answering takes to be given up.
pub const JETSTREAM_UNANSWERED_NOT_READY_AFTER: Duration = Duration::from_secs(5);

/// Why the node is not ready, as shown by `/readyz`.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    /// Connected to NATS.
    pub nats_connected: bool,
    /// JetStream answers through a NATS server the node can reach. False
    /// while the node reaches none (not connected), and once none has
    /// answered for [`JETSTREAM_UNANSWERED_NOT_READY_AFTER`] while
    /// connected: the node's NATS server and every other it can reach are
    /// cut off from the cluster's majority (a zone cut off with it, or the
    /// whole cluster without quorum). Its streams stay open, on heartbeats,
    /// but new ones are better sent to a node whose NATS has its quorum.
    pub jetstream_answers: bool,
    /// The first listing of topics succeeded.
    pub topics_loaded: bool,
    /// Shutting down.
    pub draining: bool,
}

impl Readiness {
    /// Whether every latch holds.
    pub fn ready(&self) -> bool {
        self.nats_connected && self.jetstream_answers && self.topics_loaded && !self.draining
    }
}

impl Node {
    /// Assembles the shared state.
    pub fn new(
        id: String,
        config: Config,
        metrics: Arc<Metrics>,
        jetstream: jetstream::Context,
        topics: Topics,
        shutdown: CancellationToken,
    ) -> Self {
        let reads = config.history.max_concurrent_jetstream_reads;
        Self(Arc::new(Inner {
            id,
            config,
            metrics,
            jetstream,
            topics,
            jetstream_reads: Arc::new(Semaphore::new(reads)),
            jetstream_read_waiters: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            nats_connected: AtomicBool::new(false),
            jetstream_unanswered_since: Mutex::new(None),
            topics_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown,
            merged_feeds: MergedFeeds::default(),
        }))
    }

    /// This node's id in the cluster view.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.0.jetstream
    }

    /// The topic registry.
    pub fn topics(&self) -> &Topics {
        &self.0.topics
    }

    /// The merged feeds of sets of topics that streams park on.
    pub(crate) fn merged_feeds(&self) -> &MergedFeeds {
        &self.0.merged_feeds
    }

    /// Whether shutdown has begun; a plain atomic load.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn shutdown_cancelled(&self) {
        self.0.shutdown.cancelled().await
    }

    /// Waits for a slot to read JetStream for a resume.
    pub async fn jetstream_read_permit(&self) -> OwnedSemaphorePermit {
        let reads = self.0.jetstream_reads.clone();
        if let Ok(permit) = reads.clone().try_acquire_owned() {
            return permit;
        }
        // Every slot is taken: the resume waits, and says so.
        self.0.metrics.jetstream_read_waits.inc();
        let _waiting = Waiting::new(&self.0.jetstream_read_waiters);
        reads
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Whether a resume waits for a slot to read JetStream: one that has
    /// held its slot for a turn gives it up (see `delivery`).
    pub fn jetstream_reads_wanted(&self) -> bool {
        self.0.jetstream_read_waiters.load(Ordering::Relaxed) > 0
    }

    /// Takes a connection slot, unless the node is full.
    pub fn try_open_connection(&self) -> bool {
        let max = self.0.config.http.max_connections;
        self.0
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a stream opened in the slot [`Self::try_open_connection`]
    /// took; [`Self::connection_closed`] gives the slot back.
    pub fn connection_opened(&self) {
        self.0.metrics.clients_connected.inc();
        self.0.metrics.connections_opened.inc();
    }

    /// Gives back a slot no stream was opened in (one refused after it was
    /// taken).
    pub fn give_back_connection(&self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Gives an opened stream's connection slot back.
    pub fn connection_closed(&self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.clients_connected.dec();
    }

    /// Open SSE streams.
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::Acquire)
    }

    /// Records the NATS connection state.
    pub fn set_nats_connected(&self, connected: bool) {
        self.0.nats_connected.store(connected, Ordering::Release);
        self.0.metrics.nats_connected.set(i64::from(connected));
        if connected {
            // A new connection may be to a server with its quorum: judged
            // afresh by the next report.
            self.jetstream_answered();
        }
    }

    /// JetStream answered through the node's NATS server.
    pub fn jetstream_answered(&self) {
        *self.unanswered_since() = None;
    }

    /// JetStream answered through none of the NATS servers the node can
    /// reach, while it is connected; counted from the first such time.
    pub fn jetstream_unanswered(&self) {
        self.unanswered_since().get_or_insert_with(Instant::now);
    }

    fn unanswered_since(&self) -> MutexGuard<'_, Option<Instant>> {
        self.0
            .jetstream_unanswered_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Latches "topics loaded".
    pub fn set_topics_loaded(&self) {
        self.0.topics_loaded.store(true, Ordering::Release);
    }

    /// Latches "draining".
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// The readiness latches.
    pub fn readiness(&self) -> Readiness {
        let nats_connected = self.0.nats_connected.load(Ordering::Acquire);
        Readiness {
            nats_connected,
            jetstream_answers: nats_connected
                && self
                    .unanswered_since()
                    .is_none_or(|since| since.elapsed() < JETSTREAM_UNANSWERED_NOT_READY_AFTER),
            topics_loaded: self.0.topics_loaded.load(Ordering::Acquire),
            draining: self.is_draining(),
        }
    }
}

/// Counts one waiter in `count` for as long as it lives, a wait given up
/// (the stream ended) included.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
