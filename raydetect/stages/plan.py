"""The Ray session, and how many model actors run with which resources.

Each stage is a callable class that loads its model once; :func:`map_actors` runs it on an
actor pool sized by a :class:`Plan`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.data import DataContext

from raydetect.config import ModelConfig, ResourceConfig
from raydetect.errors import RaydetectError
from raydetect.models.runtime import actor_runtime_env
from raydetect.stages.console import quiet_ray, verbose


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS, e.g. inside ``ray job submit``), else start a local Ray.

    A local Ray is for development on one machine: it starts without the dashboard and without
    pre-started idle workers, which on a 2-core laptop compete with the model actor for CPU.
    Workers' output reaches this console only when verbose (see ``stages.console``).
    """
    quiet_ray()
    ctx = DataContext.get_current()
    ctx.issue_detectors_config.detectors = []  # memory hints meant for other workloads; noise here
    ctx.enable_get_object_locations_for_metrics = False
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=verbose())
        else:
            ray.init(
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=verbose(),
                runtime_env={"worker_process_setup_hook": "raydetect._ray_workers.quiet_local_workers"},
                _system_config={"enable_worker_prestart": False},
            )
    except ConnectionError as exc:
        raise RaydetectError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


@dataclass(frozen=True)
class Plan:
    """What the stage actors get: how many, with which resources and torch threads."""

    num_actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    batch_size: int
    device: str

    def model_config(self, cfg: ModelConfig) -> ModelConfig:
        return replace(cfg, device=self.device) if cfg.device == "auto" else cfg


def plan_resources(res: ResourceConfig, cluster: dict[str, float] | None = None) -> Plan:
    """Size the actor pool to the cluster.

    GPU clusters: one actor per ``gpus_per_actor`` (default 1) GPU, one CPU each. CPU only: each
    actor reserves one CPU fewer than the threads it runs, so read and decode tasks always find a
    free CPU (an actor pool that takes every CPU starves its own input); a 2-core laptop gets one
    actor with 2 threads that reserves 1 CPU.
    """
    if cluster is None:
        cluster = ray.cluster_resources()
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus = float(cluster.get("GPU", 0))
    if res.gpus_per_actor > 0 or gpus >= 1:
        per = res.gpus_per_actor or 1.0
        if gpus < per:
            raise RaydetectError(f"asked for {per} GPU per actor but the cluster has {gpus:g} GPUs")
        actors = res.num_actors or max(1, int(gpus // per))
        return Plan(actors, res.cpus_per_actor or 1.0, per, max(1, min(4, cpus // actors)), res.batch_size or 64, "cuda")
    actors = res.num_actors or max(1, cpus // 8)
    threads = max(1, cpus // actors)
    num_cpus = res.cpus_per_actor or float(max(1, threads - 1))
    if num_cpus >= cpus:
        raise RaydetectError(f"{num_cpus:g} CPUs per actor leaves none of the cluster's {cpus} CPUs for reading data")
    return Plan(actors, num_cpus, 0.0, threads, res.batch_size or 16, "cpu")


def map_actors(ds: Any, stage: type, args: tuple[Any, ...], plan: Plan, **kwargs: Any) -> Any:
    """``ds.map_batches`` with a stage class on an actor pool sized and resourced by ``plan``."""
    return ds.map_batches(
        stage,
        fn_constructor_args=args,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        runtime_env=actor_runtime_env(),
        **kwargs,
    )
