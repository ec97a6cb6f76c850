"""Multi-node scenarios on one machine: a head and two worker raylets (``ray.cluster_utils.Cluster``).

``tests/ray/test_multinode.py`` runs each scenario in its own Python process: a process holds one
Ray connection, and the test session's is the shared local Ray. A scenario writes what it saw to
``<workdir>/result.json``; the test asserts on it.

    python -m tests.ray.multinode <scenario> <workdir>

The cluster lives under a private ``RAY_TMPDIR``, so its address file never makes a plain
``ray.init()`` elsewhere on the machine connect to it, and it is shut down by its own API (never
``ray stop``, which would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydetect.stages.attack import AttackStage
from raydetect.stages.audit import AuditStage
from raydetect.stages.fused import AttackFeatureStage

PROVENANCE = "RAYDETECT_TEST_PROVENANCE"  # where tagged stages record which node made which rows
WORKERS = ("node_a", "node_b")  # each worker node's custom resource, which names it


class _NodeTagged:
    """Records, in side files, the node each actor started on and the node that made each output
    row: the job's own output stays as users get it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        _record({"actor": os.getpid()})

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        start = time.time()
        out = super().__call__(batch)  # type: ignore[misc]
        ids = [str(i) for i in (out["id"] if isinstance(out, dict) else out.column("id").to_pylist())]
        if ids:
            _record({"actor": os.getpid(), "ids": ids, "start": start})
        return out


def _record(event: dict[str, Any]) -> None:
    if where := os.environ.get(PROVENANCE):
        event = {**event, "node": ray.get_runtime_context().get_node_id(), "t": time.time()}
        path = Path(where, uuid.uuid4().hex)
        path.with_suffix(".tmp").write_text(json.dumps(event))
        path.with_suffix(".tmp").replace(path)  # whole, for a reader polling the folder


class TaggedAttack(_NodeTagged, AttackStage):
    pass


class TaggedAudit(_NodeTagged, AuditStage):
    pass


class TaggedFused(_NodeTagged, AttackFeatureStage):
    pass


@contextmanager
def local_cluster(head_cpus: int = 1, worker_cpus: int = 2) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A head and two worker raylets, connected; yields the cluster and its worker nodes by name."""
    from ray.cluster_utils import Cluster
    from ray.data import DataContext

    tmp = tempfile.mkdtemp(prefix="rd-mn-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    os.environ["RAY_TMPDIR"] = tmp
    os.environ["RAY_AUTH_MODE"] = "disabled"  # local clusters use token auth otherwise (server and client)
    # A lost node is declared dead after ~3 s instead of Ray's default ~30 s (its health checks).
    fast = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    head = {"num_cpus": head_cpus, "include_dashboard": False, "_system_config": fast}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = {name: cluster.add_node(num_cpus=worker_cpus, resources={name: 1}) for name in WORKERS}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def node_names() -> dict[str, str]:
    """Node id -> "head" or the worker's name (from its custom resource)."""
    names = {}
    for n in ray.nodes():
        res = n["Resources"]
        names[n["NodeID"]] = next((w for w in WORKERS if w in res), "head" if "node:__internal_head__" in res else "?")
    return names


def provenance(where: Path, names: dict[str, str]) -> dict[str, Any]:
    """What the tagged stages recorded: row ids by the node whose actor made them, the nodes the
    actors started on, and every event (node named) in time order."""
    events = sorted((json.loads(f.read_text()) for f in where.iterdir() if not f.suffix), key=lambda e: e["t"])
    rows: dict[str, list[str]] = {}
    for e in events:
        e["node"] = names.get(e["node"], "?")
        if "ids" in e:
            rows.setdefault(e["node"], []).extend(e["ids"])
    actors = sorted(e["node"] for e in events if "ids" not in e)
    return {"rows": rows, "actors": actors, "events": [{k: v for k, v in e.items() if k != "ids"} for e in events]}


def raw_ids(out: Path) -> list[str]:
    from raydetect.store import read_output

    table = read_output(str(out), columns=["id"], dedupe_on=None)
    return [] if table is None else table.column("id").to_pylist()


# --------------------------------------------------------------------------------------------
# Scenarios


