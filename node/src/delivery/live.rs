//! Live delivery: the topics' broadcast receivers, drained in batches.

use std::{sync::Arc, time::SystemTime};

use bytes::BytesMut;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::time::Instant;
use tracing::debug;

use super::{BATCH_BYTES, ClientStream, CloseReason, LAG_SAMPLE_EVERY};
use crate::event::Event;

/// What a client's live receivers yield.
pub(super) enum LiveItem {
    /// An event of the topic at this index.
    Event(usize, Arc<Event>),
    /// The client fell behind the queue of the topic at this index by this
    /// many events.
    Lagged(usize, u64),
    /// The channel of the topic at this index closed: its feed closed, or
    /// moved to a larger channel.
    Closed(usize),
}

/// A client's live receivers, one per topic, in the client's topic order.
///
/// Polled by hand rather than through `BroadcastStream` and `SelectAll`:
/// a batch drains them with `try_recv`, and only an empty queue waits, on
/// a `recv` future held inside the caller's own future. That keeps the
/// per-event path free of boxed futures and task re-queueing.
pub(super) struct LiveReceivers {
    pub(super) receivers: Vec<broadcast::Receiver<Arc<Event>>>,
    // Where the next drain starts, so one busy topic cannot starve another.
    pub(super) next: usize,
    /// The topic a stream of several topics is parked on: its feed's writer
    /// takes its events, so its receiver is not read.
    pub(super) parked: Option<usize>,
    /// The item that took the stream out of parking: the first one read
    /// once the stream has caught up again.
    pub(super) held: Option<Box<LiveItem>>,
}

impl LiveReceivers {
    /// An item that is already waiting, if any. Receivers for which
    /// `may_hold(index)` is false are not looked at: finding a receiver
    /// empty takes its channel's lock, which the feed and every other
    /// reader of the topic share. A receiver skipped wrongly costs
    /// nothing but a later read: [`Self::next`] waits on every receiver.
    pub(super) fn try_next(&mut self, may_hold: impl Fn(usize) -> bool) -> Option<LiveItem> {
        if let Some(item) = self.held.take() {
            return Some(*item);
        }
        let count = self.receivers.len();
        for offset in 0..count {
            let index = (self.next + offset) % count;
            if self.parked == Some(index) || !may_hold(index) {
                continue;
            }
            match self.receivers[index].try_recv() {
                Ok(event) => {
                    self.next = (index + 1) % count;
                    return Some(LiveItem::Event(index, event));
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Lagged(missed)) => return Some(LiveItem::Lagged(index, missed)),
                Err(TryRecvError::Closed) => return Some(LiveItem::Closed(index)),
            }
        }
        None
    }

    /// The next item, waiting for one if none is queued (`may_hold` as in
    /// [`Self::try_next`]). There must be a receiver to wait on that is
    /// not parked.
    pub(super) async fn next(&mut self, may_hold: impl Fn(usize) -> bool) -> LiveItem {
        if let Some(item) = self.try_next(may_hold) {
            return item;
        }
        let parked = self.parked;
        let (result, index) = match self.receivers.as_mut_slice() {
            [one] => (one.recv().await, 0),
            many => {
                // Several topics: rare, so a boxed future per topic is fine.
                let waits = many
                    .iter_mut()
                    .enumerate()
                    .filter(|(index, _)| parked != Some(*index))
                    .map(|(index, r)| Box::pin(async move { (r.recv().await, index) }));
                let ((result, index), _, _) = futures_util::future::select_all(waits).await;
                (result, index)
            }
        };
        match result {
            Ok(event) => LiveItem::Event(index, event),
            Err(RecvError::Lagged(missed)) => LiveItem::Lagged(index, missed),
            Err(RecvError::Closed) => LiveItem::Closed(index),
        }
    }
}

impl ClientStream {
    /// After the channel of the topic at `index` closed: attaches again,
    /// to the same feed if it only moved to a larger channel, or to the
    /// feed that took over from it if it was retired. Returns whether the
    /// topic goes on; the stream then catches up from where it stands.
    pub(super) fn rejoin(&mut self, index: usize) -> bool {
        let topic = &mut self.topics[index];
        if topic.feed.is_closed() && !topic.follow_successor() {
            return false;
        }
        self.reattach(index);
        true
    }

