"""The load every chaos test runs: a publisher, a fleet of SSE clients, a
metrics watcher, and the check that every client holds every event once.

The publisher sends `{"n": <counter>}` to one topic at a steady rate with
JetStream publish, retrying a timed-out or refused publish with the same
`Nats-Msg-Id` (so a retry of a publish that did land is de-duplicated).
Clients connect before the first publish, so each must end with exactly
`1..total`, in order.

With several topics, each client reads all of them on one stream and the
publisher sends event `n` to topic `n % k`, so the topics take turns. Each
client must then hold `1..total` once, each topic's events in order (the
topics' events among each other in any order), and every id must be the
exact cursor: the event's own topic moved on, every other one where it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .harness import LOOPBACK, Cluster, http_get, metric_sum
from .sse import Event, SseClient
from .tcp_proxy import TcpProxy

# Filled by `Scenario.report()`; printed at the end of the pytest run.
FIGURES: list[tuple[str, dict]] = []


class Publisher:
    def __init__(self, urls: list[str], subject: str | list[str], total: int, rate: float, first: int = 1):
        """Publishes events numbered `first`, `first + 1`, … (`total` of them)."""
        self.urls = urls
        self.first = first
        # Event n goes to subjects[n % len(subjects)].
        self.subjects = [subject] if isinstance(subject, str) else list(subject)
        self.total = total
        self.rate = rate
        self.run_id = secrets.token_hex(4)
        self.published = 0
        self.retries = 0
        self.duplicates = 0
        self.errors: Counter[str] = Counter()
        self.max_ack_seconds = 0.0
        # n -> monotonic time JetStream acknowledged event n: from then on
        # every client should get it within moments.
        self.acked_at: dict[int, float] = {}
        self.done = asyncio.Event()
        self._progress = asyncio.Condition()

    async def wait_published(self, n: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.published >= n)

    async def run(self) -> None:
        import nats
        import nats.errors
        import nats.js.errors

        nc = await nats.connect(
            servers=self.urls,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
            # A server that freezes keeps the connection open: pings find
            # it out in seconds, not nats-py's default four minutes.
            ping_interval=2,
            max_outstanding_pings=2,
            name="chaos-publisher",
        )
        js = nc.jetstream(timeout=2)
        t0 = time.monotonic()
        try:
            for k in range(1, self.total + 1):
                n = self.first + k - 1
                payload = json.dumps({"n": n}).encode()
                headers = {"Nats-Msg-Id": f"{self.run_id}-{n}"}
                started = time.monotonic()
                while True:
                    try:
                        subject = self.subjects[n % len(self.subjects)]
                        ack = await js.publish(subject, payload, timeout=1.0, headers=headers)
                        if ack.duplicate:
                            self.duplicates += 1
                        break
                    except (
                        nats.errors.TimeoutError,
                        nats.errors.NoRespondersError,
                        nats.errors.ConnectionReconnectingError,
                        nats.js.errors.ServiceUnavailableError,
                        nats.js.errors.NoStreamResponseError,
                        nats.js.errors.APIError,
                        asyncio.TimeoutError,
                    ) as e:
                        self.retries += 1
                        self.errors[type(e).__name__] += 1
                        await asyncio.sleep(0.05)
                acked = time.monotonic()
                self.acked_at[n] = acked
                self.max_ack_seconds = max(self.max_ack_seconds, acked - started)
                async with self._progress:
                    self.published = k
                    self._progress.notify_all()
                delay = t0 + k / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            self.done.set()
            await nc.close()


class Fleet:
    """`count` SSE clients of one topic, or of several on one stream, through
    the load balancer."""

    def __init__(
        self,
        port: int,
        topic: str | list[str],
        count: int,
        stall_seconds: float = 10.0,
        reads: list[str] | None = None,
        cycle: list[int] | None = None,
    ):
        """`reads`: what each client asks for of each topic (a `topic=`
        value each, in the topics' order; the topics themselves if not
        given). `cycle`: the topic (its index) of event n is
        `cycle[n % len(cycle)]`; the topics take turns if not given."""
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.topic = self.topics[0]
        self.cycle = cycle or list(range(len(self.topics)))
        query = "&".join(f"topic={t}" for t in (reads or self.topics))
        self.clients = [
            SseClient(f"c{i}", port, f"/v1/events?{query}", on_event=self._on_event, stall_seconds=stall_seconds)
            for i in range(count)
        ]
        self.received: dict[str, list[int]] = {c.name: [] for c in self.clients}
        # When each client first got each event (monotonic), for stall checks.
        self.received_at: dict[str, dict[int, float]] = {c.name: {} for c in self.clients}
        self.other_events: Counter[str] = Counter()
        self.bad_ids: dict[str, int] = {}
        self._cursor: dict[str, tuple[str, int]] = {}
        # Clients of several topics: each topic's (epoch, seq) in the last id.
        self._cursors: dict[str, dict[str, tuple[str, int]]] = {}
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _on_event(self, client: SseClient, ev: Event) -> None:
        if ev.type != "message":
            self.other_events[ev.type] += 1
            return
        n = int(json.loads(ev.data)["n"])
        self.received[client.name].append(n)
        self.received_at[client.name].setdefault(n, time.monotonic())
        if len(self.topics) > 1:
            self._check_cursor(client.name, n, ev.id)
            return
        # The id is the resume cursor `<topic>:<epoch>:<seq>`: one epoch, and
        # sequences that only go up.
        topic, epoch, seq = ev.id.rsplit(":", 2)
        prev = self._cursor.get(client.name)
        if topic != self.topic or (prev and (prev[0] != epoch or int(seq) <= prev[1])):
            self.bad_ids[client.name] = self.bad_ids.get(client.name, 0) + 1
        self._cursor[client.name] = (epoch, int(seq))

    def _check_cursor(self, name: str, n: int, id_: str) -> None:
        """The id of event `n` of a client of several topics: every topic in
        the client's order, one epoch each, the event's own topic past where
        it was and every other one where it was."""
        own = self.topics[self.cycle[n % len(self.cycle)]]
        positions = [p.rsplit(":", 2) for p in id_.split(",")]
        prev = self._cursors.get(name)
        ok = [t for t, _, _ in positions] == self.topics
        now = {t: (e, int(q)) for t, e, q in positions} if ok else {}
        if ok and prev is not None:
            for topic, (epoch, seq) in now.items():
                was_epoch, was = prev[topic]
                moved = seq > was if topic == own else seq == was
                ok = ok and epoch == was_epoch and moved
        if not ok:
            self.bad_ids[name] = self.bad_ids.get(name, 0) + 1
        if now:
            self._cursors[name] = now
            self._cursor[name] = now[own]

    async def start(self, timeout: float = 60.0) -> None:
        for i, c in enumerate(self.clients):
            self._tasks.append(asyncio.create_task(c.run(self.stop_event), name=c.name))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not flood the accept queues
        # Ready when every client has its first cursor (the id-only frame).
        await wait_for(lambda: all(c.parser.last_event_id for c in self.clients), timeout, "every client holds a cursor")

    async def wait_all(self, total: int, timeout: float) -> None:
        await wait_for(lambda: all(len(r) >= total for r in self.received.values()), timeout, f"every client to hold {total} events", soft=True)
        # Let late duplicates show up before judging.
        await asyncio.sleep(0.5)

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spread(self) -> Counter[str]:
        return Counter(c.current_server for c in self.clients if c.current_server)

    def verify(self, total: int) -> list[str]:
        """Problems found, one line per faulty client (empty when all is well)."""
        expected = list(range(1, total + 1))
        problems = []
        for name, got in self.received.items():
            if name in self.bad_ids:
                problems.append(f"{name}: {self.bad_ids[name]} event ids out of step (last {self._cursor.get(name)})")
            if got == expected:
                continue
            counts = Counter(got)
            dups = sorted(n for n, k in counts.items() if k > 1)
            missing = sorted(set(expected) - set(counts))
            k = len(self.topics)
            # Several topics: in order within each topic, any order among them.
            lanes = [[n for n in got if self.cycle[n % len(self.cycle)] == lane] for lane in range(k)]
            disorder = sum(1 for lane in lanes for a, b in zip(lane, lane[1:]) if b <= a)
            if k > 1 and not dups and not missing and not disorder:
                continue
            problems.append(
                f"{name}: {len(got)} events, missing {len(missing)} {_ranges(missing)}, "
                f"duplicated {len(dups)} {_ranges(dups)}, out of order {disorder}, "
                f"served by {self._client(name).stats.served_by}"
            )
        return problems

    def delivery_delays(self, acked_at: dict[int, float], until: float) -> dict[str, tuple[float, int]]:
        """Per client, the longest time an acknowledged event waited before
        the client got it, and which event: how long the client sat silent
        while its topic moved on. Heartbeats do not count. An event never
        received counts until `until`."""
        out = {}
        for name, got in self.received_at.items():
            worst, which = 0.0, 0
            for n, acked in acked_at.items():
                delay = got.get(n, until) - acked
                if delay > worst:
                    worst, which = delay, n
            out[name] = (worst, which)
        return out

    def _client(self, name: str) -> SseClient:
        return self.clients[int(name[1:])]


class MetricsWatcher:
    """Scrapes every running node's /metrics each `interval`, keeping the last
    sample of each process incarnation, so counters of killed nodes still count."""

    def __init__(self, cluster: Cluster, interval: float = 1.0):
        self.cluster = cluster
        self.interval = interval
        self.last: dict[tuple[str, int], dict[str, float]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []  # (t, clients per node)
        self._task: asyncio.Task | None = None

    async def scrape(self) -> dict[str, float]:
        async def one(name: str):
            p = self.cluster[name]
            inc = p.incarnation
            m = await asyncio.to_thread(self.cluster.metrics, name, 1.0)
            if m is not None:
                self.last[(name, inc)] = m
                return name, metric_sum(m, "sse_clients_connected")
            return name, None

        res = await asyncio.gather(*(one(n) for n in self.cluster.running_nodes()))
        clients = {n: v for n, v in res if v is not None}
        self.samples.append((time.monotonic(), clients))
        return clients

    async def _loop(self) -> None:
        while True:
            try:
                await self.scrape()
            except Exception:  # noqa: BLE001 - a node may die mid-scrape
                pass
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.scrape()

    def by_label(self, name: str, label: str) -> dict[str, int]:
        """Counter `name` summed over nodes, per value of `label`."""
        out: dict[str, int] = {}
        for m in self.last.values():
            for key, value in m.items():
                if key.split("{", 1)[0] != name or f'{label}="' not in key:
                    continue
                v = key.split(f'{label}="', 1)[1].split('"', 1)[0]
                out[v] = out.get(v, 0) + int(value)
        return dict(sorted(out.items()))

    def total(self, name: str, **labels: str) -> float:
        return sum(metric_sum(m, name, **labels) for m in self.last.values())

    def node_states(self) -> dict[str, dict[str, int]]:
        """Each node incarnation's last sample of what tells a stalled feed
        (events read) from stalled delivery (events written, parked)."""
        names = {
            "read": "sse_feed_events_total",
            "delivered": "sse_events_delivered_total",
            "clients": "sse_clients_connected",
            "parked": "sse_streams_parked",
            "feed stalls": "sse_feed_stalls_total",
            "feed errors": "sse_feed_errors_total",
            "dozing": "sse_feeds_dozing",
            "consumers": "sse_jetstream_consumers",
            "nats reconnects": "sse_nats_reconnects_total",
        }
        return {
            f"{node}#{inc}": {k: int(metric_sum(m, v)) for k, v in names.items()}
            for (node, inc), m in sorted(self.last.items())
        }


async def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1, soft: bool = False) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            if soft:
                return False
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
    return True


async def stream_leader(urls: list[str], stream: str, timeout: float = 30.0, not_: str | None = None) -> str:
    """The server name of the stream's current Raft leader (other than `not_`,
    which the survivors may go on naming until they elect a new one)."""
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster and info.cluster.leader and info.cluster.leader != not_:
                    return info.cluster.leader
            except Exception:  # noqa: BLE001 - no leader during an election
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader for {stream}")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def scale() -> dict:
    """Workload size: small by default; `SSE_CHAOS_SOAK=1` for a long soak,
    or `SSE_CHAOS_CLIENTS` / `SSE_CHAOS_EVENTS` / `SSE_CHAOS_RATE` to pick."""
    import os

    soak = os.environ.get("SSE_CHAOS_SOAK") == "1"
    return {
        "clients": int(os.environ.get("SSE_CHAOS_CLIENTS", 1000 if soak else 300)),
        "total": int(os.environ.get("SSE_CHAOS_EVENTS", 6000 if soak else 400)),
        "rate": float(os.environ.get("SSE_CHAOS_RATE", 40 if soak else 20)),
    }


def chaos_timeout(seconds: float) -> float:
    """A test's time bound, stretched for the opt-in soak."""
    import os

    return seconds * 8 if os.environ.get("SSE_CHAOS_SOAK") == "1" else seconds


