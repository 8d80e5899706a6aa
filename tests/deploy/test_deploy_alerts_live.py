"""The alerting rules in a real Prometheus, scraping a real node and admin
labelled as docker-compose's Prometheus labels them: quiet while the cluster
is healthy, and the alerts about NATS and a node down turn pending when those
happen. The unit tests (test_deploy_alerts.py) cover each alert's logic on
made-up series; this covers the names and labels of what is really scraped."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml

from cluster.harness import LOOPBACK, free_port, wait_until
from deploy_support import ROOT
from test_deploy_alerts import RULES

pytestmark = [pytest.mark.needs_node]


def prometheus_binary() -> str:
    path = ROOT / ".tools" / "bin" / "prometheus"
    if not path.exists():
        pytest.fail("prometheus is not in .tools/bin; scripts/install-deps unpacks it", pytrace=False)
    return str(path)


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
        return json.loads(response.read())["data"]


def alert_states(port: int) -> dict[str, str]:
    """alertname -> state (pending, firing) of every active alert."""
    return {a["labels"]["alertname"]: a["state"] for a in api(port, "/api/v1/alerts")["alerts"]}


@pytest.mark.timeout(120)
def test_the_rules_in_prometheus_watch_a_real_node(cluster_factory, tmp_path):
    c = cluster_factory(nodes=1)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "sse-node",
                "static_configs": [{"targets": [f"{LOOPBACK}:{c.node_port('node0')}"], "labels": {"component": "node"}}],
            },
            {
                "job_name": "sse-admin",
                "static_configs": [{"targets": [c.admin_url.split("//", 1)[1]], "labels": {"component": "admin"}}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    prometheus = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def scraped() -> bool:
            result = api(port, "/api/v1/query?query=" + urllib.request.quote('up{job=~"sse-.*"} == 1'))["result"]
            connected = api(port, "/api/v1/query?query=sse_nats_connected")["result"]
            return len(result) == 2 and bool(connected)

        wait_until(scraped, 30, "Prometheus scraping the node and admin")
        rules = api(port, "/api/v1/rules")["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"]}
        assert loaded == {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
        assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
        # A few evaluations of a healthy cluster: nothing active.
        time.sleep(3)
        assert alert_states(port) == {}, "alerts on a healthy cluster"

        for i in range(3):
            c.kill(f"nats{i}")
        wait_until(
            lambda: alert_states(port).get("SseNodeNatsDisconnected") == "pending",
            30,
            "SseNodeNatsDisconnected pending once NATS is gone",
        )
        c.kill("node0")
        wait_until(lambda: alert_states(port).get("SseNodeDown") == "pending", 30, "SseNodeDown pending once the node is gone")
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()