    /// After the stream fell behind the queue of the topic at `index`:
    /// attaches again at the feed's head and catches up from its position
    /// (from the node's history, or JetStream), as a stream taking its
    /// socket back does. A burst can fill a queue faster than a reader
    /// that keeps up drains it: a stream reading several topics takes
    /// their events in turns, event by event, where a stream of one topic
    /// is written by its feed, and a long burst does it again and again.
    /// A stream that took less than a queue's worth of events since it last
    /// fell behind ends as slow: its client is not reading.
    fn catch_up_after_lag(&mut self, index: usize) -> bool {
        let delivered: u64 = self.topics.iter().map(|t| t.pos).sum();
        let queue = self.node.config().delivery.client_queue_events as u64;
        if self
            .delivered_at_lag
            .is_some_and(|before| delivered.saturating_sub(before) < queue)
        {
            return false;
        }
        self.delivered_at_lag = Some(delivered);
        self.reattach(index);
        true
    }

    fn reattach(&mut self, index: usize) {
        let topic = &mut self.topics[index];
        let attachment = topic.feed.attach(topic.channel());
        topic.catch_up_to = attachment.head.max(topic.pos);
        self.live.receivers[index] = attachment.receiver;
        // A wait for a second stream of the old set of feeds: no stream
        // will start that set now.
        self.merge_wait = None;
        if topic.pos < topic.catch_up_to {
            self.catching_up = self.catching_up.min(index);
            self.rejoining = true;
        }
    }

    pub(super) fn live_batch(
        &mut self,
        first: LiveItem,
        out: &mut BytesMut,
    ) -> Result<(), CloseReason> {
        let mut item = first;
        let mut delivered = 0u64;
        let mut oldest: Option<SystemTime> = None;
        loop {
            match item {
                LiveItem::Closed(index) => {
                    if !self.rejoin(index) {
                        return Err(CloseReason::TopicClosed);
                    }
                    // Catch up on the new channel before reading more.
                    break;
                }
                LiveItem::Lagged(index, missed) => {
                    if !self.catch_up_after_lag(index) {
                        debug!(missed, "client too slow; disconnecting");
                        return Err(CloseReason::Slow);
                    }
                    debug!(missed, "fell behind a topic's queue; catching up");
                    // Catch up on the new channel before reading more.
                    break;
                }
                LiveItem::Event(_, event) if event.is_drain_marker() => {
                    if !self.draining() {
                        self.start_drain();
                    }
                }
                LiveItem::Event(index, event)
                    if self.topics[index].passes_over_resume(event.seq) =>
                {
                    // The events the reset named as next left the stream
                    // before the feed read them: caught up again from
                    // where the stream stands, this event included (the
                    // feed holds it), with a reset for what left.
                    self.reattach(index);
                    break;
                }
                LiveItem::Event(index, event) => {
                    // Only what the stream writes counts towards a run: a
                    // feed warming up hands on events it already has.
                    if self.deliver(index, &event, out) {
                        if !self.single_topic {
                            self.note_run(index);
                        }
                        delivered += 1;
                        oldest.get_or_insert(event.published);
                    }
                }
            }
            if out.len() >= BATCH_BYTES {
                break;
            }
            let topics = &self.topics;
            match self.live.try_next(|index| topics[index].may_hold_news()) {
                Some(next) => item = next,
                None => break,
            }
        }
        if delivered > 0 {
            self.pacer.record_batch(Instant::now(), delivered);
            // Shared counters are touched once per batch, and the lag is
            // sampled, so clients on both cores do not fight over them.
            self.batches = self.batches.wrapping_add(1);
            let metrics = self.node.metrics();
            metrics.events_delivered.inc_by(delivered);
            if self.batches % LAG_SAMPLE_EVERY == 1
                && let Some(published) = oldest
            {
                let lag = crate::clock::nats_now()
                    .duration_since(published)
                    .unwrap_or_default();
                metrics.delivery_lag.observe(lag.as_secs_f64());
            }
        }
        Ok(())
    }
}
