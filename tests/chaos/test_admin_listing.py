"""Admin's topic listing with one NATS server down: topics whose streams
live only there still exist, so the listing names them as unavailable, and
no topic is listed twice (JetStream's listing leaves such streams out and
pages by what it returned)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter

import pytest

from cluster.harness import run_async, wait_until
from cluster.workload import chaos_timeout, connected_server, meta_leader, stream_leader

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
