"""NATS misbehaves while clients stream: the stream leader's server dies,
or one node loses its NATS connection for a while."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import time

import pytest

from cluster.harness import LOOPBACK, http_get, metric_sum, run_async, wait_until
from cluster.tcp_proxy import TcpProxy
from cluster.workload import Frozen, RoutePartition, Scenario, chaos_timeout, connected_server, meta_leader, scale, stream_leader

pytestmark = [pytest.mark.needs_node]


async def move_stream_leader(urls: list[str], stream: str, to: str, timeout: float = 60.0) -> None:
    """Asks the stream's leader to step down in favour of server `to`, until it has."""
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        deadline = time.monotonic() + timeout
        while (leader := await stream_leader(urls, stream)) != to:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stream}'s leader stays on {leader}, not {to}")
            try:
                await nc.request(
                    f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                    json.dumps({"placement": {"preferred": to}}).encode(),
                    timeout=5,
                )
            except Exception:  # noqa: BLE001 - retried until the leader is where asked
                pass
            # The old leader steps down at once; wait for the election.
            await stream_leader(urls, stream, not_=leader)
    finally:
        await nc.close()


async def lead_from_node0s_server(c, s: Scenario, stream: str) -> str:
    """Moves the stream's leader to the NATS server node0 is connected to;
    returns that server's name."""
    server = connected_server(c, "sse-node0")
    assert server, "node0 is on no NATS server"
    await move_stream_leader(c.nats_urls, stream, server)
    s.extra["node0 and the stream leader on"] = server
    return server


@pytest.mark.timeout(chaos_timeout(150))
def test_kill_9_the_stream_leaders_nats_server_while_publishing(node_binary, cluster_factory, topic):
    c = cluster_factory(nodes=3, topics=[(topic, 3)])
    scn = Scenario(c, "kill -9 the JetStream stream leader", topic, **scale())

    async def action(s: Scenario) -> None:
        await s.at(0.3)
        leader = await stream_leader(c.nats_urls, f"SSE_{topic}")
        s.extra["meta leader at the kill"] = meta_leader(c)
        proc = c.nats_proc_for_server(leader)
        killed_at = time.monotonic()
        c.kill(proc)
        live = [u for i, u in enumerate(c.nats_urls) if f"nats{i}" != proc]
        new_leader = await stream_leader(live, f"SSE_{topic}", not_=leader)
        s.unreadable_until = time.monotonic()
        s.extra["stream leader"] = f"{leader} killed, {new_leader} elected in {s.unreadable_until - killed_at:.1f}s"
        await s.at(0.6)
        c.start_proc(proc, wait=False)
        await asyncio.to_thread(c.wait_ready, proc)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    # A NATS server failing is a NATS outage for the nodes, not a reason to
    # drop their clients: "clients stay connected with heartbeats; when NATS
    # is back the node resumes from its last sequence" (DESIGN.md).
    closed = {k: v for k, v in scn.figures["closed by nodes"].items() if v}
    assert scn.figures["reconnects"] == 0, f"nodes closed client streams during the failover: {closed}"


@pytest.mark.timeout(chaos_timeout(150))
def test_kill_9_the_leader_of_three_topics_that_take_turns(node_binary, cluster_factory, topic):
    # Each client reads three topics whose events take turns, so its stream
    # parks on the merged feed of the three. All three streams' leaders are
    # moved to one server first, and that server is killed: every feed of
    # the set loses its consumer at once while the relay writes.
    topics = [topic, f"{topic}b", f"{topic}c"]
    c = cluster_factory(nodes=3, topics=[(t, 3) for t in topics])
    leader = asyncio.run(stream_leader(c.nats_urls, f"SSE_{topic}"))
    for other in topics[1:]:
        asyncio.run(move_stream_leader(c.nats_urls, f"SSE_{other}", leader))
    scn = Scenario(c, "kill -9 the leader of three topics in turn", topic, also_topics=tuple(topics[1:]), **scale())
    parked: dict[str, float] = {}

    async def action(s: Scenario) -> None:
        await s.at(0.3)
        leaders = [await stream_leader(c.nats_urls, f"SSE_{t}") for t in topics]
        assert leaders == [leader] * 3, f"the streams' leaders moved before the kill: {leaders}"
        scraped = [await asyncio.to_thread(c.metrics, n, 2.0) for n in c.running_nodes()]
        parked["parked"] = sum(metric_sum(m or {}, "sse_streams_parked") for m in scraped)
        proc = c.nats_proc_for_server(leader)
        killed_at = time.monotonic()
        c.kill(proc)
        live = [u for i, u in enumerate(c.nats_urls) if f"nats{i}" != proc]
        for t in topics:
            await stream_leader(live, f"SSE_{t}", not_=leader)
        s.unreadable_until = time.monotonic()
        s.extra["stream leaders"] = f"{leader} killed, all three elected again in {s.unreadable_until - killed_at:.1f}s"
        s.extra["parked at the kill"] = parked["parked"]
        await s.at(0.6)
        c.start_proc(proc, wait=False)
        await asyncio.to_thread(c.wait_ready, proc)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert parked["parked"] >= scn.clients / 2, f"few streams parked on their merged feed before the kill: {parked}"
    closed = {k: v for k, v in scn.figures["closed by nodes"].items() if v}
    assert scn.figures["reconnects"] == 0, f"nodes closed client streams during the failover: {closed}"


