"""Shared pytest set-up for the cluster, chaos and browser tests.

- `cluster_factory` builds `cluster.harness.Cluster`s and always tears them
  down, pass or fail.
- Tests marked `needs_node` get the workspace binaries built once per run
  (`cargo build -p sse-node [-p sse-admin]`; set `SSE_SKIP_BUILD=1` to use
  what is in `target/` as is, or `SSE_NODE_BIN` to name a binary).
- The figures each chaos test records are printed at the end of the run,
  also under `-q`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

_build: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_node: starts sse-node processes (built once per run)")
    # SIGTERM (a CI step's time limit, `timeout`) ends the run like Ctrl-C, so
    # fixtures tear their clusters down instead of the process just vanishing.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def _build_binaries() -> None:
    if "done" in _build:
        return
    _build["done"] = True
    if os.environ.get("SSE_SKIP_BUILD") == "1" or os.environ.get("SSE_NODE_BIN"):
        return
    cmd = ["cargo", "build", "-q", "-p", "sse-node"]
    if (REPO / "admin" / "Cargo.toml").exists():
        cmd += ["-p", "sse-admin"]
    if (REPO / "cli" / "Cargo.toml").exists():
        cmd += ["-p", "ssectl"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        _build["error"] = f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}"


OURS = tuple(str(TESTS / d) for d in ("cluster", "chaos", "browser"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # Every test here is bounded in time, also those that forgot to say.
        if str(item.path).startswith(OURS) and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(60))
    if any(item.get_closest_marker("needs_node") for item in items):
        _build_binaries()


@pytest.fixture
def node_binary() -> Path:
    from cluster.harness import binary

    if "error" in _build:
        pytest.fail(_build["error"], pytrace=False)
    path = binary("sse-node")
    if path is None:
        pytest.fail("no sse-node binary (cargo build -p sse-node)", pytrace=False)
    return path


@pytest.fixture
def cluster_factory(request: pytest.FixtureRequest):
    from cluster.harness import Cluster

    made: list[Cluster] = []

    def make(*, topics: list[tuple[str, int]] | None = None, prepare=None, **kw) -> Cluster:
        """`prepare(cluster)` runs after ports are chosen, before anything starts."""
        c = Cluster(**kw)
        made.append(c)
        if prepare is not None:
            prepare(c)
        c.start(topics=topics)
        return c

    yield make
    failed = getattr(request.node, "rep_call", None)
    failed = bool(failed and failed.failed) or bool(getattr(request.node, "rep_setup", None) and request.node.rep_setup.failed)
    for c in made:
        c.close(failed=failed)


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test."""
    return "t" + secrets.token_hex(4)


FIGURE_PROPERTY = "chaos figure"
_figures_sent = 0
_figures_reported: list[tuple[str, dict]] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    global _figures_sent
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    if rep.when == "teardown":
        # Figures travel on the test's last report: under pytest-xdist that
        # is how they reach the process that prints the summary.
        try:
            from cluster.workload import FIGURES
        except ImportError:
            FIGURES = []
        fresh = FIGURES[_figures_sent:]
        _figures_sent = len(FIGURES)
        if fresh:
            rep.user_properties = list(rep.user_properties) + [(FIGURE_PROPERTY, (name, dict(fig))) for name, fig in fresh]
    return rep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == FIGURE_PROPERTY:
            name, fig = value
            _figures_reported.append((name, fig))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _figures_reported:
        return
    tr = terminalreporter
    tr.section("chaos figures")
    for name, fig in _figures_reported:
        tr.write_line(f"{name}:")
        for k, v in fig.items():
            tr.write_line(f"    {k:<26} {v}")
