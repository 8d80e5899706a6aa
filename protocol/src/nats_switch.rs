//! Leaving a NATS server that answers but cannot reach JetStream.
//!
//! A NATS server cut off from its peers, but not from its client, goes on
//! answering the client's pings, so the NATS client never leaves it. Alone
//! it has no JetStream quorum and hears none of the events its peers store:
//! a node's clients would wait, on heartbeats, for the partition to heal,
//! and admin would answer 503. What notices is a JetStream call that fails
//! while connected (a node's report write, admin's check of the same
//! bucket): when [`FAILURES_BEFORE_PROBING`] fail in a row (one), the
//! [`ServerSwitch`] asks about the report bucket's stream through its own
//! connection and, at the same time, through every server of the client's
//! pool, each over a short-lived connection of its own. If its own server
//! still gets no answer and another does, the client reconnects to that one;
//! a node's feeds go on from their last sequence as after any reconnection,
//! and its clients keep their streams. Where its own server answers again
//! (the failures were a leader election), it stays; where no other answers
//! either (the whole cluster without quorum, or the others still electing),
//! it stays and asks again at the next failure.
//!
//! The report bucket is asked about because it is replicated
//! (`cluster.nodes_bucket_replicas`, 3): its leader is on the majority's
//! side of a cut, and a copy cut off from it answers with no leader, or as
//! a leader whose followers have gone silent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind, stream::ClusterInfo};
use async_nats::{Client, ConnectOptions, ReconnectToServer, ServerAddr};
use tracing::{info, warn};

/// JetStream calls that must fail in a row, while connected, before the
/// servers are asked. One is enough: the asking itself tells a passing
/// failure (a leader election: its own server answers again, or none does
/// yet) from a cut, and every failure waited for keeps the clients waiting
/// a report interval longer.
pub const FAILURES_BEFORE_PROBING: u32 = 1;
/// How long a probe may take to connect, and then to be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a stream leader's follower may have been silent and still count
/// toward its quorum: followers answer heartbeats every second.
const FOLLOWER_HEARD_WITHIN: Duration = Duration::from_secs(4);
/// Least time between two switches, so that a cluster whose servers take
/// turns failing does not have the client reconnect at every call.
const SWITCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The server the NATS client should reconnect to next, once chosen; read
/// once by the client's reconnect callback.
#[derive(Clone, Default)]
pub struct NextServer(Arc<Mutex<Option<ServerAddr>>>);

impl NextServer {
    /// `options` with a reconnect callback that takes the chosen server, if
    /// any, and connects to it at once; otherwise the client picks as usual.
    pub fn install(&self, options: ConnectOptions) -> ConnectOptions {
        let next = self.0.clone();
        options.reconnect_to_server_callback(move |_pool, _info| {
            let chosen = next.lock().unwrap_or_else(|p| p.into_inner()).take();
            std::future::ready(chosen.map(|addr| ReconnectToServer {
                addr,
                delay: Some(Duration::ZERO),
            }))
        })
    }

    fn choose(&self, addr: ServerAddr) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }
}

/// What [`ServerSwitch::failed`] made of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Too few failures in a row yet, or a switch too recent: nothing asked.
    Counted,
    /// JetStream answers through the client's own server: the failure was
    /// the call's own (a leader election, a stream gone), not the server's.
    OwnServerAnswers,
    /// Neither its own server nor any other answers; asked again next time.
    NoneAnswers,
    /// The client left its server for one through which JetStream answers.
    Switched,
}

/// Counts a client's failed JetStream calls and switches servers when its
/// own cannot reach JetStream and another can.
pub struct ServerSwitch {
    client: Client,
    probe_options: ConnectOptions,
    next: NextServer,
    stream: String,
    failures: u32,
    last_switch: Option<Instant>,
    /// At the last look that found no server answering: whether some
    /// server of the pool could not be reached at all.
    unreachable_seen: bool,
}

