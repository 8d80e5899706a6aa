//! The consumer probe: what a client of JetStream itself sees, with no node
//! in between.
//!
//! An ordered pull consumer, configured as a node's feed configures its own
//! (new messages only, 4 s pulls), reads the run's topic in the
//! coordinator and times publish → receipt for every event. Set beside the
//! node's end-to-end latency in the same run, it splits the tail: what
//! JetStream and its consumer protocol add (storing, batching of pulls),
//! against what the node adds (wake-ups, queues, pacing, writes). The probe
//! is a second consumer on the stream, so NATS works more in a probed run:
//! those runs are named apart and their cost is not for comparison.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use futures_util::StreamExt as _;

use crate::{
    histogram::Histogram,
    sse::{Event, parse_payload},
    worker::now_us,
};

/// A running probe; its latencies so far.
pub struct Probe {
    latencies: Arc<Mutex<Histogram>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Starts reading new messages of stream `SSE_<topic>`.
    pub async fn start(url: &str, topic: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("probe cannot connect to nats at {url}"))?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(format!("SSE_{topic}"))
            .await
            .context("probe: no stream")?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::New,
                max_expires: Duration::from_secs(4),
                ..Default::default()
            })
            .await
            .context("probe: cannot create its consumer")?;
        let mut messages = consumer.messages().await.context("probe: no messages")?;
        let latencies = Arc::new(Mutex::new(Histogram::default()));
        let recorded = latencies.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let Event::Payload { sent_us, .. } = parse_payload(&message.payload)
                    && let Ok(mut h) = recorded.lock()
                {
                    h.record(now_us().saturating_sub(sent_us));
                }
            }
        });
        Ok(Self { latencies, task })
    }

    /// Stops the probe; its latencies, µs.
    pub fn finish(self) -> Histogram {
        self.task.abort();
        self.latencies.lock().map(|h| h.clone()).unwrap_or_default()
    }
}
