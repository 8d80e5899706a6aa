//! Which topics exist: discovered from JetStream, never configured.
//!
//! A topic exists exactly when its stream `SSE_<topic>` exists. The registry
//! lists every such stream at start-up (the "topics loaded" readiness latch),
//! follows JetStream's stream created/deleted advisories to react at once,
//! and re-lists every `nats.topic_refresh_seconds` in case an advisory was
//! missed while NATS was away. A request for a topic the registry does not
//! know asks JetStream once, so a topic created a moment ago is served.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream;
use futures_util::{StreamExt, TryStreamExt};
use sse_protocol::{Access, TopicName};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    feed::{Feed, FeedSettings, is_stream_not_found, stream_access, stream_epoch},
    metrics::Metrics,
};

/// How long a served topic's stream must stay "not found" before the
/// topic is dropped without a deletion advisory.
const GONE_CONFIRM_DELAY: Duration = Duration::from_secs(2);

/// Errors looking a topic up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No stream for the topic.
    #[error("topic {0:?} does not exist")]
    NotFound(String),
    /// JetStream did not answer.
    #[error("jetstream is unavailable: {0}")]
    Unavailable(String),
}

/// The topics this node serves, each with its feed.
#[derive(Clone)]
pub struct Topics(Arc<Inner>);

struct Inner {
    feeds: RwLock<HashMap<TopicName, Arc<Feed>>>,
    js: jetstream::Context,
    settings: FeedSettings,
    metrics: Arc<Metrics>,
}