impl ServerSwitch {
    /// A switch for `client`, whose options had `next` installed. Probes
    /// connect with `probe_options` (the client's credentials and TLS, none
    /// of its callbacks) and ask about the stream `stream`.
    pub fn new(
        client: Client,
        probe_options: ConnectOptions,
        next: NextServer,
        stream: String,
    ) -> Self {
        Self {
            client,
            probe_options,
            next,
            stream,
            failures: 0,
            last_switch: None,
            unreachable_seen: false,
        }
    }

    /// The stream the switch asks about.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Failed calls in a row since JetStream last answered.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the last look that found JetStream answering through no
    /// server also found a server of the pool it could not reach: the
    /// client is on the cut-off side of a partition, rather than in a
    /// cluster whose JetStream is away for everyone (electing its meta
    /// leader, or without quorum), where every server answers the client.
    pub fn cut_off(&self) -> bool {
        self.unreachable_seen
    }

    /// A JetStream call through the client was answered.
    pub fn answered(&mut self) {
        self.failures = 0;
    }

    /// A JetStream call through the client failed while it was connected.
    pub async fn failed(&mut self) -> Verdict {
        self.failures += 1;
        if self.failures < FAILURES_BEFORE_PROBING
            || self
                .last_switch
                .is_some_and(|at| at.elapsed() < SWITCH_AT_MOST_EVERY)
        {
            return Verdict::Counted;
        }
        let current = self.client.server_info();
        let pool = match tokio::time::timeout(PROBE_TIMEOUT, self.client.server_pool()).await {
            Ok(Ok(pool)) => pool,
            _ => return Verdict::Counted,
        };
        let probes = pool.into_iter().map(|server| {
            let options = self.probe_options.clone();
            let stream = self.stream.as_str();
            async move {
                let (reached, answered) = probe(options, server.addr.clone(), stream).await;
                (server.addr, reached, answered)
            }
        });
        let (own_answered, probed) = futures_util::future::join(
            jetstream_answers(&self.client, &self.stream),
            futures_util::future::join_all(probes),
        )
        .await;
        if own_answered {
            self.failures = 0;
            return Verdict::OwnServerAnswers;
        }
        self.unreachable_seen = probed.iter().any(|(_, reached, _)| !reached);
        let answers = probed
            .into_iter()
            .map(|(addr, _, answer)| (addr, answer))
            .collect();
        let elsewhere = confirmed_elsewhere(answers, &current.server_id);
        // Asked again at the next failure: the others may be electing the
        // stream's leader now.
        let Some(addr) = elsewhere else {
            if self.failures == FAILURES_BEFORE_PROBING {
                info!(
                    nats.server = %current.server_name,
                    "JetStream does not answer through this NATS server, nor yet through any other; asking again at each failure"
                );
            }
            return Verdict::NoneAnswers;
        };
        self.failures = 0;
        warn!(
            nats.server = %current.server_name,
            to = %addr.as_url_str(),
            "this NATS server answers but cannot reach JetStream (cut off from its peers?); moving to one that can"
        );
        self.next.choose(addr);
        if self.client.force_reconnect().await.is_err() {
            // The client is closing: nothing to switch.
            return Verdict::NoneAnswers;
        }
        self.last_switch = Some(Instant::now());
        Verdict::Switched
    }
}

/// What a server answered about the stream: its own id, and the stream's
/// leader as it names it (empty for a stream that is not clustered, or
/// that does not exist).
type Answer = (String, String);

/// The first server, other than `current`, whose answer names a leader that
/// another server names too. A leader just cut off from its followers goes
/// on answering for itself for a few seconds, alone: it is not to be moved
/// to. A stream that is not clustered needs no second word.
fn confirmed_elsewhere(
    answers: Vec<(ServerAddr, Option<Answer>)>,
    current: &str,
) -> Option<ServerAddr> {
    let named_by = |leader: &str| {
        let mut servers: Vec<&str> = answers
            .iter()
            .filter_map(|(_, answer)| answer.as_ref())
            .filter(|(_, named)| named == leader)
            .map(|(server, _)| server.as_str())
            .collect();
        servers.sort_unstable();
        servers.dedup();
        servers.len()
    };
    answers
        .iter()
        .find(|(_, answer)| {
            answer.as_ref().is_some_and(|(server, leader)| {
                server != current && (leader.is_empty() || named_by(leader) >= 2)
            })
        })
        .map(|(addr, _)| addr.clone())
}

