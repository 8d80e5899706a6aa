"""A real browser: Chromium's own EventSource, through HAProxy, while the node
serving it is killed with -9. The page must end with every event once.

The page is served by a small HTTP server the test runs, routed by HAProxy
under `/page/`, so the page and the event stream share one origin.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster.harness import LOOPBACK, Proc, free_port, metric_sum, wait_until
from cluster.workload import FIGURES, Publisher

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.needs_node]


class PageServer:
    """Serves tests/browser/ so /page/index.html is the test page."""

    def __init__(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(HERE))
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Browser:
    """`node drive.mjs` in its own process group; `state` is the page's last state."""

    def __init__(self, url: str, ignore_https_errors: bool = False) -> None:
        self.profile = tempfile.mkdtemp(prefix="sse-chromium-")
        self.log = open(Path(self.profile).with_suffix(".log"), "w+")
        self.state: dict = {}
        self.proc = subprocess.Popen(
            ["node", str(HERE / "drive.mjs"), url, self.profile],
            cwd=TESTS,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
            env={**os.environ, "IGNORE_HTTPS_ERRORS": "1" if ignore_https_errors else "0"},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.state = json.loads(line)
            except ValueError:
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        _kill_profile_processes(self.profile)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def wait_open(self, what: str) -> None:
        """Waits for the page's EventSource to open; fails with the page's
        state and the browser's log if it never does."""
        try:
            wait_until(lambda: self.state.get("opens", 0) >= 1, 30, f"{what}'s EventSource to open")
        except TimeoutError:
            raise AssertionError(f"{what} never opened its stream: {self.state}\n{self.stderr_tail()}") from None

    def stderr_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]


def _kill_profile_processes(profile: str) -> None:
    """Chromium runs in a group of its own: end the ones using our profile."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if profile.encode() in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _replayed(c, source: str) -> float:
    """Replays counted by the nodes still running (the killed one served none)."""
    return sum(metric_sum(c.metrics(n) or {}, "sse_replay_events_total", source=source) for n in c.running_nodes())


def _settled_state(browser: Browser, total: int) -> dict:
    """The page's state once it holds `total` events (or 30 s passed), and
    half a second more, so that a duplicate, if any, arrives before judging."""
    try:
        wait_until(lambda: len(browser.state.get("received", [])) >= total, 30, "the page to hold every event")
    except TimeoutError:
        pass
    time.sleep(0.5)
    return browser.state


def _publish_and_expect_every_event(browser: Browser, c, topic: str, total: int) -> dict:
    """Publishes events 1..total on `topic`; the page must hold each once, in
    order, with its EventSource still open. Returns the page's state."""
    asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", total, 50.0).run())
    state = _settled_state(browser, total)
    assert state.get("received") == list(range(1, total + 1)), state
    assert not state.get("closed"), state
    return state


def _serve_again_after_a_503(c, browser: Browser, topic: str, *, held: int, while_down: int, after: int) -> None:
    """Stops the only node, publishes `while_down` events, waits for the
    page's EventSource to give up on the load balancer's 503, starts the
    node again and publishes `after` more; the page, which held events 1 to
    `held`, must then hold every event once, in order, from a second open."""
    c.stop("node0")
    c.wait_backend("node0", up=False)
    asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", while_down, 50.0, first=held + 1).run())
    wait_until(lambda: browser.state.get("gaveUp", 0) >= 1, 30, "the browser's EventSource to give up on a 503")
    c.start_proc("node0")
    asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", after, 50.0, first=held + while_down + 1).run())
    total = held + while_down + after
    state = _settled_state(browser, total)
    assert state.get("received") == list(range(1, total + 1)), state
    assert state.get("opens", 0) >= 2, state


