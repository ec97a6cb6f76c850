"""cluster/: every file parses, names entrypoints that exist, and puts GPUs on its workers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "cluster").rglob("*.yaml"))


def test_there_are_launcher_and_kuberay_configs() -> None:
    names = {p.relative_to(ROOT / "cluster").as_posix() for p in CONFIGS}
    assert {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-audit.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_requests_gpu_workers(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    if "available_node_types" in doc:  # Ray cluster launcher
        workers = {k: v for k, v in doc["available_node_types"].items() if k != doc["head_node_type"]}
        assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
        assert doc["provider"]["type"] in ("aws", "gcp")
        # The dashboard (job server) binds to localhost on the head: reached through an SSH tunnel.
        assert all("--dashboard-host=127.0.0.1" in c for c in doc["head_start_ray_commands"] if "--head" in c)
        assert "RAY_AUTH_MODE=token" in " ".join(doc["head_start_ray_commands"] + doc["worker_start_ray_commands"])
        return
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert cluster["authOptions"]["mode"] == "token"
    for group in cluster["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert c["image"].startswith("rayproject/ray:")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_entrypoints_exist(path: Path) -> None:
    text = path.read_text()
    for script in re.findall(r"python (jobs/[\w]+\.py)", text):
        assert (ROOT / script).is_file(), script
    for command in re.findall(r"raydetect submit [^\n]*?-- (\w+)", text):
        assert (ROOT / "jobs" / f"{command}.py").is_file(), command
    doc = yaml.safe_load(text)
    if doc.get("kind") == "RayJob":
        assert re.search(r"python jobs/\w+\.py", doc["spec"]["entrypoint"])
