"""The shipped HAProxy and NATS configs (`deploy/haproxy/haproxy.cfg`,
`deploy/nats/nats.conf`), filled in for a cluster on loopback.

Only what must differ on one machine is replaced: the ports things listen on,
the server lists (HAProxy's `server` lines, NATS's routes) and the NATS store
folder. Every other line is the shipped one, so the tests prove the
guarantees for the config users run; `tests/deploy/test_deploy_compose.py`
checks that nothing else changes.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"

# The shipped listen ports, by what listens there.
HAPROXY_BINDS = {"sse": ":8080", "stats": ":8404"}


class TemplateError(ValueError):
    """The shipped file no longer has a part the harness fills in."""


def _sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(header, lines) for each top-level section, in order; comments kept."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in lines:
        if line and not line[0].isspace() and not line.startswith("#"):
            out.append((line.strip(), [line]))
        else:
            out[-1][1].append(line)
    return out


def render_haproxy(lb: str, stats: str, servers: dict[str, list[tuple[str, str]]]) -> str:
    """The shipped HAProxy config with `bind` addresses `lb` and `stats`
    (host:port) and, for each backend named in `servers`, its `server` lines
    replaced by the given (name, host:port) list (an empty list empties it)."""
    binds = {"sse": lb, "stats": stats}
    out: list[str] = []
    seen_backends = set()
    for header, lines in _sections(HAPROXY_CFG.read_text().splitlines()):
        kind, _, name = header.partition(" ")
        if kind == "frontend" and name in binds:
            shipped = f"bind {HAPROXY_BINDS[name]}"
            if not any(l.strip() == shipped for l in lines):
                raise TemplateError(f"frontend {name} has no '{shipped}' line")
            lines = [l.replace(shipped, f"bind {binds[name]}") if l.strip() == shipped else l for l in lines]
        if kind == "backend" and name in servers:
            seen_backends.add(name)
            indent = "    "
            kept = [l for l in lines if not l.strip().startswith("server ")]
            # Server lines go after the backend's settings, before the blank
            # lines and comments that lead into the next section.
            end = len(kept)
            while end > 1 and (not kept[end - 1].strip() or kept[end - 1].lstrip().startswith("#")):
                end -= 1
            lines = kept[:end] + [f"{indent}server {n} {addr}" for n, addr in servers[name]] + kept[end:]
        out.extend(lines)
    missing = set(servers) - seen_backends
    if missing:
        raise TemplateError(f"no backend {sorted(missing)} in {HAPROXY_CFG}")
    return "\n".join(out) + "\n"


def render_nats(
    listen: str,
    http: str,
    store_dir: str,
    cluster_listen: str | None,
    routes: list[str],
    cluster_advertise: str | None = None,
) -> str:
    """The shipped NATS config for one server: client `listen`, monitoring
    `http`, JetStream `store_dir`; with `cluster_listen` and `routes`
    (nats-route:// URLs of the other servers), or with no cluster block at
    all when `cluster_listen` is None (a single server). `cluster_advertise`
    is the route address the server tells its peers, if not its own."""
    text = NATS_CONF.read_text()

    def sub(pattern: str, repl: str, flags: int = re.M) -> None:
        nonlocal text
        new, n = re.subn(pattern, lambda _m: repl, text, count=1, flags=flags)
        if n != 1:
            raise TemplateError(f"{NATS_CONF}: no match for {pattern!r}")
        text = new

    sub(r"^listen: .*$", f"listen: {listen}")
    sub(r"^http: .*$", f"http: {http}")
    sub(r"^(\s*)store_dir: .*$", f"  store_dir: \"{store_dir}\"")
    if cluster_listen is None:
        sub(r"^cluster \{.*?^\}\n", "", re.M | re.S)
    else:
        advertise = f'\n  advertise: "{cluster_advertise}"' if cluster_advertise else ""
        sub(r"^(\s*)listen: 0\.0\.0\.0:6222$", f"  listen: {cluster_listen}{advertise}")
        route_lines = "".join(f"    {r}\n" for r in routes)
        sub(r"^(\s*)routes: \[\n.*?^\s*\]$", f"  routes: [\n{route_lines}  ]", re.M | re.S)
    return text
