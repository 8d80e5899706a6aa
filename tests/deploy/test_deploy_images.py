"""node/Dockerfile, admin/Dockerfile and .dockerignore, parsed with
dockerfile-parse (no container engine needed)."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

import pytest

from deploy_support import ROOT, require_module

dockerfile_parse = require_module("dockerfile_parse")

IMAGES = [("node", "sse-node", 8080), ("admin", "sse-admin", 8090)]
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE|CREDENTIAL|API_?KEY", re.I)


def parse(folder: str):
    return dockerfile_parse.DockerfileParser(path=str(ROOT / folder / "Dockerfile"))


def stages(df) -> list[list[dict]]:
    """Instructions grouped by build stage."""
    out: list[list[dict]] = []
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def default_port(folder: str) -> int:
    cfg = tomllib.loads((ROOT / folder / "config.default.toml").read_text())
    return int(cfg["http"]["listen"].rsplit(":", 1)[1])


@pytest.mark.parametrize("folder,binary,port", IMAGES)
def test_multi_stage_build_from_workspace_root(folder, binary, port):
    df = parse(folder)
    assert df.is_multistage
    assert df.parent_images[0] == "rust:1.95-bookworm"
    builder, runtime = stages(df)[0], stages(df)[-1]
    assert builder[0]["value"].split()[-2:] == ["AS", "builder"] or builder[0]["value"].lower().endswith(" as builder")
    runs = " ".join(i["value"] for i in builder if i["instruction"] == "RUN")
    assert re.search(rf"cargo build --release\b.*-p {binary} --bin {binary}\b", runs), runs
    assert "--locked" in runs, "the image builds exactly Cargo.lock's versions"
    copies = [i["value"] for i in builder if i["instruction"] == "COPY"]
    assert copies and copies[0].split()[0] == ".", "the context is the workspace root"
    # runtime stage: small, non-root, just the binary
    base = df.baseimage
    assert base in ("gcr.io/distroless/cc-debian12:nonroot",) or base.startswith("debian:bookworm-slim"), base
    from_builder = [i["value"] for i in runtime if i["instruction"] == "COPY" and "--from=builder" in i["value"]]
    assert from_builder and from_builder[0].split()[-2].endswith(f"/{binary}")
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the runtime stage sets a user"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and (not uid.isdigit() or int(uid) > 0)
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == [f"/usr/local/bin/{binary}"], "exec form, so SIGTERM reaches the binary"
    exposed = [i["value"] for i in runtime if i["instruction"] == "EXPOSE"]
    assert exposed == [str(port)]


@pytest.mark.parametrize("folder,binary,port", IMAGES)
def test_exposed_port_is_the_default_listen_port(folder, binary, port):
    assert (ROOT / folder / "config.default.toml").exists(), f"{folder}/config.default.toml is missing"
    assert default_port(folder) == port


@pytest.mark.parametrize("folder,binary,port", IMAGES)
def test_no_secrets_baked_in(folder, binary, port):
    df = parse(folder)
    for ins in df.structure:
        if ins["instruction"] in ("ENV", "ARG", "LABEL"):
            assert not SECRETISH.search(ins["value"]), f"{ins['instruction']} {ins['value']}"
        if ins["instruction"] == "ADD":
            assert not re.search(r"https?://", ins["value"]), "no remote ADD"
        if ins["instruction"] == "COPY":
            assert not re.search(r"\.(pem|key|env)\b|secret", ins["value"], re.I)
    assert not SECRETISH.search(json.dumps(df.envs)), df.envs


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rules for the simple patterns used here: the
    last matching pattern wins, `!` re-includes, a match on a parent folder
    excludes everything below it."""
    ignored = False
    parts = path.split("/")
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                ignored = not neg
                break
    return ignored


def test_dockerignore_keeps_the_workspace_and_drops_the_rest():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [l for l in lines if l and not l.startswith("#")]
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    members = workspace["members"]
    assert {"node", "admin"} <= set(members)
    needed = ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in members] + [f"{m}/src/main.rs" for m in ("node", "admin")]
    # .cargo/config.toml sets jemalloc's settings, built into the node.
    needed += ["node/config.default.toml", "node/tests/it/main.rs", ".cargo/config.toml"]
    for path in needed:
        assert not _ignored(path, patterns), f"{path} is needed by cargo but .dockerignore drops it"
    for path in ["target/debug/sse-node", "node/target/x", ".git/HEAD", "helm/sse-cluster/values.yaml",
                 "tests/cluster/harness.py", "tests/node_modules/x/y.js", "docker-compose.yml"]:
        assert _ignored(path, patterns), f"{path} should not be sent to the builder"


def test_dockerignore_matcher_self_check():
    assert _ignored("a/b/c", ["a"]) and not _ignored("a/b/c", ["a", "!a"])
    assert _ignored("x/target/y", ["**/target"]) and not _ignored("targets/y", ["**/target"])
