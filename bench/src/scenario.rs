//! The coordinator: one scenario against one server, measured.
//!
//! A run goes: create the topics (sse-node) → sample the server processes →
//! start the workers and wait until every connection streams → sample
//! again → publish (or kill a node and publish, or only wait) → poll the
//! workers until every connection has the last counter of its subject →
//! sample a third time → collect the workers' figures. The result is one
//! JSON object on stdout (see [`report`](crate::report) for the table).
//!
//! `--probe 1` (sse-node) runs the [consumer probe](crate::probe) beside
//! the node and reports its latency as `consumer_p50_ms`/`consumer_p99_ms`.
//!
//! For sse-node, the node's own split of its lag is read from its
//! `/metrics` before and after the event phase ([`node_lag`](crate::node_lag)):
//! `node_read_*` up to its topic feed's read, `node_written_*` up to the
//! write on a client's socket, each quantile as the upper bound of its
//! bucket; `node_parked_refusals`, parked sockets that did not take a whole
//! write because their client had not read enough.
//!
//! `--variant NAME` names a configuration of the target in the tables
//! (`no pacing`); by default a multi-subject node run is named by its
//! layout.
//!
//! Scenarios (defaults in brackets, each overridable by a flag):
//! - `fanout`: `--subscribers` [1000] on one subject, `--rate` [1000]/s for
//!   `--duration` [10] s, `--payload` [100] bytes;
//! - `latency`: as fan-out at 100 events/s (100k deliveries/s);
//! - `saturation`: as fan-out at 10,000 events/s offered, more than any
//!   server here keeps up with: what each one achieves;
//! - `quiet`: 10,000 subscribers over `--subjects` [1000] subjects, 1,000
//!   events/s in total; on sse-node `--layout paths` (one topic, subject
//!   paths `<topic>.p<i>`) or `streams` (one topic, so one stream, each);
//! - `idle`: 15,000 connections, nothing published, held `--duration` [5] s;
//!   memory per connection is (RSS with them − RSS before) / N;
//! - `storm`: 10,000 subscribers spread over two `--url`s; the process
//!   named by `--kill` is sent SIGKILL, `--events` [1000] are published at
//!   once, and the run measures when every subscriber has them all;
//! - `catchup`: one subscriber resumes from before a `--backlog` [100000]
//!   events long history, written beforehand by `sse-bench prefill`.
//!
//! The kind of request, in any scenario: `--header "Name: value"` (may
//! repeat: `Origin`, `Cookie`), `--tls-ca CERT.pem` (TLS, trusting that
//! certificate for `localhost`; `--tls-version 1.2` offers only TLS 1.2),
//! `--h2-streams N` (HTTP/2, N streams per
//! connection: h2c, or with `--tls-ca` TLS with ALPN `h2`; granting
//! Chromium's flow-control windows; `--h2-window BYTES` grants BYTES per
//! stream and per connection instead, 65535 being the protocol's default),
//! `--query "name=value"` (added to each request's
//! query string, e.g. `access_token=…`); `--private 1` creates the topics
//! private; `--also-topics a,b` (sse-node) has each stream read these
//! quiet topics too, beside its own, and `--spread-topics 1` publishes to
//! its own and these in turn instead; `--wildcard 1` (sse-node) has each
//! stream read the children of its topic or path with a wildcard
//! (`?topic=<path>.*`), and publishes to one child of each (`<path>.e`), as
//! a user's channels are read; `--storage memory` (sse-node) creates
//! the topics' streams in memory rather than in files, and `--republish 0`
//! (sse-node) without the republish the admin service gives them;
//! `--replicas 3` (sse-node) keeps them on three servers of a NATS cluster. Against Nchan or the bare loop, `--publish-url host:port`
//! publishes there instead of the first `--url` (a server whose
//! subscribers' port speaks TLS or HTTP/2 only).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdin, ChildStdout, Command},
};
use tokio_rustls::TlsConnector;

use crate::{
    args::Args,
    histogram::Histogram,
    node_lag,
    probe::Probe,
    procstat::{self, Sample},
    publish::Publisher,
    sse::{Body, parse_head, payload, payload_in_lane},
    worker::{self, MAX_CONNECTIONS_PER_WORKER, WorkerConfig, WorkerStats, now_us},
};

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// sse-node with JetStream behind it.
    Node,
    /// nginx with the Nchan module.
    Nchan,
    /// `sse-bench bare`: pre-encoded frames written to every socket from
    /// one loop, the floor for a server's cost per delivery.
    Bare,
}

/// Names of things for one run: what clients request, where events go.
struct Plan {
    /// Request target per subject.
    paths: Vec<String>,
    /// Topics to create (sse-node).
    topics: Vec<String>,
    /// Publish subject (NATS, without prefix) or channel (Nchan) per subject.
    publish_to: Vec<String>,
}

