//! A stream's side of parking (see [`super::parked`]): when it may leave
//! its socket with its feed's writer, and how it takes it back.
//!
//! A stream of several topics parks on the one it has been hearing from
//! alone for [`PARK_AFTER_RUN`] events in a row, and keeps reading the
//! others itself. An event of another topic that comes after such a run
//! of the busy topic is written by the stream through the parked socket,
//! between two of the writer's batches, and the stream stays parked: the
//! quiet topic's event costs one wake-up and one write, as a user's own
//! notification beside a busy shared topic does. Any other event of
//! another topic takes the socket back, and the stream writes that event
//! and catches up before it may park again. If that event was the only
//! one between two runs of the busy topic, the stream parks on the busy
//! topic again at its next event; otherwise after another long run. So a
//! stream of one busy topic and some quiet ones is written by its busy
//! topic's writer, and one whose topics are all busy never parks on one
//! of them, where taking its socket back for nearly every event would cost
//! more than its own wake-ups. Such a stream, once its topics have taken
//! turns for [`MERGE_AFTER_TURNS`] runs in a row, parks on the merged feed
//! of its whole topics instead (see [`super::merged`]), which writes every
//! event of any of them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::{net::TcpStream, time::Instant};
use tracing::warn;

use crate::{connection::SharedSocket, event::Event};

use super::{
    ClientStream, CloseReason, HEARTBEAT,
    live::LiveItem,
    merged::{Behind, Merge, MergedFeed, Waited},
    only_path,
    parked::{Beat, Reads, Returned, Through, Ticket},
    peer_closed,
    timer::TimerFired,
};

/// Events of one topic in a row, with none of the stream's other topics
/// between them, after which a stream of several topics parks on it.
pub(super) const PARK_AFTER_RUN: u32 = 32;

/// Runs in a row shorter than [`PARK_AFTER_RUN`], after which a stream
/// of several whole topics parks on their merged feed.
pub(super) const MERGE_AFTER_TURNS: u32 = 8;

/// Most topics a stream may have to park on a merged feed: the relay
/// waits on each topic on every wake.
const MERGE_MAX_TOPICS: usize = 16;

/// A parked stream's claim on its socket.
pub(super) struct Parking {
    ticket: Ticket,
    /// The merged feed the socket is parked on, if not a topic's writer.
    merged: Option<Arc<MergedFeed>>,
}

/// What an attempt to park came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ParkTry {
    Parked,
    /// Not now.
    No,
    /// The merged feed has not yet read the stream's last events; worth
    /// another try once it has had a turn.
    RelayBehind,
}

/// What a parked stream does next.
pub(super) enum ParkedWake {
    /// Write these bytes: the socket is the stream's again.
    Write(Bytes),
    /// Go on: parked still, or the socket is back and the stream catches up.
    Resume,
    /// End the stream for this reason.
    End(CloseReason),
    /// The client went away.
    Gone,
}

impl ClientStream {
    /// The topic the stream would park on, and what it would take of that
    /// feed's writer, if it may park at all: caught up, not ending, and on
    /// its only topic or the one it has heard from alone for a while: the
    /// whole topic, one concrete path, or the events matching its patterns
    /// (wildcards, several paths). Parked on patterns, a stream's position
    /// in that topic is the last event the writer wrote it, which is what
    /// its ids carry when another topic's event goes through: events after
    /// it that did not match are read again on a resume, and filtered out
    /// again.
    fn park_filter(&self) -> Option<(usize, Reads<'_>)> {
        if !self.may_park() {
            return None;
        }
        let index = if self.single_topic {
            0
        } else {
            let (topic, run) = self.run;
            // Back to the topic that had the last long run, after one short
            // run of another (a quiet topic's event): that topic is still
            // the busy one, and another run of it would only cost wake-ups.
            let back_on_busy = topic == self.busy_topic && self.turns <= 1;
            if run < PARK_AFTER_RUN && !back_on_busy {
                return None;
            }
            topic as usize
        };
        let topic = self.topics.get(index)?;
        let one_path = only_path(&topic.patterns);
        if topic.by_path {
            return one_path.map(|path| (index, Reads::Path(path)));
        }
        let takes_every_event = match topic.patterns.as_slice() {
            [one] => {
                one.is_whole_topic()
                    || (one_path.is_some() && one_path == topic.feed.path.as_deref())
            }
            _ => false,
        };
        if takes_every_event {
            Some((index, Reads::All))
        } else {
            Some((index, Reads::Patterns(&topic.patterns)))
        }
    }