def _self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for localhost and its key, as PEM files in `folder`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("to_nodes", ["http", "tls"])
def test_browser_eventsource_gets_every_event_once_when_its_node_is_killed(node_binary, cluster_factory, topic, to_nodes, tmp_path):
    """With `tls`, HAProxy re-encrypts to the nodes (TLS 1.3, HTTP/1.1), as a
    load balancer in front of TLS backends does: the nodes serve those
    streams on the lean path and park them, the topic's writer sealing
    every batch per connection."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    total, rate = 200, 10.0
    node_tls = _self_signed(tmp_path) if to_nodes == "tls" else None
    with PageServer() as pages:
        c = cluster_factory(nodes=3, topics=[(topic, 3)], page_port=pages.port, node_tls=node_tls)
        browser = Browser(f"{c.lb_url}/page/index.html?topic={topic}")
        try:
            browser.wait_open("the page")
            fig: dict = {"clients": 1, "events": total}

            def serving_node() -> str | None:
                for name in c.running_nodes():
                    m = c.metrics(name)
                    if m and metric_sum(m, "sse_clients_connected") >= 1:
                        return name
                return None

            async def run() -> None:
                pub = Publisher(c.nats_urls, f"sse.{topic}", total, rate)
                task = asyncio.create_task(pub.run())
                await pub.wait_published(int(total * 0.4))
                victim = await asyncio.to_thread(wait_until, serving_node, 10, "the node serving the page")
                fig["victim"] = victim
                served = c.metrics(victim) or {}
                fig["parked on victim"] = metric_sum(served, "sse_streams_parked")
                fig["lean streams on victim"] = metric_sum(served, "sse_streams_served_total", path="lean")
                fig["received before kill"] = len(browser.state.get("received", []))
                c.kill(victim)
                await task
                fig["publish retries"] = pub.retries

            asyncio.run(run())
            state = _settled_state(browser, total)
            got = state.get("received", [])
            fig.update(
                {
                    "received": len(got),
                    "opens (1 + reconnects)": state.get("opens"),
                    "errors": state.get("errors"),
                    "reset events": state.get("other", {}).get("reset", 0),
                    "longest gap s": round(state.get("longestGapMs", 0) / 1000, 2),
                    "replayed memory": int(_replayed(c, "memory")),
                    "replayed jetstream": int(_replayed(c, "jetstream")),
                    "last id": state.get("lastEventId"),
                }
            )
            FIGURES.append((f"browser EventSource, node killed, {to_nodes} to the nodes", fig))
            print(f"\n[browser] {json.dumps(fig)}")
            assert not state.get("closed"), "the browser gave up reconnecting (EventSource CLOSED)"
            missing = sorted(set(range(1, total + 1)) - set(got))
            dups = sorted({n for n in got if got.count(n) > 1})
            assert got == list(range(1, total + 1)), f"missing {missing[:20]}, duplicated {dups[:20]}, {len(got)} events"
            assert state.get("opens", 0) >= 2, "the page never reconnected"
            # The stream was written the way this case is about: on the lean
            # path and, in step with its topic, by the topic's writer.
            assert fig["lean streams on victim"] >= 1, fig
            assert fig["parked on victim"] >= 1, fig
        finally:
            browser.close()


@pytest.mark.timeout(120)
def test_a_page_that_reopens_its_eventsource_as_documented_gets_every_event_once_across_a_503(node_binary, cluster_factory, topic):
    """The only node drains and stops: the browser's reconnection gets the load
    balancer's 503 (no node ready), and an EventSource ends for good on any
    answer but 200. The page of README's wrapper opens a new one, with the
    last id in the query, until a node is back, and misses nothing."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    with PageServer() as pages:
        c = cluster_factory(nodes=1, topics=[(topic, 3)], page_port=pages.port)
        browser = Browser(f"{c.lb_url}/page/reopen.html?topic={topic}")
        try:
            browser.wait_open("the page")
            asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", 20, 50.0).run())
            wait_until(lambda: len(browser.state.get("received", [])) >= 20, 30, "the first events")
            _serve_again_after_a_503(c, browser, topic, held=20, while_down=20, after=20)
        finally:
            browser.close()