@pytest.mark.timeout(chaos_timeout(150))
def test_a_node_cut_off_from_nats_and_reconnected(node_binary, cluster_factory, topic):
    proxy: list[TcpProxy] = []

    def through_proxy(cl):
        p = TcpProxy(cl.nats_ports)
        p.start()
        proxy.append(p)
        cl.set_node_nats_url(0, ",".join(p.urls))

    try:
        c = cluster_factory(nodes=3, topics=[(topic, 3)], prepare=through_proxy)
        # Heartbeats every 2s: 5s of silence on a stream is a stall.
        scn = Scenario(c, "node cut off from NATS", topic, stall_seconds=5, **scale())
        cut_seconds = 6.0

        async def action(s: Scenario) -> None:
            await s.at(0.25)
            on_node0 = [cl for cl in s.fleet.clients if cl.current_server == "node0"]
            s.extra["clients on the cut node"] = len(on_node0)
            before = {cl.name: len(s.fleet.received[cl.name]) for cl in on_node0}
            await asyncio.to_thread(proxy[0].cut)
            cut_at = time.monotonic()
            readyz = set()
            while time.monotonic() - cut_at < cut_seconds:
                readyz.add((await asyncio.to_thread(http_get, c.node_port("node0"), "/readyz"))[0])
                await asyncio.sleep(0.25)
            s.extra["node0 /readyz during the cut"] = sorted(readyz)
            # While cut, node0's clients either got heartbeats or were sent
            # elsewhere; none waited silently (checked as stalls).
            still = [cl for cl in on_node0 if cl.current_server == "node0"]
            s.extra["clients still on node0 at the end of the cut"] = len(still)
            s.extra["events to node0 clients during the cut"] = sum(len(s.fleet.received[n]) - k for n, k in before.items())
            await asyncio.to_thread(proxy[0].restore)
            await asyncio.to_thread(c.wait_ready, "node0", 60)
            s.extra["node0 ready again after s"] = round(time.monotonic() - cut_at - cut_seconds, 1)

        problems = asyncio.run(scn.run(action))
        scn.figures["longest silence on node0 clients s"] = round(
            max((cl.stats.max_silence for cl in scn.fleet.clients if "node0" in cl.stats.served_by), default=0), 2
        )
        scn.assert_clean(problems)
        assert 503 in scn.figures["node0 /readyz during the cut"], "node0 stayed ready without NATS"
    finally:
        for p in proxy:
            p.close()


@pytest.mark.timeout(chaos_timeout(150))
def test_the_nats_server_a_node_reads_through_dies_with_the_stream_leader(node_binary, cluster_factory, topic):
    """The failure behind silently stalled clients: the node's NATS
    connection and the stream's leader are on one server, and it dies. The
    node reconnects to another server, the stream elects a new leader, and
    the node's feed must go on; its consumer is not left to async-nats,
    which was seen to yield nothing at all from then on."""
    # One node, so every client is on the node whose server dies.
    c = cluster_factory(nodes=1, topics=[(topic, 3)])
    stream = f"SSE_{topic}"
    # Once a new leader is elected the feed must go on at once: an event
    # acknowledged before then may wait a few seconds after the election
    # (Raft takes 4-9 s to elect one, and until then nobody can read it);
    # an event acknowledged after it, a few seconds after its ack.
    scn = Scenario(c, "the node's NATS server dies with the stream leader", topic, max_delivery_delay=6.0, **scale())

    async def action(s: Scenario) -> None:
        await s.at(0.2)
        server = await lead_from_node0s_server(c, s, stream)
        await s.at(0.35)
        proc = c.nats_proc_for_server(server)
        killed_at = time.monotonic()
        c.kill(proc)
        live = [u for i, u in enumerate(c.nats_urls) if f"nats{i}" != proc]
        new_leader = await stream_leader(live, stream, not_=server)
        s.unreadable_until = time.monotonic()
        s.extra["stream leader"] = f"{server} killed, {new_leader} elected in {s.unreadable_until - killed_at:.1f}s"
        await s.at(0.8)
        c.start_proc(proc, wait=False)
        await asyncio.to_thread(c.wait_ready, proc)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert scn.figures["reconnects"] == 0, f"node0 closed client streams: {scn.figures['closed by nodes']}"