def spread(workdir: Path) -> dict[str, Any]:
    """A fused attack+feature job, then an audit with the detector trained on it, each with 2 CPUs
    per actor: two actors, and no worker node holds both (each has 2 CPUs). 128 IG steps make each
    block's work outlast the reads (on the head's CPU), so blocks queue and both actors get some."""
    from ray.data import DataContext

    from raydetect.config import AttackConfig, AttributionConfig, FeatureConfig, ModelConfig, ResourceConfig, Source
    from raydetect.stages import runner
    from raydetect.stages.plan import cluster_nodes, plan_resources
    from raydetect.stages.train import run_training

    res = ResourceConfig(cpus_per_actor=2, batch_size=8)
    tags = workdir / "provenance"
    tags.mkdir()
    os.environ[PROVENANCE] = str(tags)  # before the raylets start: their workers inherit it
    result: dict[str, Any] = {}
    with local_cluster(head_cpus=1, worker_cpus=2):
        names = node_names()
        result["nodes"] = sorted(names.values())
        result["default_plan"] = plan_resources(ResourceConfig(), cluster_nodes()).__dict__
        # Dispatch starts once both actors are up: else the first one ready may take every block
        # (4 in flight) while the other still loads its model.
        DataContext.get_current().wait_for_min_actors_s = 600
        runner.AttackFeatureStage = TaggedFused  # type: ignore[misc]  # same stage, plus the side file
        runner.AuditStage = TaggedAudit  # type: ignore[misc]
        attacks = [AttackConfig(eps=0.3, steps=10), AttackConfig(mode="second", eps=0.3, steps=10)]
        job = runner.FusedJob(str(workdir / "fused"), ModelConfig(name="digits_cnn"), Source("digits", limit=64), attacks,
                              AttributionConfig(n_steps=128), FeatureConfig(quantiles=8))  # fmt: skip
        fused = runner.run_job(job, res)
        result["fused"] = {"summary": fused.to_dict(), "made": provenance(tags, names), "ids": raw_ids(workdir / "fused")}
        shutil.rmtree(tags)
        tags.mkdir()
        bundle = run_training(str(workdir / "fused"), str(workdir / "train"), kinds=("lr",), use_ray=False, n_boot=20).bundle
        audit, _ = runner.run_audit(Source("digits", limit=96, offset=100), str(workdir / "audit"), bundle, res)
        result["audit"] = {
            "summary": audit.to_dict(),
            "made": provenance(tags, names),
            "ids": raw_ids(workdir / "audit" / "rows"),
        }
    return result


