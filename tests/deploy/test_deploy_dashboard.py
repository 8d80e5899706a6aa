"""The Grafana dashboard (helm/sse-cluster/dashboards/sse-cluster.json),
shared by the chart and docker-compose: it only queries metrics the services
export, with their real labels, and has the panels operators need."""

from __future__ import annotations

import json
import re

import pytest

from deploy_support import CHART

DASHBOARD = CHART / "dashboards" / "sse-cluster.json"

# name -> labels, as exported by sse-node and sse-admin.
NODE_METRICS = {
    "sse_clients_connected": set(),
    "sse_connections_opened_total": set(),
    "sse_connections_closed_total": {"reason"},
    "sse_events_delivered_total": set(),
    "sse_replay_events_total": {"source"},
    "sse_replay_duration_seconds": set(),
    "sse_delivery_lag_seconds": set(),
    "sse_feed_read_lag_seconds": set(),
    "sse_clock_offset_seconds": set(),
    "sse_nats_connected": set(),
    "sse_nats_reconnects_total": set(),
    "sse_topic_listing_failures_total": set(),
    "sse_nats_server_switches_total": set(),
    "sse_build_info": {"version"},
    "sse_requests_rejected_total": {"status"},
    "sse_limit_rejections_total": {"limit"},
    "sse_reset_events_total": set(),
    "sse_invalid_events_total": {"reason"},
    "sse_history_bytes": {"topic"},
    "sse_topic_subscribers": {"topic"},
    "sse_stalled_streams_total": set(),
    "sse_feed_stalls_total": set(),
    "sse_feed_errors_total": {"kind"},
    "sse_parked_writer_stalls_total": set(),
    "sse_feeds_live": set(),
    "sse_feeds_dozing": set(),
    "sse_feed_direct_reads_total": set(),
    "sse_feed_live_reads_total": set(),
    "sse_feed_starts_total": set(),
    "sse_feed_stops_total": set(),
    "sse_jetstream_consumers": set(),
    "sse_history_held_bytes": set(),
    "sse_history_budget_bytes": set(),
    "sse_history_evictions_total": set(),
    "sse_streams_parked": set(),
    "sse_streams_served_total": {"path"},
    "sse_parked_refusals_total": set(),
    "sse_trace_spans_dropped_total": {"reason"},
}
ADMIN_METRICS = {
    "sse_topic_messages": {"topic"},
    "sse_topic_bytes": {"topic"},
    "sse_cluster_topic_subscribers": {"topic"},
    "sse_nodes_live": set(),
    "sse_admin_trace_spans_dropped_total": {"reason"},
}
METRICS = {**NODE_METRICS, **ADMIN_METRICS}
HISTOGRAMS = {"sse_replay_duration_seconds", "sse_delivery_lag_seconds", "sse_feed_read_lag_seconds"}
# Labels every scraped series has (target labels), plus `le` on buckets.
TARGET_LABELS = {"instance", "job", "component", "namespace", "pod", "service"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not
    functions, keywords, label names or parts of selectors/durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)   # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                          # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                         # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)                                         # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in m.group(1).split(",") if l.strip()}
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
    return labels


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def all_targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in all_panels(dashboard) for t in p.get("targets", [])]


def test_parser_self_check():
    expr = ('histogram_quantile(0.99, sum by (le, instance) (rate(sse_delivery_lag_seconds_bucket{job=~"$job"}[5m])))'
            ' / on (instance) group_left(version) sse_build_info and bogus_metric offset 5m')
    assert metric_names(expr) == {"sse_delivery_lag_seconds_bucket", "sse_build_info", "bogus_metric"}
    assert grouping_labels(expr) == {"le", "instance", "job"}
    assert base_metric("sse_delivery_lag_seconds_bucket") == "sse_delivery_lag_seconds"
    assert base_metric("sse_clients_connected_count") == "sse_clients_connected_count"


def test_identity_and_datasource_variable(dashboard):
    assert dashboard["uid"] == "sse-cluster"
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for title, target in all_targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
    for p in all_panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"


