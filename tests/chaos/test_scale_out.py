"""Scale out from 2 to 4 nodes under load: connections re-spread because
each stream closes after `http.max_connection_lifetime_seconds` (+ jitter)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cluster.workload import Scenario, chaos_timeout, scale

pytestmark = [pytest.mark.needs_node]


@pytest.mark.timeout(chaos_timeout(150))
def test_scale_out_from_2_to_4_nodes_under_load(node_binary, cluster_factory, topic):
    c = cluster_factory(
        nodes=2,
        max_nodes=4,
        topics=[(topic, 3)],
        node_env={"SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS": "5"},
    )
    scn = Scenario(c, "scale out 2 -> 4 nodes", topic, **scale())
    timeline: list[str] = []
    marks: dict[str, int] = {}  # per client: connections made before all 4 nodes were up

    async def snapshot(label: str) -> dict[str, int]:
        counts = {k: int(v) for k, v in sorted((await scn.watcher.scrape()).items())}
        seen = dict(sorted(scn.fleet.spread().items()))
        timeline.append(f"{label}: {counts} (clients see {seen})")
        return counts

    async def action(s: Scenario) -> None:
        s.extra["sse_clients_connected over time"] = timeline
        await s.at(0.2)
        await snapshot("2 nodes")
        for name in ("node2", "node3"):
            c.start_proc(name, wait=False)
        for name in ("node2", "node3"):
            await asyncio.to_thread(c.wait_ready, name)
            await asyncio.to_thread(c.wait_backend, name, True)
        await snapshot("4 nodes up")
        marks.update({cl.name: len(cl.stats.served_by) for cl in s.fleet.clients})
        for f in (0.5, 0.7, 0.9):
            await s.at(f)
            await snapshot(f"{int(f * 100)}% published")
        s.extra["final spread"] = await snapshot("end")

    problems = asyncio.run(scn.run(action))
    after = Counter(n for cl in scn.fleet.clients for n in cl.stats.served_by[marks.get(cl.name, 0) :])
    scn.figures["streams opened after scale-out"] = dict(sorted(after.items()))
    scn.assert_clean(problems)
    final = scn.figures["final spread"]
    total = sum(final.values())
    for name in ("node2", "node3"):
        assert final.get(name, 0) >= 0.1 * total, f"{name} holds too few connections: {final}"