    /// Counts an event of the topic at `index` towards the run of events
    /// one topic alone has sent.
    pub(super) fn note_run(&mut self, index: usize) {
        let index = index as u32;
        if self.run.0 == index {
            self.run.1 = self.run.1.saturating_add(1);
        } else {
            self.turns = if self.run.1 < PARK_AFTER_RUN {
                self.turns.saturating_add(1)
            } else {
                self.busy_topic = self.run.0;
                0
            };
            self.run = (index, 1);
        }
    }

    /// Whether the stream is in a state to leave its socket to a writer:
    /// caught up, not ending, nothing of its own to write first.
    fn may_park(&self) -> bool {
        self.node.config().delivery.park_streams
            && self.catching_up == self.topics.len()
            && self.jetstream_read.is_none()
            && self.close_at.is_none()
            && self.lone_frame.is_none()
            && self.live.held.is_none()
            && self
                .topics
                .iter()
                .all(|t| t.resume_from.is_none_or(|from| t.pos >= from))
    }

    /// Whether the stream may park on the merged feed of its topics: it
    /// takes every event its receiver of each gets (a whole topic, or one
    /// path), and they have been taking turns.
    fn may_merge(&self) -> bool {
        !self.single_topic
            && self.turns >= MERGE_AFTER_TURNS
            && self.topics.len() <= MERGE_MAX_TOPICS
            && self.topics.iter().all(|t| t.merge_read().is_some())
            && self.may_park()
    }

    /// Parks the stream's `socket` on the merged feed of its topics, if it
    /// may and stands where that feed's relay stands.
    fn try_park_merged(&mut self, socket: &Arc<SharedSocket>) -> ParkTry {
        // Asked first: a stream alone on its set waits for a second one on
        // every turn, and the checks below take each channel's lock.
        if self
            .merge_wait
            .as_ref()
            .is_some_and(|wait| matches!(wait.waited(), Waited::Waiting))
        {
            return ParkTry::No;
        }
        if !self.may_merge()
            || socket.has_unsent()
            || self.live.receivers.len() != self.topics.len()
            || self.live.receivers.iter().any(|r| !r.is_empty() || r.is_closed())
            // Ahead of a feed still warming up: no relay could stand there.
            || self.topics.iter().any(|t| t.pos > t.feed.head())
        {
            return ParkTry::No;
        }
        let waited = match &self.merge_wait {
            Some(wait) => wait.waited(),
            None => Waited::Ended,
        };
        let merged = match waited {
            Waited::Waiting => return ParkTry::No,
            Waited::Started(merged) => merged,
            Waited::Ended => {
                let asked = self.node.merged_feeds().get_or_start(
                    self.topics
                        .iter()
                        .map(|t| (&t.feed, t.merge_read().flatten())),
                    &self.node,
                );
                match asked {
                    Merge::Feed(merged) => merged,
                    Merge::Wait(wait) => {
                        self.merge_wait = Some(wait);
                        return ParkTry::No;
                    }
                }
            }
        };
        self.merge_wait = None;
        let receivers = &self.live.receivers;
        let parked = merged.park(
            self.topics.iter().map(|t| t.pos),
            || receivers.iter().all(|r| r.is_empty() && !r.is_closed()),
            socket,
            &self.node,
        );
        let (ticket, _) = match parked {
            Ok(parked) => parked,
            Err(Behind(true)) => return ParkTry::RelayBehind,
            Err(Behind(false)) => return ParkTry::No,
        };
        // The relay writes every event from here: the stream's own queues
        // would only fill up.
        self.live.receivers.clear();
        self.live.parked = None;
        self.parked = Some(Box::new(Parking {
            ticket,
            merged: Some(merged),
        }));
        self.node.metrics().streams_parked.inc();
        ParkTry::Parked
    }

    /// Parks the stream's `socket` with its feed's writer, or with the
    /// merged feed of its topics, if the stream may and has nothing waiting.
    pub(super) fn try_park(&mut self, socket: &Arc<SharedSocket>) -> ParkTry {
        if self.try_park_on_topic(socket) {
            return ParkTry::Parked;
        }
        self.try_park_merged(socket)
    }

