"""`scripts/cluster`, the README's first command, run as a new user runs it:
it starts a cluster, the commands it prints work against it, and Ctrl-C
stops every process it started."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cluster.harness import REPO, run_async
from cluster.sse import SseClient

READY = "Ctrl-C stops everything."
# A web app's origin, as a team developing one would allow it.
ORIGIN = "http://app.localhost:3000"


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The name (field 2) may hold spaces; the parent follows its ')'.
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _Output:
    """The script's output, read line by line on a thread of its own."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ended = threading.Event()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == READY:
                self.ready.set()
        self.ended.set()

    def text(self) -> str:
        return "\n".join(self.lines[-60:])


@pytest.mark.needs_node
@pytest.mark.timeout(240)
def test_the_cluster_script_starts_a_cluster_its_printed_commands_use_and_ctrl_c_stops(tmp_path: Path):
    state_dir = tmp_path / "state"
    env = dict(os.environ, SSE_CLUSTER_DIR=str(state_dir))
    script = subprocess.Popen(
        ["scripts/cluster", "--nodes", "2", "--allow-origin", ORIGIN],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, which Ctrl-C in a terminal signals whole.
        start_new_session=True,
    )
    out = _Output(script.stdout)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not out.ready.is_set():
            assert script.poll() is None, f"scripts/cluster exited ({script.returncode}):\n{out.text()}"
            assert time.monotonic() < deadline, f"scripts/cluster not ready in 180 s:\n{out.text()}"
            out.ready.wait(0.5)
        started = _descendants(script.pid)
        assert len(started) >= 6, f"3 NATS servers, 2 nodes and HAProxy at least: {started}"

        state = json.loads((state_dir / "cluster.json").read_text())
        printed = "\n".join(out.lines)
        assert f"export SSECTL_CONFIG={state_dir / 'ssectl.toml'}" in printed
        assert (state_dir / "ssectl.toml").stat().st_mode & 0o077 == 0, "admin's token is readable by others"
        assert "target/debug/ssectl tail demo" in printed
        assert f"curl -N '{state['events']}'" in printed
        assert set(state["nodes"]) == {"node0", "node1"}

        ssectl = REPO / "target" / "debug" / "ssectl"
        ssectl_env = dict(env, SSECTL_CONFIG=str(state_dir / "ssectl.toml"))
        lb_port = int(state["lb"].rsplit(":", 1)[1])

        async def go():
            got = []
            stop = asyncio.Event()
            client = SseClient("c0", lb_port, "/v1/events?topic=demo", on_event=lambda cl, ev: got.append(ev))
            task = asyncio.create_task(client.run(stop))
            try:
                # Subscribed once the stream's first id-only frame is in.
                await _until(lambda: client.parser.last_event_id, 30, "no stream through the load balancer")
                published = await asyncio.to_thread(
                    subprocess.run,
                    [str(ssectl), "pub", "demo", "hello", "--event", "greeting"],
                    env=ssectl_env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert published.returncode == 0, published.stderr
                await _until(lambda: got, 15, "the event published with ssectl never came")
                by_script = await asyncio.to_thread(
                    subprocess.run,
                    ["scripts/cluster", "publish", "demo", "second"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert by_script.returncode == 0, by_script.stderr
                await _until(lambda: len(got) >= 2, 15, "the event published with scripts/cluster never came")
            finally:
                stop.set()
                await task
            return published.stdout.strip(), got

        id_printed, got = run_async(go())
        assert [(e.type, e.data) for e in got] == [("greeting", "hello"), ("message", "second")]
        assert got[0].id == id_printed.splitlines()[-1]
        assert got[0].id.startswith("demo:") and got[0].id.endswith(":1")
        assert got[1].id.startswith("demo:") and got[1].id.endswith(":2")

        # A private topic, as printed: created with ssectl, read with a
        # token it mints with the cluster's secret, here as a browser of
        # the allowed origin sends it, in the cookie.
        secret_line = next(line for line in out.lines if "export SSECTL_HS256_SECRET_FILE=" in line)
        secret_file = secret_line.split("=", 1)[1].strip()
        assert Path(secret_file).stat().st_mode & 0o077 == 0, "the secret is readable by others"
        token_env = dict(ssectl_env, SSECTL_HS256_SECRET_FILE=secret_file)
        for argv in (["topic", "create", "secret", "--private"], ["token", "mint", "--sub", "alice", "--grant", "secret", "--ttl", "1h"]):
            done = subprocess.run([str(ssectl), *argv], env=token_env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, f"ssectl {argv}: {done.stderr}"
        token = done.stdout.strip()
        # A topic on all three NATS servers, as the README makes one: its
        # placement is shown settled, not a follower "unreachable" in the
        # moment after the stream was made.
        made = subprocess.run(
            [str(ssectl), "topic", "create", "orders", "--replicas", "3", "--max-age", "7d"],
            env=ssectl_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert made.returncode == 0, made.stderr
        placement = next(line for line in made.stdout.splitlines() if line.startswith("placement"))
        assert placement.endswith("leads, 2 current"), made.stdout
        status, headers = _stream_head(lb_port, "/v1/events?topic=secret", {"Origin": ORIGIN})
        assert status == 401, (status, headers)
        status, headers = _stream_head(lb_port, "/v1/events?topic=secret", {"Origin": ORIGIN, "Cookie": f"sse_token={token}"})
        assert status == 200, (status, headers)
        assert headers.get("access-control-allow-origin") == ORIGIN, headers
        assert headers.get("access-control-allow-credentials") == "true", headers

        os.killpg(script.pid, signal.SIGINT)
        assert script.wait(timeout=60) == 0, out.text()
        assert out.ended.wait(10)
        assert "stopping…" in out.lines
        assert not (state_dir / "cluster.json").exists()
        assert not state_dir.exists(), f"left behind: {list(state_dir.iterdir())}"
        # The cluster's processes are gone, not left behind as orphans.
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if _alive(pid)], "processes outlived scripts/cluster"
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGTERM)
            try:
                script.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()



@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_cluster_script_prints_its_usage_without_installing_or_building(flag: str):
    """Asked for help, the script answers at once: it neither installs what
    the cluster needs nor builds the binaries first."""
    # `bash -x` shows each command the script runs.
    done = subprocess.run(
        ["bash", "-x", "scripts/cluster", flag],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: scripts/cluster"), done.stdout
    assert "--allow-origin" in done.stdout and "publish" in done.stdout, done.stdout
    ran = [line for line in done.stderr.splitlines() if line.startswith("+")]
    assert not [line for line in ran if "install-deps" in line or "cargo " in line], "\n".join(ran)

def _stream_head(port: int, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The status and headers of a stream's answer; the stream is then closed."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


async def _until(cond, seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.05)
