"""Feeds by interest under chaos: a node reads a topic (or one path of it)
only while it has clients for it, so feeds start, linger and stop all the
time. None of that may cost a client an event, or send one twice.

Each client here changes what it reads at every reconnect: another path
of the topic, the whole topic, or another topic, resuming with the id it
last saw. The nodes close every stream after a short lifetime, so clients
reconnect (to any node, through HAProxy) many times a run. The check is
per connection: a connection that resumed from sequence `c` of a topic
must deliver exactly the events of that topic after `c` that match its
subscription, in stream order, up to the last one it got; and the last
connection of each client must reach the end of what was published.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from cluster.harness import metric_sum
from cluster.sse import Event, SseClient
from cluster.workload import MetricsWatcher, chaos_timeout, wait_for

pytestmark = [pytest.mark.needs_node]

PATHS = 6


def matches(pattern: str, subject: str) -> bool:
    """Whether a subscription (a topic, a path, a wildcard) reads `subject`."""
    if "." not in pattern:
        return subject.split(".", 1)[0] == pattern
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class HoppingClient(SseClient):
    """An EventSource-like client that reads something else after every
    reconnect, recording what each connection delivered."""

    def __init__(self, name: str, port: int, choices: list[str], rng: random.Random):
        super().__init__(name, port, "", on_event=self._event, stall_seconds=8)
        self.choices = choices
        self.rng = rng
        # The first id of each connection (its id-only frame): where a
        # connection that did not resume this topic starts.
        dispatch = self.parser._dispatch

        def recording_dispatch():
            had = self.parser._id_buffer
            ev = dispatch()
            if had is not None and self.segments and self.segments[-1][3] is None:
                self.segments[-1][3] = had
            return ev

        self.parser._dispatch = recording_dispatch
        # One entry per connection: [subscription, topic -> seq resumed from,
        # events as (topic, seq, subject), the connection's first id].
        self.segments: list[list] = []
        # Per connection that was answered: (wall-clock time of the request,
        # subscription, the node that served it).
        self.requests: list[tuple[float, str, str]] = []

    async def _one_connection(self, stop: asyncio.Event) -> None:
        sub = self.rng.choice(self.choices)
        self.path = f"/v1/events?topic={sub}"
        cursor = {}
        for part in filter(None, self.parser.last_event_id.split(",")):
            topic, _epoch, seq = part.rsplit(":", 2)
            cursor[topic] = int(seq)
        self.segments.append([sub, cursor, [], None])
        asked_at, answered = time.time(), len(self.stats.served_by)
        await super()._one_connection(stop)
        if len(self.stats.served_by) > answered:
            self.requests.append((asked_at, sub, self.stats.served_by[answered]))

    def _event(self, _client: SseClient, ev: Event) -> None:
        if ev.type != "message":
            raise AssertionError(f"{self.name}: unexpected {ev.type} event: {ev.data}")
        subject = json.loads(ev.data)["subject"]
        topic = subject.split(".", 1)[0]
        seq = int([p for p in ev.id.split(",") if p.startswith(topic + ":")][0].rsplit(":", 1)[1])
        self.segments[-1][2].append((topic, seq, subject))


async def publish_round_robin(urls: list[str], topics: list[str], total: int, rate: float, published: dict) -> None:
    """Publishes `total` events at `rate`, each to the next topic and path,
    recording topic -> {seq: subject} from the acks."""
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=2)
    t0 = time.monotonic()
    try:
        for n in range(total):
            topic = topics[n % len(topics)]
            subject = f"{topic}.p{(n // len(topics)) % PATHS}"
            body = json.dumps({"n": n, "subject": subject}).encode()
            while True:
                try:
                    ack = await js.publish(f"sse.{subject}", body, timeout=1.0, headers={"Nats-Msg-Id": f"{subject}-{n}"})
                    break
                except Exception:  # noqa: BLE001 - a publish in a fault is retried, de-duplicated
                    await asyncio.sleep(0.05)
            published[topic][ack.seq] = subject
            delay = t0 + (n + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await nc.close()


def start_of(sub: str, cursor: dict[str, int], first_id: str | None) -> int | None:
    """The sequence a connection starts after: the one it resumed from, or,
    when its Last-Event-ID did not name the topic, the one its id-only frame
    gave (a live start)."""
    topic = sub.split(".", 1)[0]
    if topic in cursor:
        return cursor[topic]
    if first_id is None:
        return None
    part = [p for p in first_id.split(",") if p.startswith(topic + ":")]
    return int(part[0].rsplit(":", 1)[1]) if part else None


def check(clients: list[HoppingClient], published: dict[str, dict[int, str]]) -> list[str]:
    """Problems, one line per faulty connection or client."""
    problems = []
    for c in clients:
        for i, (sub, cursor, got, first_id) in enumerate(c.segments):
            topic = sub.split(".", 1)[0]
            if not got:
                continue
            start = start_of(sub, cursor, first_id)
            if start is None:
                problems.append(f"{c.name} connection {i} ({sub}): events before any id")
                continue
            last = got[-1][1]
            expected = [s for s in sorted(published[topic]) if start < s <= last and matches(sub, published[topic][s])]
            actual = [s for _, s, _ in got]
            if actual != expected:
                missing = sorted(set(expected) - set(actual))
                dups = [s for s, k in Counter(actual).items() if k > 1]
                problems.append(
                    f"{c.name} connection {i} ({sub}, from {topic}:{start}, served by {c.stats.served_by[i] if i < len(c.stats.served_by) else '?'}): "
                    f"{len(actual)} events, expected {len(expected)}; missing {missing[:5]}, twice {dups[:5]}"
                )
        # The last connection must have caught up with everything it reads.
        if c.segments:
            sub, cursor, last_got, first_id = c.segments[-1]
            topic = sub.split(".", 1)[0]
            wanted = [s for s in published[topic] if matches(sub, published[topic][s])]
            got = [s for _, s, _ in last_got]
            start = start_of(sub, cursor, first_id) or 0
            if wanted and max(wanted) > start and (not got or got[-1] != max(wanted)):
                problems.append(f"{c.name}: last connection ({sub}) ended at {got[-1] if got else start}, not {max(wanted)}")
    return problems


async def run_hops(
    c,
    topics: list[str],
    clients: int,
    total: int,
    rate: float,
    action=None,
    seed: int | None = None,
    choices_of=None,
) -> dict:
    """Runs `clients` hopping clients while `total` events are published;
    `choices_of(i)` gives what client `i` may read (by default: any path,
    whole topic or wildcard of any topic)."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    choices = [f"{t}.p{i}" for t in topics for i in range(PATHS)] + topics + [f"{t}.*" for t in topics]
    fleet = [
        HoppingClient(f"h{i}", c.lb_port, choices_of(i) if choices_of else choices, random.Random(rng.random()))
        for i in range(clients)
    ]
    stop = asyncio.Event()
    watcher = MetricsWatcher(c)
    published: dict[str, dict[int, str]] = defaultdict(dict)
    tasks = [asyncio.create_task(cl.run(stop)) for cl in fleet]
    watcher.start()
    try:
        await wait_for(lambda: all(cl.parser.last_event_id for cl in fleet), 60, "every client holds a cursor")
        pub = asyncio.create_task(publish_round_robin(c.nats_urls, topics, total, rate, published))
        if action is not None:
            await action(published)
        await pub
        # Every client, whatever it reads last, reaches the end of it.
        def caught_up() -> bool:
            return not check(fleet, published)
        await wait_for(caught_up, 45, "every client to catch up", soft=True)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

        # With every client gone, each node stops each of its feeds after
        # the linger time; the last scrape then counts those stops too.
        def feeds_live() -> float:
            return sum(metric_sum(c.metrics(n) or {}, "sse_feeds_live") for n in c.running_nodes())

        await wait_for(lambda: feeds_live() == 0, 15, "every feed to stop once its clients left", soft=True)
        await watcher.stop()
    problems = check(fleet, published)
    figures = {
        "seed": seed,
        "clients": clients,
        "events": total,
        "connections": sum(len(cl.segments) for cl in fleet),
        "events delivered": sum(len(seg[2]) for cl in fleet for seg in cl.segments),
        "feed starts": int(watcher.total("sse_feed_starts_total")),
        "feed stops": int(watcher.total("sse_feed_stops_total")),
        "replayed memory": int(watcher.total("sse_replay_events_total", source="memory")),
        "replayed jetstream": int(watcher.total("sse_replay_events_total", source="jetstream")),
        "closed by nodes": watcher.by_label("sse_connections_closed_total", "reason"),
    }
    print(f"\n[hops] {json.dumps(figures)}")
    return {"problems": problems, "figures": figures, "fleet": fleet}