def test_every_queried_metric_is_exported(dashboard):
    targets = all_targets(dashboard)
    assert len(targets) >= 15
    queries = [(title, t["expr"]) for title, t in targets]
    queries += [(f"variable {v['name']}", v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for title, expr in queries:
        names = metric_names(expr) if not expr.startswith("label_values") else {expr.split("(")[1].split(",")[0].strip()}
        assert names, f"{title}: no metric found in {expr!r}"
        for name in names:
            assert base_metric(name) in METRICS, f"{title}: {name} is not exported by sse-node or sse-admin"
            if name.endswith("_bucket"):
                assert base_metric(name) in HISTOGRAMS


def test_admins_cluster_wide_figures_are_not_added_up(dashboard):
    """Each admin exports the whole cluster's figures (the chart's HA values
    run two admins, and a rollout runs two for a while): summing their
    series would double every figure, so panels take one (max)."""
    summed = []
    for title, t in all_targets(dashboard):
        for name in metric_names(t["expr"]) & set(ADMIN_METRICS):
            if re.search(rf"\b(sum|count)\b[^()]*(\([^()]*\))?\s*\([^()]*\b{name}\b", t["expr"]):
                summed.append((title, t["expr"]))
    assert not summed, summed


def test_grouping_labels_exist(dashboard):
    for title, t in all_targets(dashboard):
        metrics = {base_metric(n) for n in metric_names(t["expr"])}
        known = set().union(*(METRICS[m] for m in metrics)) | TARGET_LABELS
        if any(n.endswith("_bucket") for n in metric_names(t["expr"])):
            known.add("le")
        unknown = grouping_labels(t["expr"]) - known
        assert not unknown, f"{title}: labels {unknown} not on {metrics}"


def test_histogram_quantiles_aggregate_by_le(dashboard):
    for title, t in all_targets(dashboard):
        if "histogram_quantile" in t["expr"]:
            assert re.search(r"by\s*\([^)]*\ble\b", t["expr"]), f"{title}: quantile over buckets needs `by (le)`"
            assert "rate(" in t["expr"]


@pytest.mark.parametrize("needle,metric", [
    ("clients", "sse_clients_connected"),
    ("delivery rate", "sse_events_delivered_total"),
    ("delivery lag", "sse_delivery_lag_seconds"),
    ("replays by source", "sse_replay_events_total"),
    ("disconnects by reason", "sse_connections_closed_total"),
    ("nats connectivity", "sse_nats_connected"),
    ("streams opened by path", "sse_streams_served_total"),
    ("topic", "sse_topic_bytes"),
    ("topic", "sse_topic_messages"),
])
def test_required_panels(dashboard, needle, metric):
    panels = [p for p in all_panels(dashboard) if needle in p["title"].lower() and p["type"] != "row"]
    assert panels, f"no panel titled like {needle!r}"
    used = {base_metric(n) for p in panels for t in p.get("targets", []) for n in metric_names(t["expr"])}
    assert metric in used, f"panels {[p['title'] for p in panels]} do not query {metric}"


def test_lag_panel_shows_p50_and_p99(dashboard):
    panel = [p for p in all_panels(dashboard) if p["title"].lower().startswith("delivery lag p50")][0]

    def quantiles(metric):
        return sorted(float(re.search(r"histogram_quantile\(\s*([0-9.]+)", t["expr"]).group(1))
                      for t in panel["targets"] if metric in t["expr"])

    assert quantiles("sse_delivery_lag_seconds") == [0.5, 0.99]
    # Beside it, the part of the lag spent before the node read the event.
    assert quantiles("sse_feed_read_lag_seconds") == [0.99]
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_breakdowns_use_their_labels(dashboard):
    def exprs(title):
        return " ".join(t["expr"] for p in all_panels(dashboard) if p["title"].lower() == title for t in p["targets"])

    assert re.search(r"by \(source\)", exprs("replays by source"))
    assert re.search(r"by \(reason\)", exprs("disconnects by reason"))


def test_panel_ids_unique_and_layout_fits(dashboard):
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in all_panels(dashboard):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


@pytest.mark.parametrize("crate,metrics", [("node", NODE_METRICS), ("admin", ADMIN_METRICS)])
def test_metric_list_matches_the_source(crate, metrics):
    """The names this test accepts are declared in the crate's metrics.rs."""
    from deploy_support import ROOT

    source = ROOT / crate / "src" / "metrics.rs"
    assert source.exists(), f"{source} is missing: the metric names cannot be checked against it"
    declared = set(re.findall(r'"(sse_[a-z0-9_]+)"', source.read_text()))
    missing = set(metrics) - declared
    assert not missing, f"{crate}/src/metrics.rs does not declare {sorted(missing)}"


def effective_unit(panel: dict, ref_id: str) -> str | None:
    """The unit a target's series are drawn in: an override of its refId,
    else the panel's default."""
    config = panel.get("fieldConfig", {})
    unit = config.get("defaults", {}).get("unit")
    for override in config.get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byFrameRefID" and matcher.get("options") == ref_id:
            for prop in override.get("properties", []):
                if prop.get("id") == "unit":
                    unit = prop["value"]
    return unit


def test_byte_series_are_drawn_in_bytes_and_counts_are_not(dashboard):
    """A gauge of bytes shown as a bare number (268435456) says nothing, and
    a count drawn on a byte axis beside a budget of 256 MiB is a flat zero:
    each target of a time series gets the unit of what it queries."""
    checked = 0
    for panel in dashboard["panels"]:
        if panel.get("type") != "timeseries":
            continue
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            byte_gauges = {n for n in names if n.endswith("_bytes")}
            unit = effective_unit(panel, target["refId"])
            if byte_gauges and byte_gauges == names:
                assert unit in ("bytes", "decbytes"), (panel["title"], target["expr"], unit)
                checked += 1
            elif not byte_gauges:
                assert unit not in ("bytes", "decbytes"), (panel["title"], target["expr"], unit)
    assert checked >= 2
