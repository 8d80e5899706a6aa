//! A stream's side of parking (see [`super::parked`]): when it may leave
//! its socket with its feed's writer, and how it takes it back.

use std::sync::Arc;

use bytes::Bytes;
use tokio::{net::TcpStream, time::Instant};

use crate::connection::SharedSocket;

use super::{ClientStream, CloseReason, HEARTBEAT, only_path, peer_closed, sleep_until_opt};

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
    /// The path whose events the stream would take from its feed's writer
    /// (`Some(None)`: every event of the feed), if it may park at all: one
    /// topic, caught up, not ending, and reading either every event of its
    /// feed or one concrete path.
    fn park_filter(&self) -> Option<Option<&str>> {
        if !self.node.config().delivery.park_streams
            || !self.single_topic
            || self.catching_up < self.topics.len()
            || self.jetstream_read.is_some()
            || self.close_at.is_some()
            || self.lone_frame.is_some()
        {
            return None;
        }
        let topic = &self.topics[0];
        let one_path = only_path(&topic.patterns);
        if topic.by_path {
            return one_path.map(Some);
        }
        let takes_every_event = match topic.patterns.as_slice() {
            [one] => {
                one.is_whole_topic()
                    || (one_path.is_some() && one_path == topic.feed.path.as_deref())
            }
            _ => false,
        };
        takes_every_event.then_some(None)
    }

    /// Parks the stream's `socket` with its feed's writer if the stream may
    /// and has nothing waiting; returns whether it did.
    pub(super) fn try_park(&mut self, socket: &Arc<SharedSocket>) -> bool {
        let Some(path) = self.park_filter() else {
            return false;
        };
        if socket.has_unsent() {
            return false;
        }
        let [receiver] = self.live.receivers.as_slice() else {
            return false;
        };
        let topic = &self.topics[0];
        let Some((ticket, pos)) = topic
            .feed
            .park(receiver, path, topic.pos, socket, &self.node)
        else {
            return false;
        };
        // Nothing the stream reads came between its position and the head.
        self.topics[0].pos = pos;
        // The writer takes the events from here: the stream's own queue would
        // only fill up.
        self.live.receivers.clear();
        self.parked = Some(Box::new(ticket));
        self.node.metrics().streams_parked.inc();
        true
    }

    /// Whether the stream is parked.
    pub(super) fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// Whether the writer wrote to the parked socket since the last call.
    pub(super) fn parked_wrote(&self) -> bool {
        self.parked.as_ref().is_some_and(|t| t.take_wrote())
    }

    /// Takes the socket back from the feed's writer: the stream attaches to
    /// its feed again and catches up from where the socket stands. Returns
    /// bytes of a partial write, which must be written before anything else.
    pub(super) fn unpark(&mut self) -> Result<Option<Bytes>, CloseReason> {
        let Some(ticket) = self.parked.take() else {
            return Ok(None);
        };
        self.node.metrics().streams_parked.dec();
        let returned = (*ticket).take_back().ok_or(CloseReason::Error)?;
        let topic = &mut self.topics[0];
        topic.pos = topic.pos.max(returned.pos);
        let channel = if topic.by_path {
            only_path(&topic.patterns)
        } else {
            None
        };
        let attachment = topic.feed.attach(channel);
        topic.catch_up_to = attachment.head.max(topic.pos);
        self.live.receivers = vec![attachment.receiver];
        self.live.next = 0;
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
        if let Some(reason) = ended {
            if returned.remainder.is_none() {
                return Err(reason);
            }
            // The partial frame is completed first, or the client would
            // read the closing bytes as part of it.
            self.close_at = Some((Instant::now(), reason));
            return Ok(returned.remainder);
        }
        if topic.pos < topic.catch_up_to {
            self.catching_up = 0;
            self.rejoining = true;
        }
        if let Some(rest) = &returned.remainder {
            self.wrote_since_heartbeat = true;
            self.pacer
                .record_write(Instant::now(), rest.len() >= super::PACED_WRITE_MAX);
        }
        Ok(returned.remainder)
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
        }
        let mut heartbeat = self
            .heartbeat
            .take()
            .expect("heartbeat is put back after each wait");
        let deadline = close_at.map(|(at, _)| at);
        let Some(ticket) = self.parked.as_ref() else {
            self.heartbeat = Some(heartbeat);
            return ParkedWake::Resume;
        };
        let woke = tokio::select! {
            biased;
            _ = sleep_until_opt(deadline), if deadline.is_some() => Woke::Deadline,
            _ = heartbeat.tick() => Woke::Heartbeat,
            gone = peer_closed(peer), if peer.is_some() => Woke::Peer(gone),
            _ = ticket.given_back() => Woke::GivenBack,
        };
        self.heartbeat = Some(heartbeat);
        match woke {
            Woke::Peer(false) => ParkedWake::Resume,
            Woke::Peer(true) => {
                let _ = self.unpark();
                ParkedWake::Gone
            }
            Woke::Heartbeat if self.parked_wrote() || self.wrote_since_heartbeat => {
                self.wrote_since_heartbeat = false;
                ParkedWake::Resume
            }
            Woke::Heartbeat if ticket.heartbeat(HEARTBEAT) => {
                self.node.metrics().heartbeats.inc();
                ParkedWake::Resume
            }
            Woke::Heartbeat => match self.unpark() {
                Err(reason) => ParkedWake::End(reason),
                Ok(Some(rest)) => ParkedWake::Write(rest),
                Ok(None) => {
                    self.node.metrics().heartbeats.inc();
                    ParkedWake::Write(Bytes::from_static(HEARTBEAT))
                }
            },
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
            Woke::GivenBack => match self.unpark() {
                Err(reason) => ParkedWake::End(reason),
                Ok(Some(rest)) => ParkedWake::Write(rest),
                Ok(None) => ParkedWake::Resume,
            },
        }
    }
}