    /// Parks the stream's `socket` with its feed's writer if the stream may
    /// and has nothing waiting; returns whether it did.
    fn try_park_on_topic(&mut self, socket: &Arc<SharedSocket>) -> bool {
        let Some((index, reads)) = self.park_filter() else {
            return false;
        };
        if socket.has_unsent() || self.live.receivers.len() != self.topics.len() {
            return false;
        }
        // An event of another topic waiting would take the socket straight
        // back. One that comes after this check does so too, and it is
        // written then. A closed channel is read first too: the stream
        // attaches again (see `live_batch`).
        let others_waiting = self
            .live
            .receivers
            .iter()
            .enumerate()
            .any(|(i, r)| i != index && (!r.is_empty() || r.is_closed()));
        if others_waiting {
            return false;
        }
        let cursor = (!self.single_topic).then(|| self.cursor_around(index));
        let topic = &self.topics[index];
        let Some((ticket, pos)) = topic.feed.park(
            &self.live.receivers[index],
            reads,
            cursor,
            topic.pos,
            socket,
            &self.node,
        ) else {
            return false;
        };
        // Nothing the stream reads came between its position and the head.
        self.topics[index].pos = pos;
        if self.single_topic {
            // The writer takes the events from here: the stream's own queue
            // would only fill up.
            self.live.receivers.clear();
            let topic = &self.topics[index];
            if let Some(path) = only_path(&topic.patterns).filter(|_| topic.by_path) {
                topic.feed.forget_path_if_unread(path);
            }
        } else {
            // Left in place, unread: other topics keep their index, and an
            // unread receiver costs its channel nothing.
            self.live.parked = Some(index);
        }
        self.parked = Some(Box::new(Parking {
            ticket,
            merged: None,
        }));
        self.node.metrics().streams_parked.inc();
        true
    }

    /// Takes the socket back (see [`Self::unpark`]): the stream writes what
    /// the writer left of a partial frame, or goes on.
    fn take_socket_back(&mut self) -> ParkedWake {
        match self.unpark() {
            Err(reason) => ParkedWake::End(reason),
            Ok(Some(rest)) => ParkedWake::Write(rest),
            Ok(None) => ParkedWake::Resume,
        }
    }

    /// Whether the task that writes the stream's parked socket (its topic's
    /// writer, or its merged feed's relay) has stopped taking events in; if
    /// so it is replaced, with a warning, and the stream is to take its
    /// socket back. Never expected: a safety net, so that a writer that
    /// stops or hangs costs its streams a heartbeat interval or two, not
    /// the rest of their lives.
    fn replaced_a_stuck_writer(&self, ticket: &Ticket) -> bool {
        match self.parked.as_ref().and_then(|p| p.merged.as_ref()) {
            Some(merged) => {
                if !merged.relay_stuck(self.node.config().heartbeat()) {
                    return false;
                }
                warn!(topics = %merged.topics(), "the relay of a merged feed's parked streams relayed no event for a heartbeat interval; its streams take their sockets back and a new relay starts");
                merged.replace_relay();
            }
            None => {
                if !ticket.writer_stuck() {
                    return false;
                }
                let topic = &self.topics[self.live.parked.unwrap_or(0)];
                warn!(topic = %topic.feed.topic, parked_at = topic.pos, head = topic.feed.head(), "the writer of a topic's parked streams took no event for a heartbeat interval; its streams take their sockets back and a new writer starts");
                ticket.replace_writer();
            }
        }
        self.node.metrics().parked_writer_stalls.inc();
        true
    }

    /// Whether the stream is parked.
    pub(super) fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Takes the socket back from the feed's writer: the stream attaches to
    /// its feed again and catches up from where the socket stands. Returns
    /// bytes of a partial write, which must be written before anything else.
    pub(super) fn unpark(&mut self) -> Result<Option<Bytes>, CloseReason> {
        let Some(parking) = self.parked.take() else {
            return Ok(None);
        };
        self.node.metrics().streams_parked.dec();
        let Parking { ticket, merged } = *parking;
        let returned = ticket.take_back().ok_or(CloseReason::Error)?;
        if let Some(merged) = merged {
            return self.unpark_merged(&merged, returned);
        }
        let index = self.live.parked.take().unwrap_or(0);
        let topic = &mut self.topics[index];
        // The writer's events go on the topic's run: a long one makes it
        // the busy topic to park on again after the event that took the
        // socket back; a short one counts as a turn, so a stream whose
        // topics take turns does not park and come back for each event.
        let before = if self.run.0 == index as u32 {
            self.run.1
        } else {
            0
        };
        self.run = (index as u32, before.saturating_add(returned.run));
        topic.pos = topic.pos.max(returned.pos);
        if topic.feed.is_closed() && topic.follow_successor() {
            self.merge_wait = None;
        }
        let attachment = topic.feed.attach(topic.channel());
        topic.catch_up_to = attachment.head.max(topic.pos);
        if self.single_topic {
            self.live.receivers = vec![attachment.receiver];
            self.live.next = 0;
        } else {
            self.live.receivers[index] = attachment.receiver;
        }
        let ended = if topic.feed.is_closed() {
            Some(CloseReason::TopicClosed)
        } else if returned.refused
            && !topic.by_path
            && topic.catch_up_to - topic.pos > topic.feed.queue_events() as u64
        {
            // A socket that stopped taking bytes while further behind than a
            // live client may lag is cut, as that client would be.
            Some(CloseReason::Slow)
        } else {
            None
        };
        let behind = topic.pos < topic.catch_up_to;
        self.take_over(ended, behind, returned.remainder)
    }

