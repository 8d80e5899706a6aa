"""Every configuration the deployment artefacts hand to the services is one
the services accept: `sse-node --check-config` and `sse-admin --check-config`
load defaults <- the TOML file <- SSE_* environment exactly as at start-up and
exit 64 naming any bad key. Run against the compose environment, the Helm
chart's ConfigMap (every value set) with its pod environment, and k8s/."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from deploy_support import K8S, ROOT, binary, chart_objects, find, one, run_compose, value_files
from k8s_checks import container

FAKE_POD = {"POD_NAME": "sse-cluster-node-5d9c7-abcde", "POD_IP": "10.1.2.3"}


def check_config(exe: Path, env: dict[str, str], config: Path | None = None) -> subprocess.CompletedProcess:
    # Only what the container would see: no SSE_* leaking in from this shell.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SSE_", "OTEL_", "RUST_LOG"))}
    args = [str(exe)] + (["--config", str(config)] if config else []) + ["--check-config"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env={**base, **env})


def assert_accepted(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} refused (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"


def pod_env(deploy: dict, name: str) -> dict[str, str]:
    """The container's literal env, with $(VAR) references resolved the way
    the kubelet does; secretKeyRef values get a placeholder."""
    env: dict[str, str] = {}
    for e in container(deploy, name).get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), FAKE_POD.get(m.group(1), "")), e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = "from-the-secret"
        elif e["name"] in FAKE_POD:
            env[e["name"]] = FAKE_POD[e["name"]]
    return env


@pytest.fixture(scope="module")
def compose_model() -> dict:
    import json

    proc = run_compose("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_checker_refuses_a_bad_key():
    """The check below means something: a wrong key fails with code 64."""
    proc = check_config(binary("sse-node"), {"SSE_HTTP__HEARTBEAT_SECS": "5"})
    assert proc.returncode == 64
    assert "heartbeat_secs" in (proc.stdout + proc.stderr).lower()


@pytest.mark.parametrize("service", ["node-1", "node-2", "node-3"])
def test_compose_node_environment(compose_model, service):
    env = compose_model["services"][service]["environment"]
    assert any(k.startswith("SSE_") for k in env)
    assert_accepted(check_config(binary("sse-node"), env), f"{service} environment")


def test_compose_admin_environment(compose_model):
    env = compose_model["services"]["admin"]["environment"]
    assert env.get("SSE_ADMIN__TOKEN"), "admin refuses to start without a token"
    assert_accepted(check_config(binary("sse-admin"), env), "admin environment")


def mount_tls_secret(deploy: dict, env: dict[str, str], into: Path) -> dict[str, str]:
    """Stands in for the kubelet mounting a `kubernetes.io/tls` Secret: a
    self-signed pair is written under `into` and the env's paths into the
    mount are pointed there."""
    mounts = {m["name"]: m["mountPath"] for m in container(deploy, "sse-node").get("volumeMounts", [])}
    if "tls" not in mounts:
        return env
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sse-cluster-node",
         "-keyout", str(into / "tls.key"), "-out", str(into / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )
    return {k: v.replace(mounts["tls"], str(into)) for k, v in env.items()}


def nkey_user_seed() -> str:
    """A user nkey seed (`SU…`) as `nk -gen user` prints one: prefix bytes,
    32 random bytes and their CRC-16 (XMODEM), in base32 without padding."""
    import base64
    import binascii

    seed_byte, user_byte = 18 << 3, 20 << 3
    data = bytes([seed_byte | (user_byte >> 5), (user_byte & 31) << 3]) + os.urandom(32)
    crc = binascii.crc_hqx(data, 0).to_bytes(2, "little")
    return base64.b32encode(data + crc).decode().rstrip("=")


def mount_nats_secrets(deploy: dict, name: str, env: dict[str, str], into: Path) -> dict[str, str]:
    """Stands in for the kubelet mounting the NATS client Secrets
    (externalNats.tls, externalNats.credentials): files of the right kinds
    are written under `into` and the env's paths into the mounts are
    pointed there."""
    mounts = {m["name"]: m["mountPath"] for m in container(deploy, name).get("volumeMounts", [])}
    for volume in ("nats-tls", "nats-credentials"):
        if volume not in mounts:
            continue
        folder = into / volume
        folder.mkdir(exist_ok=True)
        for variable, path in list(env.items()):
            if not path.startswith(mounts[volume] + "/"):
                continue
            file = folder / Path(path).name
            if variable == "SSE_NATS__TLS_KEY_FILE":
                continue  # written with its certificate
            if variable in ("SSE_NATS__TLS_CA_FILE", "SSE_NATS__TLS_CERT_FILE"):
                subprocess.run(
                    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                     "-subj", "/CN=sse-cluster-nats-client", "-keyout", str(folder / "tls.key"), "-out", str(file)],
                    check=True, capture_output=True, timeout=60,
                )
            elif variable == "SSE_NATS__CREDS_FILE":
                file.write_text(
                    "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n------END NATS USER JWT------\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{nkey_user_seed()}\n------END USER NKEY SEED------\n"
                )
            elif variable == "SSE_NATS__NKEY_SEED_FILE":
                file.write_text(nkey_user_seed() + "\n")
        env = {k: v.replace(mounts[volume], str(folder)) for k, v in env.items()}
    return env


def mount_jwt_secret(objs: list[dict], deploy: dict, config_text: str, into: Path) -> str:
    """Stands in for the kubelet mounting the JWT keys' Secret: its files
    are written under `into` and the config's paths into the mount are
    pointed there."""
    import base64

    mounts = {m["name"]: m["mountPath"] for m in container(deploy, "sse-node").get("volumeMounts", [])}
    secrets = [o for o in find(objs, "Secret") if o["metadata"]["name"].endswith("-jwt")]
    if "jwt-keys" not in mounts or not secrets:
        return config_text
    for file, content in secrets[0].get("data", {}).items():
        (into / file).write_bytes(base64.b64decode(content))
    return config_text.replace(mounts["jwt-keys"], str(into))


@pytest.mark.parametrize("values_file", value_files())
def test_chart_node_config_and_env(tmp_path, values_file):
    objs = chart_objects(values_file)
    cm = one(objs, "ConfigMap", "-config")
    config = tmp_path / "node.toml"
    deploy = one(objs, "Deployment", "-node")
    config.write_text(mount_jwt_secret(objs, deploy, cm["data"]["node.toml"], tmp_path))
    env = mount_tls_secret(deploy, pod_env(deploy, "sse-node"), tmp_path)
    env = mount_nats_secrets(deploy, "sse-node", env, tmp_path)
    assert_accepted(check_config(binary("sse-node"), env, config), f"chart node.toml ({values_file})")


@pytest.mark.parametrize("values_file", value_files())
def test_chart_admin_config_and_env(tmp_path, values_file):
    objs = chart_objects(values_file)
    cm = one(objs, "ConfigMap", "-config")
    config = tmp_path / "admin.toml"
    config.write_text(cm["data"]["admin.toml"])
    deploy = one(objs, "Deployment", "-admin")
    env = mount_nats_secrets(deploy, "sse-admin", pod_env(deploy, "sse-admin"), tmp_path)
    assert env["SSE_ADMIN__TOKEN"] == "from-the-secret"
    assert_accepted(check_config(binary("sse-admin"), env, config), f"chart admin.toml ({values_file})")


def test_chart_passes_every_node_key_through(tmp_path):
    """A value set using every key of node/config.default.toml renders to a
    file the node accepts (the schema and the TOML writer agree with it),
    but for the HS256 secret, which the chart keeps out of ConfigMaps. The
    NATS is an external one: beside the bundled NATS, nats.url is the
    chart's."""
    import tomllib

    every = tomllib.loads((ROOT / "node" / "config.default.toml").read_text())
    del every["auth"]["jwt"]["hs256_secret"]
    objs = chart_objects(extra={"node": {"config": every}, "nats": {"enabled": False},
                                "externalNats": {"url": every["nats"]["url"]}})
    config = tmp_path / "node.toml"
    config.write_text(one(objs, "ConfigMap", "-config")["data"]["node.toml"])
    assert tomllib.loads(config.read_text()) == every
    assert_accepted(check_config(binary("sse-node"), {}, config), "every node key through the chart")


