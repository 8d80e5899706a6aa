//! Which topics exist, and which of them this node reads.
//!
//! A topic exists exactly when its stream `SSE_<topic>` exists. The registry
//! learns every topic's facts (its stream's epoch and access) from a listing
//! at start-up (the "topics loaded" readiness latch), from JetStream's
//! stream created/deleted/updated advisories, and from a re-listing of
//! stream names every `nats.topic_refresh_seconds` in case an advisory was
//! missed. Knowing a topic costs a few bytes, never a consumer or history.
//!
//! A topic's [`Feed`] runs only while this node has clients for it: the
//! first request for the topic (live or resuming) starts it, from fresh
//! stream facts, and it stops `delivery.feed_linger_seconds` after the last
//! client left. Concurrent first requests share one start. A request holds
//! a [`FeedLease`] from the look-up on, so a feed is never stopped between
//! a client finding it and attaching to it.
//!
//! Sub-topic interest: a client that reads exactly one concrete path (a
//! per-user channel such as `users.42`) gets a *path feed*, which reads
//! only that path from JetStream (a consumer filtered on its subject), so
//! a node whose clients read a few paths of a busy topic does not pay for
//! the whole topic. Path feeds are per path, never per client, and at most
//! `delivery.max_path_feeds_per_topic` run per topic. While the topic's
//! whole feed runs anyway (a client reads all of it or a wildcard), new
//! path clients are served by the whole feed. Past the cap the whole feed
//! starts and the path feeds retire: their clients move to it from where
//! they stand, so a topic read at many paths costs one consumer.
//!
//! Each listing also trims every live feed's history below its stream's
//! first sequence, and drops it when events were deleted from within the
//! stream (a path's purge), so events purged, deleted or expired from
//! JetStream are not served from memory for longer than
//! `nats.topic_refresh_seconds`, and
//! has a dozing feed whose stream is past its head look at JetStream, so a
//! publish its subscriptions missed waits at most that long.
//!
//! Every live feed's history counts against one node-wide budget
//! (`history.max_bytes`); while the total is over it, the coldest topic's
//! history (the one whose last event is oldest) is evicted first, and
//! resumes that needed it read JetStream instead.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, stream::Info};
use futures_util::{StreamExt, TryStreamExt};
use sse_protocol::{Access, TopicName, nats_switch::answered_with_quorum};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    feed::{
        Feed, FeedLease, FeedSettings, is_stream_not_found, republishes_live, stream_access,
        stream_epoch, stream_info,
    },
    metrics::Metrics,
};

/// How long a served topic's stream must stay "not found" before the
/// topic is dropped without a deletion advisory.
const GONE_CONFIRM_DELAY: Duration = Duration::from_secs(2);

/// How long the open streams of a deleted topic wait for it to be created
/// again (a deploy that recreates its topics) before they end with
/// `topic_deleted`.
const RECREATE_GRACE: Duration = Duration::from_secs(1);

/// Past this many topics to ask JetStream about one by one (new ones and
/// ones with live feeds), a re-listing asks for every stream's facts in
/// one listing instead, unless they are fewer than one in
/// [`STREAMS_PER_TOPIC_ASKED`] of all topic streams.
const FULL_LISTING_ABOVE: usize = 64;

/// What one stream's info costs NATS against its share of a full listing,
/// about 16 to 1 (360 µs against 22 µs at 3,000 streams,
/// `bench/nats/listing_cost.py`; the listing's share grows with the number
/// of streams). A node that reads fewer than one topic in this many asks
/// about those alone: it does not pay NATS for every topic of the cluster.
const STREAMS_PER_TOPIC_ASKED: usize = 16;

/// Whether a re-listing that needs the facts of `asked` topics, of
/// `streams` topic streams in all, lists every stream's facts at once
/// rather than asking about each of those topics.
fn lists_every_stream(asked: usize, streams: usize) -> bool {
    asked > FULL_LISTING_ABOVE && asked * STREAMS_PER_TOPIC_ASKED > streams
}

/// Topics asked about at once in a re-listing, and how long they may take
/// in all: what is not asked by then waits for the next re-listing, so a
/// slow NATS holds the registry's loop (its sweeps, its advisories) no
/// longer than that.
const ASKED_AT_ONCE: usize = 8;
const ASKING_AT_MOST: Duration = Duration::from_secs(10);

