"""The cluster view (admin `GET /v1/nodes`) outlives the loss of any one
NATS server, because the node-report bucket is replicated; and a bucket made
with one copy by an older version is raised to the configured count."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from cluster.harness import LOOPBACK, run_async, wait_until
from cluster.workload import chaos_timeout, stream_leader

pytestmark = [pytest.mark.needs_node]

BUCKET = "sse_nodes"
STREAM = f"KV_{BUCKET}"
# Nodes report every second; entries live as long as by default. An entry
# must outlive a leader election of the bucket's stream: nats-server waits 4
# to 9 s before a follower calls one.
TTL_SECONDS = 15
FAST_REPORTS = {"SSE_CLUSTER__REPORT_SECONDS": "1", "SSE_CLUSTER__NODE_TTL_SECONDS": str(TTL_SECONDS)}
# Time admin may be without an answer in all while it reconnects and the
# bucket elects a leader (listing keys needs the leader).
RECOVERY_SECONDS = 15.0


def nodes_reports(c) -> tuple[int, dict[str, datetime]]:
    """Status of admin's `/v1/nodes` and, per node address it lists, when
    that node last reported."""
    req = urllib.request.Request(f"{c.admin_url}/v1/nodes", headers={"Authorization": f"Bearer {c.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            nodes = json.loads(resp.read())["nodes"]
            return resp.status, {n["address"]: datetime.fromisoformat(n["reported_at"]) for n in nodes}
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:
        return 0, {}


def nodes_view(c) -> tuple[int, set[str]]:
    """Status of admin's `/v1/nodes` and the node addresses it lists."""
    status, reports = nodes_reports(c)
    return status, set(reports)


def bucket_replicas(urls: list[str]) -> tuple[int, int]:
    """(configured copies, copies current) of the bucket's stream."""

    async def go():
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=2)
        try:
            info = await nc.jetstream(timeout=2).stream_info(STREAM)
            current = 1 + sum(1 for r in (info.cluster.replicas or []) if r.current) if info.cluster else 1
            return info.config.num_replicas, current
        finally:
            await nc.close()

    try:
        return run_async(go())
    except Exception:  # noqa: BLE001 - during an election the info request fails
        return 0, 0


def make_bucket_with_one_copy(urls: list[str]) -> None:
    """What versions before the replicated bucket made."""

    async def go():
        import nats
        from nats.js.api import KeyValueConfig

        nc = await nats.connect(servers=urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=5)
            deadline = time.monotonic() + 30
            while True:
                try:
                    await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=TTL_SECONDS, replicas=1))
                    return
                except Exception:  # noqa: BLE001 - meta leader still settling
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.25)
        finally:
            await nc.close()

    run_async(go())


def watch_view(c, ids: set[str], proc: str) -> tuple[float, float]:
    """Polls `/v1/nodes` after `proc` was killed until every node has
    written a report since the kill, which proves the writes go on. Every
    answer on the way must list every node. Returns the time the view was
    unavailable in all (no answer, or an error status) and how long until
    every node had reported again."""
    killed_at = datetime.now(timezone.utc)
    start = time.monotonic()
    unavailable = 0.0
    while True:
        asked = time.monotonic()
        status, reports = nodes_reports(c)
        if status != 200:
            unavailable += max(time.monotonic() - asked, 0.2)
        else:
            assert set(reports) == ids, (
                f"{asked - start:.1f}s after killing {proc}, /v1/nodes lists {sorted(reports)}, not {sorted(ids)}"
            )
            if all(at > killed_at for at in reports.values()):
                return unavailable, asked - start
        # An entry outlives its last write by the TTL: past that, a node
        # whose writes failed all along would be gone from the view.
        assert asked - start < TTL_SECONDS, (
            f"{TTL_SECONDS}s after killing {proc}, not every node has reported since: "
            f"status {status}, reports {reports}"
        )
        time.sleep(0.2)


@pytest.mark.timeout(chaos_timeout(240))
def test_cluster_view_survives_losing_each_nats_server(node_binary, cluster_factory):
    c = cluster_factory(nodes=0, max_nodes=3, with_admin=False, node_env=FAST_REPORTS, admin_env={"SSE_CLUSTER__NODE_TTL_SECONDS": str(TTL_SECONDS)})
    make_bucket_with_one_copy(c.nats_urls)
    assert bucket_replicas(c.nats_urls)[0] == 1
    for name in c.node_names():
        c.start_proc(name)
    c.start_admin()
    ids = {f"{LOOPBACK}:{c.node_port(name)}" for name in c.node_names()}

    # The first node to open the bucket raises it to three copies.
    wait_until(lambda: bucket_replicas(c.nats_urls) == (3, 3), 60, f"{STREAM} at 3 current replicas")
    wait_until(lambda: nodes_view(c)[1] >= ids or None, 30, "every node in the cluster view")
    listed = nodes_view(c)[1]
    assert listed == ids, f"the view lists {sorted(listed)}, not the three nodes"

    # Kill the bucket's leader first, then every other server in turn.
    leader = run_async(stream_leader(c.nats_urls, STREAM))
    order = [c.nats_proc_for_server(leader)] + [f"nats{i}" for i in range(3) if c.nats_server_name(i) != leader]
    for proc in order:
        c.kill(proc)
        unavailable, reported = watch_view(c, ids, proc)
        # Admin reconnects to another server and the bucket may elect a
        # leader: a short gap in admin's answers is expected. With the bucket
        # at one copy on the dead server, writes fail until it is back and
        # the watch above fails.
        assert unavailable <= RECOVERY_SECONDS, (
            f"with {proc} down, /v1/nodes failed for {unavailable:.1f}s in all (at most {RECOVERY_SECONDS}s allowed)"
        )
        print(f"{proc} killed: view unavailable {unavailable:.1f}s; every node reported again after {reported:.1f}s")
        c.start_proc(proc)
        wait_until(lambda: bucket_replicas(c.nats_urls) == (3, 3), 60, f"{STREAM} current on 3 servers after {proc} came back")