impl Plan {
    fn new(target: Target, base: &str, subjects: usize, layout: &str, scenario: &str) -> Self {
        let name = |i: usize| {
            if subjects == 1 {
                base.to_owned()
            } else {
                format!("{base}-{i}")
            }
        };
        match target {
            Target::Node if layout == "paths" && subjects > 1 => Self {
                paths: (0..subjects)
                    .map(|i| format!("/v1/events?topic={base}.p{i}"))
                    .collect(),
                topics: vec![base.to_owned()],
                publish_to: (0..subjects).map(|i| format!("{base}.p{i}")).collect(),
            },
            Target::Node => Self {
                paths: (0..subjects)
                    .map(|i| format!("/v1/events?topic={}", name(i)))
                    .collect(),
                topics: (0..subjects).map(name).collect(),
                publish_to: (0..subjects).map(name).collect(),
            },
            Target::Nchan | Target::Bare => {
                let sub = if scenario == "catchup" {
                    "/sub_oldest"
                } else {
                    "/sub"
                };
                Self {
                    paths: (0..subjects)
                        .map(|i| format!("{sub}?id={}", name(i)))
                        .collect(),
                    topics: Vec::new(),
                    publish_to: (0..subjects).map(name).collect(),
                }
            }
        }
    }
}

/// Topics per stream with `--topic-sets`.
const SET_SIZE: usize = 3;

impl Plan {
    /// `--topic-sets S`: S streams' worth of different sets of three topics,
    /// as streams that combine a team's, a region's and a product's topic
    /// read them. The topics come in three families of F each, F the
    /// smallest with F³ ≥ S; set `s` reads the `s mod F`-th of the first
    /// family, the `(s / F) mod F`-th of the second and the `(s / F²) mod
    /// F`-th of the third. Events go to the 3F topics in turn, so each stream
    /// gets a third of an F-th of them, its topics taking turns. Returns
    /// each path's lanes: the places of its topics among those published to.
    fn read_topic_sets(&mut self, base: &str, sets: usize) -> Vec<Vec<usize>> {
        let families = (1..).find(|f: &usize| f.pow(3) >= sets).unwrap_or(1);
        let topic = |family: usize, i: usize| format!("{base}-{}{i}", ['a', 'b', 'c'][family]);
        self.topics = (0..SET_SIZE)
            .flat_map(|family| (0..families).map(move |i| (family, i)))
            .map(|(family, i)| topic(family, i))
            .collect();
        self.publish_to = self.topics.clone();
        let mut paths = Vec::new();
        let mut lanes = Vec::new();
        for s in 0..sets {
            let picks = [
                s % families,
                (s / families) % families,
                (s / families / families) % families,
            ];
            let set: Vec<usize> = picks
                .iter()
                .enumerate()
                .map(|(family, i)| family * families + i)
                .collect();
            let query: Vec<String> = set
                .iter()
                .map(|l| format!("topic={}", self.topics[*l]))
                .collect();
            paths.push(format!("/v1/events?{}", query.join("&")));
            lanes.push(set);
        }
        self.paths = paths;
        lanes
    }
}

impl Plan {
    /// `--user-paths U`: each stream reads a shared topic and its own user's
    /// path of a second topic (`?topic=<base>&topic=<base>-users.u<i>`), as a
    /// page with a live feed and the user's notifications does. Lane 0 is
    /// the shared topic, lane `1 + i` user `i`'s path. With `shared_path`
    /// (`--shared-path P`), the shared part is the path `<base>.<P>` of the
    /// first topic, as one room of a topic of rooms. Returns the lane of
    /// each publish in turn: one to the shared topic, then one to each of
    /// the next `between` users, and so on, so that at a publish rate of
    /// `R · (between + 1)` the shared topic gets R events a second and each
    /// user `R · between / U`.
    fn read_shared_and_user(
        &mut self,
        base: &str,
        shared_path: Option<&str>,
        users: usize,
        between: usize,
    ) -> Vec<usize> {
        let user_topic = format!("{base}-users");
        let shared = shared_path.map_or_else(|| base.to_owned(), |path| format!("{base}.{path}"));
        self.topics = vec![base.to_owned(), user_topic.clone()];
        self.publish_to = std::iter::once(shared.clone())
            .chain((0..users).map(|i| format!("{user_topic}.u{i}")))
            .collect();
        self.paths = (0..users)
            .map(|i| format!("/v1/events?topic={shared}&topic={user_topic}.u{i}"))
            .collect();
        (0..users / between)
            .flat_map(|round| {
                std::iter::once(0).chain((0..between).map(move |k| 1 + round * between + k))
            })
            .collect()
    }
}

struct Defaults {
    subscribers: usize,
    subjects: usize,
    rate: f64,
    duration: f64,
}

fn defaults(scenario: &str) -> anyhow::Result<Defaults> {
    let (subscribers, subjects, rate, duration) = match scenario {
        "fanout" => (1000, 1, 1000.0, 10.0),
        "latency" => (1000, 1, 100.0, 10.0),
        "saturation" => (1000, 1, 10_000.0, 10.0),
        "quiet" => (10_000, 1000, 1000.0, 10.0),
        "idle" => (15_000, 1, 0.0, 5.0),
        "storm" => (10_000, 1, 0.0, 0.0),
        "catchup" => (1, 1, 0.0, 0.0),
        other => bail!("unknown scenario {other:?}"),
    };
    Ok(Defaults {
        subscribers,
        subjects,
        rate,
        duration,
    })
}

fn parse_target(args: &Args) -> anyhow::Result<Target> {
    match args.required("target")? {
        "node" => Ok(Target::Node),
        "nchan" => Ok(Target::Nchan),
        "bare" => Ok(Target::Bare),
        other => bail!("unknown target {other:?} (node, nchan or bare)"),
    }
}

