//! Catch-up: a resuming client's position is brought up to the head its
//! feed had when it attached, from node memory when the history reaches
//! back far enough, otherwise from JetStream through a short-lived ordered
//! consumer (one read slot of `history.max_concurrent_jetstream_reads`), or
//! by direct gets where JetStream refuses the consumer.
//! History that is gone yields one `reset` event.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Span, warn};

use super::{BATCH_BYTES, ClientStream, CloseReason, framing::write_reset_body};
use crate::{
    event::{Event, is_delete_marker},
    feed::{OwnedConsumer, bounded, stream_epoch},
    history::Slice,
};

/// Longest wait for the next message of a resume read.
const JETSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events one direct get of a catch-up asks for
/// ([`ClientStream::read_directly`]).
const DIRECT_BATCH: u64 = 256;
/// Times a catch-up asks again for events a direct get did not answer and
/// the stream's leader says it holds, the first after [`DIRECT_READ_RETRY`],
/// each later one four times as long after the one before.
const DIRECT_READ_TRIES: u32 = 4;
/// See [`DIRECT_READ_TRIES`].
const DIRECT_READ_RETRY: Duration = Duration::from_millis(25);
/// Most events taken from memory per step of catch-up.
const MEMORY_CHUNK: usize = 512;
/// Times a stream's info is asked for, 100 ms apart, before one older
/// than the events read ends the client's stream
/// ([`ClientStream::announce_history_gone`]).
const STALE_INFO_ASKS: u32 = 3;
/// See [`STALE_INFO_ASKS`].
const STALE_INFO_PAUSE: Duration = Duration::from_millis(100);
/// How long a resume read keeps its JetStream slot while other resumes
/// wait for one.
const JETSTREAM_TURN: Duration = Duration::from_secs(2);
/// How often a stream whose writes are blocked during a catch-up from
/// JetStream is looked at, for whether its read turn is over.
pub(crate) const JETSTREAM_TURN_CHECK: Duration = Duration::from_millis(500);

/// A JetStream read turn lent out while its stream is not polled: the read
/// (none between two reads of a turn) and its slot.
pub(super) type LentTurn = Arc<Mutex<Option<(Option<Box<JetStreamRead>>, OwnedSemaphorePermit)>>>;

/// Whether a turn that holds `read` (or only its slot) is to end: it has
/// lasted its time and other resumes wait for a slot.
fn turn_is_over(read: Option<&JetStreamRead>, node: &crate::node::Node) -> bool {
    read.is_none_or(|read| read.started.elapsed() >= JETSTREAM_TURN)
        && node.jetstream_reads_wanted()
}

pub(super) struct JetStreamRead {
    pub(super) messages: jetstream::consumer::pull::Ordered,
    pub(super) end: u64,
    /// Error items in a row: past one, the next stored event may be one
    /// whose delivery drops the connection.
    pub(super) errors: u32,
    /// The node's reconnections to NATS.
    pub(super) reconnections: tokio::sync::watch::Receiver<u64>,
    /// When the read took its slot.
    pub(super) started: std::time::Instant,
    /// The sequence its consumer was made to start at.
    pub(super) starts_at: u64,
    /// Whether the read is of every event of the stream (no path filter),
    /// so that a sequence skipped is an event the stream no longer holds.
    pub(super) whole_stream: bool,
    /// Whether a skipped sequence is looked into: a read of the whole
    /// stream, which had no events deleted from within when it started. A
    /// stream that deletes from within (a path purged, a limit per subject)
    /// skips sequences all the time, and those are not announced.
    pub(super) watch_skips: bool,
    /// The events pending after the last one read (at first, the
    /// consumer's count when made): a drop by more than the one read means
    /// events were removed meanwhile.
    pub(super) pending: u64,
    pub(super) _held: crate::metrics::ConsumerHeld,
    /// Declared last: the consumer is deleted after `messages` stops pulling.
    pub(super) owned: OwnedConsumer,
}

