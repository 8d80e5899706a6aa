"""The Helm chart helm/sse-cluster: lint, render with every value set under
ci/, validate against the Kubernetes 1.31 schemas, and check what matters for
an SSE service behind a load balancer."""

from __future__ import annotations

import hashlib
import json
import tomllib

import pytest

from deploy_support import CHART, NAMESPACE, RELEASE, chart_objects, find, one, render_chart, require_module, value_files, yaml
from k8s_checks import (
    assert_node_deployment,
    assert_restricted,
    assert_service_without_affinity,
    container,
    node_toml,
    validate_all,
)

helm = require_module("helm_python")

VALUE_FILES = value_files()


def test_value_sets_cover_the_documented_scenarios():
    assert {"default-values.yaml", "ha-values.yaml", "external-nats-values.yaml",
            "ingress-values.yaml", "httproute-values.yaml"} <= set(VALUE_FILES)


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_lint_is_clean(values_file):
    values = yaml.safe_load((CHART / "ci" / values_file).read_text()) or {}
    report = helm.lint(CHART, values, namespace=NAMESPACE, kube_version="v1.31.0")
    assert report["errors"] == [], report
    # The nats subchart is declared (Chart.yaml, Chart.lock) but cannot be
    # fetched offline; Helm reports that one warning and nothing else.
    warnings = [m for m in report["messages"] if m["severity"] >= 2]
    assert [w["error"] for w in warnings] in ([], ["chart directory is missing these dependencies: nats"]), warnings


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_values_match_schema(values_file):
    values = yaml.safe_load((CHART / "ci" / values_file).read_text()) or {}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)