async def stream_consumers(urls: list[str], stream: str) -> dict[str, str]:
    """The stream's consumers, each with the server that holds it."""
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        infos = await js.consumers_info(stream)
        return {i.name: i.cluster.leader for i in infos if i.cluster and i.cluster.leader}
    finally:
        await nc.close()


async def delete_consumer(urls: list[str], stream: str, name: str) -> None:
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        await nc.request(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"", timeout=5)
    finally:
        await nc.close()


@pytest.mark.timeout(chaos_timeout(180))
def test_a_nats_server_back_with_an_empty_disk_under_a_busy_topics_consumer(node_binary, cluster_factory, topic):
    """A follower of the stream that holds the node's feed consumer dies and
    comes back with its disk wiped: nothing tells the node, neither a
    reconnection nor an election, and async-nats notices only after two
    missed heartbeats, 8 s after the last event. The feed of a busy topic
    looks at JetStream once its topic has been silent for a watchdog tick
    and re-creates its consumer, counting a feed stall: with `no_progress`
    set long here, only that look can count one."""
    c = cluster_factory(nodes=1, topics=[(topic, 3)], node_env={"SSE_DELIVERY__NO_PROGRESS_SECONDS": "30"})
    stream = f"SSE_{topic}"
    scn = Scenario(c, "a NATS server back with an empty disk", topic, **scale())
    stalls_before_the_kill = []

    async def action(s: Scenario) -> None:
        await s.at(0.2)
        node_server = connected_server(c, "sse-node0")
        assert node_server, "node0 is on no NATS server"
        # The stream's leader on the node's own server, and the feed's
        # consumer on another that is not the meta leader either: losing
        # that server is then neither an election nor a reconnection.
        await move_stream_leader(c.nats_urls, stream, node_server)
        deadline = time.monotonic() + 60
        while True:
            consumers = await stream_consumers(c.nats_urls, stream)
            holder = next(iter(consumers.values()), None) if len(consumers) == 1 else None
            if holder and holder not in (node_server, meta_leader(c)):
                break
            assert time.monotonic() < deadline, f"the feed's consumer stays on {consumers}"
            # Deleted, async-nats re-creates it on a peer picked at random.
            for name in consumers:
                await delete_consumer(c.nats_urls, stream, name)
            await asyncio.sleep(0.5)
        s.extra["consumer on"] = holder
        await s.at(0.4)
        stalls_before_the_kill.append(metric_sum(c.metrics("node0") or {}, "sse_feed_stalls_total"))
        proc = c.nats_proc_for_server(holder)
        c.kill(proc)
        store = c.dir / proc
        shutil.rmtree(store)
        store.mkdir()
        await s.at(0.7)
        c.start_proc(proc, wait=False)
        await asyncio.to_thread(c.wait_ready, proc)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert scn.figures["reconnects"] == 0, f"node0 closed client streams: {scn.figures['closed by nodes']}"
    stalls = metric_sum(c.metrics("node0") or {}, "sse_feed_stalls_total") - stalls_before_the_kill[0]
    assert stalls >= 1, "the feed waited for async-nats to notice its consumer was gone"


