"""Admin's topic listing with one NATS server down: topics whose streams
live only there still exist, so the listing names them as unavailable, and
no topic is listed twice (JetStream's listing leaves such streams out and
pages by what it returned)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from cluster.harness import LOOPBACK, REPO, http_get, run_async, wait_until
from cluster.workload import Frozen, RoutePartition, chaos_timeout, connected_server, meta_leader, stream_leader

pytestmark = [pytest.mark.needs_node]

TOPICS = [f"solo{i}" for i in range(12)]


def admin_get(c, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{c.admin_url}{path}", headers={"Authorization": f"Bearer {c.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:
        return 0, {}


@pytest.mark.timeout(chaos_timeout(120))
def test_topics_on_a_dead_nats_server_are_listed_as_unavailable_and_none_twice(node_binary, cluster_factory):
    c = cluster_factory(nodes=1)
    for name in TOPICS:
        c.create_topic(name, replicas=1)
    c.create_topic("spread", replicas=3)
    leaders = {name: run_async(stream_leader(c.nats_urls, f"SSE_{name}")) for name in TOPICS}
    # The server killed is neither admin's own nor the JetStream meta
    # leader: this test is about what a listing says of the streams a dead
    # server held, not about admin reconnecting or the cluster electing.
    spared = {connected_server(c, "sse-admin"), meta_leader(c)}
    held_by = Counter(leader for leader in leaders.values() if leader not in spared)
    assert held_by, f"every R1 topic is on {spared}: {leaders}"
    server, held = held_by.most_common(1)[0]
    on_server = {name for name, leader in leaders.items() if leader == server}
    assert 0 < held < len(TOPICS), leaders

    c.kill(c.nats_proc_for_server(server))

    last = {}

    def whole_listing():
        status, body = admin_get(c, "/v1/topics")
        last.update(status=status)
        if status != 200:
            return None
        listed = [t["name"] for t in body["topics"] if t["name"].startswith("solo")]
        unavailable = [t for t in body.get("unavailable", []) if t.startswith("solo")]
        last.update(listed=sorted(listed), unavailable=sorted(unavailable))
        return (listed, unavailable) if set(listed) | set(unavailable) == set(TOPICS) else None

    try:
        listed, unavailable = wait_until(whole_listing, 60, "a listing that accounts for every topic")
    except TimeoutError as error:
        raise AssertionError(f"{error}; last answer {last}; on {server}: {sorted(on_server)}") from None
    assert sorted(unavailable) == sorted(on_server), (unavailable, leaders)
    assert sorted(listed) == sorted(set(TOPICS) - on_server), listed
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"

    status, overview = admin_get(c, "/v1/overview")
    assert status == 200
    assert overview["error"] and all(name in overview["error"] for name in on_server), overview["error"]

    # What an operator sees: the R3 topic's leader says the dead server is
    # not heard from, and `ssectl status` names it and the topics not shown.
    def dead_server_named():
        status, topic = admin_get(c, "/v1/topics/spread")
        if status != 200:
            return None
        followers = {r["server"]: r for r in topic["placement"]["replicas"]}
        seen = followers.get(server)
        # Not heard from for seconds; or never, by a leader elected since
        # (NATS then says 0).
        unheard = seen and not seen["current"] and (seen["last_seen_ms"] >= 5000 or seen["last_seen_ms"] == 0)
        return topic["placement"] if unheard else None

    placement = wait_until(dead_server_named, 30, f"admin's placement of `spread` naming {server} as unheard of")
    assert placement["leader"] != server, placement
    ssectl = REPO / "target" / "debug" / "ssectl"
    env = {"PATH": os.environ["PATH"], "HOME": str(c.dir), "SSECTL_ADMIN_URL": c.admin_url, "SSECTL_TOKEN": c.admin_token}
    as_json = subprocess.run([str(ssectl), "-o", "json", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["nats_servers"][server] == "unreachable", report["nats_servers"]
    assert sorted(report["unavailable_topics"]) == sorted(on_server), report["unavailable_topics"]
    as_text = subprocess.run([str(ssectl), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert f"{server} unreachable" in as_text.stdout, as_text.stdout
    assert "not shown: " in as_text.stdout and all(name in as_text.stdout for name in on_server), as_text.stdout


def stream_status(port: int, topic: str, timeout: float = 20.0) -> int:
    """The status a node answers a stream request with; the stream itself is
    not read."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
        conn.sendall(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before a status: {head!r}")
            head += chunk
    return int(head.split(b" ", 2)[1])


async def _delete_streams(urls: list[str], names: list[str]) -> None:
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        for name in names:
            await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.mark.timeout(chaos_timeout(150))
def test_a_node_starting_while_a_nats_server_is_down_serves_its_topics_once_it_is_back(node_binary, cluster_factory):
    """A node's first listing leaves out the streams of a NATS server that is
    down. The node still becomes ready and serves the other topics; a topic
    whose stream it cannot reach gets 503 (come back), not 404 (no such
    topic, which ends a browser's EventSource for good); once the server is
    back, the topic is served."""
    c = cluster_factory(nodes=1, max_nodes=2)
    c.create_topic("everywhere", replicas=3)
    spared = {connected_server(c, "sse-admin"), meta_leader(c)}
    victim = next(c.nats_server_name(i) for i in range(c.nats_count) if c.nats_server_name(i) not in spared)
    # The stream listed last (its name sorts after every other), on the
    # server killed: the edge of the listing's paging. JetStream places an
    # R1 stream where it likes, so streams are made until one lands there,
    # and the others removed.
    elsewhere = []
    for attempt in range(30):
        name = f"zz{attempt:02d}"
        c.create_topic(name, replicas=1)
        if run_async(stream_leader(c.nats_urls, f"SSE_{name}")) == victim:
            break
        elsewhere.append(f"SSE_{name}")
    else:
        raise AssertionError(f"no stream of 30 was placed on {victim}")
    run_async(_delete_streams(c.nats_urls, elsewhere))

    c.kill(c.nats_proc_for_server(victim))
    try:
        c.start_proc("node1", timeout=45)
    except TimeoutError as error:
        raise AssertionError(f"a node starting with {victim} down never became ready: {error}\n{c['node1'].log_tail(20)}") from None
    # The R3 topic may have had its leader on the server killed: served once
    # its stream has elected another (503 meanwhile, as a client is told).
    wait_until(lambda: stream_status(c.node_port("node1"), "everywhere") == 200, 30, "the R3 topic served")
    assert stream_status(c.node_port("node1"), name) == 503

    c.start_proc(c.nats_proc_for_server(victim))
    wait_until(lambda: stream_status(c.node_port("node1"), name) == 200, 60, f"{name} served once {victim} is back")


@pytest.mark.timeout(chaos_timeout(120))
def test_admin_leaves_a_frozen_nats_server_for_another(node_binary, cluster_factory):
    """Admin's NATS server stops answering without closing the connection
    (a frozen VM, a partition that drops packets): pings every
    `nats.ping_interval_seconds` give it up after three silent intervals
    and admin answers again through another server, where NATS's own
    interval would leave every call timing out for minutes."""
    c = cluster_factory(nodes=1, admin_env={"SSE_NATS__PING_INTERVAL_SECONDS": "1"})
    c.create_topic("kept", replicas=3)
    server = connected_server(c, "sse-admin")
    assert server, "admin is on no NATS server"
    with Frozen() as frozen:
        frozen.freeze(c[c.nats_proc_for_server(server)])
        frozen_at = time.monotonic()
        statuses = []

        def listed():
            status, body = admin_get(c, "/v1/topics")
            statuses.append(status)
            return status == 200 and "kept" in [t["name"] for t in body["topics"]]

        wait_until(listed, 30, "admin listing topics again with its NATS server frozen")
        answered_after = time.monotonic() - frozen_at
        # Three silent seconds, two more if the first server tried next is
        # the frozen one, and the call in flight: well within 15 s.
        assert answered_after < 15, f"admin answered again only after {answered_after:.1f}s ({statuses})"


@pytest.mark.timeout(chaos_timeout(120))
def test_admin_leaves_a_nats_server_cut_off_from_its_peers(node_binary, cluster_factory):
    """Admin's NATS server is cut off from its peers, not from admin: it goes
    on answering pings, so the NATS client stays, but it cannot serve
    JetStream and every API call would answer 503 until the cut healed.
    Admin asks JetStream about the node-report bucket every 5 s; after an
    unanswered check it finds a server that answers and moves there."""
    with RoutePartition() as partition:
        c = cluster_factory(nodes=1, prepare=partition.prepare)
        c.create_topic("kept", replicas=3)
        server = connected_server(c, "sse-admin")
        assert server, "admin is on no NATS server"
        partition.cut(int(server.removeprefix("n")))
        cut_at = time.monotonic()
        statuses = []

        def listed_elsewhere():
            status, body = admin_get(c, "/v1/topics")
            statuses.append(status)
            return (
                status == 200
                and "kept" in [t["name"] for t in body["topics"]]
                and connected_server(c, "sse-admin") not in (server, None)
            )

        wait_until(listed_elsewhere, 40, f"admin listing topics through a server other than {server}, cut off")
        answered_after = time.monotonic() - cut_at
        # A check every 5 s (the cut server answers as the bucket's leader
        # until its followers have been silent for 4 s), the probes' 2 to
        # 4 s, and the call in flight; the cut would have lasted as long as
        # the test waited.
        assert answered_after < 25, f"admin answered again only after {answered_after:.1f}s ({statuses})"
        status, text = http_get(c.admin_port, "/metrics")
        assert status == 200, text
        assert "sse_admin_nats_server_switches_total 1" in text, text
