"""docs/deploy.md stays true to the artefacts it describes."""

from __future__ import annotations

import re


from deploy_support import ROOT, load_docs, require_module

DOC = ROOT / "docs" / "deploy.md"


def test_paths_mentioned_exist():
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:helm|k8s|deploy|node|admin|docs)/[\w./-]+)`", text))
    assert len(paths) >= 8
    for p in paths:
        assert (ROOT / p.rstrip("/")).exists(), f"docs/deploy.md mentions {p}, which does not exist"


def test_names_in_the_helm_walkthrough_are_the_chart_names():
    """The doc installs release `sse` in namespace `sse`; the object names it
    then uses must be the ones the chart creates."""
    helm = require_module("helm_python")
    text = DOC.read_text()
    assert "helm install sse helm/sse-cluster" in text and "--namespace sse" in text
    with helm.Chart.load(ROOT / "helm" / "sse-cluster") as chart:
        rendered = chart.render(values={}, name="sse", namespace="sse", is_install=True)
    objs = [o for name, t in rendered.items() if not name.endswith("NOTES.txt") for o in load_docs(t)]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    refs = re.findall(r"\b(secret|svc)/?\s*([a-z0-9-]+-sse-cluster-[a-z]+)", text)
    assert len(refs) >= 3
    for kind, name in refs:
        wanted = {"secret": "Secret", "svc": "Service"}[kind]
        assert (wanted, name) in names, f"docs use {kind} {name}; the chart makes {sorted(n for k, n in names if k == wanted)}"
    assert re.search(r"get secret sse-sse-cluster-secrets", text)


def test_documented_defaults_match_the_chart():
    import tomllib

    from deploy_support import yaml

    values = yaml.safe_load((ROOT / "helm" / "sse-cluster" / "values.yaml").read_text())
    text = DOC.read_text()
    node = values["node"]
    assert f"`node.preStopSeconds`, default {node['preStopSeconds']} s" in text
    assert f"`shutdown.drain_seconds` ({node['config']['shutdown']['drain_seconds']} s)" in text
    assert f"`terminationGracePeriodSeconds` ({node['terminationGracePeriodSeconds']} s)" in text
    assert f"`http.heartbeat_seconds` ({node['config']['http']['heartbeat_seconds']} s)" in text
    assert f"({node['autoscaling']['scaleDownStabilizationWindowSeconds']} s)" in text
    default = tomllib.loads((ROOT / "node" / "config.default.toml").read_text())
    assert f"`http.max_connections`** (default {default['http']['max_connections']})" in text
