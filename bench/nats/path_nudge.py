#!/usr/bin/env python3
"""What dozing path feeds of a busy topic cost a NATS cluster.

A dozing feed whose stream a topic listing finds past its head looks at
JetStream (one request), so that a publish its subscriptions missed is read a
listing late. A path feed's stream is its whole topic: while other paths of the
topic are busy, each listing (`nats.topic_refresh_seconds`) has every dozing
path feed of the topic look once. This measures that price.

Three nats-servers in a cluster (the test harness's, `tests/cluster/harness.py`)
and one sse-node (SSE_NODE_BIN, default target/debug/sse-node); one topic of
three replicas; --paths event streams, each of its own path of the topic (a path
feed each, below `delivery.max_path_feeds_per_topic`); one event to each of
those paths every --path-period seconds, spread evenly, so the path feeds doze
between them (--doze); and --busy-rate events a second to another path of the
topic that no stream reads. After a warm-up it counts, over --window seconds,
the CPU of the three nats-servers and of the node, and JetStream API requests
(the node's looks among them) from the servers' `/jsz` counters, and checks
that every stream got every event of its path once, in order. One JSON line on
stdout.

    SSE_NODE_BIN=<build> python3 bench/nats/path_nudge.py --paths 100 --busy-rate 10
"""
import argparse
import asyncio
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster.harness import Cluster, http_get, metric_sum  # noqa: E402
from doze_churn import check_streams, cpu_seconds, open_streams, paced  # noqa: E402


def api_requests(cluster: Cluster) -> int:
    """JetStream API requests the servers have handled so far."""
    total = 0
    for port in cluster.nats_http_ports:
        status, body = http_get(port, "/jsz")
        if status == 200:
            total += json.loads(body).get("api", {}).get("total", 0)
    return total


async def run(args) -> dict:
    env = {
        "SSE_DELIVERY__FEED_DOZE_SECONDS": str(args.doze),
        # A dozing feed's periodic look comes every max(doze, no_progress):
        # at the default doze (120 s) that is every two minutes.
        "SSE_DELIVERY__NO_PROGRESS_SECONDS": str(args.periodic_look),
        "SSE_NATS__TOPIC_REFRESH_SECONDS": str(args.listing),
    }
    cluster = Cluster(nodes=1, node_env=env, with_admin=False)
    paths = [f"users.p{i}" for i in range(args.paths)]
    try:
        cluster.start(topics=[("users", 3)], timeout=120)
        port = cluster.node_port("node0")
        got, readers = await open_streams(port, paths)

        import nats

        nc = await nats.connect(servers=cluster.nats_urls)
        js = nc.jetstream(timeout=10)
        published = {p: [] for p in paths}
        stop = time.monotonic() + args.warmup + args.window
        window: dict[str, float] = {}

        async def to_path(i: int) -> None:
            p = paths[i % len(paths)]
            ack = await js.publish(f"sse.{p}", b"x")
            published[p].append(ack.seq)

        async def to_busy_path(_i: int) -> None:
            await js.publish("sse.users.busy", b"y")

        async def to_paths() -> None:
            await paced(stop, args.path_period / len(paths), to_path)

        async def busy() -> None:
            if args.busy_rate > 0:
                await paced(stop, 1 / args.busy_rate, to_busy_path)

        counts = {"looks": 0, "consumers": 0}

        def counter(key: str):
            async def count(_msg) -> None:
                counts[key] += 1

            return count

        async def measure() -> None:
            await asyncio.sleep(args.warmup)
            # Copies of the node's requests for a path's last event (a
            # dozing path feed's look), and JetStream's own advisories of
            # the consumers made (a wake each).
            subs = [
                await nc.subscribe("$JS.API.STREAM.MSG.GET.SSE_users", cb=counter("looks")),
                await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>", cb=counter("consumers")),
            ]
            procs = {n: cluster.procs[n].pid for n in ("nats0", "nats1", "nats2", "node0")}
            before = {n: cpu_seconds(p) for n, p in procs.items()}
            api_before = await asyncio.to_thread(api_requests, cluster)
            dozing = []
            end = time.monotonic() + args.window
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                m = await asyncio.to_thread(cluster.metrics, "node0")
                dozing.append(metric_sum(m or {}, "sse_feeds_dozing"))
            after = {n: cpu_seconds(p) for n, p in procs.items()}
            api_after = await asyncio.to_thread(api_requests, cluster)
            for sub in subs:
                await sub.unsubscribe()
            window.update({n: round(after[n] - before[n], 2) for n in procs})
            window["api_requests"] = api_after - api_before
            window["dozing_mean"] = round(sum(dozing) / max(1, len(dozing)), 1)

        await asyncio.gather(to_paths(), busy(), measure())
        await nc.close()
        checked = await check_streams(published, got, readers)
        nats_cpu = round(window["nats0"] + window["nats1"] + window["nats2"], 2)
        return {
            "node_bin": os.environ.get("SSE_NODE_BIN", "target/debug/sse-node"),
            "doze_s": args.doze,
            "periodic_look_s": args.periodic_look,
            "listing_s": args.listing,
            "paths": args.paths,
            "path_period_s": args.path_period,
            "busy_rate": args.busy_rate,
            "window_s": args.window,
            "events_to_paths": sum(len(p) for p in published.values()),
            "nats_cpu_s": nats_cpu,
            "nats_cpu_by_server": [window["nats0"], window["nats1"], window["nats2"]],
            "node_cpu_s": window["node0"],
            "jetstream_api_requests_in_window": window["api_requests"],
            "path_looks_in_window": counts["looks"],
            "consumers_created_in_window": counts["consumers"],
            "path_feeds_dozing_mean": window["dozing_mean"],
            **checked,
        }
    finally:
        cluster.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doze", type=int, default=5, help="delivery.feed_doze_seconds (0: never)")
    p.add_argument("--periodic-look", type=int, default=120, help="delivery.no_progress_seconds, which sets the periodic look")
    p.add_argument("--listing", type=int, default=10, help="nats.topic_refresh_seconds (the test harness's is 2)")
    p.add_argument("--paths", type=int, default=100, help="streams, each of its own path")
    p.add_argument("--path-period", type=float, default=30.0, help="seconds between two events of a path")
    p.add_argument("--busy-rate", type=float, default=10.0, help="events a second to a path nobody reads")
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--window", type=float, default=60.0)
    args = p.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