fn addrs(args: &Args) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = args
        .all("url")
        .iter()
        .flat_map(|u| u.split(','))
        .map(|u| u.parse().with_context(|| format!("bad --url {u:?}")))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!addrs.is_empty(), "--url host:port is required");
    Ok(addrs)
}

async fn publisher(
    target: Target,
    args: &Args,
    plan: &Plan,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<Publisher> {
    match target {
        Target::Node => {
            let url = args.get("nats").unwrap_or("nats://127.0.0.1:4222");
            let prefix = args.get("prefix").unwrap_or("sse");
            let private = args.or("private", 0u8)? == 1;
            let in_memory = storage(args)? == "memory";
            Publisher::nats(
                url,
                prefix,
                &plan.topics,
                &plan.publish_to,
                private,
                in_memory,
                republish(args)?,
                replicas(args)?,
            )
            .await
        }
        Target::Nchan | Target::Bare => Publisher::http(addr, path, &plan.publish_to).await,
    }
}

/// Where the topics' streams keep their events (`--storage file|memory`,
/// sse-node only; file unless asked, as the admin service creates them).
fn storage(args: &Args) -> anyhow::Result<&str> {
    match args.get("storage").unwrap_or("file") {
        storage @ ("file" | "memory") => Ok(storage),
        other => bail!("--storage is file or memory, not {other:?}"),
    }
}

/// Whether the topics' streams republish their events to the live subjects
/// (`--republish 1|0`, sse-node only; 1 unless asked, as the admin service
/// creates them; 0 as it did before).
fn republish(args: &Args) -> anyhow::Result<bool> {
    match args.or("republish", 1u8)? {
        0 => Ok(false),
        1 => Ok(true),
        other => bail!("--republish is 1 or 0, not {other}"),
    }
}

/// On how many servers of a NATS cluster the topics' streams keep their
/// events (`--replicas 1|3`, sse-node only; 1 unless asked, as the admin
/// service creates them).
fn replicas(args: &Args) -> anyhow::Result<usize> {
    match args.or("replicas", 1usize)? {
        replicas @ (1 | 3) => Ok(replicas),
        other => bail!("--replicas is 1 or 3, not {other}"),
    }
}

/// The topics each stream reads besides its own (`--also-topics a,b`,
/// sse-node only): created empty and, unless `--spread-topics 1`, never
/// published to, so every event is one topic's of several and each
/// delivery carries the stream's cursor over all of them.
fn also_topics(args: &Args, target: Target) -> anyhow::Result<Vec<String>> {
    let Some(list) = args.get("also-topics") else {
        return Ok(Vec::new());
    };
    anyhow::ensure!(
        target == Target::Node,
        "--also-topics applies to sse-node only"
    );
    let topics: Vec<String> = list.split(',').map(str::to_owned).collect();
    anyhow::ensure!(
        topics.iter().all(|t| !t.is_empty()),
        "--also-topics is a comma-separated list of topic names"
    );
    Ok(topics)
}

/// `sse-bench prefill`: writes `--events` payloads to one subject before a
/// catch-up run.
pub async fn prefill(args: &Args) -> anyhow::Result<()> {
    let target = parse_target(args)?;
    let topic = args.required("topic")?;
    let events: u64 = args.or("events", 100_000)?;
    let size: usize = args.or("payload", 100)?;
    let plan = Plan::new(target, topic, 1, "paths", "catchup");
    let addr = match target {
        Target::Node => "127.0.0.1:0".parse()?,
        Target::Nchan | Target::Bare => addrs(args)?[0],
    };
    let mut publisher = publisher(target, args, &plan, addr, "/pub_deep").await?;
    // Nchan's message ids count within a second in 16 bits: more than
    // 32,767 messages a second on one channel makes them wrap, and a
    // subscriber asking for the oldest then misses everything before the
    // wrap. `--rate` keeps a prefill under that.
    let rate: f64 = args.or("rate", 0.0)?;
    let started = Instant::now();
    for counter in 1..=events {
        if rate > 0.0 {
            let due = Duration::from_secs_f64((counter - 1) as f64 / rate);
            tokio::time::sleep_until((started + due).into()).await;
        }
        publisher
            .publish(0, payload(counter, now_us(), size))
            .await?;
    }
    publisher.flush().await?;
    eprintln!(
        "prefilled {events} events into {topic} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Workers {
    children: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Workers {
    async fn start(configs: Vec<WorkerConfig>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for config in configs {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            let mut line = serde_json::to_vec(&config)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            children.push((child, stdin, stdout));
        }
        Ok(Self { children })
    }

    async fn ask(&mut self, command: &worker::Command) -> anyhow::Result<Vec<WorkerStats>> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        for (_, stdin, _) in &mut self.children {
            stdin.write_all(&line).await?;
        }
        let mut all = Vec::new();
        for (_, _, stdout) in &mut self.children {
            let reply = stdout.next_line().await?.context("a worker exited")?;
            all.push(serde_json::from_str(&reply)?);
        }
        Ok(all)
    }
}

#[derive(Default)]
struct Totals {
    ready: usize,
    ever_ready: usize,
    received: u64,
    other_events: u64,
    gaps: u64,
    dups: u64,
    failed_attempts: u64,
    reconnects: u64,
    h2_stream_errors: u64,
    h2_first_error: Option<String>,
    caught_up: usize,
    first_ready_us: u64,
    last_event_us: u64,
}

fn totals(stats: &[WorkerStats]) -> Totals {
    let mut t = Totals::default();
    for s in stats {
        t.ready += s.ready;
        t.ever_ready += s.ever_ready;
        t.received += s.received;
        t.other_events += s.other_events;
        t.gaps += s.gaps;
        t.dups += s.dups;
        t.failed_attempts += s.failed_attempts;
        t.reconnects += s.reconnects;
        t.h2_stream_errors += s.h2_stream_errors;
        if t.h2_first_error.is_none() {
            t.h2_first_error.clone_from(&s.h2_first_error);
        }
        t.caught_up += s.caught_up;
        if s.first_ready_us > 0 && (t.first_ready_us == 0 || s.first_ready_us < t.first_ready_us) {
            t.first_ready_us = s.first_ready_us;
        }
        t.last_event_us = t.last_event_us.max(s.last_event_us);
    }
    t
}

fn sample_all(pids: &[(String, u32)]) -> BTreeMap<String, Sample> {
    pids.iter()
        .filter_map(|(name, pid)| Some((name.clone(), procstat::sample(*pid)?)))
        .collect()
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| procstat::sample(*p))
        .map(|s| s.cpu_s)
        .sum()
}

/// `sse-bench run`: runs one scenario and prints its result as JSON.
pub async fn run(args: &Args) -> anyhow::Result<Value> {
    let scenario = args.required("scenario")?.to_owned();
    let target = parse_target(args)?;
    let d = defaults(&scenario)?;
    let subscribers: usize = args.or("subscribers", d.subscribers)?;
    let subjects: usize = args.or("subjects", d.subjects)?;
    let rate: f64 = args.or("rate", d.rate)?;
    let duration: f64 = args.or("duration", d.duration)?;
    let size: usize = args.or("payload", 100)?;
    let events: u64 = args.or("events", 1000)?;
    let backlog: u64 = args.or("backlog", 100_000)?;
    let layout = args.get("layout").unwrap_or("paths").to_owned();
    let base = args.get("topic").unwrap_or(&scenario).to_owned();
    let settle: f64 = args.or("settle", if scenario == "idle" { 3.0 } else { 1.0 })?;
    let drain: f64 = args.or("drain", 30.0)?;
    let addrs = addrs(args)?;
    let pids: Vec<(String, u32)> = args
        .all("pid")
        .iter()
        .map(|p| {
            let (name, pid) = p.split_once('=').context("--pid is name=PID")?;
            Ok((name.to_owned(), pid.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let kill = args.get("kill").map(str::to_owned);
    // The server's cost is every process it needs, NATS included, but for
    // one killed on purpose.
    let server: Vec<String> = pids
        .iter()
        .filter(|(name, _)| Some(name) != kill.as_ref())
        .map(|(name, _)| name.clone())
        .collect();

    let mut plan = Plan::new(target, &base, subjects, &layout, &scenario);
    let wildcard = args.or("wildcard", 0u8)? == 1;
    anyhow::ensure!(
        !wildcard || target == Target::Node,
        "--wildcard is for sse-node"
    );
    if wildcard {
        for path in &mut plan.paths {
            path.push_str(".*");
        }
        for subject in &mut plan.publish_to {
            subject.push_str(".e");
        }
    }
    let also_topics = also_topics(args, target)?;
    for path in &mut plan.paths {
        for topic in &also_topics {
            path.push_str("&topic=");
            path.push_str(topic);
        }
    }
    plan.topics.extend(also_topics.iter().cloned());
    let spread = args.or("spread-topics", 0u8)? == 1;
    anyhow::ensure!(
        !spread || (!also_topics.is_empty() && subjects == 1),
        "--spread-topics 1 needs --also-topics and one subject"
    );
    // With --spread-topics, events go to each of a stream's topics in turn,
    // each topic counting its own: one lane per topic.
    let mut lanes = if spread { 1 + also_topics.len() } else { 0 };
    if spread {
        plan.publish_to.extend(also_topics.iter().cloned());
    }
    let topic_sets: usize = args.or("topic-sets", 0)?;
    let user_paths: usize = args.or("user-paths", 0)?;
    let users_between: usize = args.or("user-events-between", 10)?;
    anyhow::ensure!(
        (topic_sets == 0 && user_paths == 0)
            || (target == Target::Node && also_topics.is_empty() && subjects == 1),
        "--topic-sets and --user-paths are for sse-node, with one subject and no --also-topics"
    );
    // The lane of each publish in turn, when lanes are not published to
    // evenly; empty: round robin.
    let mut publish_order = Vec::new();
    let path_lanes = if topic_sets > 0 {
        lanes = SET_SIZE;
        plan.read_topic_sets(&base, topic_sets)
    } else if user_paths > 0 {
        anyhow::ensure!(
            users_between > 0 && user_paths.is_multiple_of(users_between),
            "--user-paths must be a multiple of --user-events-between"
        );
        lanes = 2;
        publish_order =
            plan.read_shared_and_user(&base, args.get("shared-path"), user_paths, users_between);
        (0..user_paths).map(|i| vec![0, 1 + i]).collect()
    } else {
        Vec::new()
    };
    let publish_to = lanes.max(subjects).max(plan.publish_to.len());
    if let Some(query) = args.get("query") {
        for path in &mut plan.paths {
            path.push('&');
            path.push_str(query);
        }
    }
    let publish_addr = match args.get("publish-url") {
        Some(url) => url
            .parse()
            .with_context(|| format!("bad --publish-url {url:?}"))?,
        None => addrs[0],
    };
    let mut publisher = publisher(target, args, &plan, publish_addr, "/pub").await?;
    let (last_event_id, start_counter) = match (target, scenario.as_str()) {
        (Target::Node, "catchup") => (
            Some(format!("{base}:{}:0", publisher.epoch(&base).await?)),
            0,
        ),
        _ => (None, 0),
    };

    let per_worker = args
        .or("per-worker", 7_500usize)?
        .min(MAX_CONNECTIONS_PER_WORKER);
    let worker_count: usize = args.or("workers", subscribers.div_ceil(per_worker).max(1))?;
    let base_share = subscribers / worker_count;
    let mut configs = Vec::new();
    let mut first = 0;
    for w in 0..worker_count {
        let count = base_share + usize::from(w < subscribers % worker_count);
        anyhow::ensure!(
            count <= MAX_CONNECTIONS_PER_WORKER,
            "too many connections per worker"
        );
        configs.push(WorkerConfig {
            addrs: addrs.clone(),
            paths: plan.paths.clone(),
            first_index: first,
            count,
            sources: args.or("sources", 16)?,
            last_event_id: last_event_id.clone(),
            start_counter,
            connect_concurrency: args.or("connect-concurrency", 200)?,
            retry_ms: args.get("retry-ms").map(str::parse).transpose()?,
            headers: args.all("header").to_vec(),
            tls_ca: args.get("tls-ca").map(str::to_owned),
            tls12_only: match args.get("tls-version") {
                None | Some("1.3") => false,
                Some("1.2") => true,
                Some(other) => anyhow::bail!("--tls-version {other}: 1.2 or 1.3"),
            },
            h2_streams: args.or("h2-streams", 0)?,
            h2_window: args.get("h2-window").map(str::parse).transpose()?,
            request_before: args.get("request-before").map(str::to_owned),
            lanes,
            path_lanes: path_lanes.clone(),
        });
        first += count;
    }

    let before = sample_all(&pids);
    let connect_started = Instant::now();
    let mut workers = Workers::start(configs).await?;
    let worker_pids: Vec<u32> = workers.children.iter().filter_map(|c| c.0.id()).collect();
    let ask = worker::Command::default();
    let connect_deadline = Instant::now() + Duration::from_secs(args.or("connect-timeout", 120)?);
    let mut now = totals(&workers.ask(&ask).await?);
    while now.ever_ready < subscribers && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = totals(&workers.ask(&ask).await?);
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let all_connected = now.ever_ready >= subscribers;
    if !all_connected {
        eprintln!(
            "only {} of {subscribers} connections streaming",
            now.ever_ready
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    // What a profiler attached to the server waits for (`scripts/bench
    // --profile`): from here on the samples are the scenario's, not the
    // connections'.
    eprintln!("connected {} of {subscribers}; starting", now.ever_ready);
    // The consumer probe (`--probe 1`, sse-node, one topic) reads from now.
    let probe = if args.or("probe", 0u8)? == 1 && target == Target::Node {
        let url = args.get("nats").unwrap_or("nats://127.0.0.1:4222");
        Some(Probe::start(url, &plan.topics[0]).await?)
    } else {
        None
    };
    // Scraped before the CPU samples, so that the node's work answering
    // stays out of the run's cost.
    // Not in the idle scenario: nothing is delivered, and the scrape's own
    // allocations would land in the memory per connection.
    let split_lag = target == Target::Node && scenario != "idle";
    // The node's one port speaks TLS when its streams do.
    let metrics_tls = match args.get("tls-ca") {
        Some(ca) if split_lag || scenario == "catchup" => {
            Some(worker::tls_connector(ca, b"http/1.1", false)?)
        }
        _ => None,
    };
    let lag_before = if split_lag {
        node_lag::scrape(&addrs, metrics_tls.as_ref()).await
    } else {
        Vec::new()
    };
    let connected = sample_all(&pids);
    let client_cpu_start = cpu_of(&worker_pids);

    // The event phase.
    let mut counters = vec![0u64; publish_to];
    let started_us = now_us();
    let started = Instant::now();
    let mut published = 0u64;
    let mut killed_us = None;
    let mut publish_loop_s = 0.0;
    match scenario.as_str() {
        "idle" => tokio::time::sleep(Duration::from_secs_f64(duration)).await,
        "catchup" => counters[0] = backlog,
        _ => {
            if let Some(name) = &kill {
                let (_, pid) = pids
                    .iter()
                    .find(|(n, _)| n == name)
                    .with_context(|| format!("--kill {name} names no --pid"))?;
                std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()?;
                killed_us = Some(now_us());
            }
            let total = if duration > 0.0 && rate > 0.0 {
                (rate * duration).round() as u64
            } else {
                events
            };
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // A server that slows its publisher down gets fewer events, not
            // a longer run: no publish starts after the window, and none
            // waits for room past it.
            let deadline = (duration > 0.0).then(|| {
                tokio::time::Instant::from_std(started + Duration::from_secs_f64(duration))
            });
            'publishing: while published < total
                && deadline.is_none_or(|d| tokio::time::Instant::now() < d)
            {
                let due = if rate > 0.0 {
                    tick.tick().await;
                    ((started.elapsed().as_secs_f64() * rate) as u64).min(total)
                } else {
                    total
                };
                while published < due {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        break 'publishing;
                    }
                    let subject = if publish_order.is_empty() {
                        (published % publish_to as u64) as usize
                    } else {
                        publish_order[(published % publish_order.len() as u64) as usize]
                    };
                    let counter = counters[subject] + 1;
                    let payload = if lanes > 0 {
                        payload_in_lane(counter, now_us(), subject, size)
                    } else {
                        payload(counter, now_us(), size)
                    };
                    if !publisher.publish_by(subject, payload, deadline).await? {
                        break 'publishing;
                    }
                    counters[subject] = counter;
                    published += 1;
                }
            }
            publish_loop_s = started.elapsed().as_secs_f64();
            publisher.flush().await?;
        }
    }
    let publish_s = started.elapsed().as_secs_f64();

    // Wait for every connection to have its subject's last counter.
    let wait = worker::Command {
        targets: Some(counters.clone()),
        finish: false,
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(drain);
    let mut now = totals(&workers.ask(&wait).await?);
    while scenario != "idle" && now.caught_up < subscribers && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = totals(&workers.ask(&wait).await?);
    }
    let caught_up = now.caught_up >= subscribers;
    let after = sample_all(&pids);
    let client_cpu_s = cpu_of(&worker_pids) - client_cpu_start;
    let [lag_read, lag_written, refusals] = if split_lag {
        node_lag::observed(
            &lag_before,
            &node_lag::scrape(&addrs, metrics_tls.as_ref()).await,
        )
    } else {
        Default::default()
    };
    // Streams parked on a feed's writer when the run ended: which way the
    // node delivered.
    let parked_at_end = if split_lag {
        node_lag::parked(&addrs, metrics_tls.as_ref()).await
    } else {
        None
    };
    let finish = worker::Command {
        targets: Some(counters.clone()),
        finish: true,
    };
    let stats = workers.ask(&finish).await?;
    let t = totals(&stats);
    let mut hist = Histogram::default();
    for s in &stats {
        if let Some(h) = &s.hist {
            hist.merge(h);
        }
    }

    let mut per_subject = vec![0u64; subjects];
    for g in 0..subscribers {
        per_subject[g % subjects] += 1;
    }
    let expected: u64 = if !path_lanes.is_empty() {
        (0..subscribers)
            .map(|g| {
                path_lanes[g % path_lanes.len()]
                    .iter()
                    .map(|lane| counters[*lane].saturating_sub(start_counter))
                    .sum::<u64>()
            })
            .sum()
    } else if spread {
        // Every stream reads every lane.
        subscribers as u64
            * counters
                .iter()
                .map(|c| c.saturating_sub(start_counter))
                .sum::<u64>()
    } else {
        per_subject
            .iter()
            .zip(&counters)
            .map(|(n, c)| n * c.saturating_sub(start_counter))
            .sum()
    };
    let unique = t.received.saturating_sub(t.dups);
    let lost = expected.saturating_sub(unique);
    let active_s = if t.last_event_us > started_us {
        (t.last_event_us - started_us) as f64 / 1e6
    } else {
        0.0
    };
    let cpu = |name: &str, from: &BTreeMap<String, Sample>| -> Option<f64> {
        Some(after.get(name)?.cpu_s - from.get(name)?.cpu_s)
    };
    // A catch-up happens while connecting: count from before it.
    let cpu_base = if scenario == "catchup" {
        &before
    } else {
        &connected
    };
    let cpu_sum = |names: &[String]| -> Option<f64> {
        names.iter().map(|n| cpu(n, cpu_base)).sum::<Option<f64>>()
    };
    let server_cpu_s = cpu_sum(&server);
    // A NATS cluster's servers are `nats-1`, `nats-2`, …: all of them are
    // NATS's share.
    let is_nats = |name: &str| name == "nats" || name.starts_with("nats-");
    let (nats, main): (Vec<String>, Vec<String>) =
        server.iter().cloned().partition(|name| is_nats(name));
    let nats_cpu_s = if nats.is_empty() {
        None
    } else {
        cpu_sum(&nats)
    };
    let main_cpu_s = cpu_sum(&main);
    let mut procs = serde_json::Map::new();
    for (name, _) in &pids {
        procs.insert(
            name.clone(),
            json!({
                "cpu_s": cpu(name, cpu_base),
                "rss_before_kib": before.get(name).map(|s| s.rss_kib),
                "rss_connected_kib": connected.get(name).map(|s| s.rss_kib),
                "rss_after_kib": after.get(name).map(|s| s.rss_kib),
                "hwm_kib": after.get(name).or(connected.get(name)).map(|s| s.hwm_kib),
            }),
        );
    }
    let kib_sum = |names: &[String], from: &BTreeMap<String, Sample>, f: fn(&Sample) -> u64| {
        names
            .iter()
            .map(|n| from.get(n).map(f))
            .sum::<Option<u64>>()
    };
    let rss = |s: &Sample| s.rss_kib;
    let hwm = |s: &Sample| s.hwm_kib;
    // Summed over the server's processes (each nginx worker holds its own
    // connections): what the connections added, whoever holds them.
    let rss_per_conn_kib = match (
        kib_sum(&server, &before, rss),
        kib_sum(&server, &connected, rss),
    ) {
        (Some(b), Some(c)) if subscribers > 0 => Some((c as f64 - b as f64) / subscribers as f64),
        _ => None,
    };
    let asked_rate = if scenario == "storm" || scenario == "catchup" || scenario == "idle" {
        0.0
    } else {
        rate
    };
    let mut failures = Vec::new();
    if t.ever_ready < subscribers {
        failures.push(format!("{} of {subscribers} connected", t.ever_ready));
    }
    // Events still missing when the drain ran out were late, not known
    // to be lost: say which it was.
    let missing = if caught_up || scenario == "idle" {
        "lost".to_owned()
    } else {
        format!("not delivered within the {drain:.0} s drain")
    };
    for (what, count) in [(missing.as_str(), lost), ("dups", t.dups), ("gaps", t.gaps)] {
        if count > 0 {
            failures.push(format!("{count} {what}"));
        }
    }
    if t.h2_stream_errors > 0 {
        failures.push(format!(
            "{} HTTP/2 streams ended by an error; the first: {}",
            t.h2_stream_errors,
            t.h2_first_error.as_deref().unwrap_or("unknown")
        ));
    }
    if scenario != "idle" && !caught_up {
        failures.push("not every connection caught up".to_owned());
    }
    let ms = |q: f64| hist.quantile(q) as f64 / 1000.0;
    let ack_times = publisher.ack_times().filter(|h| !h.is_empty());
    let probe_times = probe.map(Probe::finish).filter(|h| !h.is_empty());
    let variant = match args.get("variant") {
        Some(variant) => variant.to_owned(),
        None if target == Target::Node && subjects > 1 => layout.clone(),
        None => String::new(),
    };
    let mut result = json!({
        "scenario": scenario,
        "target": args.required("target")?,
        "variant": variant,
        "label": args.get("label").unwrap_or_default(),
        "kind": {
            "headers": args.all("header").iter().map(|h| h.split(':').next().unwrap_or_default()).collect::<Vec<_>>(),
            "tls": args.get("tls-ca").is_some(),
            // "1.2" when only TLS 1.2 was offered.
            "tls_version": args.get("tls-version"),
            "query": args.get("query").and_then(|q| q.split('=').next()),
            "h2_streams": args.or("h2-streams", 0)?,
            // null: Chromium's windows.
            "h2_window": args.get("h2-window"),
            // The request each connection asked for before its stream.
            "request_before": args.get("request-before"),
            "private": args.or("private", 0u8)? == 1,
            "also_topics": also_topics.len(),
            "spread_topics": spread,
            "topic_sets": topic_sets,
            "user_paths": user_paths,
            "user_events_between": (user_paths > 0).then_some(users_between),
            "shared_path": args.get("shared-path"),
            "wildcard": wildcard,
            "storage": storage(args)?,
            "republish": republish(args)?,
            "replicas": replicas(args)?,
        },
        "subscribers": subscribers,
        "subjects": subjects,
        "payload_bytes": size,
        "connected": all_connected,
        "connected_count": t.ever_ready,
        "connect_s": connect_s,
        "published": published,
        "publish_rate": if publish_loop_s > 0.0 { published as f64 / publish_loop_s } else { 0.0 },
        "kept_rate": asked_rate == 0.0 || published as f64 >= 0.98 * asked_rate * duration,
        "expected": expected,
        "received": t.received,
        "lost": lost,
        "gaps": t.gaps,
        "dups": t.dups,
        "other_events": t.other_events,
        "reconnects": t.reconnects,
        "failed_attempts": t.failed_attempts,
        "caught_up": caught_up,
        "active_s": active_s,
        "deliveries_per_s": if active_s > 0.0 { t.received as f64 / active_s } else { 0.0 },
        "server": server,
        "server_cpu_s": server_cpu_s,
        "deliveries_per_cpu_s": server_cpu_s.filter(|c| *c > 0.0).map(|c| t.received as f64 / c),
        "main_cpu_s": main_cpu_s,
        "nats_cpu_s": nats_cpu_s,
        "client_cpu_s": client_cpu_s,
        "rss_per_conn_kib": rss_per_conn_kib,
        "server_hwm_kib": kib_sum(&server, &after, hwm).or(kib_sum(&server, &connected, hwm)),
        "server_rss_before_kib": kib_sum(&server, &before, rss),
        "server_rss_connected_kib": kib_sum(&server, &connected, rss),
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": ms(1.0),
        "procs": procs,
    });
    for (name, value) in [
        ("asked_rate", json!(asked_rate)),
        ("publish_window_s", json!(duration)),
        ("publish_loop_s", json!(publish_loop_s)),
        ("publish_s", json!(publish_s)),
        (
            "ack_p50_ms",
            json!(ack_times.as_ref().map(|h| h.quantile(0.5) as f64 / 1000.0)),
        ),
        (
            "ack_p99_ms",
            json!(ack_times.as_ref().map(|h| h.quantile(0.99) as f64 / 1000.0)),
        ),
        (
            "consumer_p50_ms",
            json!(
                probe_times
                    .as_ref()
                    .map(|h| h.quantile(0.5) as f64 / 1000.0)
            ),
        ),
        (
            "consumer_p99_ms",
            json!(
                probe_times
                    .as_ref()
                    .map(|h| h.quantile(0.99) as f64 / 1000.0)
            ),
        ),
        ("ok", json!(failures.is_empty())),
        ("failures", json!(failures)),
        // Streams still open when the wait for the last events ended: with
        // losses, fewer than `connected_count` means streams ended (HTTP/2
        // streams do not reconnect); as many means streams stayed open and
        // stopped getting events.
        ("streaming_at_end", json!(now.ready)),
        ("h2_stream_errors", json!(t.h2_stream_errors)),
        ("h2_first_error", json!(t.h2_first_error)),
    ] {
        result[name] = value;
    }
    // Where the node's own part of the tail lies: the upper bounds of the
    // buckets holding each quantile (see `node_lag`).
    for (prefix, observed) in [("node_read", &lag_read), ("node_written", &lag_written)] {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            result[format!("{prefix}_{name}_le_ms")] =
                json!(node_lag::quantile_bucket(observed, q).map(|((_, upper), _)| upper * 1000.0));
        }
        result[format!("{prefix}_samples")] = json!(observed.last().map(|(_, count)| *count));
        // The whole histogram of the run, cumulative, by upper bound in ms
        // (`null` for +Inf): any quantile can be read again from the raw file.
        result[format!("{prefix}_buckets")] = json!(
            observed
                .iter()
                .map(|(upper, count)| (upper.is_finite().then_some(upper * 1000.0), *count))
                .collect::<Vec<_>>()
        );
    }
    // Parked sockets that did not take a whole write: clients that fell
    // behind in reading.
    result["node_parked_refusals"] = json!(refusals.last().map(|(_, count)| *count));
    result["node_parked_at_end"] = json!(parked_at_end);
    if let Some(killed) = killed_us {
        result["catch_up_s"] =
            json!(caught_up.then(|| t.last_event_us.saturating_sub(killed) as f64 / 1e6));
    }
    if scenario == "catchup" && t.last_event_us > t.first_ready_us {
        let seconds = (t.last_event_us - t.first_ready_us) as f64 / 1e6;
        result["catch_up_s"] = json!(seconds);
        result["replay_per_s"] = json!(unique as f64 / seconds);
        if target == Target::Node {
            result["replay_sources"] = json!(
                replay_sources(addrs[0], metrics_tls.as_ref())
                    .await
                    .unwrap_or_default()
            );
        }
    }
    Ok(result)
}

/// `sse_replay_events_total` per source, from a node's `/metrics`.
async fn replay_sources(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http_get(addr, "/metrics", tls).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("sse_replay_events_total{source=\""))
        .filter_map(|l| {
            let (source, rest) = l.split_once('"')?;
            Some((source.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect())
}

/// A plain `GET`, read until the server closes; over TLS when `tls` is
/// given (a node whose one port speaks only TLS serves `/metrics` there).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    match tls {
        None => read_answer(tcp, &request, &mut raw).await?,
        Some(tls) => {
            let stream = tls.connect(worker::tls_server_name(), tcp).await?;
            read_answer(stream, &request, &mut raw).await?;
        }
    }
    let head = parse_head(&raw).context("not an HTTP response")?;
    let mut body = Vec::new();
    Body::for_head(&head)
        .decode(&raw[head.len..], &mut body)
        .map_err(anyhow::Error::msg)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Sends `request` and reads the answer until the server closes.
async fn read_answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &str,
    raw: &mut Vec<u8>,
) -> std::io::Result<()> {
    stream.write_all(request.as_bytes()).await?;
    match stream.read_to_end(raw).await {
        // A server that closes without close_notify has still said all.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_one_publish_in_each_cycle_and_the_shared_topic_one_in_between() {
        let mut plan = Plan::new(Target::Node, "s", 1, "paths", "latency");
        let order = plan.read_shared_and_user("s", None, 20, 5);
        assert_eq!(order.len(), 24);
        assert_eq!(order.iter().filter(|l| **l == 0).count(), 4);
        for user in 1..=20 {
            assert_eq!(order.iter().filter(|l| **l == user).count(), 1);
        }
        assert_eq!(&order[..7], &[0, 1, 2, 3, 4, 5, 0]);
        assert_eq!(plan.publish_to[3], "s-users.u2");
        assert_eq!(plan.paths[2], "/v1/events?topic=s&topic=s-users.u2");
        let mut rooms = Plan::new(Target::Node, "s", 1, "paths", "latency");
        rooms.read_shared_and_user("s", Some("room"), 20, 5);
        assert_eq!(rooms.publish_to[0], "s.room");
        assert_eq!(rooms.paths[2], "/v1/events?topic=s.room&topic=s-users.u2");
    }

    #[test]
    fn topic_sets_are_distinct_and_read_one_topic_of_each_family() {
        for sets in [1, 10, 100, 1000] {
            let mut plan = Plan::new(Target::Node, "t", 1, "paths", "latency");
            let lanes = plan.read_topic_sets("t", sets);
            let families = plan.topics.len() / SET_SIZE;
            assert!(families.pow(3) >= sets && (families - 1).pow(3) < sets);
            assert_eq!(plan.paths.len(), sets);
            let distinct: std::collections::BTreeSet<_> = lanes.iter().collect();
            assert_eq!(distinct.len(), sets, "{sets} sets");
            for (path, set) in plan.paths.iter().zip(&lanes) {
                for (family, lane) in set.iter().enumerate() {
                    assert_eq!(lane / families, family);
                    assert!(
                        path.contains(&format!("topic={}&", plan.topics[*lane]))
                            || path.ends_with(&format!("topic={}", plan.topics[*lane]))
                    );
                }
            }
        }
    }
}