def _ranges(ns: list[int], limit: int = 6) -> str:
    if not ns:
        return ""
    out, start, prev = [], ns[0], ns[0]
    for n in ns[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return "[" + ", ".join(out[:limit]) + (" …" if len(out) > limit else "") + "]"


@dataclass
class Scenario:
    """One chaos run: clients connect, the publisher runs while `action`
    does its damage, then every client must hold every event exactly once."""

    cluster: Cluster
    name: str
    topic: str
    clients: int = 300
    total: int = 500
    rate: float = 25.0
    settle_seconds: float = 45.0
    stall_seconds: float = 10.0
    # Longest an acknowledged event may wait before a client gets it: a
    # client silent for longer while events flow has stalled.
    max_delivery_delay: float = 10.0
    # Set by an action that kills a stream's leader: the moment its
    # successor was seen. An event acknowledged just before the kill is
    # stored on a quorum, but the followers learn that it was committed only
    # from the next leader, so no reader anywhere can see it before then.
    # Such an event's wait counts from this moment, not from its ack.
    unreadable_until: float | None = None
    extra: dict = field(default_factory=dict)
    # Topics each client reads besides `topic`, on the same stream; the
    # publisher's events take turns among all of them.
    also_topics: tuple[str, ...] = ()
    # What each client asks for of each topic, if not the whole topic: a
    # `<topic>.*` read gets its events published to `<topic>.x`.
    reads: tuple[str, ...] = ()
    # The topic (its index) of each event, in a cycle, if the topics do not
    # simply take turns.
    cycle: tuple[int, ...] = ()
    # The NATS servers the publisher may use, if not all of them.
    publisher_urls: tuple[str, ...] = ()

    async def run(self, action: Callable[["Scenario"], Awaitable[None]]) -> list[str]:
        topics = [self.topic, *self.also_topics]
        reads = list(self.reads) or topics
        cycle = list(self.cycle) or list(range(len(topics)))
        self.fleet = Fleet(
            self.cluster.lb_port, topics, self.clients, stall_seconds=self.stall_seconds, reads=reads, cycle=cycle
        )
        subjects = [f"sse.{t}.x" if r.endswith(".*") else f"sse.{t}" for t, r in zip(topics, reads)]
        self.publisher = Publisher(list(self.publisher_urls) or self.cluster.nats_urls, [subjects[i] for i in cycle], self.total, self.rate)
        self.watcher = MetricsWatcher(self.cluster)
        started = time.monotonic()
        try:
            await self.fleet.start()
            self.extra["initial spread"] = dict(sorted(self.fleet.spread().items()))
            self.watcher.start()
            pub = asyncio.create_task(self.publisher.run())
            act = asyncio.create_task(action(self))
            done, _ = await asyncio.wait({pub, act}, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # raise the first failure
            await asyncio.gather(pub, act)
            await self.fleet.wait_all(self.total, self.settle_seconds)
        finally:
            await self.watcher.stop()
            await self.fleet.stop()
        self.elapsed = time.monotonic() - started
        readable_at = self.publisher.acked_at
        if self.unreadable_until is not None:
            readable_at = {n: max(t, self.unreadable_until) for n, t in readable_at.items()}
        self.delays = self.fleet.delivery_delays(readable_at, time.monotonic())
        problems = self.fleet.verify(self.total)
        self.report(problems)
        return problems

    def assert_clean(self, problems: list[str]) -> None:
        """Every client holds every event once, in order; no reset, no stall."""
        assert not problems, f"{len(problems)} of {self.clients} clients are wrong:\n" + "\n".join(problems[:10])
        assert not self.fleet.other_events.get("reset"), f"reset events: {dict(self.fleet.other_events)}"
        stalls = sum(c.stats.stalls for c in self.fleet.clients)
        assert stalls == 0, f"{stalls} streams went silent for {self.stall_seconds}s"
        assert not self.stalled(), (
            f"{len(self.stalled())} of {self.clients} clients sat silent while events flowed "
            f"(an event waited over {self.max_delivery_delay}s):\n" + "\n".join(self.stalled()[:10])
        )

    def stalled(self) -> list[str]:
        """Clients that waited too long for an acknowledged event, each with
        the event, the wait and the node that held the client then."""
        out = []
        for name, (delay, n) in sorted(self.delays.items(), key=lambda kv: -kv[1][0]):
            if delay <= self.max_delivery_delay:
                continue
            client = self.fleet._client(name)
            node = client.server_at(self.publisher.acked_at[n])
            got = len(self.fleet.received[name])
            out.append(
                f"{name}: event {n} came {delay:.1f}s after its ack or the election it waited for (on {node} at the ack; "
                f"{got} events in all; served by {client.stats.served_by})"
            )
        return out

    async def at(self, fraction: float) -> None:
        """Wait until this fraction of the events is published. Under
        `SSE_CHAOS_JITTER=1` (the soak) the moment moves by up to ±0.08, so
        repeated runs hit the faults at other instants."""
        if os.environ.get("SSE_CHAOS_JITTER") == "1":
            fraction = min(0.95, max(0.02, fraction + random.uniform(-0.08, 0.08)))
        self.extra.setdefault("fault moments", []).append(round(fraction, 3))
        await self.publisher.wait_published(max(1, int(self.total * fraction)))

    def report(self, problems: list[str]) -> dict:
        stats = [c.stats for c in self.fleet.clients]
        http_errors: Counter[int] = Counter()
        for s in stats:
            http_errors.update(s.http_errors)
        gaps = sorted(s.max_event_gap for s in stats)
        fig = {
            "clients": len(stats),
            "events": self.total,
            "rate/s": self.rate,
            "clients exact": len(stats) - len({p.split(":", 1)[0] for p in problems}),
            "reconnects": sum(s.reconnects for s in stats),
            "longest gap s": round(gaps[-1], 2) if gaps else None,
            "p50 client longest gap s": round(gaps[len(gaps) // 2], 2) if gaps else None,
            "longest silence s": round(max(s.max_silence for s in stats), 2) if stats else None,
            "replayed memory": int(self.watcher.total("sse_replay_events_total", source="memory")),
            "replayed jetstream": int(self.watcher.total("sse_replay_events_total", source="jetstream")),
            "closed by nodes": self.watcher.by_label("sse_connections_closed_total", "reason"),
            "http errors": dict(http_errors),
            "io errors": sum(s.io_errors for s in stats),
            "stalls": sum(s.stalls for s in stats),
            "other events": dict(self.fleet.other_events),
            "publish retries": self.publisher.retries,
            "publish dedup": self.publisher.duplicates,
            "longest publish s": round(self.publisher.max_ack_seconds, 2),
            "longest delivery delay s": round(max((d for d, _ in self.delays.values()), default=0.0), 2),
            "clients delayed over limit": sum(1 for d, _ in self.delays.values() if d > self.max_delivery_delay),
            "wall s": round(self.elapsed, 1),
        }
        by_node: dict[str, float] = {}
        for s in stats:
            last = s.served_by[-1] if s.served_by else "?"
            by_node[last] = round(max(by_node.get(last, 0.0), s.max_event_gap), 2)
        fig["longest gap by last node s"] = dict(sorted(by_node.items()))
        fig.update(self.extra)
        if problems or fig["clients delayed over limit"]:
            fig["node states at the end"] = self.watcher.node_states()
        if problems:
            fig["faulty clients"] = len(problems)
            fig["first problems"] = problems[:5]
        self.figures = fig  # the same dict is printed at the end of the run
        FIGURES.append((self.name, fig))
        print(f"\n[{self.name}] " + json.dumps(fig, default=str))
        return fig


class Frozen:
    """Processes stopped with SIGSTOP, as a hung one is: alive, its
    connections open, silent. `thaw` (or the end of the `with` block, a
    failed test's included) lets them go on."""

    def __init__(self) -> None:
        self.procs: list = []

    def freeze(self, proc) -> None:
        import signal

        proc.signal_group(signal.SIGSTOP)
        self.procs.append(proc)

    def thaw(self) -> None:
        import signal

        for proc in self.procs:
            proc.signal_group(signal.SIGCONT)
        self.procs.clear()

    def __enter__(self) -> "Frozen":
        return self

    def __exit__(self, *exc) -> None:
        self.thaw()


class RoutePartition:
    """NATS servers whose routes run through TCP proxies, so that a test can
    cut one server off from its peers and not from its clients. Pass
    `prepare` to `cluster_factory`. Every server advertises a route address
    nothing listens on, so none reaches another past the proxies by the
    addresses the servers gossip. `close` (or the end of the `with` block)
    stops the proxies."""

    def __init__(self) -> None:
        self.proxies: dict[tuple[int, int], TcpProxy] = {}

    def prepare(self, c) -> None:
        for i in range(c.nats_count):
            for j in range(c.nats_count):
                if i != j:
                    proxy = TcpProxy([c.route_ports[j]])
                    proxy.start()
                    self.proxies[(i, j)] = proxy
            c.nats_routes[i] = [f"nats-route://{LOOPBACK}:{self.proxies[(i, j)].ports[0]}" for j in range(c.nats_count) if j != i]
            c.nats_cluster_advertise[i] = f"{LOOPBACK}:1"

    def cut(self, server: int) -> None:
        """Cuts every route to and from server `server` (an index)."""
        for pair, proxy in self.proxies.items():
            if server in pair:
                proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            if proxy.is_cut:
                proxy.restore()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()

    def __enter__(self) -> "RoutePartition":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connected_server(c, connection_name: str) -> str | None:
    """The NATS server (name) a client with this connection name is on."""
    for i, port in enumerate(c.nats_http_ports):
        if not c[f"nats{i}"].running():
            continue
        status, body = http_get(port, "/connz?limit=4096")
        if status == 200 and any(conn.get("name") == connection_name for conn in json.loads(body).get("connections", [])):
            return c.nats_server_name(i)
    return None


def meta_leader(c) -> str | None:
    """The JetStream meta leader's server name, from a monitoring endpoint."""
    for i, port in enumerate(c.nats_http_ports):
        if c[f"nats{i}"].running():
            status, body = http_get(port, "/jsz")
            if status == 200:
                return json.loads(body).get("meta_cluster", {}).get("leader")
    return None