/// Connects to `addr` alone and asks it about `stream`: whether it could
/// connect, and the server's id and the leader it names, when JetStream
/// answers through it.
async fn probe(options: ConnectOptions, addr: ServerAddr, stream: &str) -> (bool, Option<Answer>) {
    let client = match tokio::time::timeout(
        PROBE_TIMEOUT,
        options
            .connection_timeout(PROBE_TIMEOUT)
            .ignore_discovered_servers()
            .connect(addr),
    )
    .await
    {
        Ok(Ok(client)) => client,
        _ => return (false, None),
    };
    let server_id = client.server_info().server_id;
    let answer = tokio::time::timeout(PROBE_TIMEOUT, leader_answering(&client, stream))
        .await
        .ok()
        .flatten()
        .map(|leader| (server_id, leader));
    (true, answer)
}

/// Whether a stream's info comes from a leader that holds its quorum
/// ([`led`]); always for a stream that is not clustered. Info from a copy
/// without a leader, or from a leader cut off from its followers, may be
/// behind what the stream holds, and is no ground to think it went back.
pub fn answered_with_quorum(info: &jetstream::stream::Info) -> bool {
    info.cluster.as_ref().is_none_or(led)
}

/// Whether a stream's info, as its leader tells it, shows a leader that
/// has heard lately from enough followers to make a quorum with them. A
/// follower answers about the stream only when it has no leader; a leader
/// cut off from its followers goes on answering for a while (NATS takes
/// about 20 s to notice it has lost its quorum), but its followers' last
/// activity grows from the cut, where a leader's followers answer its
/// heartbeats every second.
fn led(cluster: &ClusterInfo) -> bool {
    let has_leader = cluster.leader.as_deref().is_some_and(|l| !l.is_empty());
    let heard = cluster
        .replicas
        .iter()
        .filter(|peer| !peer.offline && peer.active <= FOLLOWER_HEARD_WITHIN)
        .count();
    let copies = cluster.replicas.len() + 1;
    // With the leader, more than half of all the copies.
    has_leader && (heard + 1) * 2 > copies
}

/// Whether JetStream answers a question about `stream` through `client`
/// within [`PROBE_TIMEOUT`]: with its info from a leader that holds its
/// quorum ([`led`]), or that it does not exist. Through a server cut off
/// from the stream's leader the question goes unanswered, is answered that
/// JetStream is not available, or (the server holding a copy) with that
/// copy's info and no leader, or an old leader's with silent followers.
pub async fn jetstream_answers(client: &Client, stream: &str) -> bool {
    leader_answering(client, stream).await.is_some()
}