@pytest.mark.timeout(chaos_timeout(150))
def test_the_nats_server_a_node_reads_through_freezes_with_the_stream_leader(node_binary, cluster_factory, topic):
    """A NATS server that stops answering without closing anything (a
    frozen VM, a partition that drops packets): the node's connection to it
    stays open and nothing says it is dead. NATS's own ping interval would
    keep the node on it for minutes, its clients getting heartbeats and no
    events; `nats.ping_interval_seconds` gives it up after three silent
    intervals, and the node goes on through another server."""
    c = cluster_factory(nodes=1, topics=[(topic, 3)], node_env={"SSE_NATS__PING_INTERVAL_SECONDS": "1"})
    stream = f"SSE_{topic}"
    # Three silent seconds to give the server up, up to two more if the
    # first server tried next is the frozen one, while the survivors elect
    # a new leader (counted apart, as `unreadable_until`).
    scn = Scenario(c, "the node's NATS server freezes with the stream leader", topic, max_delivery_delay=8.0, **scale())
    frozen = Frozen()

    async def action(s: Scenario) -> None:
        await s.at(0.2)
        server = await lead_from_node0s_server(c, s, stream)
        await s.at(0.3)
        proc = c[c.nats_proc_for_server(server)]
        frozen_at = time.monotonic()
        frozen.freeze(proc)
        live = [(u, port) for i, (u, port) in enumerate(zip(c.nats_urls, c.nats_http_ports)) if f"nats{i}" != proc.name]
        new_leader = await stream_leader([u for u, _ in live], stream, not_=server)
        s.unreadable_until = time.monotonic()
        s.extra["stream leader"] = f"{server} frozen, {new_leader} elected in {s.unreadable_until - frozen_at:.1f}s"

        def on_a_live_server() -> bool:
            for _, port in live:
                status, body = http_get(port, "/connz?limit=4096")
                if status == 200 and any(conn.get("name") == "sse-node0" for conn in json.loads(body).get("connections", [])):
                    return True
            return False

        while not await asyncio.to_thread(on_a_live_server):
            assert time.monotonic() - frozen_at < 30, "node0 stayed on the frozen server"
            await asyncio.sleep(0.2)
        s.extra["node0 on a live server after s"] = round(time.monotonic() - frozen_at, 1)
        # Frozen until the publisher is nearly done: without pings of its
        # own the node would wait all that time for its events.
        await s.at(0.85)
        frozen.thaw()

    with frozen:
        problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert scn.figures["reconnects"] == 0, f"node0 closed client streams: {scn.figures['closed by nodes']}"
    assert metric_sum(c.metrics("node0") or {}, "sse_nats_reconnects_total") >= 1, "node0 never reconnected"


@pytest.mark.timeout(chaos_timeout(150))
def test_the_nats_server_a_node_reads_through_is_cut_off_from_its_peers(node_binary, cluster_factory, topic):
    """A NATS server cut off from its peers but not from the node: it goes
    on answering the node's pings, so the NATS client stays, yet it has no
    JetStream quorum and hears none of the events the others store. The
    node's report writes fail; it finds a server that serves JetStream and
    moves there, where its clients' events are, long before the cut heals."""
    with RoutePartition() as partition:
        # Reports every second: a failed write makes the node look.
        c = cluster_factory(
            nodes=1, topics=[(topic, 3)], prepare=partition.prepare, node_env={"SSE_CLUSTER__REPORT_SECONDS": "1"}
        )
        stream = f"SSE_{topic}"
        server = connected_server(c, "sse-node0")
        assert server, "node0 is on no NATS server"
        cut_index = int(server.removeprefix("n"))
        others = [u for i, u in enumerate(c.nats_urls) if i != cut_index]
        # The publisher, a backend, is on the majority's side.
        scn = Scenario(
            c,
            "the node's NATS server is cut off from its peers",
            topic,
            max_delivery_delay=8.0,
            publisher_urls=tuple(others),
            **scale(),
        )

        async def action(s: Scenario) -> None:
            await s.at(0.2)
            await move_stream_leader(c.nats_urls, stream, server)
            s.extra["node0 and the stream leader on"] = server
            await s.at(0.3)
            cut_at = time.monotonic()
            await asyncio.to_thread(partition.cut, cut_index)
            new_leader = await stream_leader(others, stream, not_=server)
            s.unreadable_until = time.monotonic()
            s.extra["stream leader"] = f"{server} cut off, {new_leader} elected in {s.unreadable_until - cut_at:.1f}s"
            while await asyncio.to_thread(connected_server, c, "sse-node0") in (server, None):
                assert time.monotonic() - cut_at < 30, f"node0 stayed on {server}, cut off from its peers"
                await asyncio.sleep(0.2)
            s.extra["node0 on another server after s"] = round(time.monotonic() - cut_at, 1)
            # Cut until the publisher is nearly done, and for 12 s after the
            # majority's election at least: the cut server's return makes
            # NATS elect its meta leader again (its term is higher), and
            # until then no consumer can be made; this test is about the
            # cut, not the healing. A node that stayed would have its
            # clients wait all that time.
            await asyncio.sleep(max(0.0, s.unreadable_until + 12 - time.monotonic()))
            await s.at(0.85)
            await asyncio.to_thread(partition.heal)

        problems = asyncio.run(scn.run(action))
        scn.assert_clean(problems)
        assert scn.figures["reconnects"] == 0, f"node0 closed client streams: {scn.figures['closed by nodes']}"
        assert metric_sum(c.metrics("node0") or {}, "sse_nats_server_switches_total") >= 1, "node0 never switched servers"


