"""A node whose clock is off goes by NATS's: it stays in the cluster view,
measures lag as it is, and judges tokens as the other nodes do.

The node runs under libfaketime with its wall clock three minutes behind
(its monotonic clock untouched, as when a host's clock is set wrong)."""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import hmac
import json
import socket
import time
import urllib.request

import pytest

from cluster.harness import LOOPBACK, wait_until

pytestmark = [pytest.mark.needs_node]

SKEW_SECONDS = -180
SECRET = "clock-skew-test-secret-0123456789abcdef"
FAST_REPORTS = {"SSE_CLUSTER__REPORT_SECONDS": "1", "SSE_CLUSTER__NODE_TTL_SECONDS": "15"}


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: scripts/install-deps installs Debian's libfaketime")
    return found[0]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(claims: dict) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def stream_status(port: int, path: str, token: str) -> int:
    """The status a node answers a stream request with."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def open_stream(port: int, topic: str, timeout: float) -> socket.socket:
    """A socket that has asked the node for `topic`'s stream."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.sendall(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def nodes_view(c) -> list[dict]:
    req = urllib.request.Request(f"{c.admin_url}/v1/nodes", headers={"Authorization": f"Bearer {c.admin_token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["nodes"]


async def publish(urls: list[str], subject: str, count: int) -> None:
    import nats

    nc = await nats.connect(servers=urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        for i in range(count):
            await js.publish(subject, f"event {i}".encode())
    finally:
        await nc.close()


@pytest.mark.timeout(150)
def test_a_node_three_minutes_behind_goes_by_natss_clock(node_binary, cluster_factory, topic):
    lib = libfaketime()
    c = cluster_factory(
        nodes=1,
        max_nodes=2,
        nats_servers=1,
        topics=[(topic, 1)],
        node_env={**FAST_REPORTS, "SSE_AUTH__JWT__HS256_SECRET": SECRET, "SSE_AUTH__JWT__LEEWAY_SECONDS": "30"},
    )
    c.create_topic(f"{topic}p", replicas=1, metadata={"sse.access": "private"})
    c.procs["node1"].env.update(
        {"LD_PRELOAD": lib, "FAKETIME": f"{SKEW_SECONDS:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    )
    c.start_proc("node1")
    skewed, right = c.node_port("node1"), c.node_port("node0")

    # The node measures NATS's clock at its reports, and says so.
    def offset(name: str) -> float | None:
        metrics = c.metrics(name) or {}
        return metrics.get("sse_clock_offset_seconds")

    wait_until(lambda: (o := offset("node1")) is not None and abs(o + SKEW_SECONDS) < 10, 30, "node1 measuring its clock 180 s behind")
    assert abs(offset("node0")) < 1.0, f"node0 on the right clock measured {offset('node0')} s"
    wait_until(lambda: "clock is off from NATS's" in c["node1"].log_tail(200), 10, "node1 warning of its clock")

    # Admin ages reports by NATS's clock: the node stays in the view, its
    # skew shown, where its own time made its reports three minutes stale.
    def view() -> dict[str, dict]:
        return {n["address"]: n for n in nodes_view(c)}

    wait_until(lambda: len(view()) == 2, 20, "both nodes in admin's view")
    seen = view()[f"{LOOPBACK}:{skewed}"]
    assert abs(seen["clock_skew_seconds"] - SKEW_SECONDS) < 10, seen
    assert seen["report_age_seconds"] < 5, seen
    assert abs(view()[f"{LOOPBACK}:{right}"]["clock_skew_seconds"]) < 1, view()

    # Lag by NATS's clock: events delivered at once count as a few ms, not
    # as three minutes, nor (stamped "ahead" of the node) as nothing.
    before = (c.metrics("node1") or {}).get("sse_delivery_lag_seconds_count", 0.0)
    sock = open_stream(skewed, topic, timeout=20)
    try:
        got = b""
        deadline = time.monotonic() + 20
        # The stream's head (status line) before publishing, so every event is live.
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        asyncio.run(publish(c.nats_urls, f"sse.{topic}", 20))
        while got.count(b"\nid:") < 20:
            assert time.monotonic() < deadline, f"20 events not read in 20 s: {got[-400:]!r}"
            got += sock.recv(65536)
    finally:
        sock.close()

    def lag() -> tuple[float, float]:
        metrics = c.metrics("node1") or {}
        return metrics.get("sse_delivery_lag_seconds_count", 0.0) - before, metrics.get("sse_delivery_lag_seconds_sum", 0.0)

    wait_until(lambda: lag()[0] >= 1, 10, "node1 counting the delivery lag")
    count, total = lag()
    assert total / max(count, 1) < 5.0, f"mean lag {total / count:.1f} s over {count:.0f} deliveries"

    # Tokens are judged by NATS's clock on both nodes alike.
    now = time.time()
    expired = mint({"exp": int(now) - 60, "sse.subscribe": [f"{topic}p"]})
    valid = mint({"exp": int(now) + 120, "sse.subscribe": [f"{topic}p"]})
    path = f"/v1/events?topic={topic}p"
    assert stream_status(right, path, expired) == 401
    assert stream_status(skewed, path, expired) == 401, "node1 took a token expired a minute ago"
    assert stream_status(right, path, valid) == 200
    assert stream_status(skewed, path, valid) == 200