impl ClientStream {
    /// Whether the next catch-up step reads JetStream, and so needs a slot.
    pub(super) fn needs_jetstream(&self) -> bool {
        if self.jetstream_read.is_some() {
            return true;
        }
        let Some(topic) = self.topics.get(self.catching_up) else {
            return false;
        };
        topic.pos < topic.catch_up_to
            && matches!(
                topic.feed.history_after(topic.pos, topic.catch_up_to, 0),
                Slice::Missing { .. }
            )
    }

    /// Whether the stream holds a slot to read JetStream for its catch-up.
    pub fn holds_jetstream_slot(&self) -> bool {
        self.jetstream_permit.is_some()
    }

    /// Ends a resume read that has held its JetStream slot for a turn (a
    /// catch-up by direct gets: for one get) while other resumes wait for
    /// one; the stream queues for a slot again and
    /// reads on from its position with a new consumer. A client that
    /// reads slowly would otherwise keep its slot for as long as its
    /// catch-up takes, and every other resume of the node wait behind it.
    pub fn end_jetstream_turn_if_others_wait(&mut self) {
        let over = match &self.jetstream_read {
            Some(read) => turn_is_over(Some(read), &self.node),
            // A catch-up by direct gets holds no consumer between its gets:
            // its slot goes to a resume that waits for one after each get.
            None => {
                self.jetstream_permit.is_some()
                    && self
                        .topics
                        .get(self.catching_up)
                        .is_some_and(|topic| topic.reads_directly)
                    && self.node.jetstream_reads_wanted()
            }
        };
        if !over {
            return;
        }
        self.jetstream_read = None;
        self.jetstream_permit = None;
        self.jetstream_turn_ended();
    }

    /// After a turn that ended before the read did: events may leave the
    /// stream before the next turn, whose set-up then sends a `reset` for
    /// them, as a first one would.
    fn jetstream_turn_ended(&mut self) {
        if let Some(topic) = self.topics.get_mut(self.catching_up) {
            topic.reset_sent = false;
        }
    }

