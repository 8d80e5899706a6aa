"""The sequence that once left clients silently stalled: a node killed, a
second node drained and restarted, then the stream leader's NATS server
killed a few seconds after the restart.

Every client must end with every event exactly once, and none may sit
silent while events flow (heartbeats are not progress): each event a
client gets must reach it within `max_delivery_delay` of its ack.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.workload import Scenario, chaos_timeout, stream_leader

pytestmark = [pytest.mark.needs_node]


@pytest.mark.timeout(chaos_timeout(240))
def test_node_kill_then_drain_and_restart_then_stream_leader_kill(node_binary, cluster_factory, topic):
    c = cluster_factory(
        nodes=3,
        topics=[(topic, 3)],
        # A drain long enough that clients are closed at spread moments.
        node_env={"SSE_SHUTDOWN__DRAIN_SECONDS": "6"},
    )
    # About 40 s of events, so plenty flow after the last fault.
    scn = Scenario(c, "node kill, drain and restart, stream leader kill", topic, clients=150, total=1600, rate=40.0, stall_seconds=6, max_delivery_delay=8.0)

    async def action(s: Scenario) -> None:
        await s.at(0.1)
        spread = s.fleet.spread()
        first, held = spread.most_common(1)[0]
        s.extra["killed"] = f"{first} serving {held} clients"
        c.kill(first)

        await s.at(0.25)
        second, held = max(((n, s.fleet.spread().get(n, 0)) for n in c.running_nodes()), key=lambda kv: kv[1])
        s.extra["drained"] = f"{second} serving {held} clients"
        t = time.monotonic()
        code = await asyncio.to_thread(c.stop, second, 30)
        s.extra["drain exit"] = f"exit {code} after {time.monotonic() - t:.1f}s"
        c.start_proc(second, wait=False)
        await asyncio.to_thread(c.wait_ready, second)
        back_at = time.monotonic()

        # The fault comes at a moment, not on a condition: a few seconds
        # after the restart, while the drained clients settle.
        await asyncio.sleep(5)
        leader = await stream_leader(c.nats_urls, f"SSE_{topic}")
        proc = c.nats_proc_for_server(leader)
        c.kill(proc)
        s.extra["stream leader killed"] = f"{leader} {time.monotonic() - back_at:.1f}s after {second} was back"
        live = [u for i, u in enumerate(c.nats_urls) if f"nats{i}" != proc]
        killed_at = time.monotonic()
        new_leader = await stream_leader(live, f"SSE_{topic}", not_=leader)
        s.unreadable_until = time.monotonic()
        s.extra["new stream leader"] = f"{new_leader} in {s.unreadable_until - killed_at:.1f}s"
        c.start_proc(proc, wait=False)
        c.start_proc(first, wait=False)
        await asyncio.to_thread(c.wait_ready, proc, 60)
        await asyncio.to_thread(c.wait_ready, first)

    problems = asyncio.run(scn.run(action))
    scn.assert_clean(problems)
    assert scn.extra["drain exit"].startswith("exit 0 "), scn.extra["drain exit"]