NODE_ENV = {
    # Streams end every 1-1.2 s, so every client reconnects (and hops) often.
    "SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS": "1",
    # Feeds stop a second after their last client: they start and stop all run.
    "SSE_DELIVERY__FEED_LINGER_SECONDS": "1",
    # Small memories, so resumes also read JetStream.
    "SSE_HISTORY__MAX_EVENTS_PER_TOPIC": "20",
    "SSE_HISTORY__WARM_EVENTS": "10",
}


@pytest.mark.timeout(chaos_timeout(180))
def test_clients_hopping_between_topics_and_paths_lose_nothing(node_binary, cluster_factory):
    topics = ["ha", "hb"]
    c = cluster_factory(nodes=2, topics=[(t, 3) for t in topics], node_env=NODE_ENV)
    result = asyncio.run(run_hops(c, topics, clients=40, total=600, rate=40.0))
    f = result["figures"]
    assert not result["problems"], f"{len(result['problems'])} problems:\n" + "\n".join(result["problems"][:10])
    # The scenario did what it says: clients hopped, feeds started while
    # they did, and resumes were served from both sources.
    assert f["connections"] >= 40 * 5, f
    # How many feeds start depends on timing: feeds linger 1 s and clients
    # reuse them. How many stop while clients still hop depends on it more
    # (a whole-topic feed that some client always reads never stops), so
    # stops are not counted during the run.
    assert f["feed starts"] >= 4, f
    # No node was killed, so once the clients have left, every feed that
    # started has stopped: a node keeps no feed that nobody reads.
    assert f["feed stops"] == f["feed starts"], f
    assert f["replayed memory"] > 0 and f["replayed jetstream"] > 0, f


