"""Every series the Grafana dashboard queries exists on a fresh node and a
fresh admin, before anything happened: a panel shows 0, not "No data", and
`rate()` sees the first increment (Prometheus's guidance for counters with
known label values).

Real binaries against a real nats-server; the queries are read from
helm/sse-cluster/dashboards/sse-cluster.json with the PromQL reader of
tests/deploy/test_deploy_dashboard.py. A topic exists, with no client yet:
per-topic series of the node (memory held for a topic it reads) only appear
once it reads the topic, which a fresh node does not."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from cluster.harness import http_get

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import test_deploy_dashboard as dash  # noqa: E402

pytestmark = [pytest.mark.needs_node]

# Labels that break a figure down by a fixed set of values: those values must
# all be exported from the start.
BREAKDOWNS = {"reason", "status", "source", "version"}


def series(text: str) -> dict[str, list[dict[str, str]]]:
    """Metric name -> the label sets of its series, from Prometheus text."""
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            out.setdefault(m.group(1), []).append(labels)
    return out


def queried() -> list[tuple[str, str, set[str]]]:
    """(panel, metric name, labels it groups or filters by) for every query."""
    board = json.loads(dash.DASHBOARD.read_text())
    out = []
    for title, target in dash.all_targets(board):
        expr = target["expr"]
        for name in dash.metric_names(expr):
            out.append((title, name, dash.grouping_labels(expr) - dash.TARGET_LABELS - {"le"}))
    return out


@pytest.mark.timeout(120)
def test_every_dashboard_series_exists_on_a_fresh_node_and_admin(node_binary, cluster_factory, topic):
    c = cluster_factory(nodes=1, nats_servers=1, topics=[(topic, 1)])
    assert "admin" in c.procs, "no sse-admin binary (cargo build -p sse-admin)"
    status, node_text = http_get(c.node_port("node0"), "/metrics")
    assert status == 200
    status, admin_text = http_get(c.admin_port, "/metrics")
    assert status == 200
    exported = {"node": series(node_text), "admin": series(admin_text)}

    problems = []
    checked = 0
    for title, name, labels in queried():
        base = dash.base_metric(name)
        where = "node" if base in dash.NODE_METRICS else "admin"
        found = exported[where].get(name, [])
        if "topic" in labels and where == "node":
            continue  # see the module doc
        checked += 1
        if not found:
            problems.append(f"{title}: {name} is not exported by a fresh {where}")
            continue
        for label in labels & BREAKDOWNS:
            if not any(label in s for s in found):
                problems.append(f"{title}: {name} has no series with a {label!r} label on a fresh {where}")
        if "topic" in labels and not any(s.get("topic") == topic for s in found):
            problems.append(f"{title}: {name} has no series for the topic {topic} on a fresh {where}")
    assert checked >= 15, f"only {checked} queries checked: the dashboard reader found too little"
    assert problems == [], "\n".join(problems)