    /// Hands the stream's JetStream slot and read, if it holds them, to a
    /// watcher that ends the turn as [`Self::end_jetstream_turn_if_others_wait`]
    /// would, for as long as the stream is not polled. hyper polls a
    /// response body only while the client takes bytes: an HTTP/2 stream
    /// whose client stopped reading (its window shut, the connection still
    /// moving) would otherwise keep its slot for good, and every other
    /// resume of the node wait behind it. `lent` is the turn's cell from the
    /// last chunk, if any: one watcher serves the whole turn. Taken back
    /// with [`Self::reclaim_jetstream_turn`] before the stream's next step;
    /// `None` (the cell dropped, its watcher gone) once no turn is held.
    pub(super) fn lend_jetstream_turn(&mut self, lent: Option<LentTurn>) -> Option<LentTurn> {
        let permit = self.jetstream_permit.take()?;
        let turn = (self.jetstream_read.take(), permit);
        if let Some(lent) = lent {
            *lent.lock().unwrap_or_else(|e| e.into_inner()) = Some(turn);
            return Some(lent);
        }
        let lent: LentTurn = Arc::new(Mutex::new(Some(turn)));
        let watched = Arc::downgrade(&lent);
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(JETSTREAM_TURN_CHECK).await;
                // Gone: the stream's turn is over, or the stream is.
                let Some(lent) = watched.upgrade() else {
                    return;
                };
                let mut turn = lent.lock().unwrap_or_else(|e| e.into_inner());
                // Empty while the stream steps: it watches itself then.
                if let Some((read, _)) = turn.as_ref()
                    && turn_is_over(read.as_deref(), &node)
                {
                    // Dropped here: the consumer is deleted, the slot freed.
                    *turn = None;
                    return;
                }
            }
        });
        Some(lent)
    }

    /// Takes back what [`Self::lend_jetstream_turn`] lent; false when the
    /// watcher ended the turn meanwhile.
    pub(super) fn reclaim_jetstream_turn(&mut self, lent: &LentTurn) -> bool {
        let taken = lent.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some((read, permit)) => {
                self.jetstream_read = read;
                self.jetstream_permit = Some(permit);
                true
            }
            None => {
                self.jetstream_turn_ended();
                false
            }
        }
    }

    /// Writes the topic's `reset` held for its catch-up, saying that
    /// delivery restarts at `oldest`, the oldest event still held, and moves
    /// the cursor there: a client that drops before that event comes back
    /// from it, not to a second `reset` for what came before.
    fn write_pending_reset(&mut self, index: usize, oldest: u64, out: &mut BytesMut) {
        let topic = &mut self.topics[index];
        let Some(mut reset) = topic.pending_reset.take() else {
            return;
        };
        reset["resume_from"] = oldest.into();
        topic.pos = topic.pos.max(oldest.saturating_sub(1));
        self.node.metrics().reset_events.inc();
        write_reset_body(out, &reset);
        self.write_cursor(out);
    }

    /// One step of catch-up: some events from memory or JetStream, or the
    /// set-up of a JetStream read. Ends the phase when every topic is done.
    pub(super) async fn catch_up_step(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        let index = self.catching_up;
        if self.jetstream_read.is_some() {
            return self.jetstream_batch(out).await;
        }
        let topic = &self.topics[index];
        if topic.pos >= topic.catch_up_to {
            self.catching_up += 1;
            if self.catching_up == self.topics.len() && std::mem::take(&mut self.rejoining) {
                // Back from parking: in step again, and no resume to record.
            } else if self.catching_up == self.topics.len() {
                let replayed = self.catch_up_started.elapsed();
                self.node
                    .metrics()
                    .replay_duration
                    .observe(replayed.as_secs_f64());
                if let Some(spans) = &mut self.spans {
                    // Integers, which trace backends compare.
                    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                    spans
                        .resume
                        .record("memory_events", count(self.replayed[0]));
                    spans
                        .resume
                        .record("jetstream_events", count(self.replayed[1]));
                    // Ends the resume span.
                    spans.resume = Span::none();
                }
            }
            return Ok(());
        }
        match topic
            .feed
            .history_after(topic.pos, topic.catch_up_to, MEMORY_CHUNK)
        {
            Slice::Events(events) => {
                let last = events.last().map(|e| e.seq).unwrap_or(topic.catch_up_to);
                if topic.pending_reset.is_some() {
                    let oldest = events.first().map_or(last + 1, |e| e.seq);
                    self.write_pending_reset(index, oldest, out);
                } else if topic.feed.path.is_none()
                    && events.first().is_some_and(|e| e.seq > topic.pos + 1)
                {
                    // A whole topic's feed holds every event it read: it
                    // passes over the next one when the stream no longer
                    // had it, as on a topic whose oldest events leave as new
                    // ones come, where they left before the feed's first
                    // read.
                    let read = events.first().map_or(last, |e| e.seq);
                    self.announce_history_gone(index, read, out).await?;
                }
                let mut delivered = 0;
                for event in &events {
                    if self.deliver(index, event, out) {
                        delivered += 1;
                    }
                }
                let topic = &mut self.topics[index];
                topic.pos = topic.pos.max(last);
                if events.len() < MEMORY_CHUNK {
                    topic.pos = topic.pos.max(topic.catch_up_to);
                }
                self.count_replay("memory", delivered);
                Ok(())
            }
            Slice::Missing { until } => self.start_jetstream_read(index, until, out).await,
        }
    }

    pub(super) async fn start_jetstream_read(
        &mut self,
        index: usize,
        until: u64,
        out: &mut BytesMut,
    ) -> Result<(), CloseReason> {
        let js = self.node.jetstream().clone();
        let stream = self.stream_now(index).await?;
        let info = stream.cached_info();
        let first = info.state.first_sequence;
        if self.topics[index].pending_reset.is_some() {
            self.write_pending_reset(index, first.max(1), out);
        }
        let topic = &self.topics[index];
        if first > topic.pos + 1 && !topic.reset_sent {
            self.write_history_gone(index, first, out);
        }
        let whole_stream = self.topics[index].reads_whole_stream();
        let watch_skips = whole_stream && info.state.deleted_count.unwrap_or(0) == 0;
        let topic = &mut self.topics[index];
        topic.reset_sent = true;
        let end = until.saturating_sub(1).min(topic.catch_up_to);
        if topic.pos >= end {
            topic.pos = topic.pos.max(end);
            self.jetstream_permit = None;
            return Ok(());
        }
        if topic.reads_directly {
            return self.read_directly(index, end, watch_skips, out).await;
        }
        let prefix = self.node.config().nats.subject_prefix.clone();
        let consumer = bounded(stream.create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: topic.pos + 1,
            },
            filter_subjects: topic.filters(&prefix),
            max_expires: crate::feed::PULL_EXPIRES,
            max_batch: crate::feed::pull_batch(&info.state),
            ..Default::default()
        }))
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(error) => {
                // A stream at its consumer limit, or a NATS cluster that
                // makes none for a while (electing its meta leader after a
                // partition heals, for 11-16 s): a stream that allows direct
                // gets is read without one, as a dozing feed reads it. The
                // client would otherwise come back through its retry delay,
                // and be refused again for as long as it lasts.
                let limit = crate::feed::is_consumer_limit(&error);
                let direct = stream.cached_info().config.allow_direct
                    && crate::feed::answers_batched_gets(&js.client().server_info().version);
                if limit {
                    self.node
                        .metrics()
                        .feed_errors
                        .with_label_values(&["consumer_limit"])
                        .inc();
                }
                let read_on = if direct {
                    "; reading by direct gets"
                } else {
                    ""
                };
                if limit {
                    tracing::error!(topic = %topic.feed.topic, %error, "cannot create resume consumer: {}{read_on}", crate::feed::CONSUMER_LIMIT_HINT);
                } else {
                    warn!(topic = %topic.feed.topic, %error, "cannot create resume consumer{read_on}");
                }
                if !direct {
                    return Err(CloseReason::Error);
                }
                topic.reads_directly = true;
                return self.read_directly(index, end, watch_skips, out).await;
            }
        };
        let owned = OwnedConsumer::new(&js, topic.feed.stream_name(), &consumer.cached_info().name);
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            topic.pos = end;
            self.jetstream_permit = None;
            return Ok(());
        }
        match bounded(consumer.messages()).await {
            Ok(messages) => {
                self.jetstream_read = Some(Box::new(JetStreamRead {
                    messages,
                    end,
                    errors: 0,
                    reconnections: self.node.topics().reconnections(),
                    started: std::time::Instant::now(),
                    starts_at: topic.pos + 1,
                    whole_stream,
                    watch_skips,
                    pending,
                    _held: self.node.metrics().consumer_held(),
                    owned,
                }));
                Ok(())
            }
            Err(error) => {
                warn!(topic = %topic.feed.topic, %error, "cannot read resume consumer");
                Err(CloseReason::Error)
            }
        }
    }

    /// One step of a catch-up that reads JetStream by direct gets, as
    /// [`Self::jetstream_batch`] reads a consumer: the events after the
    /// topic's position up to `end`, [`DIRECT_BATCH`] at most, with one
    /// batched get ([`crate::feed::direct_get_batch`]). The catch-up's
    /// next step reads on from where it stops.
    ///
    /// A direct get may be answered by a replica that has not stored the
    /// newest events yet: an empty answer before `end` is taken for the
    /// end only once the stream's leader says it stores nothing more up to
    /// there ([`crate::feed::next_stored`]); otherwise it is asked again a
    /// few times, then the client's stream ends and it resumes from its
    /// position. Sequences passed over are looked into as a consumer's
    /// read does (`watch_skips`).
    async fn read_directly(
        &mut self,
        index: usize,
        end: u64,
        mut watch_skips: bool,
        out: &mut BytesMut,
    ) -> Result<(), CloseReason> {
        let prefix = self.node.config().nats.subject_prefix.clone();
        let js = self.node.jetstream().clone();
        let client = js.client();
        let topic = &self.topics[index];
        let filters = topic.filters(&prefix);
        let filter_subject = if topic.reads_whole_stream() {
            ""
        } else {
            filters.first().map_or("", String::as_str)
        };
        let stream_name = topic.feed.stream_name().to_owned();
        let mut tries = 0;
        let messages = loop {
            let pos = self.topics[index].pos;
            if pos >= end {
                break Vec::new();
            }
            let got = crate::feed::direct_get_batch(
                &client,
                &stream_name,
                pos + 1,
                filter_subject,
                (end - pos).min(DIRECT_BATCH),
                BATCH_BYTES,
            );
            let messages = bounded(got).await.map_err(|error| {
                warn!(topic = %self.topics[index].feed.topic, %error, "cannot read the topic's stream by direct gets for a resume");
                CloseReason::Error
            })?;
            if !messages.is_empty() {
                break messages;
            }
            match crate::feed::next_stored(&js, &stream_name, pos + 1, &filters).await {
                Ok(Some(seq)) if seq <= end => {
                    if tries == DIRECT_READ_TRIES {
                        warn!(topic = %self.topics[index].feed.topic, seq, "direct gets do not answer an event the stream holds; closing so the client resumes");
                        return Err(CloseReason::Error);
                    }
                    tokio::time::sleep(DIRECT_READ_RETRY * 4u32.pow(tries)).await;
                    tries += 1;
                }
                Ok(_) => break Vec::new(),
                Err(error) => {
                    warn!(topic = %self.topics[index].feed.topic, %error, "cannot read the topic's stream for a resume");
                    return Err(CloseReason::Error);
                }
            }
        };
        let mut delivered = 0;
        let mut finished = messages.is_empty();
        for message in messages {
            let seq = message.sequence;
            if seq > end {
                finished = true;
                break;
            }
            if watch_skips
                && seq > self.topics[index].pos + 1
                && !self.announce_history_gone(index, seq, out).await?
            {
                // Deleted from within: not announced, and the next ones
                // not looked into.
                watch_skips = false;
            }
            if let Some(event) = self.stored_event(
                index,
                seq,
                message.subject.as_str(),
                SystemTime::from(message.time),
                Some(&message.headers),
                &message.payload,
            ) && self.deliver(index, &event, out)
            {
                delivered += 1;
            }
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(seq);
            finished |= seq >= end;
        }
        self.count_replay("jetstream", delivered);
        if finished {
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(end);
            self.jetstream_permit = None;
        }
        Ok(())
    }

    pub(super) async fn jetstream_batch(&mut self, out: &mut BytesMut) -> Result<(), CloseReason> {
        let index = self.catching_up;
        let mut delivered = 0;
        let mut finished = false;
        let mut first = true;
        while out.len() < BATCH_BYTES {
            let Some(read) = self.jetstream_read.as_mut() else {
                break;
            };
            let item = if first {
                first = false;
                let waited = tokio::time::timeout(JETSTREAM_READ_TIMEOUT, async {
                    tokio::select! {
                        item = read.messages.next() => Some(item),
                        Ok(()) = read.reconnections.changed() => None,
                    }
                })
                .await;
                match waited {
                    Ok(Some(item)) => item,
                    // Reconnected before the next event came: look at what
                    // is next (at most one such look per resume read slot,
                    // `history.max_concurrent_jetstream_reads`).
                    Ok(None) => {
                        if self.pass_unreadable(index, out).await {
                            return Ok(());
                        }
                        first = true;
                        continue;
                    }
                    Err(_) => {
                        if self.pass_unreadable(index, out).await {
                            return Ok(());
                        }
                        warn!("resume read stalled; closing so the client retries");
                        return Err(CloseReason::Error);
                    }
                }
            } else {
                match read.messages.next().now_or_never() {
                    Some(item) => item,
                    None => break,
                }
            };
            let end = read.end;
            let message = match item {
                Some(Ok(message)) => {
                    read.errors = 0;
                    message
                }
                Some(Err(error)) => {
                    warn!(%error, "resume read error");
                    read.errors += 1;
                    if read.errors >= 2 && self.pass_unreadable(index, out).await {
                        return Ok(());
                    }
                    continue;
                }
                None => return Err(CloseReason::Error),
            };
            let Ok(info) = message.info() else {
                continue;
            };
            read.owned.follow(info.consumer);
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq < read.starts_at {
                // Re-created by async-nats from the stream's first event
                // (as the feed's, in `feed::Reader::read_from`): a new read
                // from the position, the slot kept for it.
                self.jetstream_read = None;
                break;
            }
            let published = SystemTime::from(info.published);
            let pos = self.topics[index].pos;
            // Events removed from the stream's start while it is read (a
            // purge, a limit cut, an expiry) are not delivered, and the read
            // would pass over them without a word: a sign that some were
            // is looked into, so that the client gets its `reset`.
            let removed_meanwhile = pending.saturating_add(1) < read.pending;
            read.pending = pending;
            // Sequences passed over, or a read of the whole stream that
            // ends before its end.
            let skips = seq > pos + 1 || (read.whole_stream && pending == 0 && seq < end);
            if skips && (read.watch_skips || removed_meanwhile) {
                if !self.announce_history_gone(index, seq, out).await? {
                    // Deleted from within: those are not announced, and
                    // the next ones are not looked into.
                    if let Some(read) = self.jetstream_read.as_mut() {
                        read.watch_skips = false;
                    }
                }
                if seq <= self.topics[index].pos && seq < end && pending > 0 {
                    continue;
                }
            }
            if seq > end {
                finished = true;
                break;
            }
            if let Some(event) = self.stored_event(
                index,
                seq,
                message.subject.as_str(),
                published,
                message.headers.as_ref(),
                &message.payload,
            ) && self.deliver(index, &event, out)
            {
                delivered += 1;
            }
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(seq);
            if seq >= end || pending == 0 {
                finished = true;
                break;
            }
        }
        self.count_replay("jetstream", delivered);
        if finished && let Some(read) = self.jetstream_read.take() {
            let topic = &mut self.topics[index];
            topic.pos = topic.pos.max(read.end);
            self.jetstream_permit = None;
        }
        Ok(())
    }

    /// The event of the topic being caught up (`index`) that JetStream
    /// stores at `seq` under `subject`, read by a consumer or a direct get;
    /// `None` for a delete marker, which is no event.
    fn stored_event(
        &self,
        index: usize,
        seq: u64,
        subject: &str,
        published: SystemTime,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Option<Event> {
        if is_delete_marker(headers, payload) {
            return None;
        }
        let prefix_len = self.node.config().nats.subject_prefix.len() + 1;
        let path = subject.get(prefix_len..).unwrap_or_default();
        Some(Event::encode(
            &self.topics[index].feed.encode_context,
            seq,
            path,
            published,
            headers,
            payload,
        ))
    }

    /// Writes a `history_gone` reset for the topic's events from its
    /// position up to `first`, where its stream now starts, and moves the
    /// position there.
    fn write_history_gone(&mut self, index: usize, first: u64, out: &mut BytesMut) {
        let topic = &mut self.topics[index];
        let data = serde_json::json!({
            "topic": topic.feed.topic.as_str(),
            "reason": "history_gone",
            "last_seen": topic.pos,
            "lost_from": topic.pos + 1,
            "lost_to": first - 1,
            "resume_from": first,
        });
        topic.pos = first - 1;
        topic.reset_sent = true;
        topic.resume_from = Some(first);
        self.node.metrics().reset_events.inc();
        write_reset_body(out, &data);
        self.write_cursor(out);
    }

    /// The topic's stream as JetStream has it now, of the epoch the client
    /// reads (else the client's stream ends, and its `reset` comes as it
    /// resumes). A stream that cannot be asked ends the client's stream,
    /// which resumes from its position.
    async fn stream_now(&mut self, index: usize) -> Result<jetstream::stream::Stream, CloseReason> {
        let topic = &self.topics[index];
        let stream = crate::feed::stream_info(self.node.jetstream(), topic.feed.stream_name())
            .await
            .map_err(|error| {
                warn!(topic = %topic.feed.topic, %error, "cannot read the topic's stream for a resume");
                CloseReason::Error
            })?;
        if stream_epoch(stream.cached_info()) != topic.feed.epoch {
            return Err(CloseReason::TopicClosed);
        }
        Ok(stream)
    }

    /// Asks JetStream where the topic's stream starts now, during a read
    /// of it that came to sequence `read`; when past the position, its
    /// events up to there were removed meanwhile, and a `reset` says so
    /// ([`Self::write_history_gone`]). Returns whether it did. A stream
    /// that cannot be asked ends the client's stream, which resumes from
    /// its position: nothing passed over unannounced. So does one whose
    /// info, asked again, still ends before `read`: an info older than
    /// the events read (seen in bursts) may start before the position
    /// though the events after it have left.
    async fn announce_history_gone(
        &mut self,
        index: usize,
        read: u64,
        out: &mut BytesMut,
    ) -> Result<bool, CloseReason> {
        let mut asked = 0;
        let state = loop {
            let state = self.stream_now(index).await?.cached_info().state.clone();
            if state.first_sequence > self.topics[index].pos + 1 || state.last_sequence >= read {
                break state;
            }
            asked += 1;
            if asked == STALE_INFO_ASKS {
                warn!(topic = %self.topics[index].feed.topic, read, stream_last = state.last_sequence, "{}; closing so the client resumes", crate::feed::STALE_INFO);
                return Err(CloseReason::Error);
            }
            tokio::time::sleep(STALE_INFO_PAUSE).await;
        };
        if state.first_sequence <= self.topics[index].pos + 1 {
            return Ok(false);
        }
        self.write_history_gone(index, state.first_sequence, out);
        Ok(true)
    }

    /// Passes the next stored event of the topic being caught up as an
    /// `invalid` event when NATS clients cannot read its header block
    /// ([`crate::feed::next_unreadable`]): the resume consumer would drop
    /// the node's connection at it again and again. The read is then made
    /// anew past it. True when an event was passed.
    async fn pass_unreadable(&mut self, index: usize, out: &mut BytesMut) -> bool {
        let prefix = self.node.config().nats.subject_prefix.clone();
        let topic = &self.topics[index];
        let Some(unreadable) = crate::feed::next_unreadable(
            self.node.jetstream(),
            topic.feed.stream_name(),
            topic.pos + 1,
            &topic.filters(&prefix),
        )
        .await
        else {
            return false;
        };
        let end = self.jetstream_read.as_ref().map_or(0, |read| read.end);
        if unreadable.seq > end {
            return false;
        }
        let path = unreadable
            .subject
            .get(prefix.len() + 1..)
            .unwrap_or_default();
        let reason = unreadable.reason;
        self.node
            .metrics()
            .invalid_events
            .with_label_values(&[reason.as_str()])
            .inc();
        warn!(topic = %topic.feed.topic, subject = path, seq = unreadable.seq, reason = reason.as_str(), "a stored event's NATS headers or subject cannot be read, and its delivery drops the connection; the resume passes an invalid event in its place");
        let event = Event::replaced(
            &topic.feed.encode_context,
            unreadable.seq,
            path,
            unreadable.published,
            reason,
        );
        if self.deliver(index, &event, out) {
            self.count_replay("jetstream", 1);
        }
        let topic = &mut self.topics[index];
        topic.pos = topic.pos.max(unreadable.seq);
        // A new read from past it; the slot is kept for it.
        self.jetstream_read = None;
        true
    }

    pub(super) fn count_replay(&mut self, source: &str, delivered: u64) {
        if delivered > 0 && self.rejoining {
            self.node.metrics().events_delivered.inc_by(delivered);
            return;
        }
        self.replayed[usize::from(source == "jetstream")] += delivered;
        if delivered > 0 {
            let metrics = self.node.metrics();
            metrics
                .replay_events
                .with_label_values(&[source])
                .inc_by(delivered);
            metrics.events_delivered.inc_by(delivered);
        }
    }
}
