"""The harness itself: SSE parsing, the NATS cluster, HAProxy, the TCP proxy,
and one node end to end through the load balancer."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from cluster.harness import LOOPBACK, http_get, run_async, wait_until
from cluster.sse import ChunkedDecoder, SseClient, SseParser
from cluster.tcp_proxy import TcpProxy


# ------------------------------------------------------------------ parsing
def test_parser_follows_the_event_stream_rules():
    p = SseParser()
    stream = (
        b"\xef\xbb\xbf: hello\r\nretry: 1500\r\n\r\nid: t:1:0\n\n"
        b"data: a\ndata:  b\nid: t:1:1\n\n"
        b"event: reset\rdata\rid: t:1:2\r\r"
        b"retry: x1\ndata: c\r\n\r\n"
    )
    events = []
    for i in range(len(stream)):  # one byte at a time: every split point
        events += p.feed(stream[i : i + 1])
    assert [(e.type, e.data, e.id) for e in events] == [
        ("message", "a\n b", "t:1:1"),
        ("reset", "", "t:1:2"),
        ("message", "c", "t:1:2"),
    ]
    assert p.retry_ms == 1500
    assert p.comments == 1


def test_id_only_frame_sets_the_cursor_without_an_event():
    p = SseParser()
    assert p.feed(b"retry: 1000\n\nid: demo:k1:41\n\n") == []
    assert p.last_event_id == "demo:k1:41"


def test_chunked_decoder_handles_any_split():
    body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"
    for step in (1, 2, 3, 7, len(body)):
        d = ChunkedDecoder()
        out = b"".join(d.feed(body[i : i + step]) for i in range(0, len(body), step))
        assert out == b"hello world!"
        assert d.done


# ------------------------------------------------------- NATS and HAProxy
@pytest.mark.timeout(90)
def test_nats_cluster_forms_and_survives_losing_the_stream_leader(cluster_factory, topic):
    c = cluster_factory(nodes=0, with_nodes=False, topics=[(topic, 3)])

    async def go():
        import nats

        nc = await nats.connect(servers=c.nats_urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=2)
        info = await js.stream_info(f"SSE_{topic}")
        assert info.config.num_replicas == 3
        assert info.cluster.leader in {"n0", "n1", "n2"}
        assert len(info.cluster.replicas) == 2
        ack = await js.publish(f"sse.{topic}.a.b", b"x", headers={"Nats-Msg-Id": "m1"})
        assert ack.seq == 1
        return info.cluster.leader, nc, js

    async def after(nc, js, old):
        deadline = time.monotonic() + 30
        while True:
            try:
                info = await js.stream_info(f"SSE_{topic}")
                if info.cluster.leader and info.cluster.leader != old:
                    break
            except Exception:  # noqa: BLE001 - no leader while electing
                pass
            assert time.monotonic() < deadline, "no new stream leader"
            await asyncio.sleep(0.2)
        ack = await js.publish(f"sse.{topic}", b"y", headers={"Nats-Msg-Id": "m2"})
        dup = await js.publish(f"sse.{topic}", b"y", headers={"Nats-Msg-Id": "m2"})
        await nc.close()
        return info.cluster.leader, ack.seq, dup.duplicate

    async def both():
        leader, nc, js = await go()
        c.kill(c.nats_proc_for_server(leader))
        return leader, await after(nc, js, leader)

    old, (new, seq, dup) = run_async(both())
    assert new != old
    assert seq == 2 and dup
    c.start_proc(c.nats_proc_for_server(old))


@pytest.mark.timeout(90)
def test_a_leaderless_stream_is_listed_as_missing_not_absent(cluster_factory, topic):
    """A NATS behaviour the node must allow for: while a stream elects a new
    leader, the stream listing answers (after ~4s) with the stream under
    `missing`, not under `streams`. Absent from `streams` is not deleted."""
    c = cluster_factory(nodes=0, with_nodes=False, with_admin=False, topics=[(topic, 3)])

    async def go():
        import nats

        from cluster.workload import stream_leader

        leader = await stream_leader(c.nats_urls, f"SSE_{topic}")
        proc = c.nats_proc_for_server(leader)
        live = [u for i, u in enumerate(c.nats_urls) if f"nats{i}" != proc]
        nc = await nats.connect(servers=live)
        try:
            c.kill(proc)
            # If the killed server also led the JetStream meta group, the
            # listing waits for a new meta leader: ask again until it answers.
            for attempt in range(4):
                try:
                    r = await nc.request("$JS.API.STREAM.LIST", b"{}", timeout=8)
                    return json.loads(r.data)
                except nats.errors.TimeoutError:
                    if attempt == 3:
                        raise
        finally:
            await nc.close()

    listing = run_async(go())
    names = [s["config"]["name"] for s in listing.get("streams") or []]
    assert f"SSE_{topic}" in names or f"SSE_{topic}" in (listing.get("missing") or []), listing


@pytest.mark.timeout(60)
def test_haproxy_reports_node_slots_down_and_answers_503(cluster_factory):
    c = cluster_factory(nodes=2, max_nodes=3, with_nodes=False)
    wait_until(lambda: all(s.startswith("DOWN") for s in c.backend_status().values()), 10, "all slots down")
    assert set(c.backend_status()) == {"node0", "node1", "node2"}
    status, _ = http_get(c.lb_port, "/v1/events?topic=x")
    assert status == 503
    # The shipped config, not one of the harness's own.
    cfg = c.haproxy_config()
    assert cfg.startswith("# HAProxy in front of the sse-node servers.")
    assert "retry-on conn-failure empty-response 503" in cfg and "timeout tunnel 60s" in cfg


@pytest.mark.timeout(90)
def test_tcp_proxy_cuts_and_restores_a_nats_client(cluster_factory, topic):
    c = cluster_factory(nodes=0, with_nodes=False, topics=[(topic, 3)])
    with TcpProxy(c.nats_ports) as proxy:

        async def go():
            import nats

            events = []

            async def down():
                events.append("down")

            async def up():
                events.append("up")

            nc = await nats.connect(
                servers=proxy.urls,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                disconnected_cb=down,
                reconnected_cb=up,
            )
            await nc.flush()
            await asyncio.to_thread(proxy.cut)
            await _until(lambda: "down" in events, 10)
            await asyncio.sleep(0.5)
            assert not nc.is_connected
            await asyncio.to_thread(proxy.restore)
            await _until(lambda: "up" in events, 10)
            await nc.flush()
            await nc.close()
            return events

        assert run_async(go())[:2] == ["down", "up"]


async def _until(cond, timeout, why=lambda: ""):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, why()
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- one node
@pytest.mark.needs_node
@pytest.mark.timeout(90)
def test_one_event_through_the_load_balancer(node_binary, cluster_factory, topic):
    c = cluster_factory(nodes=2, topics=[(topic, 3)])
    c.wait_backend("node0", up=True)
    c.wait_backend("node1", up=True)

    async def go():
        import nats

        got = []
        stop = asyncio.Event()
        # A public topic takes no token; one in the query is passed over,
        # and must not reach the load balancer's log either.
        client = SseClient(
            "c0",
            c.lb_port,
            f"/v1/events?topic={topic}&access_token=secret-in-the-query",
            on_event=lambda cl, ev: got.append(ev),
        )
        task = asyncio.create_task(client.run(stop))
        await _until(lambda: client.parser.last_event_id, 15, lambda: client.stats)
        nc = await nats.connect(servers=c.nats_urls)
        js = nc.jetstream()
        await js.publish(f"sse.{topic}", json.dumps({"n": 1}).encode(), headers={"Sse-Event": "tick"})
        await _until(lambda: got, 10)
        stop.set()
        await task
        await nc.close()
        return client, got

    client, got = run_async(go())
    assert [(e.type, json.loads(e.data)) for e in got] == [("tick", {"n": 1})]
    assert got[0].id.startswith(f"{topic}:") and got[0].id.endswith(":1")
    assert client.parser.retry_ms is not None
    assert client.stats.served_by[0] in {"node0", "node1"}
    m = c.metrics("node0")
    assert m is not None and any(k.startswith("sse_clients_connected") for k in m)
    assert LOOPBACK in c.describe()
    # HAProxy logs the stream once it ends: its path, not its query.
    log = c.dir / "haproxy.log"
    deadline = time.monotonic() + 10
    while "/v1/events" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.1)
    text = log.read_text(errors="replace")
    assert "secret-in-the-query" not in text and "access_token" not in text, text[-2000:]


@pytest.mark.timeout(60)
def test_close_leaves_no_process_and_no_folder():
    import os

    from cluster.harness import Cluster

    with Cluster(nodes=1, with_nodes=False, with_admin=False) as c:
        c.stop("nats2")  # a stopped process is fine too
        pids = [p.pid for p in c.procs.values() if p.pid]
        folder = c.dir
        assert len(pids) == 4  # 3 NATS servers and HAProxy
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} outlived the cluster"
    assert not folder.exists()


def test_the_checker_names_lost_repeated_and_reordered_events():
    from cluster.workload import Fleet

    f = Fleet(1, "t", 4)
    f.received.update({"c0": [1, 2, 3, 4], "c1": [1, 2, 4], "c2": [1, 2, 2, 3, 4], "c3": [1, 3, 2, 4]})
    problems = f.verify(4)
    assert [p.split(":", 1)[0] for p in problems] == ["c1", "c2", "c3"]
    assert "missing 1 [3]" in problems[0]
    assert "duplicated 1 [2]" in problems[1]
    assert "out of order 1" in problems[2]


def test_the_checker_of_several_topics_allows_any_order_among_them_but_not_within_one():
    from cluster.workload import Fleet

    f = Fleet(1, ["a", "b"], 4)
    # Event n is of topic n % 2: 2 and 4 of `a`, 1 and 3 of `b`.
    f.received.update({"c0": [2, 1, 4, 3], "c1": [1, 3, 2], "c2": [1, 2, 4, 3, 3], "c3": [4, 1, 2, 3]})
    problems = f.verify(4)
    assert [p.split(":", 1)[0] for p in problems] == ["c1", "c2", "c3"]
    assert "missing 1 [4]" in problems[0]
    assert "duplicated 1 [3]" in problems[1]
    assert "out of order 1" in problems[2]


def test_the_checker_of_a_cycle_of_topics_knows_each_events_topic():
    from cluster.workload import Fleet

    f = Fleet(1, ["a", "b"], 3, cycle=[0, 0, 1])
    # Event n is of topic cycle[n % 3]: 1, 3 and 4 of `a`, 2 and 5 of `b`.
    f.received.update({"c0": [1, 3, 2, 4, 5], "c1": [1, 2, 5, 3, 4], "c2": [3, 1, 2, 4, 5]})
    problems = f.verify(5)
    assert [p.split(":", 1)[0] for p in problems] == ["c2"]
    assert "out of order 1" in problems[0]


def test_the_checker_of_several_topics_wants_exact_cursors():
    from cluster.workload import Event, Fleet

    f = Fleet(1, ["a", "b"], 2)
    c0, c1 = f.clients

    def event(n: int, cursor: str) -> Event:
        return Event(type="message", data=f'{{"n": {n}}}', id=cursor)

    # Exact: each event moves its own topic (n % 2: 0 is a, 1 is b) only.
    for n, cursor in [(1, "a:e:0,b:e:1"), (2, "a:e:1,b:e:1"), (3, "a:e:1,b:e:2")]:
        f._on_event(c0, event(n, cursor))
    # Wrong: event 2 (of a) moves b as well; event 3 (of b) stays where it was.
    for n, cursor in [(1, "a:e:0,b:e:1"), (2, "a:e:1,b:e:2"), (3, "a:e:1,b:e:2")]:
        f._on_event(c1, event(n, cursor))
    assert "c0" not in f.bad_ids
    assert f.bad_ids["c1"] == 2
