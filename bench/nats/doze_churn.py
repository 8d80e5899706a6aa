#!/usr/bin/env python3
"""What dozing feeds cost a NATS cluster when their topics wake them often.

A feed that reads no event for `delivery.feed_doze_seconds` lets its consumer
go, and makes a new one at the topic's next event. In a NATS cluster a
consumer's creation and deletion go through the meta leader, so a topic with an
event a little less often than the doze time costs a consumer created and
deleted per event. This starts three nats-servers in a cluster (the test
harness's, `tests/cluster/harness.py`) and one sse-node (SSE_NODE_BIN, default
target/debug/sse-node), creates --topics topics of three replicas, opens one
event stream per topic on the node, and publishes one event to each topic every
--period seconds, spread evenly (with --burst N, N events at once). After a
warm-up it counts, over --window seconds, the CPU of the three nats-servers
and of the node, times each event from its publish to the client, and checks
that every stream got every event once, in order. Latencies are of the events
published in the window. One JSON line on stdout.

    python3 bench/nats/doze_churn.py --doze 2 --period 5
    python3 bench/nats/doze_churn.py --doze 0 --period 5
    python3 bench/nats/doze_churn.py --doze 120 --period 15 --burst 30
"""
import argparse
import asyncio
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cluster.harness import Cluster, metric_sum  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def paced(until: float, step: float, send) -> None:
    """Awaits `send(i)` for i = 0, 1, ..., one every `step` seconds from now
    on, until monotonic time `until`."""
    i = 0
    start = time.monotonic()
    while time.monotonic() < until:
        await send(i)
        i += 1
        await asyncio.sleep(max(0.0, start + i * step - time.monotonic()))


async def read_stream(port: int, topic: str, got: list[int], ready: asyncio.Event, arrived: dict[int, float]) -> None:
    """Appends each event's sequence (from its id) to `got`, and notes when
    it arrived in `arrived`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/events?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{topic}: {head[:80]!r}")
    ready.set()
    buf = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                lines = frame.split(b"\n")
                # The id-only frame after the headers carries no event.
                if not any(line.startswith(b"data:") for line in lines):
                    continue
                for line in lines:
                    if line.startswith(b"id: "):
                        # <topic>:<epoch>:<seq>
                        seq = int(line.rsplit(b":", 1)[1])
                        got.append(seq)
                        arrived.setdefault(seq, time.monotonic())
    finally:
        writer.close()


async def open_streams(
    port: int, names: list[str], arrived: dict[str, dict[int, float]] | None = None
) -> tuple[dict[str, list[int]], list[asyncio.Task]]:
    """Opens one event stream per topic (or path) in `names` on the node at
    `port`, and returns, once every one is open, the sequences each has got
    (filled in as they come) and the reading tasks. When `arrived` is given,
    each event's arrival time is noted there, by name and sequence."""
    got: dict[str, list[int]] = {n: [] for n in names}
    times = arrived if arrived is not None else {}
    for n in names:
        times.setdefault(n, {})
    readies = {n: asyncio.Event() for n in names}
    readers = [asyncio.create_task(read_stream(port, n, got[n], readies[n], times[n])) for n in names]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies.values())), 60)
    return got, readers