def link_node0_to_each_server(cl, links: list[TcpProxy]) -> None:
    """Gives node0 every NATS server's URL, each through a TCP proxy of its
    own, added to `links`, which the test can cut and must close."""
    for port in cl.nats_ports:
        link = TcpProxy([port])
        link.start()
        links.append(link)
    cl.set_node_nats_url(0, ",".join(link.urls[0] for link in links))


@pytest.mark.timeout(chaos_timeout(180))
def test_a_node_cut_off_with_its_nats_server_says_it_is_not_ready(node_binary, cluster_factory, topic):
    """A zone cut off from the cluster's majority: a node and one NATS
    server on one side, the other servers and the other node on the other.
    The node stays connected, to a server without JetStream quorum, and
    reaches no other, so it said it was ready, and the load balancer sent it
    new streams it could not feed. Now `/readyz` says so; its streams stay
    open, on heartbeats, and get every event once the cut heals, as the
    other node's do."""
    cut_index = 2
    node_links: list[TcpProxy] = []
    with RoutePartition() as partition:

        def prepare(cl):
            partition.prepare(cl)
            # node0 is given all three servers, as a deployment gives its
            # nodes, each through a link the test can cut.
            link_node0_to_each_server(cl, node_links)

        try:
            c = cluster_factory(
                nodes=2, topics=[(topic, 3)], prepare=prepare, node_env={"SSE_CLUSTER__REPORT_SECONDS": "1"}
            )
            others = [u for i, u in enumerate(c.nats_urls) if i != cut_index]
            node0 = c.node_port("node0")
            node1 = c.node_port("node1")
            # node0's clients wait for the cut to heal, and for the cluster
            # to take the cut server back (a new meta leader's election).
            # Events for 10 s: the cut lasts until node0 says it is not
            # ready, which may take longer than the events' first 80 %.
            workload = scale()
            workload["total"] = min(workload["total"], 200)
            scn = Scenario(
                c,
                "a node cut off with its NATS server",
                topic,
                stall_seconds=45.0,
                max_delivery_delay=45.0,
                publisher_urls=tuple(others),
                **workload,
            )

            def readiness(port: int) -> tuple[int, dict]:
                status, body = http_get(port, "/readyz", timeout=2.0)
                return status, json.loads(body) if body.startswith("{") else {}

            async def action(s: Scenario) -> None:
                await s.at(0.2)
                assert readiness(node0)[0] == 200, readiness(node0)
                cut_at = time.monotonic()
                await asyncio.to_thread(partition.cut, cut_index)
                for i, link in enumerate(node_links):
                    if i != cut_index:
                        await asyncio.to_thread(link.cut)
                # Its connection may have gone with a link cut: it is then
                # not ready for that while it reconnects, to the one server
                # it reaches.
                while not (
                    (said := await asyncio.to_thread(readiness, node0))[1].get("jetstream_answers") is False
                    and said[1].get("nats_connected") is True
                ):
                    assert time.monotonic() - cut_at < 40, f"node0 did not say it is cut off from JetStream: {said}"
                    await asyncio.sleep(0.2)
                s.extra["node0 not ready, JetStream unanswered, after s"] = round(time.monotonic() - cut_at, 1)
                assert said[0] == 503, said
                assert (await asyncio.to_thread(readiness, node1))[0] == 200, "node1, on the majority's side, is ready"
                await s.at(0.8)
                healed_at = time.monotonic()
                await asyncio.to_thread(partition.heal)
                for link in node_links:
                    if link.is_cut:
                        await asyncio.to_thread(link.restore)
                while (await asyncio.to_thread(readiness, node0))[0] != 200:
                    assert time.monotonic() - healed_at < 45, "node0 not ready again after the cut healed"
                    await asyncio.sleep(0.2)
                s.extra["node0 ready again after the heal, s"] = round(time.monotonic() - healed_at, 1)

            problems = asyncio.run(scn.run(action))
            scn.assert_clean(problems)
        finally:
            for link in node_links:
                link.close()


