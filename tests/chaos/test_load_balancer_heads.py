"""The shipped HAProxy passes a request head as large as a node accepts, so
that a head over the node's limit gets the node's JSON 431, not HAProxy's
HTML 400."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.needs_node]

# A node's `http.max_header_bytes` by default.
NODE_MAX_HEAD = 16384


def _get(url: str, filler: int, fields: int = 0) -> tuple[int, str, str]:
    """GET `url` with a header of `filler` bytes and `fields` more small ones."""
    headers = {"X-Filler": "x" * filler, **{f"X-Field-{i}": "1" for i in range(fields)}}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


@pytest.mark.timeout(90)
def test_heads_up_to_the_node_limit_pass_and_larger_ones_get_its_json_431(node_binary, cluster_factory, topic):
    c = cluster_factory(nodes=1, nats_servers=1, topics=[(topic, 1)])
    # Just under the node's limit, request line and other headers included:
    # HAProxy's default 16 KiB buffer, less its rewrite reserve, refused it.
    status, _, body = _get(f"{c.lb_url}/healthz", NODE_MAX_HEAD - 1024)
    assert status == 200, body
    status, content_type, body = _get(f"{c.lb_url}/v1/events?topic={topic}", NODE_MAX_HEAD + 1024)
    assert status == 431, body
    assert content_type.startswith("application/json"), content_type
    assert json.loads(body)["error"] == "request_head_too_large", body
    # More fields than a node takes (64), and more than HAProxy's default
    # of 101: the node's JSON 431 too.
    status, content_type, body = _get(f"{c.lb_url}/v1/events?topic={topic}", 1, fields=150)
    assert status == 431, body
    assert content_type.startswith("application/json"), content_type
    assert json.loads(body)["error"] == "request_head_too_large", body