/// As [`jetstream_answers`], with the leader that answered: empty for a
/// stream that is not clustered, or that does not exist.
async fn leader_answering(client: &Client, stream: &str) -> Option<String> {
    let js = jetstream::new(client.clone());
    match tokio::time::timeout(PROBE_TIMEOUT, js.get_stream(stream)).await {
        Ok(Ok(found)) if answered_with_quorum(found.cached_info()) => Some(
            found
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|cluster| cluster.leader.clone())
                .unwrap_or_default(),
        ),
        Ok(Err(error))
            if matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(answer) if answer.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Some(String::new())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream::PeerInfo;

    fn cluster(leader: Option<&str>, followers: &[(u64, bool)]) -> ClusterInfo {
        let info = serde_json::json!({
            "leader": leader,
            "replicas": followers
                .iter()
                .enumerate()
                .map(|(i, (active_ms, offline))| serde_json::json!({
                    "name": format!("n{i}"),
                    "current": true,
                    "active": active_ms * 1_000_000,
                    "offline": offline,
                }))
                .collect::<Vec<_>>(),
        });
        serde_json::from_value(info).expect("cluster info")
    }

    #[test]
    fn a_leader_heard_by_enough_followers_leads() {
        assert!(led(&cluster(Some("n9"), &[(300, false), (900, false)])));
        assert!(led(&cluster(Some("n9"), &[(300, false), (60_000, false)])));
        // Five copies: the leader and two of four followers.
        assert!(led(&cluster(
            Some("n9"),
            &[(100, false), (200, false), (60_000, false), (60_000, false)]
        )));
        // One copy: nobody else to hear from.
        assert!(led(&cluster(Some("n9"), &[])));
    }

    #[test]
    fn a_copy_without_a_leader_or_a_leader_left_alone_does_not_lead() {
        assert!(!led(&cluster(None, &[(300, false), (300, false)])));
        assert!(!led(&cluster(Some(""), &[(300, false), (300, false)])));
        // Cut off: its followers silent since.
        assert!(!led(&cluster(
            Some("n9"),
            &[(5_000, false), (5_000, false)]
        )));
        // Offline followers do not count, however recent.
        assert!(!led(&cluster(Some("n9"), &[(100, true), (100, true)])));
        assert!(!led(&cluster(
            Some("n9"),
            &[
                (100, false),
                (60_000, false),
                (60_000, false),
                (60_000, false)
            ]
        )));
    }

    fn answer(server: &str, leader: &str) -> Option<Answer> {
        Some((server.to_owned(), leader.to_owned()))
    }

    fn addr(port: u16) -> ServerAddr {
        format!("nats://127.0.0.1:{port}").parse().expect("address")
    }

    #[test]
    fn a_server_is_moved_to_when_another_names_the_same_leader() {
        // Its own server (a) cut off: b and c both name c.
        let answers = vec![
            (addr(1), None),
            (addr(2), answer("b", "c")),
            (addr(3), answer("c", "c")),
        ];
        assert_eq!(confirmed_elsewhere(answers, "a"), Some(addr(2)));
        // Duplicates of one server (configured and discovered) are one word.
        let answers = vec![(addr(2), answer("b", "b")), (addr(4), answer("b", "b"))];
        assert_eq!(confirmed_elsewhere(answers, "a"), None);
        // Not clustered: nobody else to ask.
        assert_eq!(
            confirmed_elsewhere(vec![(addr(2), answer("b", ""))], "a"),
            Some(addr(2))
        );
    }

    #[test]
    fn a_leader_answering_alone_is_not_moved_to_and_its_own_server_is_not_a_move() {
        // x just cut off still answers as the leader; the others elect.
        let answers = vec![
            (addr(1), None),
            (addr(2), None),
            (addr(3), answer("x", "x")),
        ];
        assert_eq!(confirmed_elsewhere(answers, "a"), None);
        // The others elected y, x still answers for itself: neither confirmed.
        let answers = vec![(addr(2), answer("b", "y")), (addr(3), answer("x", "x"))];
        assert_eq!(confirmed_elsewhere(answers, "a"), None);
        // Its own server's word counts toward the leader, not as a move.
        let answers = vec![(addr(1), answer("a", "y")), (addr(2), answer("y", "y"))];
        assert_eq!(confirmed_elsewhere(answers.clone(), "y"), Some(addr(1)));
        assert_eq!(confirmed_elsewhere(answers, "a"), Some(addr(2)));
    }

    #[test]
    fn peer_info_reads_active_in_nanoseconds() {
        let peer: PeerInfo = serde_json::from_value(serde_json::json!({
            "name": "n1", "current": true, "active": 1_500_000_000u64
        }))
        .expect("peer info");
        assert_eq!(peer.active, Duration::from_millis(1500));
    }
}
