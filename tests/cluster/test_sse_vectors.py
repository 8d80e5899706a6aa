"""The shared event-stream vectors (protocol/tests/vectors/event_stream.json)
through the Python tests' parser, `cluster.sse.SseParser`. The Rust parser in
protocol/src/event_stream.rs reads the same file
(protocol/tests/event_stream_vectors.rs), so the two cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.sse import SseParser

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "tests" / "vectors" / "event_stream.json"
CASES = json.loads(VECTORS.read_text())["cases"]


def parse(body: bytes, chunk: int | None = None) -> list[dict]:
    p = SseParser()
    pieces = [body] if chunk is None else [body[i : i + chunk] for i in range(0, len(body), chunk)]
    events = [ev for piece in pieces for ev in p.feed(piece)]
    # A body ending in a lone CR waits for a possible LF; the end settles it.
    events += p.feed(b"\n") if body.endswith(b"\r") else []
    return [{"event": e.type, "data": e.data, "id": e.id} for e in events]


def test_the_vector_file_has_cases():
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case):
    body = case["body"].encode()
    assert parse(body) == case["events"]
    # Byte by byte, as a slow network would hand it over.
    assert parse(body, chunk=1) == case["events"]