    /// Writes `event`, of the topic at `index`, through the socket parked
    /// on another topic, if that topic is still the busy one: it has sent
    /// a run of events since the last event of another topic. The stream
    /// stays parked, and the writer's events carry its new cursor. `None`
    /// if the event is not written so: the stream takes its socket back
    /// and writes it itself.
    fn write_through_parked(&mut self, index: usize, event: &Arc<Event>) -> Option<ParkedWake> {
        let parking = self.parked.as_deref()?;
        let parked = self.live.parked?;
        if parking.merged.is_some() || index == parked || event.is_drain_marker() {
            return None;
        }
        let topic = &self.topics[index];
        if event.seq <= topic.pos {
            // Had already, as the stream's own delivery would find.
            return Some(ParkedWake::Resume);
        }
        if !topic.matches(&event.path) {
            return None;
        }
        // The busy topic's run: what the stream wrote of it before it
        // parked, if its last run was that topic's, and what the writer
        // wrote since.
        let (run_topic, run) = self.run;
        let written_before = if run_topic == parked as u32 { run } else { 0 };
        let min_run = PARK_AFTER_RUN.saturating_sub(written_before);
        let had = std::mem::replace(&mut self.topics[index].pos, event.seq);
        let cursor = self.cursor_around(parked);
        let ticket = &self.parked.as_deref()?.ticket;
        let through = ticket.write_through(&event.frame[..event.body_len], cursor, min_run);
        let wake = match through {
            Through::Not => {
                self.topics[index].pos = had;
                return None;
            }
            Through::Whole { pos, run } => {
                self.run = (parked as u32, written_before.saturating_add(run));
                self.topics[parked].pos = pos;
                self.last_wrote = Some(Instant::now());
                ParkedWake::Resume
            }
            // The rest of the frame comes back with the socket, first.
            Through::Partly => self.take_socket_back(),
        };
        // As the stream's own delivery counts it: a long run of the busy
        // topic, then one of this topic.
        self.note_run(index);
        self.node.metrics().events_delivered.inc();
        Some(wake)
    }

    /// Takes the socket back from a merged feed: every topic resumes from
    /// the set's cursor where the socket stands.
    fn unpark_merged(
        &mut self,
        merged: &MergedFeed,
        returned: Returned,
    ) -> Result<Option<Bytes>, CloseReason> {
        self.run = (0, 0);
        let Some(cursor) = merged.cursor_at(returned.pos) else {
            // Not expected: a socket stands at its relay's last pass or
            // later, and its stream asks as soon as it is woken, while the
            // relay remembers five seconds. Should it happen, the stream
            // ends and the client resumes from the last id it got.
            return self.take_over(Some(CloseReason::Error), false, returned.remainder);
        };
        let mut ended = None;
        let mut behind = false;
        let mut receivers = Vec::with_capacity(self.topics.len());
        for (topic, pos) in self.topics.iter_mut().zip(cursor) {
            topic.pos = topic.pos.max(pos);
            if topic.feed.is_closed() {
                topic.follow_successor();
            }
            let attachment = topic.feed.attach(topic.channel());
            topic.catch_up_to = attachment.head.max(topic.pos);
            receivers.push(attachment.receiver);
            behind |= topic.pos < topic.catch_up_to;
            if topic.feed.is_closed() {
                ended = Some(CloseReason::TopicClosed);
            } else if returned.refused
                && !topic.by_path
                && topic.catch_up_to - topic.pos > topic.feed.queue_events() as u64
            {
                ended = ended.or(Some(CloseReason::Slow));
            }
        }
        self.live.receivers = receivers;
        self.live.next = 0;
        self.take_over(ended, behind, returned.remainder)
    }

