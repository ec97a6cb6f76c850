"""Fitting detectors through Ray Train: the one module of the algorithm layers that imports Ray.

XGBoost runs under XGBoostTrainer (distributed when num_workers > 1, on GPU when the cluster
has one). Ray has no sklearn trainer, so LR and RF fit inside a one-worker DataParallelTrainer.
Either way the worker writes the head in its safe form as a checkpoint, which is all that
travels back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from ray.data import DataContext
from ray.train import RunConfig, ScalingConfig

from raydetect.detect.fit import FitJob, fit_head
from raydetect.detect.heads import HEADS, Head
from raydetect.errors import RaydetectError
from raydetect.store import resolve

log = logging.getLogger(__name__)


WORKER_RECORD = "worker"  # worker<rank>.json in a fit's checkpoint: the node, CPUs and rows of each worker


def _shard_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = [], []
    for b in ray.train.get_dataset_shard(name).iter_batches(batch_format="pyarrow", batch_size=65536):
        feats = b.column("features").combine_chunks()
        X.append(np.asarray(feats.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(b), -1))
        y.append(np.asarray(b.column("y").to_numpy(), np.int64))
    return np.concatenate(X), np.concatenate(y)


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit every job of this run, save each in its safe form, report one checkpoint.

    With several workers XGBoost trains one model together (its collective syncs every round), so
    rank 0 saves the models; every worker adds a record of its node and shard to the checkpoint.
    """
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for i, job in enumerate(config["jobs"]):
            X, y = _shard_arrays(f"job{i}")
            head = fit_head(job["kind"], X, y, job["params"], job["seed"], config["n_jobs"], config["device"])
            if rank == 0:
                with open(os.path.join(tmp, f"job{i}.bin"), "wb") as f:
                    f.write(head.to_bytes())
            rows[f"job{i}_rows"] = len(y)
        record = {"rank": rank, "node": ray.get_runtime_context().get_node_id(), "cpus": config["n_jobs"], **rows}
        with open(os.path.join(tmp, f"{WORKER_RECORD}{rank}.json"), "w") as f:
            json.dump(record, f)
        ray.train.report(rows, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _to_dataset(X: np.ndarray, y: np.ndarray) -> Any:
    import pyarrow as pa

    X = np.ascontiguousarray(X, np.float32)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), X.shape[1])
    return ray.data.from_arrow(pa.table({"features": feats, "y": np.asarray(y, np.int64)}))


def cpus_per_worker(nodes: Sequence[dict[str, float]], workers: int, use_gpu: bool = False) -> int:
    """CPUs (and threads) for each Ray Train worker: the most such that every worker fits on one
    node (a node with a free GPU each when ``use_gpu``) and one CPU of the cluster stays free for
    the Ray Data tasks that feed them. ``nodes``: the resources of each node. A worker runs on one
    node, so a share of the cluster's total CPUs that no node has would wait forever."""
    total = sum(int(n.get("CPU", 0)) for n in nodes)
    hosts = [(int(n.get("CPU", 0)), int(n.get("GPU", 0)) if use_gpu else workers) for n in nodes]
    for k in range(max((c for c, _ in hosts), default=0), 0, -1):
        if sum(min(c // k, g) for c, g in hosts) >= workers and total - workers * k >= 1:
            return k
    where = "nodes with a GPU" if use_gpu else "nodes"
    raise RaydetectError(
        f"Ray Train needs {workers} worker(s) of at least one CPU on {where}, and a CPU left for data; "
        f"the nodes have {[c for c, _ in hosts]} CPUs"
    )


def fit_on_ray(jobs: Sequence[FitJob], storage: str | None = None, num_workers: int = 1) -> list[Head]:
    """Fit detectors through Ray Train: XGBoost jobs under one XGBoostTrainer run (distributed over
    ``num_workers``, on GPU when the cluster has one), LR and RF jobs in one DataParallelTrainer
    worker (Ray has no sklearn trainer). One run per trainer keeps the worker start-up cost (~10 s)
    from repeating per model. Returns models in the order of ``jobs``.

    Each worker gets the CPUs one node can give it (:func:`cpus_per_worker`). With several workers
    the rows are split between them and XGBoost builds one model from their summed histograms: the
    same model as one worker where every feature has at most 256 distinct values and nothing is
    subsampled; otherwise the bin edges come from merged per-worker sketches and the trees differ a
    little (tests/ray/test_multinode.py states the tolerance)."""
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    out: list[Head | None] = [None] * len(jobs)
    groups = {
        "xgboost": [i for i, j in enumerate(jobs) if j.kind == "xgboost"],
        "sklearn": [i for i, j in enumerate(jobs) if j.kind != "xgboost"],
    }
    ctx = DataContext.get_current()
    for group, idx in groups.items():
        if not idx:
            continue
        use_gpu = group == "xgboost" and gpus >= 1
        workers = num_workers if group == "xgboost" else 1
        n_jobs = cpus_per_worker(nodes, workers, use_gpu)
        config = {
            "jobs": [{"kind": jobs[i].kind, "params": jobs[i].params or {}, "seed": jobs[i].seed} for i in idx],
            "n_jobs": n_jobs,
            "device": "cuda" if use_gpu else "cpu",
        }
        bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # kilobytes: nothing to watch
        try:
            datasets = {f"job{k}": _to_dataset(jobs[i].X, jobs[i].y) for k, i in enumerate(idx)}
        finally:
            ctx.enable_progress_bars = bars
        scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": n_jobs})
        with tempfile.TemporaryDirectory() as tmp:
            # Ray Train parses storage as a URI: a relative local path must become absolute.
            path = resolve(storage or tmp)
            # A fresh name per fit: under a reused name Ray Train restores the last run's
            # checkpoint state, and a re-run with the same --out must never pick up old models.
            run = RunConfig(name=f"raydetect-{group}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", storage_path=path)
            if group == "xgboost":
                from ray.train.xgboost import XGBoostTrainer

                trainer: Any = XGBoostTrainer(
                    _train_loop, train_loop_config=config, scaling_config=scaling, run_config=run, datasets=datasets
                )
            else:
                try:
                    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
                except ImportError:  # Ray Train v1
                    from ray.train.data_parallel_trainer import DataParallelTrainer  # type: ignore[no-redef]
                trainer = DataParallelTrainer(
                    _train_loop, train_loop_config=config, scaling_config=scaling, run_config=run, datasets=datasets
                )
            result = trainer.fit()
            if result.checkpoint is None:
                raise RaydetectError(f"Ray Train finished without {group} models: {result.error}")
            with result.checkpoint.as_directory() as d:
                records = [json.loads(p.read_text()) for p in sorted(Path(d).glob(f"{WORKER_RECORD}*.json"))]
                log.info("%s: %d Ray Train worker(s) on %d node(s), %d CPUs each, rows per worker: %s", group, len(records),
                         len({r["node"] for r in records}), n_jobs, [r.get("job0_rows") for r in records])  # fmt: skip
                for k, i in enumerate(idx):
                    with open(os.path.join(d, f"job{k}.bin"), "rb") as f:
                        out[i] = HEADS[jobs[i].kind].from_bytes(f.read())
    return [m for m in out if m is not None]
