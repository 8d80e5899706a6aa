"""Resumes of mid-sized events at once on one node: peak RSS, NATS
reconnects, time taken, and whether every client got every event once.

One nats-server and one node (tests/cluster's harness), N_EVENTS events of
8-32 KiB on one topic, then N_CLIENTS resumes at once straight on the node:
five from the topic's start, the rest from its second half, each resuming
again (Last-Event-ID) when its stream ends, as a browser does. Prints one
JSON line.

    SSE_NODE_BIN=target/release/sse-node python3 bench/large_resumes.py LABEL
"""
import asyncio, os, random, sys, time, json, re
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster.harness import Cluster, LOOPBACK

LABEL = sys.argv[1]
N_EVENTS = int(os.environ.get("N_EVENTS", 4000))
N_CLIENTS = int(os.environ.get("N_CLIENTS", 30))
TOPIC = "cu"


async def publish(urls):
    import nats
    nc = await nats.connect(servers=urls, pending_size=256 * 1024 * 1024)
    js = nc.jetstream(timeout=30)
    random.seed(1)
    pending = []
    total = 0
    for k in range(N_EVENTS):
        n = random.randint(8192, 32768)
        total += n
        pending.append(js.publish(f"sse.{TOPIC}", (b"%d " % k) + b"p" * n, timeout=30))
        if len(pending) >= 200:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await nc.close()
    return total


async def client(port, epoch, start, results):
    last = f"{TOPIC}:{epoch}:{start}"
    seqs = []
    conns = 0
    while not seqs or seqs[-1] < N_EVENTS:
        conns += 1
        r, w = await asyncio.open_connection(LOOPBACK, port, limit=1 << 22)
        w.write(f"GET /v1/events?topic={TOPIC} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {last}\r\n\r\n".encode())
        buf = b""
        try:
            while True:
                b = await asyncio.wait_for(r.read(1 << 20), 30)
                if not b:
                    break
                buf += b
                while True:
                    i = buf.find(b"\n\n")
                    if i < 0:
                        break
                    frame, buf = buf[:i], buf[i + 2:]
                    m = re.search(rb"^id: ([^\n]*)$", frame, re.M)
                    if m and b"data:" in frame:
                        last = m.group(1).decode()
                        seqs.append(int(last.rsplit(":", 1)[1]))
                if seqs and seqs[-1] >= N_EVENTS:
                    break
        except asyncio.TimeoutError:
            pass
        w.close()
    exact = seqs == list(range(start + 1, N_EVENTS + 1))
    results.append((exact, conns))


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


async def main():
    c = Cluster(nodes=1, nats_servers=1)
    c.start(topics=[(TOPIC, 1)])
    try:
        total = await publish(c.nats_urls)
        import nats
        nc = await nats.connect(servers=c.nats_urls)
        info = await nc.jetstream().stream_info(f"SSE_{TOPIC}")
        await nc.close()
        # the epoch: base36 of creation ns, read from the node's first frame instead
        r, w = await asyncio.open_connection(LOOPBACK, c.node_port("node0"))
        w.write(f"GET /v1/events?topic={TOPIC} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\nid: " not in head or not head.endswith(b"\n\n"):
            head += await r.read(4096)
        w.close()
        epoch = re.search(rb"\nid: [^:]+:([^:]+):", head).group(1).decode()
        pid = c["node0"].pid
        base = rss(pid)
        results = []
        t0 = time.monotonic()
        tasks = [asyncio.create_task(client(c.node_port("node0"), epoch, 0 if i < 5 else random.randint(N_EVENTS // 2, N_EVENTS * 3 // 4), results)) for i in range(N_CLIENTS)]
        peak = base
        while not all(t.done() for t in tasks):
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.25)
            if time.monotonic() - t0 > 400:
                break
        took = time.monotonic() - t0
        m = c.metrics("node0") or {}
        log = (c.dir / "node0.log").read_text()
        print(json.dumps({
            "label": LABEL, "events": N_EVENTS, "bytes": total, "clients": N_CLIENTS,
            "exact": sum(1 for e, _ in results if e), "done": len(results),
            "connections": sum(n for _, n in results),
            "seconds": round(took, 1), "rss_base_kib": base, "rss_peak_kib": peak,
            "nats_reconnects": m.get("sse_nats_reconnects_total"),
            "disconnected_logs": log.count("disconnected from nats"),
            "stalled_logs": log.count("resume read stalled"),
        }))
    finally:
        c.close()


asyncio.run(main())
