"""`scripts/cluster`: the local cluster for people.

    scripts/cluster [--nodes N] [--keep] [--allow-origin URL …]
                                              start everything, Ctrl-C stops it
    scripts/cluster publish SUBJECT DATA [--event NAME]
                                              publish to the running cluster

The running cluster's addresses are written to `.cluster/cluster.json` so
`publish` (and anyone else) can find them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .harness import REPO, Cluster, Fatal

# Where a running cluster says where it is: `.cluster/`, or SSE_CLUSTER_DIR
# (a test's own folder, so that it never touches a cluster someone runs).
STATE_DIR = Path(os.environ.get("SSE_CLUSTER_DIR") or REPO / ".cluster")
STATE = STATE_DIR / "cluster.json"
# Settings for `ssectl` while the cluster runs (SSECTL_CONFIG).
SSECTL_CONFIG = STATE_DIR / "ssectl.toml"
# The HS256 secret the nodes verify tokens of private topics with, and
# `ssectl token mint` signs them with (SSECTL_HS256_SECRET_FILE).
JWT_SECRET = STATE_DIR / "jwt-hs256.secret"
TOPIC = "demo"


def _admin_create_topic(c: Cluster, name: str, replicas: int) -> str | None:
    """Create the topic through admin; returns an error text, None when done."""
    req = urllib.request.Request(
        f"{c.admin_url}/v1/topics",
        data=json.dumps({"name": name, "replicas": replicas}).encode(),
        headers={"Authorization": f"Bearer {c.admin_token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10):
            return None
    except urllib.error.HTTPError as e:
        if e.code == 409:  # already there
            return None
        return f"HTTP {e.code}: {e.read()[:300]!r}"
    except OSError as e:
        return str(e)


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (a secret, a token), anew."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _shown(path: Path) -> Path:
    """The path as the README's commands, run from the repository, name it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _origin_problem(origin: str) -> str | None:
    """Why `origin` is not an origin as browsers send it, if it is not."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        return str(e)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        return "an origin is scheme://host[:port], nothing after it, e.g. http://localhost:3000"
    return None


def start(args: argparse.Namespace) -> int:
    # Browsers send an origin without a trailing slash; people often add one.
    args.allow_origin = [origin.rstrip("/") for origin in args.allow_origin]
    for origin in args.allow_origin:
        if (problem := _origin_problem(origin)) is not None:
            print(f"--allow-origin {origin!r}: {problem}", file=sys.stderr)
            return 2
    STATE.parent.mkdir(parents=True, exist_ok=True)
    workdir = STATE.parent / time.strftime("run-%Y%m%d-%H%M%S")
    # A fresh secret per cluster, readable by its owner only.
    _write_private(JWT_SECRET, secrets.token_hex(32))
    node_env = {"SSE_AUTH__JWT__HS256_SECRET_FILE": str(JWT_SECRET)}
    if args.allow_origin:
        # Browsers' EventSource from these origins, with the token cookie.
        node_env["SSE_CORS__ALLOWED_ORIGINS"] = json.dumps(args.allow_origin)
        node_env["SSE_CORS__ALLOW_CREDENTIALS"] = "true"
    c = Cluster(nodes=args.nodes, max_nodes=args.nodes, workdir=str(workdir), keep=args.keep, node_env=node_env)
    if c.node_bin is None:
        JWT_SECRET.unlink(missing_ok=True)
        print("no sse-node binary: run `cargo build -p sse-node`", file=sys.stderr)
        return 1
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    # Until everything is up, Ctrl-C interrupts start-up (and `finally` cleans
    # up); SIGTERM kills us and the children die with us (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        print("starting NATS (3 servers), nodes, admin and HAProxy…", flush=True)
        try:
            c.start()
        except Fatal as e:
            # A process that could not start says why in its log's tail.
            print(f"\ncould not start the cluster: {e}", file=sys.stderr)
            return 1
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        how = "admin"
        err = _admin_create_topic(c, TOPIC, 3) if "admin" in c.procs else "no admin"
        if err is not None:
            if "admin" in c.procs:
                print(f"admin could not create the topic ({err}); creating the stream directly")
            c.create_topic(TOPIC, 3)
            how = "JetStream"
        state = {
            "lb": c.lb_url,
            "events": f"{c.lb_url}/v1/events?topic={TOPIC}",
            "admin": c.admin_url if "admin" in c.procs else None,
            "admin_token": c.admin_token if "admin" in c.procs else None,
            "nats": c.nats_urls,
            "nodes": {n: f"http://127.0.0.1:{c.node_port(n)}" for n in c.running_nodes()},
            "haproxy_stats": f"http://127.0.0.1:{c.stats_port}/stats",
            "logs": str(c.dir),
        }
        STATE.write_text(json.dumps(state, indent=2))
        print()
        print(c.describe())
        print(f"\ntopic '{TOPIC}' (3 replicas) created through {how}\n")
        ssectl = (REPO / "target" / "debug" / "ssectl").relative_to(REPO)
        # It holds admin's token.
        _write_private(
            SSECTL_CONFIG,
            f'url = "{c.lb_url}"\n'
            + (f'admin_url = "{c.admin_url}"\nadmin_token = "{c.admin_token}"\n' if state["admin"] else ""),
        )
        print("ssectl (built by scripts/cluster) finds this cluster with:")
        print(f"  export SSECTL_CONFIG={_shown(SSECTL_CONFIG)}")
        print("subscribe:")
        print(f"  {ssectl} tail {TOPIC}")
        if state["admin"]:
            print("publish:")
            print(f"  {ssectl} pub {TOPIC} 'hello' --event greeting")
            print("topics, nodes:")
            print(f"  {ssectl} topic ls")
            print(f"  {ssectl} status")
        else:
            print("publish:")
            print(f"  scripts/cluster publish {TOPIC} 'hello' --event greeting")
        print("the HTTP API directly:")
        print(f"  curl -N '{state['events']}'")
        if state["admin"]:
            print("a private topic, read with a token:")
            print(f"  {ssectl} topic create secret --private")
            print(f"  export SSECTL_HS256_SECRET_FILE={_shown(JWT_SECRET)}")
            print(f"  {ssectl} tail secret --token \"$({ssectl} token mint --sub alice --grant 'secret' --ttl 1h)\"")
        if args.allow_origin:
            print(f"browsers may open streams from: {', '.join(args.allow_origin)} (with credentials, so the sse_token cookie too)")
        print("\nCtrl-C stops everything.", flush=True)
        reported: set[str] = set()
        while not stop["now"]:
            for name, p in c.procs.items():
                if p.incarnation and not p.running() and name not in reported:
                    reported.add(name)
                    print(f"{name} exited ({p.popen.returncode}); log: {p.log}", flush=True)
            time.sleep(0.5)
        print("\nstopping…", flush=True)
        return 0
    finally:
        c.close()
        STATE.unlink(missing_ok=True)
        SSECTL_CONFIG.unlink(missing_ok=True)
        JWT_SECRET.unlink(missing_ok=True)
        try:
            STATE.parent.rmdir()  # only when empty (--keep leaves the run folder)
        except OSError:
            pass


def publish(args: argparse.Namespace) -> int:
    if not STATE.exists():
        print("no running cluster (start one with scripts/cluster)", file=sys.stderr)
        return 1
    state = json.loads(STATE.read_text())

    async def go():
        import nats

        nc = await nats.connect(servers=state["nats"], connect_timeout=2)
        try:
            headers = {"Sse-Event": args.event} if args.event else None
            ack = await nc.jetstream(timeout=5).publish(f"sse.{args.subject}", args.data.encode(), headers=headers)
            print(f"published: stream {ack.stream} seq {ack.seq}")
        finally:
            await nc.close()

    asyncio.run(go())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/cluster", description="A local sse-cluster on loopback.")
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--nodes", type=int, default=3, help="sse-node processes (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep logs and data under .cluster/ after stopping")
    ap.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a web app's origin (e.g. http://localhost:3000) whose pages may open streams, with cookies; repeatable",
    )
    pub = sub.add_parser("publish", help="publish one event to the running cluster")
    pub.add_argument("subject", help="subject path, e.g. demo or demo.room1")
    pub.add_argument("data")
    pub.add_argument("--event", help="SSE event name")
    args = ap.parse_args(argv)
    try:
        return publish(args) if args.cmd == "publish" else start(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
