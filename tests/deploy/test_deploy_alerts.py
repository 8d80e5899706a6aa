"""The alerting rules (helm/sse-cluster/alerts/sse-cluster.rules.yaml),
shared by the chart's PrometheusRule and docker-compose's Prometheus: promtool
accepts them, each alert fires on the series it is about and not on healthy
ones, and they query only metrics the services export, with their labels."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_support import CHART, ROOT, chart_objects, find, one
from test_deploy_dashboard import METRICS, grouping_labels, metric_names

RULES = CHART / "alerts" / "sse-cluster.rules.yaml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"

NODE = {"instance": "node-1:8080", "job": "sse-node", "component": "node"}
NODE_2 = {**NODE, "instance": "node-2:8080"}
ADMIN = {"instance": "admin:8090", "job": "sse-admin", "component": "admin"}

# Metrics the rules read that the dashboard does not, with their labels, by
# the crate that declares them (checked against its metrics.rs below).
RULE_ONLY_METRICS = {
    "node": {"sse_feed_errors_total": {"kind"}},
    "admin": {"sse_admin_nats_connected": set()},
}
EXPORTED = {**METRICS, **{name: labels for crate in RULE_ONLY_METRICS.values() for name, labels in crate.items()}}


def promtool() -> str:
    path = ROOT / ".tools" / "bin" / "promtool"
    if not path.exists():
        pytest.fail("promtool is not in .tools/bin; scripts/install-deps unpacks it", pytrace=False)
    return str(path)


def series(name: str, labels: dict[str, str], values: str) -> dict:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


# alert -> (input series, when, labels of the alerts expected then[, the
# interval of the values]), and a healthy case of the same alert that must
# stay silent. Values are one a minute unless the case says otherwise; the
# rules are evaluated once a minute. Rules with one-minute windows need
# values more often than that: theirs come every 30 s, as the chart's
# ServiceMonitor scrapes.
CASES: dict[str, tuple] = {
    "SseNodeDown": (
        [
            series("up", NODE, "1 0 0 0 0"),
            series("up", {**NODE, "instance": "node-2:8080"}, "1 1 1 1 1"),
            # Another application's pods, with a component of the same name.
            series("up", {**NODE, "job": "billing"}, "0 0 0 0 0"),
        ],
        "4m",
        [{**NODE, "severity": "critical"}],
    ),
    "SseAdminDown": ([series("up", ADMIN, "0x7")], "6m", [{**ADMIN, "severity": "warning"}]),
    "SseNoLiveNodes": ([series("sse_nodes_live", ADMIN, "3 0 0 0 0")], "4m", [{**ADMIN, "severity": "critical"}]),
    # Admin cut off from NATS for more than 3 minutes.
    "SseAdminNatsDisconnected": (
        [series("sse_admin_nats_connected", ADMIN, "1 0 0 0 0 0 0")],
        "5m",
        [{**ADMIN, "severity": "warning"}],
    ),
    "SseNodeNatsDisconnected": (
        [series("sse_nats_connected", NODE, "1 0 0 0")],
        "3m",
        [{**NODE, "severity": "critical"}],
    ),
    "SseNodeJetStreamUnanswered": (
        [
            # Listings failing every 10 s while connected: it fires; while
            # disconnected it is SseNodeNatsDisconnected's business.
            series("sse_topic_listing_failures_total", NODE, "0 0 3+3x10"),
            series("sse_nats_connected", NODE, "1x12"),
            series("sse_topic_listing_failures_total", NODE_2, "0 0 3+3x10"),
            series("sse_nats_connected", NODE_2, "0x12"),
        ],
        "4m",
        [{**NODE, "severity": "critical"}],
        "30s",
    ),
    # Four reconnections (after five before) in a few minutes.
    "SseNatsReconnectsFlapping": (
        [series("sse_nats_reconnects_total", NODE, "5 6 7 8 9 9 9")],
        "5m",
        [{**NODE, "severity": "warning"}],
    ),
    "SseDeliveryLagHigh": (
        [
            # Every write between 0.5 and 5 s after its event was stored.
            series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "0.5"}, "0x20"),
            series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "5"}, "0+10x20"),
            series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "+Inf"}, "0+10x20"),
        ],
        "16m",
        [{"instance": NODE["instance"], "severity": "warning"}],
    ),
    # Three minutes behind, then set right: fires after 10 minutes off.
    "SseNodeClockOff": ([series("sse_clock_offset_seconds", NODE, "180x12 0x5")], "11m", [{**NODE, "severity": "warning"}]),
    "SseFeedStalls": ([series("sse_feed_stalls_total", NODE, "0 0 1 1")], "3m", [{**NODE, "severity": "warning"}]),
    # A topic's stream offline, from 1 minute in: one node's feed fails to
    # make a consumer every 2 s; another's dozes and its looks go unanswered
    # a minute or more apart (here every 90 s). The alert fires for both 3
    # minutes later.
    "SseFeedErrors": (
        [
            series("sse_feed_errors_total", {**NODE, "kind": "consumer"}, "0 0 15+15x14"),
            series("sse_feed_errors_total", {**NODE, "kind": "consumer_limit"}, "0x16"),
            series("sse_feed_errors_total", {**NODE_2, "kind": "unanswered"}, "0 0 1 1 1 2 2 2 3 3 3 4 4 4 5 5 5"),
        ],
        "5m",
        [
            {"instance": NODE["instance"], "severity": "warning"},
            {"instance": NODE_2["instance"], "severity": "warning"},
        ],
        "30s",
    ),
    "SseParkedWriterStalls": (
        [series("sse_parked_writer_stalls_total", NODE, "0 0 1 1")],
        "3m",
        [{**NODE, "severity": "warning"}],
    ),
    "SseStreamsRefused": (
        [
            series("sse_requests_rejected_total", {**NODE, "status": "503"}, "0+120x20"),
            series("sse_requests_rejected_total", {**NODE, "status": "404"}, "0+600x20"),
        ],
        "16m",
        [{"instance": NODE["instance"], "severity": "warning"}],
    ),
    "SseNodeFull": (
        [
            series("sse_limit_rejections_total", {**NODE, "limit": "max_connections"}, "0 0 3 3"),
            series("sse_limit_rejections_total", {**NODE, "limit": "ip_rate", "instance": "node-2:8080"}, "0 0 9 9"),
        ],
        "3m",
        [{**NODE, "limit": "max_connections", "severity": "warning"}],
    ),
    "SseSlowClientsDropped": (
        [
            series("sse_connections_closed_total", {**NODE, "reason": "slow"}, "0+120x30"),
            series("sse_connections_closed_total", {**NODE, "reason": "client"}, "0+600x30"),
        ],
        "26m",
        [{"instance": NODE["instance"], "severity": "warning"}],
    ),
    "SseResetEvents": ([series("sse_reset_events_total", NODE, "0 0 5 5")], "3m", [{"instance": NODE["instance"], "severity": "info"}]),
    # Two bad events on a topic both nodes read: each node counts them, and
    # one alert says so.
    "SseInvalidEventsPublished": (
        [
            series("sse_invalid_events_total", {**NODE, "reason": "invalid_utf8"}, "0 0 2 2"),
            series("sse_invalid_events_total", {**NODE_2, "reason": "invalid_utf8"}, "0 0 2 2"),
            series("sse_invalid_events_total", {**NODE, "reason": "too_large"}, "0 0 0 0"),
        ],
        "3m",
        [{"reason": "invalid_utf8", "severity": "warning"}],
    ),
    "SseHistoryEvictions": (
        [series("sse_history_evictions_total", NODE, "0+12x45")],
        "41m",
        [{**NODE, "severity": "info"}],
    ),
}

# What an alert must not fire on, though it is close: (alert, interval of the
# values, input series, times when nothing may fire).
QUIET: dict[str, tuple[str, str, list[dict], list[str]]] = {
    # All of NATS down for 2 minutes, then back: listings failed meanwhile
    # (and one right after), SseNodeNatsDisconnected told it; once the node
    # is connected and JetStream answers, nothing is left to say.
    "jetstream answering again after a nats outage": (
        "SseNodeJetStreamUnanswered",
        "30s",
        [
            series("sse_nats_connected", NODE, "1 1 0 0 0 0 1x20"),
            series("sse_topic_listing_failures_total", NODE, "0 0 5 10 15 20 25 26 26x20"),
        ],
        ["3m", "4m", "5m", "6m", "8m"],
    ),
    # Listings that fail while connected, then stop at 4 minutes: the
    # alert, firing at 4 minutes (CASES), is gone a minute later.
    "jetstream answering again while connected": (
        "SseNodeJetStreamUnanswered",
        "30s",
        [
            series("sse_topic_listing_failures_total", NODE, "0 0 3+3x6 21x10"),
            series("sse_nats_connected", NODE, "1x18"),
        ],
        ["5m", "6m", "8m"],
    ),
    # Exactly 3 reconnections, read as 3.3 or 3.5 by increase().
    "three nats reconnections": (
        "SseNatsReconnectsFlapping",
        "1m",
        [series("sse_nats_reconnects_total", NODE, "5 6 7 8x20")],
        ["3m", "5m", "10m", "16m"],
    ),
    # A stream leader election: errors for 30 s, then reads go on.
    "a stream failover of 30 s": (
        "SseFeedErrors",
        "30s",
        [series("sse_feed_errors_total", {**NODE, "kind": "consumer"}, "0 0 5 9 9x16")],
        ["2m", "3m", "4m", "6m"],
    ),
    # Admin reconnecting within 3 minutes.
    "admin reconnecting to nats": (
        "SseAdminNatsDisconnected",
        "1m",
        [series("sse_admin_nats_connected", ADMIN, "1 0 0 0 1x6")],
        ["2m", "3m", "4m", "6m"],
    ),
}

# The same alerts on a healthy cluster: nothing fires.
HEALTHY = [
    series("up", NODE, "1x45"),
    series("up", ADMIN, "1x45"),
    series("sse_nodes_live", ADMIN, "3x45"),
    series("sse_admin_nats_connected", ADMIN, "1x45"),
    series("sse_nats_connected", NODE, "1x45"),
    series("sse_nats_reconnects_total", NODE, "0 1 1x43"),
    # One failed listing (an election) now and then.
    series("sse_topic_listing_failures_total", NODE, "0 1 1x20 2 2x22"),
    series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "0.5"}, "0+100x45"),
    series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "5"}, "0+100x45"),
    series("sse_delivery_lag_seconds_bucket", {**NODE, "le": "+Inf"}, "0+100x45"),
    # NTP keeps a node within milliseconds; a brief step is not an alert.
    series("sse_clock_offset_seconds", NODE, "0.004x20 1.5x3 -0.002x21"),
    series("sse_feed_stalls_total", NODE, "0x45"),
    # A read error now and then (a missed heartbeat, an election).
    series("sse_feed_errors_total", {**NODE, "kind": "consumer"}, "0x10 1x15 3x19"),
    series("sse_parked_writer_stalls_total", NODE, "0x45"),
    series("sse_requests_rejected_total", {**NODE, "status": "503"}, "0+6x45"),
    series("sse_limit_rejections_total", {**NODE, "limit": "max_connections"}, "0x45"),
    series("sse_connections_closed_total", {**NODE, "reason": "slow"}, "0+6x45"),
    series("sse_reset_events_total", NODE, "0x45"),
    series("sse_invalid_events_total", {**NODE, "reason": "invalid_utf8"}, "0x45"),
    series("sse_history_evictions_total", NODE, "0+1x45"),
]


def test_promtool_accepts_the_rules_and_their_templates():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_alert_has_a_case_a_severity_and_words_for_people():
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), names
    assert set(names) == set(CASES), "each alert needs its case here"
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, rule["alert"]


def test_each_alert_fires_on_its_series_and_not_on_a_healthy_cluster(tmp_path: Path):
    # Annotations are text for people (checked above by promtool); the unit
    # tests compare labels, so they run on a copy without them.
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "rules.yaml"
    bare.write_text(yaml.safe_dump(doc))
    tests = [
        {
            "name": alert,
            "interval": interval[0] if interval else "1m",
            "input_series": inputs,
            "alert_rule_test": [
                {"eval_time": when, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
            ],
        }
        for alert, (inputs, when, expected, *interval) in CASES.items()
    ]
    tests += [
        {
            "name": f"{alert}: {name}",
            "interval": interval,
            "input_series": inputs,
            "alert_rule_test": [{"eval_time": when, "alertname": alert, "exp_alerts": []} for when in whens],
        }
        for name, (alert, interval, inputs, whens) in QUIET.items()
    ]
    tests.append(
        {
            "name": "healthy",
            "interval": "1m",
            "input_series": HEALTHY,
            "alert_rule_test": [
                {"eval_time": when, "alertname": alert, "exp_alerts": []}
                for alert in CASES
                for when in ("5m", "20m", "44m")
            ],
        }
    )
    spec = tmp_path / "alerts-test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(bare)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_query_only_exported_metrics_and_labels():
    labels_everywhere = {"instance", "job", "component", "le"}
    for rule in rules():
        expr = rule["expr"]
        for name in metric_names(expr):
            base = name.removesuffix("_bucket")
            assert name == "up" or base in EXPORTED, f"{rule['alert']}: {name} is not exported"
        for label in grouping_labels(expr):
            known = set().union(*(EXPORTED[m] for m in EXPORTED)) | labels_everywhere
            assert label in known, f"{rule['alert']}: no series has the label {label}"


@pytest.mark.parametrize("crate", sorted(RULE_ONLY_METRICS))
def test_the_metrics_only_the_rules_read_are_declared(crate):
    source = ROOT / crate / "src" / "metrics.rs"
    declared = set(re.findall(r'"(sse_[a-z0-9_]+)"', source.read_text()))
    missing = set(RULE_ONLY_METRICS[crate]) - declared
    assert not missing, f"{crate}/src/metrics.rs does not declare {sorted(missing)}"


def test_the_chart_ships_the_rules_as_a_prometheus_rule():
    assert not find(chart_objects(), "PrometheusRule"), "off by default: it needs the operator's CRDs"
    objs = chart_objects(extra={"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}})
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_the_jobs_the_rules_name_are_the_jobs_both_deployments_scrape():
    named = {m for r in rules() for m in re.findall(r'job="([^"]+)"', r["expr"])}
    assert named == {"sse-node", "sse-admin"}, named
    compose_jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert named <= compose_jobs, compose_jobs
    for values in ({}, {"node": {"tls": {"secretName": "node-tls"}}}):
        extra = {"metrics": {"serviceMonitor": {"enabled": True}}, **values}
        monitor = one(chart_objects(extra=extra), "ServiceMonitor")
        for endpoint in monitor["spec"]["endpoints"]:
            job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
            assert job == [
                {
                    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                    "targetLabel": "job",
                    "replacement": "sse-$1",
                }
            ], endpoint


def test_compose_prometheus_loads_the_same_rules():
    prometheus = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    mounted = {}
    for volume in prometheus["volumes"]:
        source, _, rest = volume.partition(":")
        mounted[rest.split(":")[0]] = source
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["rule_files"], "prometheus.yml loads no rules"
    for path in config["rule_files"]:
        assert (ROOT / mounted[path]).resolve() == RULES.resolve(), f"{path} is not the chart's rules file"
