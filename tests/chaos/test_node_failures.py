"""Nodes die or are replaced while clients stream: nobody loses or repeats
an event."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.harness import metric_sum
from cluster.workload import Frozen, Scenario, chaos_timeout, scale, wait_for

pytestmark = [pytest.mark.needs_node]


@pytest.mark.timeout(chaos_timeout(150))
def test_kill_9_a_node_while_it_serves_clients(node_binary, cluster_factory, topic):
    c = cluster_factory(nodes=3, topics=[(topic, 3)])
    scn = Scenario(c, "kill -9 a node", topic, **scale())

    async def action(s: Scenario) -> None:
        await s.at(0.3)
        victim, held = s.fleet.spread().most_common(1)[0]
        s.extra["victim"] = f"{victim} serving {held} clients"
        killed_at = time.monotonic()
        c.kill(victim)
        await asyncio.to_thread(c.wait_backend, victim, False)
        s.extra["lb saw it down after s"] = round(time.monotonic() - killed_at, 2)
        await s.at(0.6)
        c.start_proc(victim, wait=False)
        await asyncio.to_thread(c.wait_ready, victim)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)


# The shipped HAProxy config ends a stream after this long without a byte
# from its node (`timeout tunnel`).
LB_SILENCE_TIMEOUT = 60.0


@pytest.mark.timeout(chaos_timeout(240))
def test_a_node_that_hangs_loses_its_clients_to_the_others_through_the_load_balancer(
    node_binary, cluster_factory, topic
):
    """A node stops, alive but silent (SIGSTOP: a frozen VM, a stuck
    process): it writes no heartbeat, and a client, as a browser's
    EventSource does, waits on the open connection. The load balancer's
    idle timeout is what ends such a stream; the client then resumes on
    another node from its last id, nothing lost or repeated."""
    c = cluster_factory(nodes=2, topics=[(topic, 3)])
    # Events over 65 s, so that streams end and resume while they flow.
    # The hung node's clients hear nothing for the timeout, which is the
    # point here: silence and delay are bounded by it, not by 10 s.
    scn = Scenario(
        c,
        "a node hangs",
        topic,
        clients=60,
        total=130,
        rate=2.0,
        stall_seconds=LB_SILENCE_TIMEOUT + 15,
        max_delivery_delay=LB_SILENCE_TIMEOUT + 15,
    )
    frozen = Frozen()

    async def action(s: Scenario) -> None:
        await s.at(0.03)
        victim, held = s.fleet.spread().most_common(1)[0]
        s.extra["victim"] = f"{victim} serving {held} clients"
        frozen.freeze(c[victim])
        stopped_at = time.monotonic()
        await asyncio.to_thread(c.wait_backend, victim, False)
        s.extra["lb saw it down after s"] = round(time.monotonic() - stopped_at, 2)

        def moved() -> bool:
            return all(cl.current_server != victim for cl in s.fleet.clients)

        while not moved():
            assert time.monotonic() - stopped_at < LB_SILENCE_TIMEOUT + 20, "clients stay on the hung node"
            await asyncio.sleep(0.5)
        s.extra["every client elsewhere after s"] = round(time.monotonic() - stopped_at, 1)

    with frozen:
        problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert scn.extra["every client elsewhere after s"] >= LB_SILENCE_TIMEOUT - 5, "streams ended before the timeout"


@pytest.mark.timeout(chaos_timeout(150))
def test_kill_9_a_node_while_its_clients_read_topics_that_take_turns(node_binary, cluster_factory, topic):
    # Each client reads three topics on one stream and the events take turns
    # among them, so by the kill the streams are parked on the merged feed
    # of their topics, and every id is a cursor over all three.
    topics = [topic, f"{topic}b", f"{topic}c"]
    c = cluster_factory(nodes=3, topics=[(t, 3) for t in topics])
    scn = Scenario(c, "kill -9 a node, three topics in turn", topic, also_topics=tuple(topics[1:]), **scale())
    _kill_the_busiest_node_of_parked_streams(c, scn)


@pytest.mark.timeout(chaos_timeout(150))
def test_kill_9_a_node_while_its_clients_read_a_busy_wildcard_beside_a_calm_topic(
    node_binary, cluster_factory, topic
):
    # Each client reads the children of a busy topic with a wildcard and a
    # calm topic whole, as a user's page reads a shared feed and the user's
    # own notifications: 40 events of the busy topic, then one of the calm.
    # By the kill the streams are parked on the busy topic's events that
    # match, the calm topic's events go through their parked sockets, and
    # every id is a cursor over both topics.
    calm = f"{topic}calm"
    c = cluster_factory(nodes=3, topics=[(topic, 3), (calm, 3)])
    scn = Scenario(
        c,
        "kill -9 a node, a busy wildcard and a calm topic",
        topic,
        also_topics=(calm,),
        reads=(f"{topic}.*", calm),
        cycle=(0,) * 40 + (1,),
        **scale(),
    )
    _kill_the_busiest_node_of_parked_streams(c, scn)


@pytest.mark.timeout(chaos_timeout(180))
@pytest.mark.parametrize("topics", [1, 3], ids=["one topic", "three topics in turn"])
def test_rolling_restart_of_every_node(node_binary, cluster_factory, topic, topics):
    # Node memory holds only the last few events, so the clients moved by
    # each restart (about a second behind) resume from JetStream. With three
    # topics the streams drain from their merged feed, and resume each topic
    # from JetStream.
    names = [topic, *(f"{topic}{i}" for i in range(1, topics))]
    c = cluster_factory(
        nodes=3,
        topics=[(t, 3) for t in names],
        node_env={"SSE_HISTORY__MAX_EVENTS_PER_TOPIC": "5", "SSE_HISTORY__WARM_EVENTS": "5"},
    )
    name = "rolling restart" if topics == 1 else "rolling restart, three topics in turn"
    scn = Scenario(c, name, topic, also_topics=tuple(names[1:]), **scale())
    exits: dict[str, str] = {}

    async def action(s: Scenario) -> None:
        await s.at(0.1)
        for name in c.running_nodes():
            t = time.monotonic()
            code = await asyncio.to_thread(c.stop, name, 20)
            exits[name] = f"exit {code} after {time.monotonic() - t:.1f}s"
            c.start_proc(name, wait=False)
            await asyncio.to_thread(c.wait_ready, name)
            await asyncio.to_thread(c.wait_backend, name, True)
        s.extra["sigterm"] = exits

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert all(v.startswith("exit 0 ") for v in exits.values()), exits


def _kill_the_busiest_node_of_parked_streams(c, scn: Scenario) -> None:
    """Runs `scn`, killing the node that serves most clients at 30 % of it
    and starting it again at 60 %; at least half the clients it served must
    have been parked when it died, and every client must end up exact."""
    parked: dict[str, float] = {}

    async def action(s: Scenario) -> None:
        await s.at(0.3)
        victim, held = s.fleet.spread().most_common(1)[0]
        metrics = await asyncio.to_thread(c.metrics, victim, 2.0)
        parked.update(held=held, parked=metric_sum(metrics or {}, "sse_streams_parked"))
        s.extra["victim"] = f"{victim} serving {held} clients, {parked['parked']:.0f} parked"
        c.kill(victim)
        await asyncio.to_thread(c.wait_backend, victim, False)
        await s.at(0.6)
        c.start_proc(victim, wait=False)
        await asyncio.to_thread(c.wait_ready, victim)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert parked["parked"] >= parked["held"] / 2, f"few streams parked before the kill: {parked}"


async def _consumers(urls: list[str]) -> list[str]:
    """Every consumer of every stream, as `stream/consumer`."""
    import json

    import nats

    nc = await nats.connect(servers=urls)
    try:
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)
        found = []
        for stream in names.get("streams") or []:
            listed = json.loads((await nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", b"{}", timeout=5)).data)
            found += [f"{stream}/{name}" for name in listed.get("consumers") or []]
        return found
    finally:
        await nc.close()


@pytest.mark.timeout(chaos_timeout(120))
def test_a_node_stopped_by_sigterm_leaves_no_consumer_behind(node_binary, cluster_factory, topic):
    # On three nats-servers a node that exited as soon as its streams closed
    # left most of its feeds' consumers to NATS's 30 s expiry (3 of 4 in
    # most stops): their deletions were sent, or not, as the process ended.
    # A rolling update of many nodes piled them up against each stream's
    # consumer limit. Five stops, as it was a race.
    import nats

    from cluster.sse import SseClient

    topics = [f"{topic}{i}" for i in range(4)]
    c = cluster_factory(nodes=1, topics=[(t, 3) for t in topics], node_env={"SSE_SHUTDOWN__DRAIN_SECONDS": "1"})
    node = c.running_nodes()[0]

    async def run() -> list[str]:
        nc = await nats.connect(servers=c.nats_urls)
        js = nc.jetstream()
        stop_publishing = asyncio.Event()

        async def publish() -> None:
            # Busy topics: their feeds read with consumers, pulling at the stop.
            i = 0
            while not stop_publishing.is_set():
                for t in topics:
                    await js.publish(f"sse.{t}", f"e{i}".encode())
                i += 1
                await asyncio.sleep(0.05)

        publishing = asyncio.create_task(publish())
        left = []
        try:
            for round_ in range(5):
                stop_streams = asyncio.Event()
                clients = [SseClient(f"c{round_}-{t}", c.node_port(node), f"/v1/events?topic={t}") for t in topics]
                tasks = [asyncio.create_task(client.run(stop_streams)) for client in clients]
                await wait_for(lambda: metric_sum(c.metrics(node) or {}, "sse_jetstream_consumers") == 4, 20, "a consumer per feed")
                # Reading for a while, as a node in service does.
                await asyncio.sleep(2)
                code = await asyncio.to_thread(c.stop, node, 20)
                assert code == 0, c[node].log_tail()
                left += [f"stop {round_}: {name}" for name in await _consumers(c.nats_urls)]
                stop_streams.set()
                await asyncio.gather(*tasks)
                await asyncio.to_thread(c.start_proc, node)
        finally:
            stop_publishing.set()
            await publishing
            await nc.close()
        return left

    left = asyncio.run(run())
    assert not left, left
