#!/usr/bin/env python3
"""Many topics, few clients: what a node costs for topics it does not serve.

Starts a fresh nats-server (JetStream, empty folder), creates --topics
topics (R1 streams SSE_t<i>) holding --events events each, then starts one
sse-node (the binary given) and measures:

- how long until /readyz answers 200;
- the node's RSS and the JetStream consumers that exist, 5 s after ready
  (no client);
- nats-server's CPU over --idle seconds before the node starts (its own
  cost for these streams), then the node's and nats-server's CPU over
  --idle seconds with the node and no client;
- the same RSS and consumers with --clients SSE clients, one per topic, each
  checked to have its stream open (its id-only frame).

Prints one JSON object per run. Usage:

    bench/interest/many_topics.py --node target/release/sse-node --topics 2000 --events 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def metric(port: int, name: str) -> float:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def consumers(monitor: int) -> int:
    _, body = http_get(f"http://127.0.0.1:{monitor}/jsz")
    return json.loads(body)["consumers"] if body else -1


async def fill(url: str, topics: int, events: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    for start in range(0, topics, 100):
        await asyncio.gather(*(
            js.add_stream(StreamConfig(name=f"SSE_t{i}", subjects=[f"sse.t{i}", f"sse.t{i}.>"], num_replicas=1))
            for i in range(start, min(topics, start + 100))
        ))
    payload = b"x" * 100
    for i in range(topics):
        for _ in range(events):
            await nc.publish(f"sse.t{i}", payload)
        if i % 50 == 49:
            await nc.flush()
    await nc.flush()
    # Every event stored before the node starts.
    for i in random.sample(range(topics), min(topics, 20)):
        info = await js.stream_info(f"SSE_t{i}")
        assert info.state.messages == events, (i, info.state.messages)
    await nc.close()


async def open_clients(port: int, count: int) -> list:
    streams = []
    for i in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/events?topic=t{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        streams.append((reader, writer))
    for reader, _ in streams:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head[:60]
        got = b""
        while b"id: " not in got:
            got += await asyncio.wait_for(reader.read(4096), 10)
    return streams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--idle", type=float, default=10.0)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sse-many-topics-")
    procs = []
    try:
        port, monitor = free_port(), free_port()
        nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-sd", f"{work}/js"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nats)
        while http_get(f"http://127.0.0.1:{monitor}/healthz")[0] != 200:
            time.sleep(0.1)
        t = time.monotonic()
        asyncio.run(fill(f"nats://127.0.0.1:{port}", a.topics, a.events))
        filled = time.monotonic() - t
        # NATS's own idle cost for these streams, before any node runs: the
        # node's share is what it adds to this.
        time.sleep(5)
        s0, w0 = cpu_seconds(nats.pid), time.monotonic()
        time.sleep(a.idle)
        nats_alone = (cpu_seconds(nats.pid) - s0) / (time.monotonic() - w0) * 100
        http_port = free_port()
        env = dict(os.environ, SSE_NATS__URL=f"nats://127.0.0.1:{port}", SSE_HTTP__LISTEN=f"127.0.0.1:{http_port}", SSE_LOG__LEVEL="warn")
        started = time.monotonic()
        node = subprocess.Popen([a.node], env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/node.log", "w"))
        procs.append(node)
        while http_get(f"http://127.0.0.1:{http_port}/readyz", 1)[0] != 200:
            if node.poll() is not None:
                raise SystemExit(open(f"{work}/node.log").read()[-2000:])
            if time.monotonic() - started > 120:
                raise SystemExit("node not ready in 120 s")
            time.sleep(0.02)
        ready_s = time.monotonic() - started
        time.sleep(5)
        idle_rss = rss_mib(node.pid)
        idle_consumers = consumers(monitor)
        n0, s0, w0 = cpu_seconds(node.pid), cpu_seconds(nats.pid), time.monotonic()
        time.sleep(a.idle)
        wall = time.monotonic() - w0
        node_cpu = (cpu_seconds(node.pid) - n0) / wall * 100
        nats_cpu = (cpu_seconds(nats.pid) - s0) / wall * 100
        loop = asyncio.new_event_loop()
        streams = loop.run_until_complete(open_clients(http_port, a.clients))
        time.sleep(3)
        with_rss = rss_mib(node.pid)
        with_consumers = consumers(monitor)
        for _, w in streams:
            w.close()
        loop.close()
        print(json.dumps({
            "scenario": "many_topics", "label": a.label, "topics": a.topics, "events_per_topic": a.events,
            "fill_s": round(filled, 1), "ready_s": round(ready_s, 2),
            "idle_rss_mib": round(idle_rss, 1), "idle_consumers": idle_consumers,
            "idle_node_cpu_pct": round(node_cpu, 2), "idle_nats_cpu_pct": round(nats_cpu, 2),
            "nats_alone_cpu_pct": round(nats_alone, 2),
            "clients": a.clients, "clients_connected": len(streams),
            "with_clients_rss_mib": round(with_rss, 1), "with_clients_consumers": with_consumers,
        }))
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
