"""KubeRay manifests: they parse, have the fields KubeRay requires, and point at real entry points."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "infra" / "kuberay"


def _load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def _containers(cluster_spec: dict) -> list[dict]:
    pods = [cluster_spec["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster_spec["workerGroupSpecs"]
    ]
    return [c for p in pods for c in p["spec"]["containers"]]


def _check_cluster_spec(spec: dict) -> None:
    assert spec["headGroupSpec"]["rayStartParams"] is not None
    assert spec["workerGroupSpecs"], "at least one worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for c in _containers(spec):
        assert c["image"] and c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        # S3 settings from a Secret, never inline credentials
        assert any("secretRef" in e for e in c.get("envFrom", [])), c["name"]
        for e in c.get("env", []):
            assert not re.search(r"SECRET|ACCESS_KEY|TOKEN", e["name"]), e["name"]


def test_raycluster_manifest() -> None:
    doc = _load("raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"])
    gpu = [g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu and gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def test_rayjob_manifest_runs_an_existing_entry_point() -> None:
    doc = _load("rayjob-unlearn.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("ray_jobs/")
    assert (ROOT / argv[1]).is_file(), argv[1]
    assert "--storage" in argv and argv[argv.index("--storage") + 1].startswith("s3://")
    # the flags parse with lethe's own CLI parser
    from lethe.cli import parser

    args = parser().parse_args([Path(argv[1]).stem, *argv[2:]])
    assert args.storage.startswith("s3://")


@pytest.mark.parametrize("name", ["Dockerfile.cuda"])
def test_cuda_image_is_documented(name: str) -> None:
    text = (ROOT / "infra" / name).read_text()
    assert "FROM nvidia/cuda" in text and "ray_jobs" in text and "AWS_SECRET" not in text
