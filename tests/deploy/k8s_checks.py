"""Checks shared by the Helm chart tests and the plain-manifest tests: what a
Kubernetes deployment of sse-cluster must get right, whichever way it is made.
"""

from __future__ import annotations

import tomllib

import pytest

from deploy_support import require_module

kubernetes_validate = require_module("kubernetes_validate")

from deploy_support import KUBE_VERSION

# Kinds that are not in the Kubernetes API itself; kubernetes-validate has no
# schema for them, so their shape is asserted by hand.
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}


def validate_strict(obj: dict) -> None:
    """Validate against the Kubernetes OpenAPI schema, rejecting unknown fields."""
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def validate_all(objs: list[dict]) -> list[str]:
    """Validate every object; return the kinds skipped as CRDs."""
    skipped = []
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            skipped.append(obj["kind"])
            continue
        try:
            validate_strict(obj)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}")
    return skipped


def container(deploy: dict, name: str) -> dict:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == name]
    assert matches, f"no container {name} in {deploy['metadata']['name']}"
    return matches[0]


def assert_restricted(pod_spec: dict, c: dict) -> None:
    """The Pod Security Standards "restricted" profile, and a read-only root."""
    psc = pod_spec.get("securityContext", {})
    sc = c.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, "runAsNonRoot"
    assert (psc.get("runAsUser") or sc.get("runAsUser") or 0) != 0, "must not run as uid 0"
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    assert seccomp.get("type") == "RuntimeDefault", "seccomp RuntimeDefault"
    assert sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false"
    assert sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities"
    assert not sc.get("capabilities", {}).get("add"), "no added capabilities"
    assert not sc.get("privileged"), "not privileged"
    assert pod_spec.get("automountServiceAccountToken") is False, "no API token in pods that never call the API"


def node_toml(objs: list[dict]) -> dict:
    cms = [o for o in objs if o["kind"] == "ConfigMap" and "node.toml" in o.get("data", {})]
    assert len(cms) == 1, "exactly one ConfigMap holds node.toml"
    return tomllib.loads(cms[0]["data"]["node.toml"])


def assert_node_deployment(deploy: dict, cfg: dict) -> None:
    """Probes, drain timing and rollout of the node Deployment."""
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    c = container(deploy, "sse-node")
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(cfg.get("http", {}).get("listen", "0.0.0.0:8080").rsplit(":", 1)[1])
    assert port_names.get("http") == listen_port, "container port matches http.listen"

    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz", "liveness must not depend on NATS"
    assert ready["path"] == "/readyz"
    assert live["port"] in ("http", listen_port) and ready["port"] in ("http", listen_port)
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"

    # Drain timing: the kubelet waits preStop, then sends SIGTERM, then kills
    # at terminationGracePeriodSeconds counted from the start of preStop.
    pre_stop = c["lifecycle"]["preStop"]
    assert "sleep" in pre_stop, "preStop uses the kubelet's sleep action (distroless has no shell)"
    pre = int(pre_stop["sleep"]["seconds"])
    assert pre >= 1, "a preStop delay lets endpoints drop the pod before it stops accepting"
    drain = int(cfg.get("shutdown", {}).get("drain_seconds", 10))
    grace = int(pod["terminationGracePeriodSeconds"])
    # After the drain window the node gives its connections 2 s to close
    # and NATS 0.5 s to take its last report (node/src/lib.rs).
    assert pre + drain + 3 < grace, f"preStop {pre}s + drain {drain}s + 3 s must be < grace {grace}s"

    # A busy node fills its history budget: a request below it makes the
    # pod the first evicted under memory pressure, all its clients at once.
    history = int(cfg.get("history", {}).get("max_bytes", 256 * 2**20))
    request = c["resources"]["requests"]["memory"]
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    assert int(request[:-2]) * units[request[-2:]] > history, f"memory request {request} under history.max_bytes"

    strategy = spec["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] in (0, "0", "0%"), "rollouts never lower capacity"
    assert_restricted(pod, c)


def assert_service_without_affinity(svc: dict) -> None:
    assert svc["spec"].get("sessionAffinity", "None") == "None", "no session affinity: any node serves any client"
    assert "sessionAffinityConfig" not in svc["spec"]