impl Topics {
    /// An empty registry.
    pub fn new(js: jetstream::Context, settings: FeedSettings, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            feeds: RwLock::new(HashMap::new()),
            js,
            settings,
            metrics,
        }))
    }

    /// The feed of a topic, asking JetStream if the topic is not known yet.
    pub async fn get(&self, topic: &TopicName) -> Result<Arc<Feed>, LookupError> {
        if let Some(feed) = self.known(topic) {
            return Ok(feed);
        }
        self.refresh(topic).await?;
        self.known(topic)
            .ok_or_else(|| LookupError::NotFound(topic.to_string()))
    }

    /// Like [`Self::get`], but when the client's id names another epoch than
    /// the feed's, asks JetStream first: this node may not have seen the
    /// stream recreated yet, and must not answer a current id with `reset`.
    pub async fn get_current(
        &self,
        topic: &TopicName,
        claimed_epoch: Option<&str>,
    ) -> Result<Arc<Feed>, LookupError> {
        let feed = self.get(topic).await?;
        match claimed_epoch {
            Some(epoch) if epoch != feed.epoch => {
                self.refresh(topic).await?;
                self.known(topic)
                    .ok_or_else(|| LookupError::NotFound(topic.to_string()))
            }
            _ => Ok(feed),
        }
    }

    fn known(&self, topic: &TopicName) -> Option<Arc<Feed>> {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        feeds.get(topic).filter(|f| !f.is_closed()).cloned()
    }

    /// Every feed, for reporting.
    pub fn feeds(&self) -> Vec<Arc<Feed>> {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        feeds.values().cloned().collect()
    }

    /// Brings one topic in line with JetStream: starts, replaces or drops
    /// its feed.
    pub async fn refresh(&self, topic: &TopicName) -> Result<(), LookupError> {
        match self.0.js.get_stream(topic.stream_name()).await {
            Ok(stream) => {
                self.adopt(topic.clone(), stream.cached_info());
                Ok(())
            }
            Err(e) if is_stream_not_found(&e) => {
                if self.known(topic).is_some() {
                    // While a stream leader is being elected JetStream may
                    // answer "not found" for a stream that exists. A served
                    // topic is dropped on a deletion advisory, or when the
                    // answer holds on a second look.
                    self.confirm_gone(topic.clone());
                }
                Err(LookupError::NotFound(topic.to_string()))
            }
            Err(e) => Err(LookupError::Unavailable(e.to_string())),
        }
    }

    /// Drops `topic` if its stream is still not found a moment later.
    fn confirm_gone(&self, topic: TopicName) {
        let topics = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GONE_CONFIRM_DELAY).await;
            match topics.0.js.get_stream(topic.stream_name()).await {
                Err(e) if is_stream_not_found(&e) => topics.drop_topic(&topic),
                Ok(stream) => topics.adopt(topic, stream.cached_info()),
                Err(_) => {}
            }
        });
    }

    fn adopt(&self, topic: TopicName, info: &jetstream::stream::Info) {
        let epoch = stream_epoch(info);
        let mut feeds = self.0.feeds.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = feeds.get(&topic) {
            let access = stream_access(info);
            // A topic that turns private restarts its feed, which cuts the
            // clients that read it without a token.
            let turned_private = access == Access::Private && current.access() == Access::Public;
            if current.epoch == epoch && !current.is_closed() && !turned_private {
                current.set_access(access);
                return;
            }
            if turned_private {
                info!(%topic, "topic turned private; restarting its feed");
            }
            current.close();
        }
        let feed = Feed::start(
            topic.clone(),
            info,
            self.0.js.clone(),
            &self.0.settings,
            self.0.metrics.clone(),
        );
        feeds.insert(topic, feed);
    }

    fn drop_topic(&self, topic: &TopicName) {
        let removed = self
            .0
            .feeds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        if let Some(feed) = removed {
            feed.close();
            let _ = self
                .0
                .metrics
                .history_bytes
                .remove_label_values(&[topic.as_str()]);
            info!(%topic, "topic removed");
        }
    }

    /// Lists every topic stream and reconciles the feeds with it.
    pub async fn load_all(&self) -> Result<usize, async_nats::Error> {
        let mut infos = Vec::new();
        let mut list = self.0.js.streams();
        while let Some(info) = list.try_next().await? {
            if let Some(topic) = TopicName::from_stream_name(&info.config.name) {
                infos.push((topic, info));
            }
        }
        let present: Vec<TopicName> = infos.iter().map(|(t, _)| t.clone()).collect();
        for (topic, info) in &infos {
            self.adopt(topic.clone(), info);
        }
        let stale: Vec<TopicName> = {
            let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
            feeds
                .keys()
                .filter(|t| !present.contains(t))
                .cloned()
                .collect()
        };
        // A listing may leave out streams whose leader is being elected:
        // ask for each one before dropping it.
        for topic in stale {
            let _ = self.refresh(&topic).await;
        }
        Ok(present.len())
    }

    /// Follows stream advisories and re-lists periodically until `stop`.
    /// `loaded` is called after the first successful listing.
    pub async fn watch(
        self,
        client: async_nats::Client,
        refresh: Duration,
        stop: CancellationToken,
        loaded: impl Fn(),
    ) {
        // Subjects are `$JS.EVENT.ADVISORY.STREAM.<CREATED|DELETED|UPDATED>.<stream>`;
        // a wildcard cannot match part of a token, so filter by name below.
        let mut advisories = match client.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*").await {
            Ok(sub) => Some(sub),
            Err(error) => {
                warn!(%error, "cannot follow stream advisories; relying on re-listing");
                None
            }
        };
        let mut first = true;
        let mut ticker = tokio::time::interval(refresh);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {
                    match self.load_all().await {
                        Ok(count) => {
                            if first {
                                info!(topics = count, "topics loaded");
                                loaded();
                                first = false;
                            }
                        }
                        Err(error) => {
                            warn!(%error, "cannot list topics");
                            // Retry sooner than the refresh period until the
                            // first listing has succeeded.
                            if first {
                                ticker.reset_after(Duration::from_millis(500));
                            }
                        }
                    }
                }
                Some(message) = async {
                    match advisories.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // `$JS.EVENT.ADVISORY.STREAM.<ACTION>.<stream>`; leader
                    // elections and the like change nothing here.
                    let mut tokens = message.subject.as_str().rsplit('.');
                    let (stream, action) = (tokens.next().unwrap_or_default(), tokens.next());
                    if let Some(topic) = TopicName::from_stream_name(stream) {
                        match action {
                            Some("DELETED") => self.drop_topic(&topic),
                            Some("CREATED" | "UPDATED") => {
                                let _ = self.refresh(&topic).await;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for feed in self.feeds() {
            feed.close();
        }
    }
}
