#!/usr/bin/env python3
"""How nats-server's memory grows with the JetStream API requests a node makes about its topics.

Starts a fresh nats-server (JetStream on, from PATH) for every run, creates
--topics topic streams (`SSE_t<i>`, subjects `sse.t<i>` and `sse.t<i>.>`),
with one 100-byte message each if --with-message, waits --settle seconds,
and then makes rounds of requests, reading the server's RSS from /proc after
each round:

  info    one STREAM.INFO per stream (a feed starting, or a dozing feed's look)
  list    one full STREAM.LIST, page by page (a node's listing of its topics)
  names   one STREAM.NAMES (a node's relisting when few feeds run)
  next    one direct get per stream of its first message past the last
          (none: the answer is 404), what a look at a whole topic could ask
  last    one direct get per stream of the last message of its subject
          `sse.t<i>.x`, what a path feed's look asks
  wait    nothing for 10 s

One JSON line per run on stdout, with the RSS in KiB at the start and after
each round, and the server's CPU seconds (utime + stime) each round took. Needs `pip install nats-py`.

    python3 bench/nats/api_memory.py --with-message --rounds info*10,wait
"""

import argparse
import asyncio
import json

import nats
from per_message import add_topic_streams, cpu_seconds, nats_server


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def expand(rounds: str) -> list[str]:
    steps = []
    for item in rounds.split(","):
        name, _, times = item.partition("*")
        steps += [name] * int(times or 1)
    return steps


async def measure(port: int, pid: int, args: argparse.Namespace) -> dict:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    await add_topic_streams(
        js, args.topics, (lambda i: f"sse.t{i}.x") if args.with_message else None
    )
    await asyncio.sleep(args.settle)
    result = {
        "topics": args.topics,
        "with_message": args.with_message,
        "start_kib": rss_kib(pid),
        "rounds": [],
    }
    for step in expand(args.rounds):
        cpu_before = cpu_seconds(pid)
        if step == "info":
            for i in range(args.topics):
                await js.stream_info(f"SSE_t{i}")
        elif step == "list":
            offset = 0
            while offset < args.topics:
                page = await js.streams_info(offset)
                if not page:
                    break
                offset += len(page)
        elif step == "names":
            await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=10)
        elif step in ("next", "last"):
            for i in range(args.topics):
                request = (
                    {"seq": 2, "next_by_subj": ">"} if step == "next" else {"last_by_subj": f"sse.t{i}.x"}
                )
                await nc.request(f"$JS.API.DIRECT.GET.SSE_t{i}", json.dumps(request).encode(), timeout=10)
        elif step == "wait":
            await asyncio.sleep(10)
        else:
            raise SystemExit(f"unknown round {step!r}")
        result["rounds"].append([step, rss_kib(pid), round(cpu_seconds(pid) - cpu_before, 2)])
    await nc.close()
    return result


def run(args: argparse.Namespace) -> dict:
    with nats_server() as (server, port):
        return asyncio.run(measure(port, server.pid, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--with-message", action="store_true")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--rounds", default="info*10,wait")
    args = parser.parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