@pytest.mark.parametrize("bad", [
    {"node": {"config": {"http": {"heartbeat_secs": 5}}}},
    {"node": {"config": {"log": {"format": "xml"}}}},
    {"node": {"replicas": 3}},
    {"admin": {"config": {"admin": {"token": "in-a-configmap"}}}},
    {"node": {"config": {"auth": {"jwt": {"hs256_secret": "x" * 40}}}}},
    {"node": {"preStopSeconds": 0}},
    {"otel": {"endpoint": "grpc://otel-collector:4317"}},
    {"otel": {"endpoint": "otel-collector:4318"}},
])
def test_schema_rejects_typos_and_misplaced_secrets(bad):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(bad)


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_manifests_are_valid_kubernetes_1_31(values_file):
    objs = chart_objects(values_file, tests=True)
    assert objs, "the chart rendered nothing"
    skipped = validate_all(objs)
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            ep = obj["spec"]["endpoints"]
            # One endpoint, or one per component when nodes serve HTTPS.
            assert len(ep) in (1, 2)
            assert all(e["path"] == "/metrics" and e["port"] == "http" for e in ep)
            labels = obj["spec"]["selector"]["matchLabels"]
            assert labels["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] == "HTTPRoute":
            assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
            assert obj["spec"]["parentRefs"] and all("name" in p for p in obj["spec"]["parentRefs"])
    assert set(skipped) <= {"ServiceMonitor", "HTTPRoute"}


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_node_probes_drain_and_rollout(values_file):
    objs = chart_objects(values_file)
    assert_node_deployment(one(objs, "Deployment", "-node"), node_toml(objs))


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_every_workload_is_restricted(values_file):
    for obj in chart_objects(values_file, tests=True):
        pod = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"] if obj["kind"] == "Pod" else None
        if pod is None:
            continue
        for c in pod["containers"]:
            assert_restricted(pod, c)


@pytest.mark.parametrize("values_file", VALUE_FILES)
def test_services_have_no_session_affinity(values_file):
    services = find(chart_objects(values_file), "Service")
    assert services
    for svc in services:
        assert_service_without_affinity(svc)


def test_admin_probes_and_token_from_secret():
    objs = chart_objects()
    admin = one(objs, "Deployment", "-admin")
    c = container(admin, "sse-admin")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    token = [e for e in c["env"] if e["name"] == "SSE_ADMIN__TOKEN"]
    assert token and token[0]["valueFrom"]["secretKeyRef"]["key"] == "admin-token"
    secret = one(objs, "Secret", "-secrets")
    assert set(secret["data"]) == {"admin-token"}
    # the token is not in any ConfigMap
    for cm in find(objs, "ConfigMap"):
        assert "token" not in json.dumps({k: v for k, v in cm.get("data", {}).items() if k.endswith(".toml")})


def test_existing_secret_is_used_and_not_created():
    objs = chart_objects("external-nats-values.yaml")
    assert not find(objs, "Secret")
    c = container(one(objs, "Deployment", "-admin"), "sse-admin")
    ref = [e for e in c["env"] if e["name"] == "SSE_ADMIN__TOKEN"][0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "sse-admin-token"


def test_jwt_keys_reach_nodes_only():
    objs = chart_objects("ha-values.yaml")
    jwt = one(objs, "Secret", "-jwt")
    assert set(jwt["data"]) == {"jwt-public.pem"}
    node = one(objs, "Deployment", "-node")
    vols = {v["name"]: v for v in node["spec"]["template"]["spec"]["volumes"]}
    assert vols["jwt-keys"]["secret"]["secretName"] == jwt["metadata"]["name"]
    admin = one(objs, "Deployment", "-admin")
    assert jwt["metadata"]["name"] not in json.dumps(admin)


def test_config_checksums_follow_the_config():
    def checksum(extra):
        node = one(chart_objects(extra=extra), "Deployment", "-node")
        return node["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum(None)
    assert base == checksum({"node": {"config": {"log": {"level": "info"}}}}), "same config, same checksum"
    assert base != checksum({"node": {"config": {"log": {"level": "debug"}}}}), "a config change rolls the pods"
    objs = chart_objects()
    cm = one(objs, "ConfigMap", "-config")
    assert base == hashlib.sha256(cm["data"]["node.toml"].strip().encode()).hexdigest()
    admin = one(objs, "Deployment", "-admin")
    assert "checksum/config" in admin["spec"]["template"]["metadata"]["annotations"]


def test_node_toml_is_typed_and_points_at_bundled_nats():
    cfg = node_toml(chart_objects())
    assert cfg["nats"]["url"] == f"nats://{RELEASE}-nats:4222"
    assert isinstance(cfg["http"]["heartbeat_seconds"], int), "integers stay integers (Helm's toToml writes floats)"
    assert isinstance(cfg["shutdown"]["drain_seconds"], int)
    assert cfg["log"]["format"] == "json"


def test_external_nats_url_is_used():
    cfg = node_toml(chart_objects("external-nats-values.yaml"))
    assert cfg["nats"]["url"].startswith("nats://nats-0.nats.messaging:4222,")


def test_chart_refuses_grace_shorter_than_drain():
    bad = {"node": {"preStopSeconds": 10, "terminationGracePeriodSeconds": 15,
                    "config": {"shutdown": {"drain_seconds": 10}}}}
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render_chart(extra=bad)
    # The node's close after the window counts too: 5 + 10 + 3 s.
    tight = {"node": {"preStopSeconds": 5, "terminationGracePeriodSeconds": 18,
                      "config": {"shutdown": {"drain_seconds": 10}}}}
    with pytest.raises(helm.HelmError, match="3 s for the node's close"):
        render_chart(extra=tight)
    render_chart(extra={"node": {**tight["node"], "terminationGracePeriodSeconds": 19}})


def test_chart_refuses_an_ingress_read_timeout_within_two_heartbeats():
    # A heartbeat raised to 45 s under the default 60 s read timeout: one
    # late heartbeat and ingress-nginx would cut a healthy stream.
    slow = {"ingress": {"enabled": True}, "node": {"config": {"http": {"heartbeat_seconds": 45}}}}
    with pytest.raises(helm.HelmError, match="proxy-read-timeout"):
        render_chart(extra=slow)
    # Raised together, it renders.
    both = {**slow, "ingress": {"enabled": True, "extraAnnotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "180"}}}
    ann = one(chart_objects(extra=both), "Ingress")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "180"


@pytest.mark.parametrize("bad, says", [
    ({"ingress": {"enabled": True, "hosts": []}}, "ingress.hosts is empty"),
    ({"ingress": {"admin": {"enabled": True}}}, "ingress.enabled=true too"),
    ({"node": {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}}}, "minReplicas"),
    ({"secrets": {"adminToken": "t" * 32, "existingSecret": "mine"}}, "existingSecret"),
    ({"node": {"config": {"nats": {"subject_prefix": "events"}}}}, "subject_prefix"),
])
def test_chart_refuses_values_that_would_render_what_does_not_work(bad, says):
    with pytest.raises(helm.HelmError, match=says):
        render_chart(extra=bad)
    # An Ingress of admin's host alone has a rule.
    admin_only = {"ingress": {"enabled": True, "hosts": [], "admin": {"enabled": True}}}
    rules = one(chart_objects(extra=admin_only), "Ingress")["spec"]["rules"]
    assert [rule["host"] for rule in rules] == ["sse-admin.example.com"]
    # One prefix set on both renders.
    both = {"node": {"config": {"nats": {"subject_prefix": "events"}}},
            "admin": {"config": {"nats": {"subject_prefix": "events"}}}}
    assert node_toml(chart_objects(extra=both))["nats"]["subject_prefix"] == "events"


def test_chart_refuses_no_nats_at_all():
    with pytest.raises(helm.HelmError, match="externalNats.url"):
        render_chart(extra={"nats": {"enabled": False}})


def test_nats_dependency_is_declared_and_locked():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lock = yaml.safe_load((CHART / "Chart.lock").read_text())
    deps = meta["dependencies"]
    assert deps == [{"name": "nats", "version": deps[0]["version"],
                     "repository": "https://nats-io.github.io/k8s/helm/charts/", "condition": "nats.enabled"}]
    locked = [{"name": d["name"], "version": d["version"], "repository": d["repository"]} for d in lock["dependencies"]]
    assert locked == [{k: deps[0][k] for k in ("name", "version", "repository")}]
    # Helm's own digest of Chart.yaml's dependencies and the lock (HashReq):
    # `helm dependency build` refuses a lock whose digest does not match.
    data = json.dumps([deps, locked], separators=(",", ":"))
    assert lock["digest"] == "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity such as 512Mi or 2Gi, in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]]


def test_nats_defaults_are_durable_and_clustered():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nats = values["nats"]
    assert nats["enabled"] is True
    # Servers advertise their addresses: a node behind the Service learns
    # every server, and can leave one cut off from its peers.
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3, "noAdvertise": False}
    js = nats["config"]["jetstream"]
    assert js["enabled"] is True and js["fileStore"]["enabled"] is True
    # JetStream's limit under the volume's size, so that its own limit
    # (publishes refused) comes before a full disk (JetStream turned off).
    store = js["fileStore"]
    assert _bytes(store["maxSize"]) <= 0.9 * _bytes(store["pvc"]["size"])
    assert js["merge"]["sync_interval"] == "always"
    # The nats chart's default turns memory storage off, which refuses
    # `--memory` topics and puts the nodes' report bucket on disk.
    assert js["memoryStore"]["enabled"] is True
    assert _bytes(js["memoryStore"]["maxSize"]) < _bytes(nats["container"]["resources"]["limits"]["memory"])
    text = (CHART / "values.yaml").read_text()
    assert "sync_interval: 1s" in text or "sync_interval: 2m" in text, "the throughput trade-off is documented"
    # Restricted, as k8s/nats.yaml: the nats chart sets no security context.
    pod = nats["podTemplate"]["merge"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000 and pod["fsGroup"] == 1000
    for part in ("container", "reloader"):
        context = nats[part]["merge"]["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"], part
        assert context["seccompProfile"]["type"] == "RuntimeDefault", part


def test_hpa_scales_down_slowly():
    objs = chart_objects("ha-values.yaml")
    hpa = one(objs, "HorizontalPodAutoscaler")
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(objs, "Deployment", "-node")["metadata"]["name"]
    assert "replicas" not in one(objs, "Deployment", "-node")["spec"], "the HPA owns the replica count"
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}


def test_pdb_lets_one_node_go_at_a_time():
    objs = chart_objects("ha-values.yaml")
    pdbs = {p["metadata"]["name"]: p for p in find(objs, "PodDisruptionBudget")}
    node = pdbs[f"{RELEASE}-sse-cluster-node"]
    assert node["spec"]["maxUnavailable"] == 1
    assert node["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "node"
    assert f"{RELEASE}-sse-cluster-admin" in pdbs
    assert len(find(chart_objects(), "PodDisruptionBudget")) == 1, "no PDB for a single admin replica"


def test_ingress_is_set_up_for_sse():
    objs = chart_objects("ingress-values.yaml")
    ing = one(objs, "Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # A 503 from a full or draining node is tried on another: a browser's
    # EventSource would stop for good on it.
    assert "http_503" in ann["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt", "extra annotations are merged in"
    backends = {p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {f"{RELEASE}-sse-cluster-node", f"{RELEASE}-sse-cluster-admin"}
    assert ing["spec"]["ingressClassName"] == "nginx"
    # The read timeout outlasts four heartbeats, so a healthy stream is never
    # cut, and ends the stream of a node that hangs within two minutes, so
    # its clients resume elsewhere.
    hb = node_toml(objs)["http"]["heartbeat_seconds"]
    assert hb * 4 <= int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) <= 120


def test_node_tls_reaches_the_node_and_everything_that_talks_to_it():
    objs = chart_objects("node-tls-values.yaml", tests=True)
    node = one(objs, "Deployment", "-node")
    c = container(node, "sse-node")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SSE_TLS__CERT_FILE"] == "/etc/sse-cluster/tls/tls.crt"
    assert env["SSE_TLS__KEY_FILE"] == "/etc/sse-cluster/tls/tls.key"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/sse-cluster/tls" and mounts["tls"]["readOnly"]
    volumes = {v["name"]: v for v in node["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "sse-node-tls"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe
    ing = one(objs, "Ingress")
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    monitor = one(objs, "ServiceMonitor")
    by_component = {e["relabelings"][0]["regex"]: e for e in monitor["spec"]["endpoints"]}
    assert by_component["node"]["scheme"] == "https"
    assert by_component["node"]["tlsConfig"]["serverName"] == "sse-cluster-node"
    assert by_component["admin"].get("scheme", "http") == "http"
    assert all(e["relabelings"][0]["action"] == "keep" for e in by_component.values())
    test_pod = one(objs, "Pod", "-test")
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert "node=https://" in script and "k=-k" in script

    # Without it, nothing of the above is rendered.
    plain = chart_objects(tests=True)
    c = container(one(plain, "Deployment", "-node"), "sse-node")
    assert not any(e["name"].startswith("SSE_TLS__") for e in c["env"])
    assert c["readinessProbe"]["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert "node=http://" in one(plain, "Pod", "-test")["spec"]["containers"][0]["args"][0]


def test_nats_tls_secret_reaches_node_and_admin():
    extra = {
        "nats": {"enabled": False},
        "externalNats": {
            "url": "tls://nats.example:4222",
            "tls": {"secretName": "nats-client", "clientCertificate": True},
        },
    }
    objs = chart_objects(extra=extra)
    for suffix, name in (("-node", "sse-node"), ("-admin", "sse-admin")):
        deploy = one(objs, "Deployment", suffix)
        c = container(deploy, name)
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SSE_NATS__TLS_CA_FILE"] == "/etc/sse-cluster/nats-tls/ca.crt", name
        assert env["SSE_NATS__TLS_CERT_FILE"] == "/etc/sse-cluster/nats-tls/tls.crt", name
        assert env["SSE_NATS__TLS_KEY_FILE"] == "/etc/sse-cluster/nats-tls/tls.key", name
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["nats-tls"]["mountPath"] == "/etc/sse-cluster/nats-tls", name
        assert mounts["nats-tls"]["readOnly"], name
        volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == "nats-client", name

    # Only the CA, the default key: no client certificate.
    extra["externalNats"]["tls"] = {"secretName": "nats-ca"}
    c = container(one(chart_objects(extra=extra), "Deployment", "-node"), "sse-node")
    names = {e["name"] for e in c["env"]}
    assert "SSE_NATS__TLS_CA_FILE" in names and "SSE_NATS__TLS_CERT_FILE" not in names

    # A Secret that would be used for nothing is refused.
    extra["externalNats"]["tls"] = {"secretName": "nats-ca", "caKey": ""}
    with pytest.raises(helm.HelmError, match="caKey, clientCertificate"):
        render_chart(extra=extra)

    # Without it, nothing of the above is rendered.
    for deploy in find(chart_objects(), "Deployment"):
        for c in deploy["spec"]["template"]["spec"]["containers"]:
            assert not any(e["name"].startswith("SSE_NATS__TLS_") for e in c.get("env", []))
            assert all(m["name"] != "nats-tls" for m in c.get("volumeMounts", []))


def test_nats_credentials_secret_reaches_node_and_admin():
    extra = {
        "nats": {"enabled": False},
        "externalNats": {
            "url": "tls://connect.example:4222",
            "credentials": {"secretName": "nats-user", "credsKey": "user.creds"},
        },
    }
    for key, variable, file in (
        ("credsKey", "SSE_NATS__CREDS_FILE", "user.creds"),
        ("nkeySeedKey", "SSE_NATS__NKEY_SEED_FILE", "user.nk"),
    ):
        extra["externalNats"]["credentials"] = {"secretName": "nats-user", key: file}
        objs = chart_objects(extra=extra)
        for suffix, name in (("-node", "sse-node"), ("-admin", "sse-admin")):
            deploy = one(objs, "Deployment", suffix)
            c = container(deploy, name)
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env[variable] == f"/etc/sse-cluster/nats-credentials/{file}", name
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            assert mounts["nats-credentials"]["mountPath"] == "/etc/sse-cluster/nats-credentials"
            assert mounts["nats-credentials"]["readOnly"], name
            volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
            assert volumes["nats-credentials"]["secret"]["secretName"] == "nats-user", name

    for credentials, says in (
        ({"secretName": "nats-user"}, "set credsKey or nkeySeedKey"),
        ({"secretName": "nats-user", "credsKey": "a", "nkeySeedKey": "b"}, "not both"),
    ):
        extra["externalNats"]["credentials"] = credentials
        with pytest.raises(helm.HelmError, match=says):
            render_chart(extra=extra)


def test_node_tls_refuses_an_admin_ingress_that_would_get_https():
    with pytest.raises(helm.HelmError, match="ingress.admin.enabled=false"):
        render_chart("ingress-values.yaml", extra={"node": {"tls": {"secretName": "sse-node-tls"}}})


def test_httproute_disables_request_timeout():
    objs = chart_objects("httproute-values.yaml")
    route = one(objs, "HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert rule["timeouts"]["request"] == "0s"
    assert rule["backendRefs"][0]["name"] == f"{RELEASE}-sse-cluster-node"
    assert route["spec"]["hostnames"] == ["events.example.com"]
    assert not find(objs, "Ingress")


def test_httproute_needs_a_gateway():
    with pytest.raises(helm.HelmError, match="parentRefs"):
        render_chart(extra={"httpRoute": {"enabled": True}})


def test_network_policy_allows_dns_nats_and_otlp_only():
    objs = chart_objects("ha-values.yaml")
    pols = {p["metadata"]["name"]: p for p in find(objs, "NetworkPolicy")}
    node = pols[f"{RELEASE}-sse-cluster-node"]
    assert set(node["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = sorted(p["port"] for rule in node["spec"]["egress"] for p in rule.get("ports", []))
    assert ports == [53, 53, 4222, 4318], "DNS, NATS and the OTLP collector of otel.endpoint"
    nats_rule = [r for r in node["spec"]["egress"] if r["ports"][0]["port"] == 4222][0]
    assert nats_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nats"
    ext = {p["metadata"]["name"]: p for p in find(chart_objects("external-nats-values.yaml"), "NetworkPolicy")}
    ext_rule = [r for r in ext[f"{RELEASE}-sse-cluster-node"]["spec"]["egress"] if r["ports"][0]["port"] == 4222][0]
    assert "namespaceSelector" in ext_rule["to"][0]


def test_grafana_dashboard_configmap():
    cm = one(chart_objects(), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "sse-cluster.json").read_text())
    assert json.loads(cm["data"]["sse-cluster.json"]) == shipped


def test_otel_env_when_endpoint_set():
    node = one(chart_objects("ha-values.yaml"), "Deployment", "-node")
    env = {e["name"]: e.get("value") for e in container(node, "sse-node")["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["OTEL_SERVICE_NAME"] == "sse-node"
    plain = one(chart_objects(), "Deployment", "-node")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in json.dumps(plain)


def test_helm_test_hook_checks_both_services():
    rendered = render_chart()
    tests = [t for n, t in rendered.items() if "/tests/" in n]
    assert len(tests) == 1
    pod = yaml.safe_load(tests[0])
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/readyz" in script and f"{RELEASE}-sse-cluster-node" in script and f"{RELEASE}-sse-cluster-admin" in script


def test_notes_explain_access():
    notes = render_chart("ingress-values.yaml")["sse-cluster/templates/NOTES.txt"]
    assert "port-forward" in notes and "admin-token" in notes and "events.example.com" in notes
    # A topic is made before it is subscribed to: a fresh install has none,
    # and a stream of an unknown topic is refused 404.
    create = notes.index("/v1/topics")
    subscribe = notes.index("/v1/events?topic=demo")
    assert create < subscribe, notes
    assert "curl -N 'http://127.0.0.1:8080/v1/events?topic=demo'" in notes


def test_notes_and_service_follow_node_tls():
    rendered = render_chart("node-tls-values.yaml")
    notes = rendered["sse-cluster/templates/NOTES.txt"]
    assert "curl -N -k 'https://127.0.0.1:8080/v1/events?topic=demo'" in notes, notes
    service = one(chart_objects("node-tls-values.yaml"), "Service", "-node")
    assert service["spec"]["ports"][0]["appProtocol"] == "https"
    plain = one(chart_objects(), "Service", "-node")
    assert plain["spec"]["ports"][0]["appProtocol"] == "http"
    both = {"httpRoute": yaml.safe_load((CHART / "ci" / "httproute-values.yaml").read_text())["httpRoute"]}
    notes = render_chart("node-tls-values.yaml", extra=both)["sse-cluster/templates/NOTES.txt"]
    assert "BackendTLSPolicy" in notes, notes


@pytest.mark.parametrize("component", ["node", "admin"])
def test_config_schema_tracks_config_default_toml(component):
    """values.schema.json lists exactly the keys (and types) of
    <component>/config.default.toml, so the chart never passes a key the
    service refuses, nor hides a new one. admin.token and the node's
    auth.jwt.hs256_secret are left out: they only come from Secrets."""
    import sync_config_schema

    want = sync_config_schema.expected(component)
    assert want is not None, f"{component}/config.default.toml is missing"
    schema = json.loads((CHART / "values.schema.json").read_text())
    have = schema["properties"][component]["properties"]["config"]
    assert have == want, "run `python3 tests/deploy/sync_config_schema.py`"
    if component == "admin":
        assert "token" not in have["properties"]["admin"]["properties"]
    else:
        jwt = have["properties"]["auth"]["properties"]["jwt"]["properties"]
        assert "hs256_secret" not in jwt and "hs256_secret_file" in jwt


@pytest.mark.parametrize("extra", [
    {"admin": {"enabled": False}},
    {"nats": {"config": {"jetstream": {"merge": None}}}},
    {"node": {"config": {"shutdown": None}, "preStopSeconds": 1, "terminationGracePeriodSeconds": 15}},
    {"node": {"topologySpreadConstraints": []}, "serviceAccount": {"create": False}},
])
def test_other_shapes_render_valid(extra):
    objs = chart_objects(extra=extra)
    validate_all(objs)
    assert_node_deployment(one(objs, "Deployment", "-node"), node_toml(objs))
    notes = render_chart(extra=extra)["sse-cluster/templates/NOTES.txt"]
    assert "sync_interval" in notes


def test_without_admin_nothing_admin_is_rendered():
    objs = chart_objects(extra={"admin": {"enabled": False}})
    assert not [o for o in objs if o["metadata"]["name"].endswith("-admin")]
    assert not find(objs, "Secret")
    assert "admin.toml" not in one(objs, "ConfigMap", "-config")["data"]


def test_restricted_node_ingress_still_admits_probes_of_the_release():
    extra = {"networkPolicy": {"enabled": True, "nodeIngressFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}}
    objs = chart_objects(extra=extra)
    validate_all(objs)
    node = one(objs, "NetworkPolicy", "-node")
    peers = node["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in peers
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}} in peers
    assert any("namespaceSelector" in p and p["namespaceSelector"] == {} for p in peers), "metrics scrapers"
    open_node = one(chart_objects("ha-values.yaml"), "NetworkPolicy", "-node")
    assert "from" not in open_node["spec"]["ingress"][0], "by default anyone may reach the SSE port"


def _render_as(name: str, extra: dict) -> list[dict]:
    """Every object of the chart rendered as release `name`, tests included."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=extra, name=name, namespace=NAMESPACE, is_install=True)
    return [o for n, t in rendered.items() if not n.endswith("NOTES.txt") for o in yaml.safe_load_all(t) if o]


@pytest.mark.parametrize("name, extra", [
    ("r" * 53, {}),
    (RELEASE, {"fullnameOverride": "f" * 63}),
    (RELEASE, {"fullnameOverride": "f" * 58}),
])
def test_long_names_stay_distinct_and_within_63(name, extra):
    # Every optional object on, so every name the chart makes is there.
    ha = yaml.safe_load((CHART / "ci" / "ha-values.yaml").read_text())
    ingress = yaml.safe_load((CHART / "ci" / "ingress-values.yaml").read_text())
    values = {**ha, "ingress": ingress["ingress"], "metrics": {"serviceMonitor": {"enabled": True},
                                                               "prometheusRule": {"enabled": True}}, **extra}
    objs = _render_as(name, values)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), sorted(keys)
    assert all(len(n) <= 63 for _, n in keys), [n for _, n in keys if len(n) > 63]
    deployments = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o["metadata"]["name"]
                   for o in objs if o["kind"] == "Deployment"}
    assert deployments["node"].endswith("-node") and deployments["admin"].endswith("-admin"), deployments
    # What refers to them follows.
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployments["node"]
    backends = {p["backend"]["service"]["name"] for o in objs if o["kind"] == "Ingress"
                for r in o["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {deployments["node"], deployments["admin"]}


@pytest.mark.parametrize("component, variable, says", [
    ("node", "SSE_HTTP__LISTEN", "node.config.http.listen"),
    ("node", "SSE_SHUTDOWN__DRAIN_SECONDS", "node.config.shutdown.drain_seconds"),
    ("node", "SSE_HTTP__HEARTBEAT_SECONDS", "node.config.http.heartbeat_seconds"),
    ("node", "SSE_NATS__SUBJECT_PREFIX", "node.config.nats.subject_prefix"),
    ("node", "SSE_CLUSTER__NODES_BUCKET", "node.config.cluster.nodes_bucket"),
    ("node", "SSE_CLUSTER__NODES_BUCKET_REPLICAS", "node.config.cluster.nodes_bucket_replicas"),
    ("node", "SSE_CLUSTER__ADVERTISE_ADDRESS", "node.config.cluster.advertise_address"),
    ("node", "sse_tls__cert_file", "node.tls.secretName"),
    ("node", "SSE_TLS__KEY_FILE", "node.tls.secretName"),
    ("admin", "SSE_HTTP__LISTEN", "admin.config.http.listen"),
    ("admin", "SSE_NATS__SUBJECT_PREFIX", "admin.config.nats.subject_prefix"),
    ("admin", "SSE_CLUSTER__NODES_BUCKET", "admin.config.cluster.nodes_bucket"),
    ("admin", "SSE_CLUSTER__NODES_BUCKET_REPLICAS", "admin.config.cluster.nodes_bucket_replicas"),
])
def test_extra_env_cannot_override_what_the_chart_derives_from_config(component, variable, says):
    # SSE_* outranks the ConfigMap: the grace period, ports, probes and the
    # chart's checks would be computed from values the services never use.
    bad = {component: {"extraEnv": [{"name": variable, "value": "0.0.0.0:9999"}]}}
    with pytest.raises(helm.HelmError, match=f"{component}.extraEnv.*{says}"):
        render_chart(extra=bad)


def test_extra_env_still_takes_other_settings_and_secrets():
    # docs/deploy.md: a NATS URL with credentials comes from a Secret.
    url = {"name": "SSE_NATS__URL", "valueFrom": {"secretKeyRef": {"name": "nats-client", "key": "url"}}}
    # docs/deploy.md: admin's publish token comes from a Secret too.
    publish = {"name": "SSE_ADMIN__PUBLISH_TOKEN",
               "valueFrom": {"secretKeyRef": {"name": "sse-publish-token", "key": "token"}}}
    extra = {"node": {"extraEnv": [url, {"name": "SSE_HTTP__MAX_CONNECTIONS", "value": "5000"}]},
             "admin": {"extraEnv": [url, publish]}}
    objs = chart_objects(extra=extra)
    for suffix, name in (("-node", "sse-node"), ("-admin", "sse-admin")):
        env = container(one(objs, "Deployment", suffix), name)["env"]
        assert url in env, name
    assert publish in container(one(objs, "Deployment", "-admin"), "sse-admin")["env"]
    # The node's advertised address set in its config is not overridden.
    cfg = {"node": {"config": {"cluster": {"advertise_address": "sse-0.example:443"}}}}
    objs = chart_objects(extra=cfg)
    env = {e["name"] for e in container(one(objs, "Deployment", "-node"), "sse-node")["env"]}
    assert "SSE_CLUSTER__ADVERTISE_ADDRESS" not in env
    assert node_toml(objs)["cluster"]["advertise_address"] == "sse-0.example:443"


@pytest.mark.parametrize("bad, says", [
    ({"node": {"config": {"cluster": {"nodes_bucket": "other_bucket"}}}}, "nodes_bucket"),
    ({"admin": {"config": {"cluster": {"nodes_bucket": "other_bucket"}}}}, "nodes_bucket"),
    ({"node": {"config": {"cluster": {"nodes_bucket_replicas": 1}}}}, "nodes_bucket_replicas"),
])
def test_chart_refuses_node_and_admin_on_different_report_buckets(bad, says):
    with pytest.raises(helm.HelmError, match=says):
        render_chart(extra=bad)
    # The same on both renders; without admin there is nothing to agree with.
    section = (bad.get("node") or bad["admin"])["config"]
    both = {"node": {"config": section}, "admin": {"config": section}}
    assert node_toml(chart_objects(extra=both))["cluster"] == section["cluster"]
    chart_objects(extra={"node": {"config": section}, "admin": {"enabled": False}})


def test_otel_extra_env_replaces_what_the_chart_sets():
    extra = {"otel": {"endpoint": "http://otel-collector:4318",
                      "extraEnv": {"OTEL_SERVICE_NAME": "events", "OTEL_EXPORTER_OTLP_TIMEOUT": "5000"}}}
    objs = chart_objects(extra=extra)
    for suffix, name in (("-node", "sse-node"), ("-admin", "sse-admin")):
        env = container(one(objs, "Deployment", suffix), name)["env"]
        names = [e["name"] for e in env]
        assert len(names) == len(set(names)), names
        values = {e["name"]: e.get("value") for e in env}
        assert values["OTEL_SERVICE_NAME"] == "events", name
        assert values["OTEL_EXPORTER_OTLP_TIMEOUT"] == "5000", name
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", name
    validate_all(objs)
    # The endpoint itself is otel.endpoint's: the NetworkPolicy opens its port.
    extra["otel"]["extraEnv"] = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4318"}
    with pytest.raises(helm.HelmError, match="otel.endpoint"):
        render_chart(extra=extra)


def test_chart_refuses_an_admin_ingress_without_admin():
    extra = {"ingress": {"enabled": True, "admin": {"enabled": True}}, "admin": {"enabled": False}}
    with pytest.raises(helm.HelmError, match="which admin.enabled=false leaves out"):
        render_chart(extra=extra)


def _nats_egress_ports(objs: list[dict], suffix: str) -> list[int]:
    policy = one(objs, "NetworkPolicy", suffix)
    return sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])
                  if p["port"] not in (53, 4318))


def test_network_policy_opens_the_ports_of_external_nats_urls():
    # An external NATS on another port than 4222: its URLs' ports are
    # opened, a URL without one gets NATS's default.
    extra = {"networkPolicy": {"enabled": True}, "nats": {"enabled": False},
             "externalNats": {"url": "nats://a.example:7422, tls://b.example,nats://user:pw@c.example:7422"}}
    objs = chart_objects(extra=extra)
    validate_all(objs)
    assert _nats_egress_ports(objs, "-node") == [4222, 7422]
    assert _nats_egress_ports(objs, "-admin") == [4222, 7422]
    # natsPort stays an explicit override.
    extra["networkPolicy"]["natsPort"] = 7000
    assert _nats_egress_ports(chart_objects(extra=extra), "-node") == [7000]
    # The bundled NATS listens on 4222.
    assert _nats_egress_ports(chart_objects(extra={"networkPolicy": {"enabled": True}}), "-node") == [4222]


def test_chart_refuses_jwt_keys_beside_an_existing_jwt_secret():
    bad = {"secrets": {"jwtKeys": {"jwt-public.pem": "pem"}, "existingJwtSecret": "mine"}}
    with pytest.raises(helm.HelmError, match="secrets.jwtKeys is not used while secrets.existingJwtSecret"):
        render_chart(extra=bad)


@pytest.mark.parametrize("component", ["node", "admin"])
def test_chart_refuses_a_nats_url_in_config_beside_the_bundled_nats(component):
    bad = {component: {"config": {"nats": {"url": "nats://elsewhere:4222"}}}}
    with pytest.raises(helm.HelmError, match=f"{component}.config.nats.url.*externalNats"):
        render_chart(extra=bad)
    # With an external NATS the chart does not name the URL itself.
    external = {**bad, "nats": {"enabled": False}, "externalNats": {"url": "nats://elsewhere:4222"}}
    chart_objects(extra=external)


@pytest.mark.parametrize("key", ["cert_file", "key_file"])
def test_chart_refuses_node_tls_files_in_config(key):
    bad = {"node": {"config": {"tls": {key: "/etc/certs/x.pem"}}}}
    with pytest.raises(helm.HelmError, match=f"node.config.tls.{key}.*node.tls.secretName"):
        render_chart(extra=bad)
    # The handshake timeout is still the config's.
    ok = {"node": {"config": {"tls": {"handshake_timeout_seconds": 5}}}}
    assert node_toml(chart_objects(extra=ok))["tls"]["handshake_timeout_seconds"] == 5


@pytest.mark.parametrize("key", ["hs256_secret_file", "rs256_public_key_file", "es256_public_key_file", "jwks_file"])
def test_chart_refuses_jwt_key_files_it_does_not_mount(key):
    keys = {"secrets": {"jwtKeys": {"jwt-public.pem": "pem"}}}
    def jwt(path, **more):
        return {**keys, **more, "node": {"config": {"auth": {"jwt": {key: path}}}}}

    # A file of secrets.jwtKeys renders.
    cfg = node_toml(chart_objects(extra=jwt("/etc/sse-cluster/jwt/jwt-public.pem")))
    assert cfg["auth"]["jwt"][key] == "/etc/sse-cluster/jwt/jwt-public.pem"
    # Another name, another directory, or no keys at all: refused.
    for bad in (jwt("/etc/sse-cluster/jwt/other.pem"), jwt("/keys/jwt-public.pem"),
                {"node": {"config": {"auth": {"jwt": {key: "/etc/sse-cluster/jwt/jwt-public.pem"}}}}}):
        with pytest.raises(helm.HelmError, match=f"node.config.auth.jwt.{key}"):
            render_chart(extra=bad)
    # An existing Secret's keys are unknown: any file under node.jwtKeysPath.
    existing = {"secrets": {"existingJwtSecret": "jwt"},
                "node": {"config": {"auth": {"jwt": {key: "/etc/sse-cluster/jwt/any.pem"}}}}}
    chart_objects(extra=existing)
    existing["node"]["config"]["auth"]["jwt"][key] = "/elsewhere/any.pem"
    with pytest.raises(helm.HelmError, match=f"node.config.auth.jwt.{key}"):
        render_chart(extra=existing)
    # A file under one of node.extraVolumeMounts is the operator's to mount.
    own = {"node": {"config": {"auth": {"jwt": {key: "/keys/mine.pem"}}},
                    "extraVolumes": [{"name": "keys", "secret": {"secretName": "keys"}}],
                    "extraVolumeMounts": [{"name": "keys", "mountPath": "/keys", "readOnly": True}]}}
    chart_objects(extra=own)


@pytest.mark.parametrize("component, name", [("node", "sse-node"), ("admin", "sse-admin")])
def test_extra_env_replaces_the_otel_names_and_refuses_the_chart_own(component, name):
    otel = {"otel": {"endpoint": "http://otel-collector:4318"}}
    extra = {**otel, component: {"extraEnv": [
        {"name": "OTEL_SERVICE_NAME", "value": "events"},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "deployment.environment=prod"}]}}
    objs = chart_objects(extra=extra)
    env = container(one(objs, "Deployment", f"-{component}"), name)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    values = {e["name"]: e.get("value") for e in env}
    assert values["OTEL_SERVICE_NAME"] == "events"
    assert values["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=prod"
    validate_all(objs)
    # Whatever else the chart sets in the container is refused.
    for variable in ("POD_NAME", "SSE_NATS__CONNECTION_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        bad = {**otel, component: {"extraEnv": [{"name": variable, "value": "x"}]}}
        with pytest.raises(helm.HelmError, match=f"{component}.extraEnv: {variable} is set by the chart"):
            render_chart(extra=bad)
    if component == "admin":
        with pytest.raises(helm.HelmError, match="admin.extraEnv: SSE_ADMIN__TOKEN is set by the chart"):
            render_chart(extra={"admin": {"extraEnv": [{"name": "SSE_ADMIN__TOKEN", "value": "x"}]}})
    # Without an endpoint, the chart sets no OTEL_* and leaves them alone.
    plain = {component: {"extraEnv": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://c:4318"}]}}
    chart_objects(extra=plain)


@pytest.mark.parametrize("values, bound", [
    ({"node": {"config": {"http": {"retry_ms": 3600000}}}}, {"node": {"config": {"http": {"retry_ms": 3600001}}}}),
    ({"node": {"config": {"cluster": {"nodes_bucket_replicas": 5}}}, "admin": {"config": {"cluster": {"nodes_bucket_replicas": 5}}}},
     {"node": {"config": {"cluster": {"nodes_bucket_replicas": 6}}}, "admin": {"config": {"cluster": {"nodes_bucket_replicas": 6}}}}),
    ({"node": {"config": {"http": {"heartbeat_seconds": 1}}}}, {"node": {"config": {"http": {"heartbeat_seconds": 0}}}}),
    ({"node": {"config": {"auth": {"jwt": {"leeway_seconds": 600}}}}}, {"node": {"config": {"auth": {"jwt": {"leeway_seconds": 601}}}}}),
    ({"node": {"config": {"http": {"max_header_bytes": 8192}}}}, {"node": {"config": {"http": {"max_header_bytes": 8191}}}}),
    ({"admin": {"config": {"admin": {"dashboard_interval_ms": 100}}}}, {"admin": {"config": {"admin": {"dashboard_interval_ms": 99}}}}),
    ({"admin": {"config": {"nats": {"request_timeout_ms": 120000}}}}, {"admin": {"config": {"nats": {"request_timeout_ms": 120001}}}}),
])
def test_schema_holds_the_bounds_the_binaries_enforce(values, bound):
    # The bound itself renders; one past it is refused before a pod starts.
    chart_objects(extra=values)
    with pytest.raises(helm.HelmValuesError, match="minimum|maximum"):
        render_chart(extra=bound)