@pytest.mark.timeout(120)
def test_a_page_that_reopens_before_its_first_event_resumes_from_the_id_its_backend_gave(node_binary, cluster_factory, topic):
    """The id-only frame a stream begins with fires no event, so a page that
    has had no event has read no id. As README says, its backend gives it
    the first one, `<topic>:<epoch>:<last_sequence>` from admin: the page
    reopened after a 503 gets the events published while no node served."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    with PageServer() as pages:
        c = cluster_factory(nodes=1, topics=[(topic, 3)], page_port=pages.port)
        if "admin" not in c.procs:
            pytest.fail("needs the sse-admin binary (cargo build -p sse-admin)", pytrace=False)
        # What the page's backend does when it renders the page.
        request = urllib.request.Request(
            f"{c.admin_url}/v1/topics/{topic}", headers={"Authorization": f"Bearer {c.admin_token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            info = json.load(answer)
        first_id = f"{topic}:{info['epoch']}:{info['last_sequence']}"
        query = urllib.parse.urlencode({"topic": topic, "lastEventId": first_id})
        browser = Browser(f"{c.lb_url}/page/reopen.html?{query}")
        try:
            browser.wait_open("the page")
            # The page has had no event: those published while no node
            # serves come only from the id it was given.
            _serve_again_after_a_503(c, browser, topic, held=0, while_down=20, after=10)
        finally:
            browser.close()

@pytest.mark.timeout(120)
def test_cross_origin_eventsource_works_for_allowed_origins_only(node_binary, cluster_factory, topic):
    """Chromium's own CORS checks, not a hand-made preflight: a page on an
    allowed origin streams with `withCredentials`; one on another origin is
    refused by the browser and gets nothing."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    total = 20
    with PageServer() as allowed, PageServer() as other:
        allowed_origin = f"http://{LOOPBACK}:{allowed.port}"
        c = cluster_factory(
            nodes=1,
            topics=[(topic, 1)],
            node_env={
                "SSE_CORS__ALLOWED_ORIGINS": json.dumps([allowed_origin]),
                "SSE_CORS__ALLOW_CREDENTIALS": "true",
            },
        )
        src = f"{c.lb_url}/v1/events?topic={topic}"
        query = f"src={urllib.parse.quote(src, safe='')}"

        refused = Browser(f"http://{LOOPBACK}:{other.port}/page/cors.html?{query}")
        try:
            try:
                wait_until(lambda: refused.state.get("closed"), 30, "the browser to refuse the stream")
            except TimeoutError:
                raise AssertionError(f"a page on an origin not allowed was not refused: {refused.state}\n{refused.stderr_tail()}")
            assert refused.state.get("opens") == 0, refused.state
        finally:
            refused.close()

        browser = Browser(f"{allowed_origin}/page/cors.html?{query}")
        try:
            browser.wait_open("the allowed page")
            state = _publish_and_expect_every_event(browser, c, topic, total)
            assert state.get("lastEventId", "").startswith(f"{topic}:"), state
        finally:
            browser.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("h2", ["on", "off"])
