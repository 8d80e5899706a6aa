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

# Keys whose values are constrained beyond their TOML type.
SPECIAL = {
    ("log", "format"): {"type": "string", "enum": ["text", "json"]},
    ("http", "listen"): {"type": "string", "pattern": "^.+:[0-9]{1,5}$"},
    ("nats", "url"): {"type": "string", "pattern": "^(nats|tls)://"},
}
# Never in a ConfigMap: these come from the Secret.
SECRET_KEYS = {("admin", "token"), ("admin", "publish_token"), ("auth.jwt", "hs256_secret")}


def key_schema(section: str, key: str, value) -> dict:
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
        return table_schema(f"{section}.{key}", value)
    return {"type": "string"}


def table_schema(section: str, keys: dict) -> dict:
    props = {k: key_schema(section, k, v) for k, v in keys.items() if (section, k) not in SECRET_KEYS}
    return {"type": "object", "additionalProperties": False, "properties": props}


def config_schema(defaults: dict, description: str) -> dict:
    sections = {section: table_schema(section, keys) for section, keys in defaults.items()}
    return {"type": "object", "description": description, "additionalProperties": False, "properties": sections}


def expected(component: str) -> dict | None:
    path = ROOT / component / "config.default.toml"
    if not path.exists():
        return None
    return config_schema(tomllib.loads(path.read_text()),
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