/// Feeds running in `feeds`.
fn count_feeds(feeds: &HashMap<TopicName, TopicFeeds>) -> i64 {
    feeds.values().map(|t| t.all().count() as i64).sum()
}

/// How often lingering feeds are stopped and the history budget enforced.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

/// What the registry knows of a topic without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicFacts {
    epoch: String,
    access: Access,
}

impl TopicFacts {
    fn of(info: &Info) -> Self {
        Self {
            epoch: stream_epoch(info),
            access: stream_access(info),
        }
    }
}

/// The topic registry and this node's live feeds.
#[derive(Clone)]
pub struct Topics(Arc<Inner>);

/// The feeds running for one topic.
#[derive(Default)]
struct TopicFeeds {
    whole: Option<Arc<Feed>>,
    paths: HashMap<Box<str>, Arc<Feed>>,
}

impl TopicFeeds {
    fn all(&self) -> impl Iterator<Item = &Arc<Feed>> {
        self.whole.iter().chain(self.paths.values())
    }

    fn is_empty(&self) -> bool {
        self.whole.is_none() && self.paths.is_empty()
    }

    /// The running feed that serves a client of `path` (one concrete path,
    /// or `None` for anything wider), if any: the whole feed if it runs,
    /// else the path's own.
    fn serving(&self, path: Option<&str>) -> Option<&Arc<Feed>> {
        let whole = self.whole.as_ref().filter(|f| !f.is_closed());
        match path {
            None => whole,
            Some(path) => whole.or_else(|| self.paths.get(path).filter(|f| !f.is_closed())),
        }
    }

    /// Which feed to start for a client of `path`: its own path feed while
    /// the topic has fewer than `max_paths`, else the whole topic's.
    fn to_start(&self, path: Option<&str>, max_paths: usize) -> Option<Box<str>> {
        path.filter(|_| self.paths.len() < max_paths)
            .map(Into::into)
    }
}

struct Inner {
    facts: RwLock<HashMap<TopicName, TopicFacts>>,
    feeds: RwLock<HashMap<TopicName, TopicFeeds>>,
    max_path_feeds: usize,
    /// Feed starts under way, so a burst of first requests for one topic
    /// asks JetStream once.
    starting: Mutex<HashMap<TopicName, Arc<OnceCell<Info>>>>,
    js: jetstream::Context,
    settings: FeedSettings,
    linger: Duration,
    metrics: Arc<Metrics>,
}

impl Topics {
    /// An empty registry; feeds stop `linger` after their last client.
    pub fn new(
        js: jetstream::Context,
        settings: FeedSettings,
        linger: Duration,
        max_path_feeds: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics
            .history_budget_bytes
            .set(i64::try_from(settings.budget.max_bytes()).unwrap_or(i64::MAX));
        Self(Arc::new(Inner {
            facts: RwLock::new(HashMap::new()),
            feeds: RwLock::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            max_path_feeds,
            js,
            settings,
            linger,
            metrics,
        }))
    }

    /// A lease on the feed that serves a client of `path` in `topic` (one
    /// concrete path, or `None` for anything wider), starting a feed if
    /// this node has none; asks JetStream whether the topic exists when it
    /// has to.
    pub async fn get(
        &self,
        topic: &TopicName,
        path: Option<&str>,
    ) -> Result<FeedLease, LookupError> {
        // The feeds of a topic just deleted wait out `RECREATE_GRACE`
        // without serving anyone new.
        if self.knows(topic)
            && let Some(lease) = self.live(topic, path)
        {
            return Ok(lease);
        }
        self.with_info(topic, |info| self.start_or_lease(topic, path, info))
            .await
    }