async def leaderless_on(url: str, stream: str, timeout: float = 40.0) -> None:
    """Waits until the server at `url` answers about `stream` with no
    leader: a copy cut off from the stream's leader, answering with what it
    holds."""
    import nats

    nc = await nats.connect(servers=[url], connect_timeout=2, allow_reconnect=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=1)
                info = json.loads(reply.data)
                if "state" in info and not (info.get("cluster") or {}).get("leader"):
                    return
            except Exception:  # noqa: BLE001 - unanswered until it gives up on the leader
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still names a leader of {stream}")
            await asyncio.sleep(0.3)
    finally:
        await nc.close()


@pytest.mark.timeout(chaos_timeout(180))
def test_a_node_that_lands_on_a_nats_server_cut_off_from_its_peers_keeps_its_clients(node_binary, cluster_factory, topic):
    """A node's ordinary reconnection lands on a NATS server cut off from
    its peers, whose copy of the stream has no leader and is behind: NATS
    answers the stream's info from that copy. The node's feed must not take
    it for a stream gone back and close (every client would reconnect); it
    waits, the node moves to a server that serves JetStream, and its clients
    go on."""
    node_links: list[TcpProxy] = []

    def prepare(cl):
        partition.prepare(cl)
        link_node0_to_each_server(cl, node_links)

    with RoutePartition() as partition:
        try:
            # Reports every 5 s, as by default: the node's feed asks about
            # the stream before the node's next report finds the cut.
            c = cluster_factory(
                nodes=1, topics=[(topic, 3)], prepare=prepare, node_env={"SSE_CLUSTER__REPORT_SECONDS": "5"}
            )
            stream = f"SSE_{topic}"
            on = connected_server(c, "sse-node0")
            assert on, "node0 is on no NATS server"
            # The server to cut: one node0 is not on, and not the stream's
            # leader, so the others serve the topic on without an election.
            leader = run_async(stream_leader(c.nats_urls, stream))
            cut_index = next(i for i in range(c.nats_count) if c.nats_server_name(i) not in (on, leader))
            cut_name = c.nats_server_name(cut_index)
            others = [u for i, u in enumerate(c.nats_urls) if i != cut_index]
            # Events wait while the node is on the cut server: up to a
            # report interval (5 s) to notice, 2 s to ask, and seconds for
            # its reconnection to land there (the others refuse it, each
            # try a little later) and its feed to open again (13.6 s seen).
            # What this test is about is that no stream closes.
            scn = Scenario(
                c,
                "the node lands on a NATS server cut off from its peers",
                topic,
                max_delivery_delay=20.0,
                publisher_urls=tuple(others),
                **scale(),
            )

            async def action(s: Scenario) -> None:
                await s.at(0.15)
                cut_at = time.monotonic()
                await asyncio.to_thread(partition.cut, cut_index)
                await leaderless_on(c.nats_urls[cut_index], stream)
                s.extra[f"{cut_name} answers without a leader after s"] = round(time.monotonic() - cut_at, 1)
                # Events stored since the cut: the cut copy is behind.
                await s.at(0.4)
                majority = [link for i, link in enumerate(node_links) if i != cut_index]
                for link in majority:
                    await asyncio.to_thread(link.cut)
                while await asyncio.to_thread(connected_server, c, "sse-node0") != cut_name:
                    assert time.monotonic() - cut_at < 60, f"node0 never landed on {cut_name}"
                    await asyncio.sleep(0.1)
                landed_at = time.monotonic()
                for link in majority:
                    await asyncio.to_thread(link.restore)
                while await asyncio.to_thread(connected_server, c, "sse-node0") in (cut_name, None):
                    assert time.monotonic() - landed_at < 30, f"node0 stayed on {cut_name}, cut off from its peers"
                    await asyncio.sleep(0.2)
                s.extra["node0 left the cut server after s"] = round(time.monotonic() - landed_at, 1)
                await s.at(0.85)
                await asyncio.to_thread(partition.heal)

            problems = asyncio.run(scn.run(action))
            scn.assert_clean(problems)
            assert scn.figures["reconnects"] == 0, f"node0 closed client streams: {scn.figures['closed by nodes']}"
        finally:
            for link in node_links:
                link.close()


