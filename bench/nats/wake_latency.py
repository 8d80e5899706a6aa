#!/usr/bin/env python3
"""Latency of a quiet topic's first event, with feeds that doze and without.

Starts a nats-server with JetStream and one sse-node (NODE_BIN, default
target/release/sse-node), opens one event stream of a topic, and then, --rounds
times, waits until the topic's feed has read nothing for longer than its doze
time (for the dozing build, until `sse_feeds_dozing` is 1, then --after seconds
more; without dozing, the same wait), publishes one event and times it from the
publish to its bytes on the stream; then a second event at once, which finds
the feed awake. One JSON line per round on stdout. Needs `pip install nats-py`.

    python3 bench/nats/wake_latency.py --doze 2 --rounds 20
    python3 bench/nats/wake_latency.py --doze 0 --rounds 20
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import nats
from nats.js.api import StreamConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


async def read_event(reader, timeout):
    """Reads up to the end of the next event that has data; returns its data."""
    data = None
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise SystemExit("stream ended")
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data = line[5:].strip().decode()
        elif line == b"" and data is not None:
            return data


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doze", type=int, required=True, help="delivery.feed_doze_seconds")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--after", type=float, default=1.5, help="seconds past the doze before each publish")
    args = ap.parse_args()
    node_bin = os.environ.get("NODE_BIN", os.path.join(ROOT, "target/release/sse-node"))
    work = tempfile.mkdtemp(prefix="wake-latency.")
    procs = []
    try:
        nats_port, http_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", nats_port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="SSE_wake", subjects=["sse.wake", "sse.wake.>"]))
        env = dict(os.environ, SSE_NATS__URL=f"nats://127.0.0.1:{nats_port}",
                   SSE_HTTP__LISTEN=f"127.0.0.1:{http_port}", SSE_LOG__LEVEL="warn",
                   SSE_DELIVERY__FEED_DOZE_SECONDS=str(args.doze))
        procs.append(subprocess.Popen([node_bin], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await wait_for(lambda: _ready(http_port), 60, "the node to be ready")
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(b"GET /v1/events?topic=wake HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b"\n"):
            pass
        quiet = args.doze + args.after if args.doze else 2 + args.after
        for round in range(args.rounds):
            if args.doze:
                await wait_for(lambda: metric(http_port, "sse_feeds_dozing") == 1.0, 60, "the feed to doze")
                await asyncio.sleep(args.after)
            else:
                await asyncio.sleep(quiet)
            times = []
            for i in range(2):
                sent = time.monotonic()
                await js.publish("sse.wake", f"{round}-{i}".encode())
                data = await read_event(reader, 30)
                if data != f"{round}-{i}":
                    raise SystemExit(f"expected {round}-{i}, got {data}")
                times.append((time.monotonic() - sent) * 1000)
            print(json.dumps({"doze_s": args.doze, "round": round, "quiet_s": quiet,
                              "first_ms": round_ms(times[0]), "second_ms": round_ms(times[1])}), flush=True)
        writer.close()
        await nc.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def _ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def round_ms(ms):
    return round(ms, 2)


if __name__ == "__main__":
    asyncio.run(main())