    /// The stream's part once its socket is back: end it for `ended`,
    /// after the `remainder` of a partial frame if there is one; or catch up
    /// if it is `behind` its feeds, writing the remainder first.
    fn take_over(
        &mut self,
        ended: Option<CloseReason>,
        behind: bool,
        remainder: Option<Bytes>,
    ) -> Result<Option<Bytes>, CloseReason> {
        if let Some(reason) = ended {
            if remainder.is_none() {
                return Err(reason);
            }
            // The partial frame is completed first, or the client would
            // read the closing bytes as part of it.
            self.close_at = Some((Instant::now(), reason));
            return Ok(remainder);
        }
        if behind {
            self.catching_up = 0;
            self.rejoining = true;
        }
        if let Some(rest) = &remainder {
            let now = Instant::now();
            self.last_wrote = Some(now);
            self.pacer
                .record_write(now, rest.len() >= super::PACED_WRITE_MAX);
        }
        Ok(remainder)
    }

    /// Waits while parked, on what only the stream itself can act on: its
    /// deadline (`close_at`, with its reason), its heartbeat, its client
    /// leaving, and the writer giving the socket back.
    pub(super) async fn wait_parked(
        &mut self,
        close_at: Option<(Instant, CloseReason)>,
        peer: Option<&TcpStream>,
    ) -> ParkedWake {
        enum Woke {
            Deadline,
            Heartbeat,
            Peer(bool),
            GivenBack,
            Other(LiveItem),
        }
        let mut timer = self
            .timer
            .take()
            .expect("the timer is put back after each wait");
        let deadline = close_at.map(|(at, _)| at);
        let Some(ticket) = self.parked.as_ref().map(|p| &p.ticket) else {
            self.timer = Some(timer);
            return ParkedWake::Resume;
        };
        // A stream of several topics still reads the others.
        let reads_others = self.live.parked.is_some();
        let (live, topics) = (&mut self.live, &self.topics);
        let woke = tokio::select! {
            biased;
            fired = timer.wait(deadline) => match fired {
                TimerFired::Other => Woke::Deadline,
                TimerFired::Heartbeat => Woke::Heartbeat,
            },
            gone = peer_closed(peer), if peer.is_some() => Woke::Peer(gone),
            _ = ticket.given_back() => Woke::GivenBack,
            item = live.next(|index| topics[index].may_hold_news()), if reads_others => {
                Woke::Other(item)
            }
        };
        self.timer = Some(timer);
        match woke {
            Woke::Peer(false) => ParkedWake::Resume,
            Woke::Peer(true) => {
                let _ = self.unpark();
                ParkedWake::Gone
            }
            Woke::Heartbeat => {
                if self.replaced_a_stuck_writer(ticket) {
                    return self.take_socket_back();
                }
                let last_wrote = self.last_wrote.max(ticket.writer_wrote_at());
                let timer = self.timer.as_mut().expect("the timer was put back");
                if timer.defer_after(last_wrote) {
                    return ParkedWake::Resume;
                }
                match ticket.heartbeat(HEARTBEAT) {
                    Beat::Sent => {
                        self.last_wrote = Some(Instant::now());
                        self.node.metrics().heartbeats.inc();
                        ParkedWake::Resume
                    }
                    Beat::Refused => match self.unpark() {
                        Err(reason) => ParkedWake::End(reason),
                        Ok(Some(rest)) => ParkedWake::Write(rest),
                        Ok(None) => {
                            self.node.metrics().heartbeats.inc();
                            ParkedWake::Write(Bytes::from_static(HEARTBEAT))
                        }
                    },
                }
            }
            Woke::Deadline => {
                let reason = close_at.map_or(CloseReason::Shutdown, |(_, r)| r);
                match self.unpark() {
                    Err(reason) => ParkedWake::End(reason),
                    Ok(Some(rest)) => {
                        // The partial frame first; the deadline is met next.
                        self.close_at = Some((Instant::now(), reason));
                        ParkedWake::Write(rest)
                    }
                    Ok(None) => ParkedWake::End(reason),
                }
            }
            Woke::GivenBack => self.take_socket_back(),
            Woke::Other(item) => {
                if let LiveItem::Event(index, event) = &item
                    && let Some(wake) = self.write_through_parked(*index, event)
                {
                    return wake;
                }
                // Handled once the parked topic has caught up: its events
                // and this one's are in no order with each other, but each
                // topic's own stay in theirs.
                self.live.held = Some(Box::new(item));
                self.take_socket_back()
            }
        }
    }
}
