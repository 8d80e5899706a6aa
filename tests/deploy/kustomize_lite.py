"""A small reader of kustomization.yaml, for machines without kubectl.

It supports exactly what k8s/ uses: `resources` (files), `namespace`,
`labels` (pairs, includeSelectors false, includeTemplates), `configMapGenerator`
(files, with kustomize's content-hash name suffix, and the rewriting of
references to the generated names) and `images` (newName, newTag). Anything
else in the kustomization is refused, so the reader never silently renders
something other than `kubectl kustomize` would. Where kubectl exists, the
tests compare the two outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "IngressClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix: sha256 of the encoded ConfigMap, first 10 hex
    digits with 0,1,3,a,e replaced so that the suffix is never all digits and
    has no vowels to form words. kustomize looks the name up with the path
    "metadata/name" as one field name, finds nothing, and so always encodes
    an empty name: only the data counts."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""},
                         separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # Go's encoding/json escapes these for safe embedding in HTML.
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _pod_specs(obj: dict):
    spec = obj.get("spec", {})
    if obj["kind"] in WORKLOADS:
        yield spec["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield spec


def _rename_config_maps(obj: dict, names: dict[str, str]) -> None:
    for pod in _pod_specs(obj):
        for vol in pod.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] in names:
                vol["configMap"]["name"] = names[vol["configMap"]["name"]]
            for src in vol.get("projected", {}).get("sources", []):
                if "configMap" in src and src["configMap"]["name"] in names:
                    src["configMap"]["name"] = names[src["configMap"]["name"]]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef and ef["configMapRef"]["name"] in names:
                    ef["configMapRef"]["name"] = names[ef["configMapRef"]["name"]]
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]


def _set_image(obj: dict, images: list[dict]) -> None:
    for pod in _pod_specs(obj):
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            repo = c["image"].split("@")[0]
            base = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
            for img in images:
                if img["name"] == base:
                    name = img.get("newName", base)
                    tag = img.get("newTag")
                    c["image"] = f"{name}:{tag}" if tag else name


def build_objects(root: Path) -> list[dict]:
    root = Path(root)
    kust = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise ValueError(f"kustomize_lite does not support {sorted(unknown)}")

    objs: list[dict] = []
    for res in kust.get("resources", []):
        path = root / res
        if path.is_dir():
            raise ValueError(f"kustomize_lite: nested kustomization {res} not supported")
        objs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)

    renamed: dict[str, str] = {}
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (root / (src or f)).read_text()
        if set(gen) - {"name", "files"}:
            raise ValueError(f"kustomize_lite: configMapGenerator options {sorted(set(gen) - {'name', 'files'})}")
        name = f"{gen['name']}-{config_map_hash(data)}"
        renamed[gen["name"]] = name
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})

    for obj in objs:
        _rename_config_maps(obj, renamed)
        _set_image(obj, kust.get("images", []))
        if kust.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kust["namespace"]
        for spec in kust.get("labels", []):
            if spec.get("includeSelectors"):
                raise ValueError("kustomize_lite: labels with includeSelectors not supported")
            obj["metadata"].setdefault("labels", {}).update(spec["pairs"])
            if spec.get("includeTemplates"):
                if obj["kind"] in WORKLOADS:
                    obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(spec["pairs"])
                for claim in obj.get("spec", {}).get("volumeClaimTemplates", []):
                    claim["metadata"].setdefault("labels", {}).update(spec["pairs"])
    return objs


def build(root: Path) -> str:
    return yaml.safe_dump_all(build_objects(root), sort_keys=False)