    /// Whether `topic` exists and who may read it, without starting a
    /// feed: a request refused for its token, or by a full node, must cost
    /// the node no reader. Every topic's facts come with the listing; a
    /// topic created since it is asked of JetStream, and its facts kept.
    pub async fn access(&self, topic: &TopicName) -> Result<Access, LookupError> {
        if let Some(facts) = self
            .0
            .facts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(facts.access);
        }
        self.with_info(topic, |info| {
            let facts = TopicFacts::of(info);
            let access = facts.access;
            self.0
                .facts
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(topic.clone())
                .or_insert(facts);
            access
        })
        .await
    }

    /// Asks JetStream for `topic`'s stream info, once for all the requests
    /// that want it at the same time, and hands it to `then` while later
    /// requests still share it.
    async fn with_info<T>(
        &self,
        topic: &TopicName,
        then: impl FnOnce(&Info) -> T,
    ) -> Result<T, LookupError> {
        // A request made while the client is reconnecting waits for the
        // connection, not for JetStream: without this, each new stream on
        // a node cut off from NATS would hang for the whole call timeout
        // before its 503, though the answer is known now.
        self.connected()?;
        let cell = {
            let mut starting = self.0.starting.lock().unwrap_or_else(|p| p.into_inner());
            starting.entry(topic.clone()).or_default().clone()
        };
        let fetched = cell
            .get_or_try_init(|| async {
                match stream_info(&self.0.js, &topic.stream_name()).await {
                    Ok(stream) => Ok(stream.cached_info().clone()),
                    Err(e) => Err(e),
                }
            })
            .await;
        let info = match fetched {
            Ok(info) => info,
            Err(e) => {
                let not_found = e
                    .downcast_ref::<jetstream::context::GetStreamError>()
                    .is_some_and(is_stream_not_found);
                self.forget_start(topic, &cell);
                if not_found {
                    if self.knows(topic) {
                        // While a stream leader is being elected JetStream may
                        // answer "not found" for a stream that exists. A known
                        // topic is dropped on a deletion advisory, or when the
                        // answer holds on a second look.
                        self.confirm_gone(topic.clone());
                    }
                    return Err(LookupError::NotFound(topic.to_string()));
                }
                return Err(LookupError::Unavailable(e.to_string()));
            }
        };
        let out = then(info);
        self.forget_start(topic, &cell);
        Ok(out)
    }

    /// Like [`Self::get`], but when the client's id names another epoch than
    /// the feed's, asks JetStream first: this node may not have seen the
    /// stream recreated yet, and must not answer a current id with `reset`.
    pub async fn get_current(
        &self,
        topic: &TopicName,
        path: Option<&str>,
        claimed_epoch: Option<&str>,
    ) -> Result<FeedLease, LookupError> {
        let lease = self.get(topic, path).await?;
        match claimed_epoch {
            Some(epoch) if epoch != lease.epoch => {
                drop(lease);
                self.refresh(topic).await?;
                self.get(topic, path).await
            }
            _ => Ok(lease),
        }
    }

    /// Checks a client's cursor `seq` on `lease`'s topic, of the feed's
    /// epoch, against the stream when it stands past what the stream is
    /// known to hold ([`crate::feed::Feed::holds_up_to`]). That is mostly
    /// news this node has not read yet, but may be a sequence the
    /// stream does not hold: an id made up, or a stream whose server's disk
    /// was restored from a backup, which keeps the stream's creation time
    /// (so its epoch) while its sequences go back, and whose new events
    /// would take numbers the client has already seen. Returns the lease to
    /// serve from and, in that case (two answers 2 s apart say so), the
    /// stream's last sequence: the client gets a `reset`. A feed that is
    /// itself past that sequence read the stream before it went back; it is
    /// stopped and a new one leased. Without an answer from JetStream the
    /// cursor is taken as it is.
    pub async fn confirm_cursor(
        &self,
        topic: &TopicName,
        path: Option<&str>,
        lease: FeedLease,
        seq: u64,
    ) -> Result<(FeedLease, Option<u64>), LookupError> {
        // Without a NATS connection there is no answer to wait for: the
        // cursor is taken as it is, as when JetStream does not answer.
        if seq <= lease.holds_up_to() || self.connected().is_err() {
            return Ok((lease, None));
        }
        let mut last = 0;
        for ask in 0..2 {
            if ask > 0 {
                // A stream leader just elected may answer before it has
                // applied all it holds: act on "behind" only when it holds
                // a moment later, as for a stream gone or recreated.
                tokio::time::sleep(GONE_CONFIRM_DELAY).await;
                if seq <= lease.holds_up_to() {
                    return Ok((lease, None));
                }
            }
            let answer = match stream_info(&self.0.js, &topic.stream_name()).await {
                // A copy cut off from its leader may be behind the cursor
                // without the stream being so.
                Ok(stream) if !answered_with_quorum(stream.cached_info()) => {
                    debug!(%topic, seq, "a cursor past the feed's head checked against a copy without its leader; taken as it is");
                    return Ok((lease, None));
                }
                Ok(stream) if stream_epoch(stream.cached_info()) == lease.epoch => {
                    stream.cached_info().state.last_sequence
                }
                Ok(_) => return Ok((lease, None)),
                Err(error) => {
                    debug!(%topic, seq, %error, "cannot check a cursor past the feed's head");
                    return Ok((lease, None));
                }
            };
            if answer >= seq {
                lease.held(answer);
                return Ok((lease, None));
            }
            last = answer;
        }
        if last >= lease.head() {
            return Ok((lease, Some(last)));
        }
        warn!(%topic, head = lease.head(), stream_last = last, "topic's stream went back to an earlier sequence; restarting its feeds");
        drop(lease);
        self.stop_feeds(topic);
        let lease = self.get(topic, path).await?;
        // A stream that moved on again meanwhile is the next check's.
        let behind = (lease.head() <= last).then_some(last);
        Ok((lease, behind))
    }

    /// A lease on the running feed that serves `path`, if there is one.
    /// Taken under the registry's lock, so the sweeper cannot stop the feed
    /// meanwhile.
    fn live(&self, topic: &TopicName, path: Option<&str>) -> Option<FeedLease> {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        feeds.get(topic)?.serving(path).map(|f| f.lease())
    }

    /// Whether the registry holds `topic`: a deleted topic is dropped once
    /// its stream stays not found.
    pub(crate) fn knows(&self, topic: &TopicName) -> bool {
        let facts = self.0.facts.read().unwrap_or_else(|p| p.into_inner());
        facts.contains_key(topic)
    }

    fn forget_start(&self, topic: &TopicName, cell: &Arc<OnceCell<Info>>) {
        let mut starting = self.0.starting.lock().unwrap_or_else(|p| p.into_inner());
        if starting.get(topic).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            starting.remove(topic);
        }
    }

    /// Leases the running feed that serves `path`, or starts one from
    /// `info`.
    fn start_or_lease(&self, topic: &TopicName, path: Option<&str>, info: &Info) -> FeedLease {
        let facts = TopicFacts::of(info);
        self.0
            .facts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), facts.clone());
        // Feeds of a stream deleted and created again, before the advisory
        // that says so: their clients come back to a `reset`. Stopped once
        // the facts stand, so that their streams see the topic known.
        let stale = {
            let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
            feeds
                .get(topic)
                .into_iter()
                .flat_map(TopicFeeds::all)
                .any(|feed| feed.epoch != facts.epoch)
        };
        if stale {
            self.stop_feeds(topic);
        }
        let mut feeds = self.0.feeds.write().unwrap_or_else(|p| p.into_inner());
        let entry = feeds.entry(topic.clone()).or_default();
        if let Some(feed) = entry.serving(path) {
            return feed.lease();
        }
        let own_path = entry.to_start(path, self.0.max_path_feeds);
        let feed = Feed::start(
            topic.clone(),
            own_path.as_deref(),
            info,
            self.0.js.clone(),
            &self.0.settings,
            self.0.metrics.clone(),
        );
        let lease = feed.lease();
        match own_path {
            Some(path) => {
                entry.paths.insert(path, feed);
            }
            None => {
                if path.is_some() {
                    // Started because the topic has as many path feeds as
                    // it may: its paths are read widely on this node, and
                    // one consumer of the whole topic is cheaper than one
                    // per path (each holds some 100 KiB across the node
                    // and NATS, and pulls on its own). Their clients move.
                    // A whole feed started for a wider read leaves them:
                    // it stops when that read ends, and they would keep it.
                    for (_, retired) in entry.paths.drain() {
                        retired.retire(&feed);
                        self.0.metrics.feed_stops.inc();
                    }
                }
                entry.whole = Some(feed);
            }
        }
        self.0.metrics.feed_starts.inc();
        self.0.metrics.feeds_live.set(count_feeds(&feeds));
        lease
    }

    /// Every running feed.
    pub fn feeds(&self) -> Vec<Arc<Feed>> {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        feeds.values().flat_map(|t| t.all().cloned()).collect()
    }

    /// Topics known to exist.
    pub fn known(&self) -> usize {
        self.0.facts.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Fails at once while the NATS client is reconnecting: a JetStream
    /// request would wait for the connection, and each new stream on a node
    /// cut off from NATS would hang for the whole call timeout before its
    /// 503, though the answer is known now.
    fn connected(&self) -> Result<(), LookupError> {
        if self.0.js.client().connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(LookupError::Unavailable(
                "this node is not connected to NATS (reconnecting)".to_string(),
            ))
        }
    }

    /// Brings one topic in line with JetStream.
    pub async fn refresh(&self, topic: &TopicName) -> Result<(), LookupError> {
        self.connected()?;
        match stream_info(&self.0.js, &topic.stream_name()).await {
            Ok(stream) => {
                self.adopt(topic.clone(), stream.cached_info());
                Ok(())
            }
            Err(e)
                if e.downcast_ref::<jetstream::context::GetStreamError>()
                    .is_some_and(is_stream_not_found) =>
            {
                if self.knows(topic) {
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
            match stream_info(&topics.0.js, &topic.stream_name()).await {
                Ok(stream) => topics.adopt(topic, stream.cached_info()),
                Err(e)
                    if e.downcast_ref::<jetstream::context::GetStreamError>()
                        .is_some_and(is_stream_not_found) =>
                {
                    topics.drop_topic(&topic)
                }
                Err(_) => {}
            }
        });
    }

    /// Records what JetStream says of a topic. A running feed of another
    /// epoch is closed (its clients come back and get `reset`), and so is one
    /// whose topic turned private (its clients come back with a token).
    fn adopt(&self, topic: TopicName, info: &Info) {
        let facts = TopicFacts::of(info);
        let stale = {
            let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
            let mut stale = false;
            for current in feeds.get(&topic).into_iter().flat_map(TopicFeeds::all) {
                let turned_private =
                    facts.access == Access::Private && current.access() == Access::Public;
                if current.epoch != facts.epoch || turned_private {
                    if turned_private {
                        info!(%topic, "topic turned private; stopping its feeds");
                    }
                    stale = true;
                } else {
                    current.set_access(facts.access);
                    current
                        .set_republished(republishes_live(info, &self.0.settings.subject_prefix));
                    current.forget_before(info.state.first_sequence);
                    current.forget_deleted(info);
                    current.listed(info.state.last_sequence);
                }
            }
            stale
        };
        // The facts first: a stream ended here tells `topic_deleted` from a
        // new epoch by whether its topic is known.
        self.0
            .facts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), facts);
        if stale {
            self.stop_feeds(&topic);
        }
    }

    /// Stops every feed of `topic`; its clients come back through resume.
    fn stop_feeds(&self, topic: &TopicName) {
        let removed = {
            let mut feeds = self.0.feeds.write().unwrap_or_else(|p| p.into_inner());
            let removed = feeds.remove(topic);
            self.0.metrics.feeds_live.set(count_feeds(&feeds));
            removed
        };
        for feed in removed.iter().flat_map(TopicFeeds::all) {
            feed.close();
            self.0.metrics.feed_stops.inc();
        }
        self.forget_feed_labels(topic);
    }

    fn forget_feed_labels(&self, topic: &TopicName) {
        let metrics = &self.0.metrics;
        let _ = metrics.history_bytes.remove_label_values(&[topic.as_str()]);
        let _ = metrics.feed_events.remove_label_values(&[topic.as_str()]);
        self.forget_unread_topic(topic);
    }

    /// Drops `topic`'s subscriber gauge once no client reads it and the
    /// node holds no feed of it, so that a deployment whose topics come and
    /// go (one per session, per tenant) does not keep a series for every
    /// topic ever read until the node restarts.
    pub fn forget_unread_topic(&self, topic: &TopicName) {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        let subscribers = &self.0.metrics.topic_subscribers;
        if !feeds.contains_key(topic)
            && subscribers
                .get_metric_with_label_values(&[topic.as_str()])
                .is_ok_and(|gauge| gauge.get() == 0)
        {
            let _ = subscribers.remove_label_values(&[topic.as_str()]);
        }
    }

    /// A deletion advisory: new requests for `topic` get 404 at once, and
    /// its open streams wait [`RECREATE_GRACE`] for it to be created again.
    /// Created again, its new stream's facts close the old feeds, and their
    /// clients come back to a `reset` (`stream_recreated`); else the feeds
    /// stop and their clients get `topic_deleted`.
    fn deleted(&self, topic: TopicName) {
        let known = self
            .0
            .facts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&topic)
            .is_some();
        if known {
            info!(%topic, "topic deleted");
        }
        let topics = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RECREATE_GRACE).await;
            if !topics.knows(&topic) {
                topics.drop_topic(&topic);
            }
        });
    }

    /// Forgets `topic` and stops its feeds. Said once: a deletion is heard
    /// of several ways (its advisory, a listing, a look-up's "not found").
    fn drop_topic(&self, topic: &TopicName) {
        let known = self
            .0
            .facts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic)
            .is_some();
        self.stop_feeds(topic);
        if known {
            info!(%topic, "topic removed");
        }
    }

    /// Lists every topic stream and reconciles the registry with it.
    pub async fn load_all(&self) -> Result<usize, async_nats::Error> {
        let mut present = HashMap::new();
        // Not async-nats's `streams()`, whose pages overlap while a NATS
        // server is down.
        for info in sse_protocol::stream_list::stream_infos(&self.0.js).await? {
            if let Some(topic) = TopicName::from_stream_name(&info.config.name) {
                present.insert(topic, info);
            }
        }
        for (topic, info) in &present {
            self.adopt(topic.clone(), info);
        }
        let stale: Vec<TopicName> = {
            let facts = self.0.facts.read().unwrap_or_else(|p| p.into_inner());
            facts
                .keys()
                .filter(|t| !present.contains_key(*t))
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

    /// Counts the node's reconnections to NATS, for reads that must notice
    /// one (a resume's consumer may never say it was lost).
    pub(crate) fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        let mut reconnections = self.0.settings.reconnections.clone();
        reconnections.borrow_and_update();
        reconnections
    }

    /// Reconciles the registry with JetStream's stream names, asking for
    /// the full facts only of topics that are new or have live feeds (whose
    /// histories follow their stream's first sequence). Listing every
    /// stream's facts makes JetStream compute each one's state, which costs
    /// NATS a steady share of a core with many topics; names cost little.
    /// Falls back to a full listing when more than [`FULL_LISTING_ABOVE`]
    /// topics need their facts and they are not a small share of all
    /// ([`STREAMS_PER_TOPIC_ASKED`]).
    pub async fn relist(&self) -> Result<usize, async_nats::Error> {
        let mut present = HashSet::new();
        let mut names = self.0.js.stream_names();
        while let Some(name) = names.try_next().await? {
            if let Some(topic) = TopicName::from_stream_name(&name) {
                present.insert(topic);
            }
        }
        let (to_ask, stale): (Vec<TopicName>, Vec<TopicName>) = {
            let facts = self.0.facts.read().unwrap_or_else(|p| p.into_inner());
            let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
            let mut to_ask: Vec<TopicName> = present
                .iter()
                .filter(|t| !facts.contains_key(*t))
                .cloned()
                .collect();
            to_ask.extend(feeds.keys().filter(|t| present.contains(*t)).cloned());
            let stale: HashSet<TopicName> = facts
                .keys()
                .chain(feeds.keys())
                .filter(|t| !present.contains(*t))
                .cloned()
                .collect();
            (to_ask, stale.into_iter().collect())
        };
        if lists_every_stream(to_ask.len(), present.len()) {
            return self.load_all().await;
        }
        // A topic listed but not found a moment later is dropped once that
        // answer holds (`refresh`); other errors wait for the next listing.
        let asking = futures_util::stream::iter(to_ask.iter().chain(&stale)).for_each_concurrent(
            ASKED_AT_ONCE,
            |topic| async move {
                let _ = self.refresh(topic).await;
            },
        );
        if tokio::time::timeout(ASKING_AT_MOST, asking).await.is_err() {
            warn!(
                topics = to_ask.len() + stale.len(),
                "re-listing did not hear about every topic in time; the rest wait for the next"
            );
        }
        Ok(present.len())
    }

    /// Stops feeds that have had no client for the linger time, and evicts
    /// the coldest histories while the node is over its history budget.
    pub fn sweep(&self, now: tokio::time::Instant) {
        let linger = self.0.linger;
        let done = |f: &Arc<Feed>| f.is_closed() || f.idle_for(now).is_some_and(|d| d >= linger);
        let (idle, emptied) = {
            let mut feeds = self.0.feeds.write().unwrap_or_else(|p| p.into_inner());
            let mut idle = Vec::new();
            for topic_feeds in feeds.values_mut() {
                if topic_feeds.whole.as_ref().is_some_and(done) {
                    idle.extend(topic_feeds.whole.take());
                }
                topic_feeds.paths.retain(|_, f| {
                    let keep = !done(f);
                    if !keep {
                        idle.push(f.clone());
                    }
                    keep
                });
            }
            let emptied: Vec<TopicName> = feeds
                .iter()
                .filter(|(_, t)| t.is_empty())
                .map(|(topic, _)| topic.clone())
                .collect();
            for topic in &emptied {
                feeds.remove(topic);
            }
            self.0.metrics.feeds_live.set(count_feeds(&feeds));
            (idle, emptied)
        };
        for feed in idle {
            if !feed.is_closed() {
                debug!(topic = %feed.topic, path = feed.path.as_deref().unwrap_or(""), linger_seconds = linger.as_secs(), "no client left; stopping topic feed");
            }
            feed.close();
            self.0.metrics.feed_stops.inc();
        }
        for topic in &emptied {
            self.forget_feed_labels(topic);
        }
        let budget = &self.0.settings.budget;
        if budget.over() {
            let mut live = self.feeds();
            live.sort_by_key(|f| f.last_event());
            for feed in live {
                if !budget.over() {
                    break;
                }
                let freed = feed.evict_history();
                if freed > 0 {
                    self.0.metrics.history_evictions.inc();
                    self.0
                        .metrics
                        .history_bytes
                        .with_label_values(&[feed.topic.as_str()])
                        .set(0);
                    info!(topic = %feed.topic, freed_bytes = freed, budget_bytes = budget.max_bytes(), "history budget exceeded; evicted the coldest topic's history");
                }
            }
        }
        self.0
            .metrics
            .history_held_bytes
            .set(i64::try_from(budget.held()).unwrap_or(i64::MAX));
    }

    /// Has every live feed of `topic` start a new consumer: its stream has
    /// a new leader, and the old one may have taken the consumers with it.
    fn renew_consumers(&self, topic: &TopicName) {
        let feeds = self.0.feeds.read().unwrap_or_else(|p| p.into_inner());
        for feed in feeds.get(topic).into_iter().flat_map(TopicFeeds::all) {
            feed.renew_consumer();
        }
    }

    /// Follows stream advisories, re-lists periodically and sweeps feeds
    /// until `stop`. `loaded` is called after the first successful listing.
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
        let mut sweeper = tokio::time::interval(SWEEP_EVERY);
        sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweeper.tick() => self.sweep(tokio::time::Instant::now()),
                _ = ticker.tick() => {
                    let listed = if first { self.load_all().await } else { self.relist().await };
                    match listed {
                        Ok(count) => {
                            if first {
                                info!(topics = count, "topics loaded");
                                loaded();
                                first = false;
                            }
                        }
                        Err(error) => {
                            self.0.metrics.topic_listing_failures.inc();
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
                    // `$JS.EVENT.ADVISORY.STREAM.<ACTION>.<stream>`. After a
                    // leader election the feeds start new consumers: the old
                    // leader may have held theirs.
                    let mut tokens = message.subject.as_str().rsplit('.');
                    let (stream, action) = (tokens.next().unwrap_or_default(), tokens.next());
                    if let Some(topic) = TopicName::from_stream_name(stream) {
                        match action {
                            Some("DELETED") => self.deleted(topic),
                            Some("CREATED" | "UPDATED") => {
                                let _ = self.refresh(&topic).await;
                            }
                            Some("LEADER_ELECTED") => self.renew_consumers(&topic),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relisting_asks_about_few_topics_one_by_one() {
        assert!(!lists_every_stream(0, 0));
        assert!(!lists_every_stream(3, 10_000));
        assert!(!lists_every_stream(FULL_LISTING_ABOVE, 100));
    }

    #[test]
    fn a_relisting_lists_every_stream_when_many_topics_are_a_large_share() {
        assert!(lists_every_stream(FULL_LISTING_ABOVE + 1, 100));
        assert!(lists_every_stream(100, 1_599));
        assert!(lists_every_stream(3_000, 3_000));
    }

    #[test]
    fn a_relisting_asks_one_by_one_about_many_topics_of_far_more_streams() {
        assert!(!lists_every_stream(100, 1_600));
        assert!(!lists_every_stream(100, 10_000));
    }
}