async def check_streams(published: dict[str, list[int]], got: dict[str, list[int]], readers: list[asyncio.Task]) -> dict:
    """Waits up to 30 s for the last events to reach every stream, stops the
    readers, and counts what was lost, duplicated or out of order."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(got[n]) < len(published[n]) for n in published):
        await asyncio.sleep(0.2)
    for r in readers:
        r.cancel()
    lost = sum(len(set(published[n]) - set(got[n])) for n in published)
    dups = sum(len(got[n]) - len(set(got[n])) for n in published)
    out_of_order = sum(1 for n in published if got[n] != sorted(got[n]))
    return {
        "lost": lost,
        "dups": dups,
        "streams_out_of_order": out_of_order,
        "ok": lost == 0 and dups == 0 and out_of_order == 0,
    }


async def run(args) -> dict:
    env = {"SSE_DELIVERY__FEED_DOZE_SECONDS": str(args.doze)}
    if args.direct_doze is not None:
        env["SSE_DELIVERY__FEED_DIRECT_DOZE_SECONDS"] = str(args.direct_doze)
    cluster = Cluster(nodes=1, node_env=env, with_admin=False)
    topics = [f"churn{i}" for i in range(args.topics)]
    try:
        cluster.start(topics=[(t, 3) for t in topics], timeout=120)
        port = cluster.node_port("node0")

        import nats

        nc = await nats.connect(servers=cluster.nats_urls)
        js = nc.jetstream(timeout=10)
        if args.started_busy:
            # A recent event: each feed starts with a consumer, not dozing.
            await asyncio.gather(*(js.publish(f"sse.{t}", b"before") for t in topics))
        arrived: dict[str, dict[int, float]] = {}
        got, readers = await open_streams(port, topics, arrived)
        sent: dict[str, dict[int, float]] = {t: {} for t in topics}
        published = {t: [] for t in topics}
        stop = time.monotonic() + args.warmup + args.window
        window: dict[str, float] = {}

        async def publish_one(i: int) -> None:
            t = topics[i % len(topics)]
            at = time.monotonic()
            acks = await asyncio.gather(*(js.publish(f"sse.{t}", b"x") for _ in range(args.burst)))
            for ack in acks:
                published[t].append(ack.seq)
                sent[t][ack.seq] = at

        async def publisher() -> None:
            await paced(stop, args.period / len(topics), publish_one)

        created = 0

        async def on_created(_msg) -> None:
            nonlocal created
            created += 1

        async def measure() -> None:
            await asyncio.sleep(args.warmup)
            # JetStream's own advisories count the consumers made.
            sub = await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>", cb=on_created)
            procs = {n: cluster.procs[n].pid for n in ("nats0", "nats1", "nats2", "node0")}
            m0 = cluster.metrics("node0") or {}
            before = {n: cpu_seconds(p) for n, p in procs.items()}
            window["started"] = time.monotonic()
            await asyncio.sleep(args.window)
            after = {n: cpu_seconds(p) for n, p in procs.items()}
            await sub.unsubscribe()
            m1 = cluster.metrics("node0") or {}
            window.update({n: round(after[n] - before[n], 2) for n in procs})
            window["dozing_at_end"] = metric_sum(m1, "sse_feeds_dozing")
            window["direct_reads"] = metric_sum(m1, "sse_feed_direct_reads_total") - metric_sum(
                m0, "sse_feed_direct_reads_total"
            )

        await asyncio.gather(publisher(), measure())
        await nc.close()
        checked = await check_streams(published, got, readers)
        events = sum(len(p) for p in published.values())
        # Only events published in the window: the warm-up's first bursts
        # wake every feed, which the window is there to leave out.
        lags = sorted(
            (arrived[t][seq] - at) * 1000
            for t in topics
            for seq, at in sent[t].items()
            if seq in arrived[t] and at >= window["started"]
        )

        def pct(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else None

        nats_cpu = round(window["nats0"] + window["nats1"] + window["nats2"], 2)
        return {
            "doze_s": args.doze,
            "topics": args.topics,
            "period_s": args.period,
            "burst": args.burst,
            "direct_doze_s": args.direct_doze,
            "started_busy": args.started_busy,
            "window_s": args.window,
            "events": events,
            "events_in_window": round(args.topics * args.window / args.period),
            "nats_cpu_s": nats_cpu,
            "nats_cpu_by_server": [window["nats0"], window["nats1"], window["nats2"]],
            "node_cpu_s": window["node0"],
            "consumers_created_in_window": created,
            "dozing_at_end": int(window["dozing_at_end"]),
            "direct_reads_in_window": int(window["direct_reads"]),
            "events_timed": len(lags),
            "latency_p50_ms": pct(0.5),
            "latency_p99_ms": pct(0.99),
            "latency_max_ms": round(lags[-1], 1) if lags else None,
            **checked,
        }
    finally:
        cluster.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doze", type=int, default=2, help="delivery.feed_doze_seconds (0: never)")
    p.add_argument("--topics", type=int, default=100)
    p.add_argument("--period", type=float, default=5.0, help="seconds between two events (or bursts) of a topic")
    p.add_argument("--burst", type=int, default=1, help="events published at once to a topic at its turn")
    p.add_argument("--direct-doze", type=int, default=None, help="delivery.feed_direct_doze_seconds (default: the node's)")
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument(
        "--started-busy",
        action="store_true",
        help="publish an event to each topic before the streams open, so that feeds start with a consumer",
    )
    args = p.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
