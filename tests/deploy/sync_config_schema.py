#!/usr/bin/env python3
"""Rewrites the `node.config` and `admin.config` parts of
helm/sse-cluster/values.schema.json from node/config.default.toml and
admin/config.default.toml, so `helm install` refuses unknown or mistyped
config keys exactly as the binaries would.

Run it after adding, renaming or removing a config key:

    python3 tests/deploy/sync_config_schema.py

tests/deploy/test_deploy_helm.py fails until the two agree.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "helm" / "sse-cluster" / "values.schema.json"

# Keys whose values are constrained beyond their TOML type: (section, key)
# for both services, (component, section, key) for one.
SPECIAL = {
    ("log", "format"): {"type": "string", "enum": ["text", "json"]},
    ("http", "listen"): {"type": "string", "pattern": "^.+:[0-9]{1,5}$"},
    ("nats", "url"): {"type": "string", "pattern": "^(nats|tls)://"},
}

# The bounds each binary's config check enforces on one key alone
# (node/src/config.rs, admin/src/config.rs: "must be at least 1", "1 to 3600",
# "at most ..."), as (minimum, maximum); None: no maximum. Integers not
# listed may be anything from 0. Rules between keys (idle_timeout_seconds
# above heartbeat_seconds, node_ttl_seconds above report_seconds) stay the
# binaries' own. Keep these equal to what the binaries accept.
HUNDRED_YEARS = 100 * 365 * 24 * 3600  # node: MAX_DURATION_SECONDS, every duration
U32_MAX = 2**32 - 1
BOUNDS = {
    "node": {
        ("nats", "topic_refresh_seconds"): (1, HUNDRED_YEARS),
        ("nats", "ping_interval_seconds"): (1, HUNDRED_YEARS),
        ("http", "heartbeat_seconds"): (1, HUNDRED_YEARS),
        ("http", "retry_ms"): (0, 3_600_000),
        ("http", "retry_jitter_ms"): (0, 3_600_000),
        ("http", "max_connections"): (1, None),
        ("http", "max_topics_per_connection"): (1, None),
        ("http", "max_last_event_id_bytes"): (32, None),
        ("http", "max_connection_lifetime_seconds"): (0, HUNDRED_YEARS),
        ("http", "max_header_bytes"): (8192, 1 << 20),
        ("http", "max_headers"): (8, 1024),
        ("http", "header_read_timeout_seconds"): (1, 3600),
        # 0 (none) or above heartbeat_seconds, and at most a week.
        ("http", "idle_timeout_seconds"): (0, 7 * 24 * 3600),
        ("http", "h2_max_concurrent_streams"): (1, U32_MAX),
        ("http", "max_connections_per_ip_per_minute"): (0, U32_MAX),
        ("history", "max_concurrent_jetstream_reads"): (1, 1 << 16),
        ("delivery", "client_queue_events"): (16, 1 << 20),
        ("delivery", "max_unsent_bytes"): (16384, U32_MAX),
        ("delivery", "path_queue_events"): (16, 1 << 20),
        ("delivery", "max_event_bytes"): (1, None),
        ("delivery", "write_pacing_ms"): (0, 1000),
        ("delivery", "write_stall_seconds"): (1, HUNDRED_YEARS),
        ("delivery", "no_progress_seconds"): (1, HUNDRED_YEARS),
        ("delivery", "feed_linger_seconds"): (0, HUNDRED_YEARS),
        ("delivery", "feed_doze_seconds"): (0, HUNDRED_YEARS),
        ("delivery", "feed_direct_doze_seconds"): (0, HUNDRED_YEARS),
        ("cluster", "nodes_bucket_replicas"): (1, 5),
        ("cluster", "report_seconds"): (1, HUNDRED_YEARS),
        # Above report_seconds, itself at least 1.
        ("cluster", "node_ttl_seconds"): (2, HUNDRED_YEARS),
        ("shutdown", "drain_seconds"): (0, 3600),
        ("auth.jwt", "leeway_seconds"): (0, 600),
        ("cors", "max_age_seconds"): (0, HUNDRED_YEARS),
        ("tls", "handshake_timeout_seconds"): (1, 3600),
    },
    "admin": {
        ("nats", "request_timeout_ms"): (1, 120_000),
        ("nats", "ping_interval_seconds"): (1, 3600),
        ("admin", "max_event_bytes"): (1, 64 * 1024 * 1024),
        ("admin", "dashboard_interval_ms"): (100, 60_000),
        ("admin", "max_dashboard_streams"): (1, None),
        ("admin", "topic_max_consumers"): (0, 2**31 - 1),
        ("cluster", "nodes_bucket_replicas"): (1, 5),
        ("cluster", "node_ttl_seconds"): (1, 3600),
    },
}
for component, bounds in BOUNDS.items():
    for (section, key), (low, high) in bounds.items():
        SPECIAL[(component, section, key)] = {"type": "integer", "minimum": low,
                                              **({"maximum": high} if high is not None else {})}

# Never in a ConfigMap: these come from the Secret.
SECRET_KEYS = {("admin", "token"), ("admin", "publish_token"), ("auth.jwt", "hs256_secret")}


def key_schema(component: str, section: str, key: str, value) -> dict:
    if (component, section, key) in SPECIAL:
        return SPECIAL[(component, section, key)]
    if (section, key) in SPECIAL:
        return SPECIAL[(section, key)]
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "minimum": 0}
    if isinstance(value, float):
        return {"type": "number", "minimum": 0}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        # A sub-table such as [auth.jwt]: its keys, named `<section>.<table>`.
        return table_schema(component, f"{section}.{key}", value)
    return {"type": "string"}


def table_schema(component: str, section: str, keys: dict) -> dict:
    props = {k: key_schema(component, section, k, v) for k, v in keys.items() if (section, k) not in SECRET_KEYS}
    return {"type": "object", "additionalProperties": False, "properties": props}


def config_schema(component: str, defaults: dict, description: str) -> dict:
    sections = {section: table_schema(component, section, keys) for section, keys in defaults.items()}
    return {"type": "object", "description": description, "additionalProperties": False, "properties": sections}


def expected(component: str) -> dict | None:
    path = ROOT / component / "config.default.toml"
    if not path.exists():
        return None
    return config_schema(component, tomllib.loads(path.read_text()),
                         f"sse-{component} configuration (keys of {component}/config.default.toml)"
                         + ("; the token comes from the Secret" if component == "admin"
                            else "; the HS256 secret comes from secrets.jwtKeys, as hs256_secret_file"))


def main() -> None:
    schema = json.loads(SCHEMA.read_text())
    for component in ("node", "admin"):
        generated = expected(component)
        if generated is not None:
            schema["properties"][component]["properties"]["config"] = generated
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    main()
