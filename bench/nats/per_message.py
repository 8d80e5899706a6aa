#!/usr/bin/env python3
"""What nats-server spends per message at a low rate, with nothing else running.

Starts a fresh nats-server (JetStream on, from PATH) for every run, publishes
--messages 100-byte messages at --rate per second from nats-py, and reads the
server's CPU time (utime + stime) from /proc around the publishing. Modes:

  core           core NATS publish, no stream, no subscriber
  file, memory   acknowledged JetStream publish into a file or memory stream
  file+consumer  the same into a file stream, with one ordered consumer
                 reading every message
  file+republish the same into a file stream that republishes each stored
                 message (with its stream sequence in a header) to a
                 subject one core subscription reads, instead of a consumer

One JSON line per run on stdout. Needs `pip install nats-py`.

    python3 bench/nats/per_message.py --runs 3 > results.jsonl
"""

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time

import nats
from nats.js.api import RePublish, StorageType, StreamConfig

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def publish(url: str, mode: str, messages: int, rate: float) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    if mode != "core":
        storage = StorageType.MEMORY if mode == "memory" else StorageType.FILE
        republish = RePublish(src="s", dest="rp.s") if mode == "file+republish" else None
        await js.add_stream(
            StreamConfig(name="S", subjects=["s"], storage=storage, republish=republish)
        )
    received = 0
    done = asyncio.Event()

    async def on_message(_msg):
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    if mode == "file+consumer":
        await js.subscribe("s", ordered_consumer=True, cb=on_message)
    elif mode == "file+republish":
        await nc.subscribe("rp.s", cb=on_message)
    start = time.monotonic()
    for i in range(messages):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if mode == "core":
            await nc.publish("s", b"x" * 100)
        else:
            await js.publish("s", b"x" * 100)
    if mode in ("file+consumer", "file+republish"):
        await asyncio.wait_for(done.wait(), 30)
    await nc.close()


async def add_topic_streams(js, count: int, event_subject=None) -> None:
    """Creates `count` topic streams as the admin service makes them
    (`SSE_t<i>`, subjects `sse.t<i>` and `sse.t<i>.>`, direct gets allowed),
    each with one 100-byte event on `event_subject(i)` unless it is None."""
    for i in range(count):
        await js.add_stream(
            StreamConfig(name=f"SSE_t{i}", subjects=[f"sse.t{i}", f"sse.t{i}.>"], allow_direct=True)
        )
        if event_subject is not None:
            await js.publish(event_subject(i), b"x" * 100)


@contextlib.contextmanager
def nats_server():
    """A fresh nats-server with JetStream in a store of its own, ready for
    clients: yields its process and port, and stops it afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield server, port
        finally:
            server.terminate()
            server.wait(10)


def run(mode: str, messages: int, rate: float) -> dict:
    with nats_server() as (server, port):
        before = cpu_seconds(server.pid)
        asyncio.run(publish(f"nats://127.0.0.1:{port}", mode, messages, rate))
        spent = cpu_seconds(server.pid) - before
    return {
        "mode": mode,
        "messages": messages,
        "rate": rate,
        "nats_cpu_s": round(spent, 3),
        "nats_cpu_us_per_message": round(spent / messages * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument(
        "--modes", default="core,file,memory,file+consumer,file+republish"
    )
    args = parser.parse_args()
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            print(json.dumps(run(mode, args.messages, args.rate)), flush=True)


if __name__ == "__main__":
    main()