@pytest.mark.timeout(chaos_timeout(180))
def test_a_node_killed_while_many_feeds_start(node_binary, cluster_factory):
    topics = [f"m{i}" for i in range(12)]
    env = dict(NODE_ENV, SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS="3")
    c = cluster_factory(nodes=3, topics=[(t, 3) for t in topics], node_env=env)
    killed = {}

    async def action(published) -> None:
        # Right after the first events, while every node is starting feeds
        # for the clients that hop onto new topics and paths.
        await wait_for(lambda: sum(len(v) for v in published.values()) >= 30, 30, "the first events")
        victim = max(c.running_nodes(), key=lambda n: metric_sum(c.metrics(n) or {}, "sse_feeds_live"))
        killed["node"] = victim
        killed["feeds"] = metric_sum(c.metrics(victim) or {}, "sse_feeds_live")
        c.kill(victim)
        await asyncio.sleep(3)
        c.start_proc(victim, wait=False)
        await asyncio.to_thread(c.wait_ready, victim)

    result = asyncio.run(run_hops(c, topics, clients=60, total=720, rate=48.0, action=action))
    f = result["figures"]
    assert not result["problems"], f"{len(result['problems'])} problems:\n" + "\n".join(result["problems"][:10])
    assert killed.get("feeds", 0) >= 5, f"the killed node ran few feeds: {killed}"
    assert f["feed starts"] >= 30, f


def feed_stops_logged(log: Path) -> list[tuple[float, str]]:
    """(wall-clock time, topic) of every feed stop a node logged as JSON
    (debug level for `sse_node::topics`)."""
    stops = []
    for line in log.read_text(errors="replace").splitlines():
        if "stopping topic feed" not in line or not line.startswith("{"):
            continue
        entry = json.loads(line)
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        stops.append((at, entry["topic"]))
    return stops


@pytest.mark.timeout(chaos_timeout(180))
def test_clients_connecting_as_their_feeds_stop_lose_nothing(node_binary, cluster_factory):
    """Each client reads one subscription and, after every stream ends,
    comes back 0.9-2.1 s later: about when the feed it left stops (1 s of
    linger, then the next sweep within 1 s). So requests keep arriving just
    before a feed stops (it is reused), just after (a new one starts and the
    resume reads JetStream) and at the same moment."""
    topics = [f"s{i}" for i in range(8)]
    env = dict(
        NODE_ENV,
        SSE_HTTP__RETRY_MS="900",
        SSE_HTTP__RETRY_JITTER_MS="1200",
        SSE_LOG__FORMAT="json",
        SSE_LOG__LEVEL="info,sse_node::topics=debug",
        # A feed that starts again holds only the last two events, so a
        # client that was away for a stop resumes from JetStream.
        SSE_HISTORY__WARM_EVENTS="2",
    )
    c = cluster_factory(nodes=2, topics=[(t, 3) for t in topics], node_env=env)
    # Two clients per topic: one reads it whole, one reads a path of it.
    subscriptions = [t for t in topics] + [f"{t}.p{i % PATHS}" for i, t in enumerate(topics)]
    # Whether requests meet their feed's stop depends on timing, which a busy
    # machine shifts: another round of hops (at most three in all) until the
    # scenario has done what it says often enough. Every round must lose
    # nothing.
    near = 0
    fleet = []
    for _ in range(3):
        result = asyncio.run(
            run_hops(c, topics, clients=len(subscriptions), total=480, rate=20.0, choices_of=lambda i: [subscriptions[i]])
        )
        f = result["figures"]
        assert not result["problems"], f"{len(result['problems'])} problems:\n" + "\n".join(result["problems"][:10])
        fleet += result["fleet"]
        # The scenario did what it says: requests for a topic reached a node
        # within 250 ms of that node stopping the topic's feed.
        stops = {name: feed_stops_logged(c.procs[name].log) for name in c.running_nodes()}
        near = 0
        for client in fleet:
            for asked_at, sub, server in client.requests:
                topic = sub.split(".", 1)[0]
                if any(t == topic and abs(at - asked_at) <= 0.25 for at, t in stops.get(server, [])):
                    near += 1
        f["requests within 250 ms of their feed stopping"] = near
        f["stops logged"] = sum(len(s) for s in stops.values())
        print(f"[stopping] {json.dumps(f)}")
        # The nodes' counters run on from round to round.
        if near >= 10 and f["replayed memory"] > 0 and f["replayed jetstream"] > 0:
            break
    assert f["stops logged"] >= 20 and f["feed stops"] >= f["stops logged"], f
    assert near >= 10, f
    assert f["replayed memory"] > 0 and f["replayed jetstream"] > 0, f