def node_loss(workdir: Path) -> dict[str, Any]:
    """An attack job on the default plan; once rows are written, a worker node whose actor has made
    rows is killed. The job either finishes through Ray's retries (the actor restarts on another
    node, lost tasks re-run) or fails; either way a re-run then resumes on the surviving nodes."""
    from raydetect.config import AttackConfig, ModelConfig, ResourceConfig, Source
    from raydetect.stages import runner
    from raydetect.stages.plan import cluster_nodes, plan_resources
    from raydetect.store import output_files

    out, n = workdir / "attacks", 128
    args = (str(out), ModelConfig(name="digits_cnn"), Source("digits", limit=n), [AttackConfig(eps=0.3, steps=30)])
    res = ResourceConfig(batch_size=8)
    tags = workdir / "provenance"
    tags.mkdir()
    os.environ[PROVENANCE] = str(tags)
    result: dict[str, Any] = {"expected": [f"digits-test-{i}" for i in range(n)]}
    with local_cluster(head_cpus=1, worker_cpus=2) as (cluster, workers):
        names = node_names()
        result["plan"] = plan_resources(res, cluster_nodes()).__dict__
        runner.AttackStage = TaggedAttack  # type: ignore[misc]
        first: dict[str, Any] = {}

        def run() -> None:
            try:
                first["summary"] = runner.run_job(runner.AttackJob(*args), res).to_dict()
            except Exception as exc:  # the job may fail when its node dies: the re-run below resumes it
                first["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            first["ended"] = time.time()

        job = threading.Thread(target=run, daemon=True)
        job.start()
        # Wait for rows on disk and for a worker node whose actor has made rows: that node goes.
        deadline = time.time() + 600
        while time.time() < deadline and job.is_alive():
            busy = [w for w in WORKERS if w in provenance(tags, names)["rows"]]
            if busy and output_files(str(out)):
                break
            time.sleep(0.2)
        result["rows_before_loss"] = len(raw_ids(out))
        result["by_node_before_loss"] = provenance(tags, names)["rows"]
        result["job_alive_at_loss"] = job.is_alive()
        result["lost"] = next((w for w in WORKERS if w in result["by_node_before_loss"]), WORKERS[0])
        lost = time.time()
        cluster.remove_node(workers[result["lost"]], allow_graceful=False)  # a crash, not a drain
        job.join(timeout=900)
        result["first_run_finished"] = not job.is_alive()
        result["first_run"] = first
        result["seconds_after_loss"] = first.get("ended", time.time()) - lost
        result["ids_after_first_run"] = raw_ids(out)
        result["made"] = provenance(tags, names)
        result["nodes_after_loss"] = sorted(names[n["NodeID"]] for n in ray.nodes() if n["Alive"])
        again = runner.run_job(runner.AttackJob(*args), res)
        result["rerun"] = again.to_dict()
        result["ids"] = raw_ids(out)
    return result


def detector_data(n: int = 3000, d: int = 16, seed: int = 0, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Descriptor-like rows with a non-linear label (an interaction and a threshold) and 10% noise;
    ``decimals`` rounds the features (fewer distinct values than XGBoost's 256 histogram bins)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = ((X[:, 0] * X[:, 1] + np.abs(X[:, 2]) - 0.7 + 0.3 * rng.normal(size=n)) > 0).astype(np.int64)
    return (X if decimals is None else np.round(X, decimals)), y


# Two detectors fitted in one Ray Train run: XGBoost's defaults on continuous features, and the same
# trees without row/column sampling on features with exact histogram bins.
TRAIN_JOBS = {"default": ({}, None), "exact_bins": ({"subsample": 1.0, "colsample_bytree": 1.0}, 1)}


def train(workdir: Path) -> dict[str, Any]:
    """XGBoost through Ray Train with 1 worker, then 2; each worker needs 2 CPUs, which no node has
    twice, so 2 workers run on 2 nodes. Returns each detector's scores on held-out rows (and those
    of the same fit in this process), and the node and rows of each worker."""
    from raydetect.detect.fit import FitJob, fit_head
    from raydetect.detect.ray_fit import WORKER_RECORD, fit_on_ray

    data = {tag: (detector_data(decimals=dec), detector_data(seed=1, decimals=dec)) for tag, (_, dec) in TRAIN_JOBS.items()}
    jobs = [FitJob("xgboost", X, y, TRAIN_JOBS[tag][0]) for tag, ((X, y), _) in data.items()]
    result: dict[str, Any] = {tag: {"y_test": test[1].tolist()} for tag, (_, test) in data.items()}
    for job, (tag, (_, (X_test, _))) in zip(jobs, data.items(), strict=True):
        result[tag]["local"] = fit_head("xgboost", job.X, job.y, job.params).predict_proba(X_test).tolist()
    with local_cluster(head_cpus=1, worker_cpus=2):
        names = node_names()
        for workers in (1, 2):
            storage = workdir / f"workers-{workers}"
            heads = fit_on_ray(jobs, storage=str(storage), num_workers=workers)
            records = [json.loads(p.read_text()) for p in storage.rglob(f"{WORKER_RECORD}*.json")]
            result[f"workers-{workers}"] = [{**r, "node": names.get(r["node"], "?")} for r in records]
            for head, (tag, (_, (X_test, _))) in zip(heads, data.items(), strict=True):
                result[tag][str(workers)] = head.predict_proba(X_test).tolist()
    return result


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {"spread": spread, "node_loss": node_loss, "train": train}


def main(name: str, workdir: str) -> None:
    path = Path(workdir)
    try:
        result = SCENARIOS[name](path)
    except BaseException:
        result = {"error": traceback.format_exc()}
    (path / "result.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