@pytest.mark.timeout(chaos_timeout(120))
def test_a_topic_on_the_nats_server_left_is_read_without_a_consumer(node_binary, cluster_factory, topic):
    """Two of three NATS servers die. JetStream has no meta leader then and
    makes no consumer, but a topic of one replica on the server left still
    stores its publishes and answers direct gets. A client that opens a
    stream of it meanwhile gets each event as it comes: the node reads them
    without a consumer, also once the topic is busy enough to want one, not
    once the servers are back (as after a partition heals, when NATS elects
    its meta leader again for seconds)."""
    c = cluster_factory(nodes=1, topics=[(topic, 1)])
    stream = f"SSE_{topic}"
    left = c.nats_proc_for_server(run_async(stream_leader(c.nats_urls, stream)))
    left_url = c.nats_urls[int(left.removeprefix("nats"))]
    for i in range(c.nats_count):
        if f"nats{i}" != left:
            c.kill(f"nats{i}")
    wait_until(lambda: meta_leader(c) in (None, ""), 30, f"{left} without a meta leader")
    wait_until(lambda: connected_server(c, "sse-node0") is not None, 30, f"node0 on {left}")
    refused_before = metric_sum(c.metrics("node0") or {}, "sse_feed_errors_total")
    sock = socket.create_connection((LOOPBACK, c.node_port("node0")), timeout=20)
    try:
        sock.sendall(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        # About twenty a second for six seconds: past the ten a second at
        # which a feed makes a consumer, and longer than JetStream takes to
        # refuse it (a stream info and a consumer creation, 2 s each).
        sent = [f"event {i}" for i in range(120)]
        run_async(publish_each(left_url, f"sse.{topic}", sent, every=0.04))
        deadline = time.monotonic() + 15
        while (read := got.count(b"\ndata: ")) < len(sent):
            assert time.monotonic() < deadline, f"{read} of {len(sent)} events in 15 s: {got[-400:]!r}"
            got += sock.recv(65536)
    finally:
        sock.close()
    data = [line.removeprefix(b"data: ").decode() for line in got.split(b"\n") if line.startswith(b"data: ")]
    assert data == sent, data
    wait_until(
        lambda: metric_sum(c.metrics("node0") or {}, "sse_feed_errors_total") > refused_before,
        10,
        "the feed refused a consumer (else this test no longer tests what it says)",
    )


async def publish_each(url: str, subject: str, payloads: list[str], every: float = 0.0) -> None:
    """Publishes each payload to JetStream through the server at `url`,
    `every` seconds apart, and waits for its acknowledgement."""
    import nats

    nc = await nats.connect(servers=[url], connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        for payload in payloads:
            await js.publish(subject, payload.encode())
            await asyncio.sleep(every)
    finally:
        await nc.close()


@pytest.mark.timeout(chaos_timeout(150))
def test_a_topic_whose_only_nats_server_dies_counts_feed_errors_until_it_is_back(node_binary, cluster_factory, topic):
    """A topic of one replica whose server dies is offline: its clients get
    heartbeats and no events until the server is back. The node's feed
    keeps counting that it cannot read (sse_feed_errors_total, which the
    SseFeedErrors alert watches) for as long as it lasts, and its clients
    get the events published once the server is back, in order."""
    c = cluster_factory(nodes=1, topics=[(topic, 1)])
    holder = c.nats_proc_for_server(run_async(stream_leader(c.nats_urls, f"SSE_{topic}")))
    node0 = c.node_port("node0")

    def errors() -> float:
        return metric_sum(c.metrics("node0") or {}, "sse_feed_errors_total")

    sock = socket.create_connection((LOOPBACK, node0), timeout=30)
    try:
        sock.sendall(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)

        def read_until(count: int, within: float) -> None:
            nonlocal got
            deadline = time.monotonic() + within
            while (read := got.count(b"\ndata: ")) < count:
                assert time.monotonic() < deadline, f"{read} of {count} events in {within} s: {got[-300:]!r}"
                got += sock.recv(65536)

        # Busy enough (twenty a second) for the feed to read with a consumer.
        before = [f"before {i}" for i in range(40)]
        run_async(publish_each(c.nats_urls[int(holder.removeprefix("nats"))], f"sse.{topic}", before, every=0.05))
        read_until(len(before), 15)
        wait_until(
            lambda: metric_sum(c.metrics("node0") or {}, "sse_jetstream_consumers") >= 1, 10, "the feed's consumer"
        )
        c.kill(holder)
        # Counted again and again while the stream is offline, not once.
        for look in range(2):
            counted = errors()
            wait_until(lambda: errors() > counted, 20, f"feed errors counted again ({look + 1} of 2)")
        c.start_proc(holder, wait=False)
        c.wait_ready(holder)
        after = [f"after {i}" for i in range(5)]
        run_async(publish_each(c.nats_urls[int(holder.removeprefix("nats"))], f"sse.{topic}", after))
        read_until(len(before) + len(after), 30)
    finally:
        sock.close()
    data = [line.removeprefix(b"data: ").decode() for line in got.split(b"\n") if line.startswith(b"data: ")]
    assert data == before + after, data


@pytest.mark.timeout(chaos_timeout(120))
def test_resumes_at_the_consumer_limit_of_a_replicated_topic_are_exact(node_binary, cluster_factory, topic):
    """A topic of three replicas whose stream holds as many consumers as its
    limit allows: JetStream refuses every feed and every resume a consumer.
    Clients on two nodes drop their streams and come back with their last
    id, a second or so later, all through a burst of events; each resume
    reads what its client missed by direct gets (answered by any of the
    three servers, some of which may not have stored the newest events
    yet), and every client gets every event once, in order."""
    total = 6000
    c = cluster_factory(
        nodes=2,
        # One event of history: every resume reads JetStream.
        node_env={"SSE_HISTORY__WARM_EVENTS": "0", "SSE_HISTORY__MAX_EVENTS_PER_TOPIC": "1"},
    )
    c.create_topic(topic, 3, max_consumers=2)
    run_async(hold_consumers(c.nats_urls[0], f"SSE_{topic}", 2))

    async def go() -> list[list[int]]:
        published = asyncio.Event()
        received: list[list[int]] = [[] for _ in range(6)]
        clients = [
            asyncio.ensure_future(hop_and_resume(c.node_port(f"node{i % 2}"), topic, received[i], total, published))
            for i in range(6)
        ]
        # Each client has its first stream, and so an id, before the burst.
        await asyncio.sleep(1.0)
        await publish_burst(c.nats_urls[1], f"sse.{topic}", total)
        published.set()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        return received

    received = run_async(go())
    for i, got in enumerate(received):
        wrong = next((at for at, n in enumerate(got) if n != at), None)
        assert got == list(range(total)), f"client {i}: {len(got)} events, first out of place at {wrong}: {got[wrong:wrong + 5] if wrong is not None else ''}"
    for node in ("node0", "node1"):
        metrics = c.metrics(node) or {}
        # Else this test no longer tests what it says.
        assert metric_sum(metrics, "sse_feed_errors_total") > 0, node
        assert metric_sum(metrics, "sse_replay_events_total", source="jetstream") > 0, node
        assert metric_sum(metrics, "sse_connections_closed_total", reason="error") == 0, node


async def hold_consumers(url: str, stream: str, count: int) -> None:
    """Takes `count` of `stream`'s consumers, as other readers would."""
    import nats
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(servers=[url], connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        for i in range(count):
            await js.add_consumer(stream, ConsumerConfig(durable_name=f"other{i}"))
    finally:
        await nc.close()


async def publish_burst(url: str, subject: str, total: int) -> None:
    """Publishes `event 0` … to the topic of `subject`, every other one to
    one of three paths of it, each acknowledged before the next."""
    import nats

    nc = await nats.connect(servers=[url], connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        for i in range(total):
            await js.publish(subject if i % 2 else f"{subject}.p{i % 3}", f"event {i}".encode())
    finally:
        await nc.close()


async def hop_and_resume(port: int, topic: str, got: list[int], total: int, published: asyncio.Event) -> None:
    """Reads the topic's events (`event N`, N into `got`) in streams of
    0.1-0.8 s, 0.2-1.5 s apart, each from the last id of the one before,
    until it has `total` of them once they are all published."""
    from cluster.sse import ChunkedDecoder, SseParser

    parser = SseParser()
    while True:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 5)
        try:
            parser.reset_connection()
            head = f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            if parser.last_event_id:
                head += f"Last-Event-ID: {parser.last_event_id}\r\n"
            writer.write((head + "\r\n").encode())
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            decoder = ChunkedDecoder() if b"chunked" in answer.lower() else None
            until = time.monotonic() + random.uniform(0.1, 0.8)
            while time.monotonic() < until or published.is_set():
                if published.is_set() and len(got) >= total:
                    return
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.3)
                except asyncio.TimeoutError:
                    continue
                assert data, f"the node ended the stream after {len(got)} events"
                for event in parser.feed(decoder.feed(data) if decoder else data):
                    if event.data.startswith("event "):
                        got.append(int(event.data.removeprefix("event ")))
        finally:
            writer.close()
        await asyncio.sleep(random.uniform(0.2, 1.5))