def test_a_browser_reaching_a_node_over_tls_streams_on_http2_or_with_h2_off_on_the_lean_path(
    node_binary, cluster_factory, topic, h2, tmp_path
):
    """TLS passthrough: Chromium itself negotiates with a node over TLS. By
    default it picks HTTP/2 by ALPN, and hyper serves the stream; with
    `http.h2 = false` it speaks HTTP/1.1 and the lean path serves it. Either
    way the page gets every event once, in order."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    total = 20
    with PageServer() as pages:
        origin = f"http://{LOOPBACK}:{pages.port}"
        node_env = {
            "SSE_CORS__ALLOWED_ORIGINS": json.dumps([origin]),
            "SSE_CORS__ALLOW_CREDENTIALS": "true",
        }
        if h2 == "off":
            node_env["SSE_HTTP__H2"] = "false"
        c = cluster_factory(
            nodes=1, nats_servers=1, topics=[(topic, 1)], node_env=node_env, node_tls=_self_signed(tmp_path)
        )
        src = f"https://{LOOPBACK}:{c.node_port('node0')}/v1/events?topic={topic}"
        query = f"src={urllib.parse.quote(src, safe='')}"
        browser = Browser(f"{origin}/page/cors.html?{query}", ignore_https_errors=True)
        try:
            browser.wait_open("the page")
            _publish_and_expect_every_event(browser, c, topic, total)
            metrics = c.metrics("node0") or {}
            served = {
                path: metric_sum(metrics, "sse_streams_served_total", path=path) for path in ("lean", "router")
            }
            want = {"lean": 0.0, "router": 1.0} if h2 == "on" else {"lean": 1.0, "router": 0.0}
            assert served == want, served
        finally:
            browser.close()


class L4Balancer:
    """HAProxy in `mode tcp` before the cluster's nodes, as an L4 balancer
    (a cloud NLB, a Kubernetes `LoadBalancer` Service) passes TLS through:
    the browser negotiates TLS and HTTP/2 with a node itself. Its runtime
    socket takes a node out of rotation, as Kubernetes takes a terminating
    pod's endpoint out before its SIGTERM; open connections stay."""

    def __init__(self, c, folder: Path) -> None:
        self.port = free_port()
        self.socket = folder / "l4.sock"
        servers = "\n".join(f"    server {n} {LOOPBACK}:{c.node_port(n)}" for n in c.node_names())
        config = folder / "l4.cfg"
        config.write_text(
            f"global\n    stats socket {self.socket} level admin\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n"
            f"frontend l4\n    bind {LOOPBACK}:{self.port}\n    default_backend nodes\n"
            f"backend nodes\n    balance roundrobin\n{servers}\n"
        )
        proc = Proc(name="l4", argv=["haproxy", "-db", "-f", str(config)], env=dict(os.environ), log=folder / "l4.log")
        # The cluster's own clean-up ends it with the rest.
        c.procs["l4"] = proc
        proc.start()
        wait_until(self._accepts, 15, "the L4 balancer to listen")

    def _accepts(self) -> bool:
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def take_out(self, node: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(f"set server nodes/{node} state maint\n".encode())
            answer = s.recv(4096).decode().strip()
        assert answer == "", f"haproxy: {answer}"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("h2", ["on", "off"])
def test_a_browser_through_an_l4_balancer_keeps_every_eventsource_across_a_drain(
    node_binary, cluster_factory, topic, tmp_path, h2
):
    """TLS passthrough: four EventSources of one page share an HTTP/2
    connection with a node. That node is taken out of the balancer's rotation
    and drains while events are published. The node tells the connection to
    go away as its drain starts, so each EventSource reconnects on a new
    connection, to the other node, and not on the old one, where the
    draining node's 503 would end it for good. Each gets every event once.
    With `http.h2 = false` each stream has a connection of its own on the
    lean path, which the node closes with the stream."""
    if not Path(CHROMIUM).exists() or not (TESTS / "node_modules" / "playwright-core").exists():
        pytest.fail("needs /usr/bin/chromium and tests/node_modules/playwright-core (scripts/install-deps)", pytrace=False)
    streams, before, during, after = 4, 10, 20, 10
    total = before + during + after
    with PageServer() as pages:
        origin = f"http://{LOOPBACK}:{pages.port}"
        node_env = {"SSE_CORS__ALLOWED_ORIGINS": json.dumps([origin]), "SSE_SHUTDOWN__DRAIN_SECONDS": "3"}
        if h2 == "off":
            node_env["SSE_HTTP__H2"] = "false"
        c = cluster_factory(nodes=2, nats_servers=1, topics=[(topic, 1)], node_env=node_env, node_tls=_self_signed(tmp_path))
        l4 = L4Balancer(c, tmp_path)
        src = f"https://{LOOPBACK}:{l4.port}/v1/events?topic={topic}"
        query = f"count={streams}&src={urllib.parse.quote(src, safe='')}"
        browser = Browser(f"{origin}/page/many.html?{query}", ignore_https_errors=True)

        def received() -> list[list[int]]:
            return [s.get("received", []) for s in browser.state.get("streams", [])]

        try:
            try:
                wait_until(lambda: browser.state.get("opens", 0) >= streams, 30, "every EventSource to open")
            except TimeoutError:
                raise AssertionError(f"{browser.state}\n{browser.stderr_tail()}") from None
            asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", before, 50.0).run())
            wait_until(lambda: all(len(r) >= before for r in received()), 30, "the first events on every stream")
            serving = {n: metric_sum(c.metrics(n) or {}, "sse_clients_connected") for n in c.node_names()}
            if h2 == "on":
                victim = max(serving, key=serving.get)
                # One HTTP/2 connection carries them all, served by hyper.
                assert serving[victim] == streams, serving
                routed = metric_sum(c.metrics(victim) or {}, "sse_streams_served_total", path="router")
                assert routed == streams, routed
            else:
                # A connection each, spread by the balancer; the lean path
                # serves them.
                assert sum(serving.values()) == streams, serving
                victim = max(serving, key=serving.get)
                lean = sum(metric_sum(c.metrics(n) or {}, "sse_streams_served_total", path="lean") for n in c.node_names())
                assert lean == streams, lean

            l4.take_out(victim)
            publishing = threading.Thread(
                target=lambda: asyncio.run(
                    Publisher(c.nats_urls, f"sse.{topic}", during, 10.0, first=before + 1).run()
                )
            )
            publishing.start()
            assert c.stop(victim) == 0, c[victim].log_tail()
            publishing.join(30)
            assert not publishing.is_alive()
            asyncio.run(Publisher(c.nats_urls, f"sse.{topic}", after, 50.0, first=before + during + 1).run())
            try:
                wait_until(lambda: all(len(r) >= total for r in received()), 30, "every event on every stream")
            except TimeoutError:
                pass
            time.sleep(0.5)  # let a duplicate, if any, arrive before judging
            state = browser.state
            for stream in state.get("streams", []):
                assert not stream.get("closed"), state
                assert stream.get("received") == list(range(1, total + 1)), state
            # Each stream the drained node served opened again.
            reopened = sum(stream.get("opens", 0) for stream in state.get("streams", [])) - streams
            assert reopened >= serving[victim], (serving, state)
            moved = sum(metric_sum(c.metrics(n) or {}, "sse_clients_connected") for n in c.running_nodes())
            assert moved == streams, moved
        finally:
            browser.close()