def test_k8s_config_files():
    from deploy_support import kustomize_objects

    objs = kustomize_objects()
    node_env = pod_env(one(objs, "Deployment", "-node"), "sse-node")
    assert_accepted(check_config(binary("sse-node"), node_env, K8S / "node.toml"), "k8s/node.toml")
    admin_env = pod_env(one(objs, "Deployment", "-admin"), "sse-admin")
    assert_accepted(check_config(binary("sse-admin"), admin_env, K8S / "admin.toml"), "k8s/admin.toml")


def service_link_env(services: list[dict]) -> dict[str, str]:
    """The variables the kubelet gives every container for each Service of
    its namespace (unless the pod sets `enableServiceLinks: false`): the
    Service's name upper-cased, `-` as `_`, then `_SERVICE_HOST`,
    `_SERVICE_PORT[_<PORT NAME>]` and the Docker-link style `_PORT…`."""
    env: dict[str, str] = {}
    for i, svc in enumerate(services):
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        host = f"10.96.0.{10 + i}"
        ports = svc["spec"].get("ports", [])
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = host
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{host}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            link = f"{prefix}_PORT_{port['port']}_{proto}"
            env[link] = f"{proto.lower()}://{host}:{port['port']}"
            env[f"{link}_PROTO"] = proto.lower()
            env[f"{link}_PORT"] = str(port["port"])
            env[f"{link}_ADDR"] = host
    return env


def test_kubernetes_service_variables_do_not_stop_the_services():
    """k8s/ names its Services `sse-cluster-*`, so the kubelet's variables
    for them start with `SSE_`, as they do beside any Service whose name
    starts with `sse` (a Helm release named `sse`). Neither service takes
    them for configuration keys, and the pods ask for none of them."""
    from deploy_support import kustomize_objects

    objs = kustomize_objects()
    links = service_link_env(find(objs, "Service"))
    assert any(k.startswith("SSE_CLUSTER_NODE_") for k in links), links
    for suffix, exe, toml in [("-node", "sse-node", "node.toml"), ("-admin", "sse-admin", "admin.toml")]:
        env = {**links, **pod_env(one(objs, "Deployment", suffix), exe)}
        assert_accepted(check_config(binary(exe), env, K8S / toml), f"{exe} beside the Services' variables")
    for deploy in find(objs, "Deployment") + find(chart_objects(), "Deployment"):
        assert deploy["spec"]["template"]["spec"].get("enableServiceLinks") is False, deploy["metadata"]["name"]
