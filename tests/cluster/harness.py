"""Start, control and tear down a whole sse-cluster on loopback.

Everything listens on 127.0.0.1 on ports picked at run time. Each process runs
in its own process group with its output in a log file under one temporary
folder; `Cluster.close()` (also reached through `with Cluster(...)`, the pytest
fixtures and an `atexit` hook) kills every group and removes the folder.

Processes are addressed by a name: `nats0..nats2`, `node0..nodeN`, `admin`,
`haproxy`, `page`. Each can be killed (`kill -9`), stopped (SIGTERM, then wait
for exit) and started again on the same ports and data folder.

Node slots: HAProxy is configured with `max_nodes` servers up front; slots not
started yet are simply reported down by its health checks, so a scale-out is
`start("node2")` with no load balancer reload.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .deploy_config import render_haproxy, render_nats

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

_live_clusters: "set[Cluster]" = set()


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_range() -> tuple[int, int]:
    """This test process's share of the ports below the ephemeral range.

    Under pytest-xdist each worker takes a slice of its own: a port checked
    free by one worker could otherwise be chosen by another before either
    starts the server meant to listen on it."""
    low, high = 10000, max(10001, _ephemeral_low() - 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        index = int(worker[2:]) % count
        width = (high - low) // count
        low += index * width
        high = low + width - 1
    return low, high


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral
    range. Ports for outgoing connections come from that range: a port
    chosen there could be taken by, say, the first NATS server dialling its
    routes before the server meant to listen on it has started. Never the
    same port twice in one test process, nor one another worker may pick."""
    low, high = _port_range()
    for _ in range(2000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def binary(name: str) -> Path | None:
    """Path of a workspace binary (env `SSE_NODE_BIN` / `SSE_ADMIN_BIN` win)."""
    env = {"sse-node": "SSE_NODE_BIN", "sse-admin": "SSE_ADMIN_BIN"}.get(name)
    if env and os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.exists() else None
    p = target_dir() / "debug" / name
    return p if p.exists() else None


class Fatal(RuntimeError):
    """Raised from a polled condition to stop waiting at once."""


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll `cond` until it returns something truthy; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - polled conditions may fail while starting
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def http_get(port: int, path: str, timeout: float = 2.0, tls: bool = False) -> tuple[int, str]:
    """GET on loopback; returns (status, body) and never raises on HTTP errors.
    With `tls`, over HTTPS without checking the certificate (the test's own)."""
    scheme = "https" if tls else "http"
    req = urllib.request.Request(f"{scheme}://{LOOPBACK}:{port}{path}")
    context = None
    if tls:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def clean_env() -> dict[str, str]:
    """This environment without any `SSE_*` variable: the services read those
    as configuration, and the harness sets what they need itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SSE_")}


def _pdeathsig() -> None:
    # Children die with the harness even if it is killed with -9 itself.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_unreaped(pid: int, timeout: float) -> None:
    """Block until `pid` has exited, leaving it a zombie (not reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(str(pid), timeout)
        time.sleep(0.02)


@dataclass
class Proc:
    """One managed process: how to start it, and its current incarnation."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool] | None = None
    popen: subprocess.Popen | None = None
    incarnation: int = 0
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.incarnation += 1
        logf = open(self.log, "ab")
        logf.write(f"\n==== start #{self.incarnation} {time.strftime('%H:%M:%S')} ====\n".encode())
        logf.flush()
        # PDEATHSIG fires when the *thread* that forked exits, so only use it
        # from the main thread (worker threads come and go).
        preexec = _pdeathsig if threading.current_thread() is threading.main_thread() else None
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            cwd=self.log.parent,
        )
        logf.close()

    def signal_group(self, sig: int) -> None:
        # Only while the leader is not reaped: until then its pid (and so the
        # group id) cannot have been reused by an unrelated process.
        if self.popen is None or self.popen.returncode is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """`kill -9` the process group and reap it."""
        if self.popen is None:
            return
        self.signal_group(signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait for exit (SIGKILL after `timeout`). Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.returncode is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                # Wait for exit without reaping, so the group can still be
                # addressed safely below.
                _wait_unreaped(self.popen.pid, timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait()
                raise RuntimeError(f"{self.name} did not exit within {timeout}s of SIGTERM")
            # Anything the process left behind in its group goes too.
            self.signal_group(signal.SIGKILL)
        self.popen.wait()
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """The whole cluster. Use as a context manager; see module doc.

    `node_env` is added to every node's environment (e.g. a short
    `SSE_HTTP__MAX_CONNECTION_LIFETIME_SECONDS`), `admin_env` to admin's.
    `node_tls` (certificate and key PEM files) makes every node serve TLS;
    the harness then reads their readiness and metrics over HTTPS. `nats_url_for_node(i)` may
    return the NATS URL list a node should use (e.g. through a TCP proxy).
    """

    def __init__(
        self,
        nodes: int = 3,
        max_nodes: int | None = None,
        node_env: dict[str, str] | None = None,
        admin_env: dict[str, str] | None = None,
        nats_servers: int = 3,
        with_admin: bool | None = None,
        page_port: int | None = None,
        with_nodes: bool = True,
        node_tls: tuple[str, str] | None = None,
        workdir: str | None = None,
        keep: bool | None = None,
    ):
        self.initial_nodes = nodes
        self.max_nodes = max(max_nodes or nodes, nodes)
        self.node_env = dict(node_env or {})
        self.node_tls = node_tls
        if node_tls:
            self.node_env.update({"SSE_TLS__CERT_FILE": node_tls[0], "SSE_TLS__KEY_FILE": node_tls[1]})
        self.admin_env = dict(admin_env or {})
        self.nats_count = nats_servers
        self.page_port = page_port
        self.keep = keep if keep is not None else os.environ.get("SSE_KEEP_CLUSTER") == "1"
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sse-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.node_nats_urls: dict[int, str] = {}
        # Set by a test before start (see `RoutePartition`): the route URLs
        # a NATS server is given, and the route address it advertises.
        self.nats_routes: dict[int, list[str]] = {}
        self.nats_cluster_advertise: dict[int, str] = {}
        self.admin_token = secrets.token_hex(16)
        self.node_bin = binary("sse-node") if with_nodes else None
        self.admin_bin = binary("sse-admin")
        self.with_admin = (self.admin_bin is not None) if with_admin is None else with_admin
        self._closed = False

        # Ports are fixed for the life of the cluster so a restarted process
        # comes back where the others expect it.
        self.nats_ports = [free_port() for _ in range(self.nats_count)]
        self.route_ports = [free_port() for _ in range(self.nats_count)]
        self.nats_http_ports = [free_port() for _ in range(self.nats_count)]
        self.node_ports = [free_port() for _ in range(self.max_nodes)]
        self.lb_port = free_port()
        self.stats_port = free_port()
        self.admin_port = free_port()

    # ------------------------------------------------------------------ names
    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://{LOOPBACK}:{p}" for p in self.nats_ports]

    @property
    def nats_url(self) -> str:
        return ",".join(self.nats_urls)

    @property
    def lb_url(self) -> str:
        return f"http://{LOOPBACK}:{self.lb_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(self.max_nodes)]

    def running_nodes(self) -> list[str]:
        return [n for n in self.node_names() if n in self.procs and self.procs[n].running()]

    def node_port(self, name: str) -> int:
        return self.node_ports[int(name.removeprefix("node"))]

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def start(self, topics: list[tuple[str, int]] | None = None, timeout: float = 60.0) -> None:
        """Bring up NATS, create `topics` [(name, replicas)], then nodes, admin, HAProxy."""
        _live_clusters.add(self)
        for i in range(self.nats_count):
            self._define_nats(i)
            self.procs[f"nats{i}"].start()
        # Every server must come up: one that exited at start (a port taken,
        # say) fails here with its log, not later as a cluster short of peers.
        for i in range(self.nats_count):
            self.wait_ready(f"nats{i}", timeout)
        for name, replicas in topics or []:
            self.create_topic(name, replicas)
        if self.node_bin is not None:
            for i in range(self.max_nodes):
                self._define_node(i)
            for i in range(self.initial_nodes):
                self.procs[f"node{i}"].start()
        if self.with_admin and self.admin_bin is not None:
            self._define_admin()
            self.procs["admin"].start()
        self._define_haproxy()
        self.procs["haproxy"].start()
        wait_until(lambda: self._haproxy_stats() is not None, timeout, "haproxy stats page")
        if self.node_bin is not None:
            for i in range(self.initial_nodes):
                self.wait_ready(f"node{i}", timeout=timeout)
            for i in range(self.initial_nodes):
                self.wait_backend(f"node{i}", up=True, timeout=timeout)
        if "admin" in self.procs:
            self.wait_ready("admin", timeout=timeout)

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        _live_clusters.discard(self)
        for p in self.procs.values():
            p.signal_group(signal.SIGKILL)
        for p in self.procs.values():
            if p.popen is not None:
                try:
                    p.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if failed and not self.keep:
            print(f"\n---- cluster logs (tail) from {self.dir} ----")
            for p in self.procs.values():
                if p.name.startswith(("node", "admin")) and p.incarnation:
                    print(f"-- {p.name} --\n{p.log_tail(25)}")
        if self.keep:
            print(f"cluster folder kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- processes
    def kill(self, name: str) -> None:
        """`kill -9`, no warning."""
        self.procs[name].kill()

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the process to exit."""
        return self.procs[name].stop(timeout)

    def start_proc(self, name: str, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a stopped or killed process again (same ports, same data)."""
        self.procs[name].start()
        if wait:
            self.wait_ready(name, timeout)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        self.stop(name, timeout)
        self.start_proc(name, timeout=timeout)

    def is_ready(self, name: str) -> bool:
        p = self.procs[name]
        if not p.running():
            return False
        return bool(p.ready()) if p.ready else True

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        p = self.procs[name]

        def ok():
            if not p.running():
                raise Fatal(f"{name} exited with {p.popen.returncode if p.popen else None}:\n{p.log_tail()}")
            return p.ready() if p.ready else True

        wait_until(ok, timeout, f"{name} ready")

    def wait_nats_ready(self, timeout: float = 30.0) -> None:
        for i in range(self.nats_count):
            if self.procs[f"nats{i}"].running():
                self.wait_ready(f"nats{i}", timeout)

    # ----------------------------------------------------------------- NATS
    def _define_nats(self, i: int) -> None:
        store = self.dir / f"nats{i}"
        store.mkdir(exist_ok=True)
        routes = self.nats_routes.get(i) or [f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(self.route_ports) if j != i]
        conf = render_nats(
            listen=f"{LOOPBACK}:{self.nats_ports[i]}",
            http=f"{LOOPBACK}:{self.nats_http_ports[i]}",
            store_dir=str(store),
            cluster_listen=f"{LOOPBACK}:{self.route_ports[i]}" if self.nats_count > 1 else None,
            routes=routes,
            cluster_advertise=self.nats_cluster_advertise.get(i),
        )
        path = self.dir / f"nats{i}.conf"
        path.write_text(conf)
        port = self.nats_http_ports[i]

        def ready() -> bool:
            # 200 once JetStream is up and the meta group has a leader.
            return http_get(port, "/healthz", timeout=1.0)[0] == 200

        self.procs[f"nats{i}"] = Proc(
            name=f"nats{i}",
            argv=["nats-server", "-c", str(path)],
            env={**os.environ, "SERVER_NAME": self.nats_server_name(i)},
            log=self.dir / f"nats{i}.log",
            ready=ready,
            ports={"client": self.nats_ports[i], "http": port, "route": self.route_ports[i]},
        )

    def nats_server_name(self, i: int) -> str:
        return f"n{i}"

    def nats_proc_for_server(self, server_name: str) -> str:
        return f"nats{int(server_name.removeprefix('n'))}"

    def create_topic(self, name: str, replicas: int = 3, **cfg) -> None:
        """Create the topic's stream straight in JetStream (no admin needed)."""
        import asyncio

        async def go():
            import nats
            from nats.js.api import RePublish, StreamConfig

            nc = await nats.connect(servers=self.nats_urls, connect_timeout=2)
            try:
                js = nc.jetstream(timeout=5)
                # Right after start the meta leader may still be settling and
                # answer "no suitable peers for placement" for a few seconds.
                deadline = time.monotonic() + 60
                while True:
                    try:
                        # As the admin service makes a topic's stream, with
                        # direct gets allowed and each event republished to
                        # the live subjects, unless a test says otherwise.
                        await js.add_stream(
                            StreamConfig(
                                name=f"SSE_{name}",
                                subjects=[f"sse.{name}", f"sse.{name}.>"],
                                num_replicas=replicas,
                                **{
                                    "allow_direct": True,
                                    "republish": RePublish(src=">", dest="sse.LIVE.>"),
                                    **cfg,
                                },
                            )
                        )
                        break
                    except Exception as error:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"cannot create SSE_{name} (R{replicas}): {error}\n{self._jetstream_report()}") from error
                        await asyncio.sleep(0.25)
                # Wait until the stream has a leader and all replicas current.
                while True:
                    info = await js.stream_info(f"SSE_{name}")
                    cl = info.cluster
                    if cl is None or (cl.leader and len([r for r in (cl.replicas or []) if r.current]) >= replicas - 1):
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"stream SSE_{name} has no leader: {cl}")
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()

        run_async(go())

    def _jetstream_report(self) -> str:
        """Each server's view of the JetStream meta group and its routes, for
        a failure message."""
        lines = []
        for i in range(self.nats_count):
            try:
                status, body = http_get(self.nats_http_ports[i], "/jsz", timeout=1.0)
                meta = json.loads(body).get("meta_cluster", {}) if status == 200 else {}
                status, body = http_get(self.nats_http_ports[i], "/routez", timeout=1.0)
                routes = json.loads(body).get("num_routes") if status == 200 else None
                lines.append(f"n{i}: routes={routes} meta={json.dumps(meta)}")
            except Exception as error:  # a stopped or partitioned server
                lines.append(f"n{i}: {error!r}")
        return "\n".join(lines)

    # ----------------------------------------------------------------- nodes
    def set_node_nats_url(self, i: int, url: str) -> None:
        """Point node `i` at other NATS URLs (e.g. a TCP proxy); call before start."""
        self.node_nats_urls[i] = url
        if f"node{i}" in self.procs:
            self.procs[f"node{i}"].env["SSE_NATS__URL"] = url

    def _define_node(self, i: int) -> None:
        port = self.node_ports[i]
        env = clean_env()
        env.update(
            {
                "SSE_NATS__URL": self.node_nats_urls.get(i, self.nats_url),
                "SSE_NATS__CONNECTION_NAME": f"sse-node{i}",
                "SSE_NATS__TOPIC_REFRESH_SECONDS": "2",
                "SSE_HTTP__LISTEN": f"{LOOPBACK}:{port}",
                "SSE_HTTP__HEARTBEAT_SECONDS": "2",
                "SSE_HTTP__RETRY_MS": "300",
                "SSE_HTTP__RETRY_JITTER_MS": "700",
                "SSE_SHUTDOWN__DRAIN_SECONDS": "2",
                "SSE_LOG__LEVEL": os.environ.get("SSE_TEST_NODE_LOG", "info"),
                "NO_COLOR": "1",
            }
        )
        env.update(self.node_env)

        def ready() -> bool:
            return http_get(port, "/readyz", timeout=1.0, tls=bool(self.node_tls))[0] == 200

        self.procs[f"node{i}"] = Proc(
            name=f"node{i}",
            argv=[str(self.node_bin)],
            env=env,
            log=self.dir / f"node{i}.log",
            ready=ready,
            ports={"http": port},
        )

    def metrics(self, name: str, timeout: float = 2.0) -> dict[str, float] | None:
        """A node's `/metrics` as {'name{labels}': value}; None when unreachable."""
        try:
            status, body = http_get(self.node_port(name), "/metrics", timeout=timeout, tls=bool(self.node_tls))
        except OSError:
            return None
        return parse_prometheus(body) if status == 200 else None

    # ----------------------------------------------------------------- admin
    def _define_admin(self) -> None:
        env = clean_env()
        env.update(
            {
                "SSE_NATS__URL": self.nats_url,
                "SSE_HTTP__LISTEN": f"{LOOPBACK}:{self.admin_port}",
                "SSE_ADMIN__TOKEN": self.admin_token,
                "SSE_LOG__LEVEL": "info",
            }
        )
        env.update(self.admin_env)
        port = self.admin_port
        self.procs["admin"] = Proc(
            name="admin",
            argv=[str(self.admin_bin)],
            env=env,
            log=self.dir / "admin.log",
            ready=lambda: http_get(port, "/readyz", timeout=1.0)[0] == 200,
            ports={"http": port},
        )

    def start_admin(self, timeout: float = 30.0) -> None:
        """Start admin late, in a cluster made with `with_admin=False`."""
        if self.admin_bin is None:
            raise Fatal("no sse-admin binary (cargo build -p sse-admin)")
        self._define_admin()
        self.start_proc("admin", timeout=timeout)

    # --------------------------------------------------------------- haproxy
    def haproxy_config(self) -> str:
        """The shipped `deploy/haproxy/haproxy.cfg` with this cluster's ports
        and servers (the test page, when there is one, as `pages`)."""
        # Nodes serving TLS are reached over TLS, as a load balancer that
        # re-encrypts to its backends does (health checks included).
        to_node = " ssl verify none" if self.node_tls else ""
        servers = {
            "sse_nodes": [(f"node{i}", f"{LOOPBACK}:{p}{to_node}") for i, p in enumerate(self.node_ports)],
            "pages": [("page", f"{LOOPBACK}:{self.page_port}")] if self.page_port else [],
        }
        return render_haproxy(lb=f"{LOOPBACK}:{self.lb_port}", stats=f"{LOOPBACK}:{self.stats_port}", servers=servers)

    def _define_haproxy(self) -> None:
        path = self.dir / "haproxy.cfg"
        path.write_text(self.haproxy_config())
        self.procs["haproxy"] = Proc(
            name="haproxy",
            argv=["haproxy", "-db", "-f", str(path)],
            env=dict(os.environ),
            log=self.dir / "haproxy.log",
            ready=lambda: self._haproxy_stats() is not None,
            ports={"lb": self.lb_port, "stats": self.stats_port},
        )

    def _haproxy_stats(self) -> list[dict[str, str]] | None:
        try:
            status, body = http_get(self.stats_port, "/stats;csv", timeout=1.0)
        except OSError:
            return None
        if status != 200:
            return None
        lines = body.splitlines()
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, ln.split(","))) for ln in lines[1:] if ln]

    def backend_status(self) -> dict[str, str]:
        """HAProxy's view of each node slot: 'UP', 'DOWN', 'DOWN 1/2'…"""
        rows = self._haproxy_stats() or []
        return {r["svname"]: r["status"] for r in rows if r.get("pxname") == "sse_nodes" and r["svname"].startswith("node")}

    def wait_backend(self, name: str, up: bool, timeout: float = 15.0) -> None:
        wait_until(lambda: self.backend_status().get(name, "").startswith("UP") == up, timeout, f"haproxy sees {name} {'UP' if up else 'DOWN'}")

    # ---------------------------------------------------------------- report
    def describe(self) -> str:
        rows = [f"load balancer  {self.lb_url}", f"haproxy stats  http://{LOOPBACK}:{self.stats_port}/stats"]
        for i in range(self.nats_count):
            rows.append(f"nats{i} (n{i})     nats://{LOOPBACK}:{self.nats_ports[i]}  monitor http://{LOOPBACK}:{self.nats_http_ports[i]}")
        for n in self.running_nodes():
            rows.append(f"{n:<14} http://{LOOPBACK}:{self.node_port(n)}")
        if "admin" in self.procs:
            rows.append(f"admin          {self.admin_url}")
        rows.append(f"logs           {self.dir}")
        return "\n".join(rows)


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every series of `name` whose labels include `labels`."""
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in metrics.items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(w in key for w in want):
            total += value
    return total


def run_async(coro):
    """Run a coroutine from sync code, also when a loop already runs in this thread."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict = {}

    def worker():
        try:
            result["v"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001
            result["e"] = e

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if "e" in result:
        raise result["e"]
    return result.get("v")


@atexit.register
def _cleanup_all() -> None:
    for c in list(_live_clusters):
        c.close()
