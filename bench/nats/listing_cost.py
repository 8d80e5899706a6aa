#!/usr/bin/env python3
"""What a node's re-listing of its topics costs NATS, when the node reads a few of many topics.

Starts a fresh nats-server (JetStream on, from PATH), creates --topics topic
streams as the admin service makes them (`SSE_t<i>`, subjects `sse.t<i>` and
`sse.t<i>.>`, direct gets allowed), each with one 100-byte event, then one
sse-node (--node, a built binary) re-listing every --refresh seconds, opens
one idle SSE stream on each of --read topics through it, and reads the NATS
server's CPU (utime + stime) and its JetStream API request count over
--seconds once the streams stand.

One JSON line per run on stdout. Needs `pip install nats-py`.

    python3 bench/nats/listing_cost.py --node target/release/sse-node --topics 3000 --read 100
"""

import argparse
import asyncio
import json
import os
import subprocess
import time
import urllib.request

import nats
from per_message import add_topic_streams, cpu_seconds, free_port, nats_server


async def api_requests(nc) -> int:
    answer = await nc.request("$JS.API.INFO", b"", timeout=10)
    return json.loads(answer.data)["api"]["total"]


async def open_stream(port: int, topic: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream of {topic} refused: {head!r}")
    return writer


async def measure(nats_port: int, nats_pid: int, args: argparse.Namespace) -> dict:
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    js = nc.jetstream()
    await add_topic_streams(js, args.topics, lambda i: f"sse.t{i}")
    http_port = free_port()
    env = dict(
        os.environ,
        SSE_NATS__URL=f"nats://127.0.0.1:{nats_port}",
        SSE_HTTP__LISTEN=f"127.0.0.1:{http_port}",
        SSE_LOG__LEVEL="warn",
        SSE_NATS__TOPIC_REFRESH_SECONDS=str(args.refresh),
    )
    node = subprocess.Popen([args.node], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        # Topics spread over the range, not the first ones only.
        step = max(1, args.topics // max(1, args.read))
        streams = [await open_stream(http_port, f"t{i * step}") for i in range(args.read)]
        await asyncio.sleep(args.settle)
        cpu_before, api_before = cpu_seconds(nats_pid), await api_requests(nc)
        await asyncio.sleep(args.seconds)
        cpu, api = cpu_seconds(nats_pid) - cpu_before, await api_requests(nc) - api_before
        for writer in streams:
            writer.close()
    finally:
        node.terminate()
        node.wait(10)
    await nc.close()
    return {
        "node": args.node,
        "topics": args.topics,
        "read": args.read,
        "refresh_s": args.refresh,
        "seconds": args.seconds,
        "nats_cpu_s": round(cpu, 3),
        "nats_cpu_share": round(cpu / args.seconds, 4),
        "api_requests": api,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--topics", type=int, default=3000)
    parser.add_argument("--read", type=int, default=100)
    parser.add_argument("--refresh", type=int, default=10)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        with nats_server() as (server, port):
            print(json.dumps(asyncio.run(measure(port, server.pid, args))), flush=True)


if __name__ == "__main__":
    main()
