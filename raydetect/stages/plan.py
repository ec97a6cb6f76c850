"""The Ray session, and how many model actors run with which resources.

Each stage is a callable class that loads its model once; :func:`map_actors` runs it on an
actor pool sized by a :class:`Plan`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
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
                # Ray starts workers at niceness 15 so they yield to its own daemons; a local Ray's
                # model actor is the job itself, and on a machine with other work it then ran at a
                # small share of the CPU that a plain loop gets (see BENCHMARKS.md).
                _system_config={"enable_worker_prestart": False, "worker_niceness": 0},
            )
    except ConnectionError as exc:
        raise RaydetectError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


@dataclass(frozen=True)
class Plan:
    """What the stage actors get: how many, with which resources and torch threads.

    ``num_actors`` is the most the pool grows to. ``initial_actors``, those the nodes hold now,
    start at once and stay until the input runs out: Ray Data's own autoscaler would otherwise
    start one and, on a small cluster where one actor is a big share of the CPUs, shrink the pool
    back to one (measured on a head and two 2-CPU workers: the second actor was stopped and one
    node made every row).
    """

    num_actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    batch_size: int
    device: str
    initial_actors: int = 1
    pass_memory_mb: float | None = None  # ResourceConfig.pass_memory_mb, for the actors (see map_actors)

    def model_config(self, cfg: ModelConfig) -> ModelConfig:
        """The model config the actors load: on this plan's device. Only a named GPU of the plan's kind
        (``cuda:0``) is kept; whatever else the config says (a bundle's old ``cpu``) yields to the plan,
        whose resources were reserved for it."""
        if cfg.device.partition(":")[0] == self.device:
            return cfg
        return replace(cfg, device=self.device)

    def compute(self) -> Any:
        """The actor pool strategy of this plan."""
        initial = max(1, min(self.initial_actors, self.num_actors))
        return ray.data.ActorPoolStrategy(min_size=initial, max_size=self.num_actors, initial_size=initial)


HEAD = "node:__internal_head__"  # the resource Ray gives the head node only
_EPS = 1e-9  # resource amounts are floats (0.5 GPU): floor(x / per) without 0.999... rounding down


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each alive node (CPU, GPU, custom ones, and ``HEAD`` on the head)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def plan_resources(res: ResourceConfig, nodes: Sequence[Mapping[str, float]] | None = None, device: str = "auto") -> Plan:
    """Size the actor pool to the cluster's nodes (``nodes``: one resource dict per node; default:
    the alive nodes of the connected cluster) for the job's ``device`` (``auto``: GPUs where the
    cluster has them; ``cpu``: a CPU plan on any cluster; ``cuda``: GPUs, or an error without).

    An actor runs on one node, so its CPUs, GPUs and threads must fit one node, not the cluster's
    totals. GPU clusters: one actor per ``gpus_per_actor`` (default 1) GPU on each node, with at
    most one CPU, and never more than the node's CPUs per actor. CPU only: actors are counted on
    the workers (on the head only in a one-node cluster); each actor runs ``threads`` torch
    threads, as many as the smallest host gives one actor (8-15 on big nodes), and reserves one CPU
    fewer, so each node hosts ``cpus // threads`` actors and the reads on that node still find a
    free CPU (an actor pool that takes every CPU starves its own input). A 2-core laptop gets one
    actor with 2 threads that reserves 1 CPU; a head with 0 CPUs and two 2-CPU workers get one such
    actor each.
    """
    nodes = [dict(n) for n in (cluster_nodes() if nodes is None else nodes)]
    if device == "cpu":
        if res.gpus_per_actor > 0:
            raise RaydetectError("--gpus-per-actor reserves GPUs that --device cpu would leave idle; give one or the other")
        plan = _cpu_plan(res, nodes)
    elif device.startswith("cuda") or res.gpus_per_actor > 0 or any(n.get("GPU", 0) >= 1 for n in nodes):
        plan = _gpu_plan(res, nodes)
    else:
        plan = _cpu_plan(res, nodes)
    return replace(plan, pass_memory_mb=res.pass_memory_mb)


def _gpu_plan(res: ResourceConfig, nodes: list[dict[str, float]]) -> Plan:
    per = res.gpus_per_actor or 1.0
    # (node CPUs, GPU actors the node holds) for each node with enough GPUs
    hosts = [(n.get("CPU", 0.0), int(n["GPU"] / per + _EPS)) for n in nodes if n.get("GPU", 0) + _EPS >= per]
    if not hosts:
        gpus = sum(n.get("GPU", 0) for n in nodes)
        raise RaydetectError(f"asked for {per:g} GPU per actor but no node has that many; the cluster has {gpus:g} GPUs")
    if res.cpus_per_actor:
        cpus = res.cpus_per_actor
        hosts = [(c, min(k, int(c / cpus + _EPS))) for c, k in hosts]
        if not any(k for _, k in hosts):
            raise RaydetectError(f"{cpus:g} CPUs per actor: no GPU node has that many CPUs per GPU actor")
    else:  # one CPU each, less where a node has fewer CPUs than GPU actors
        cpus = min(1.0, *(c / k for c, k in hosts))
    fit = sum(k for _, k in hosts)
    threads = max(1, min(4, *(int(c // k) for c, k in hosts if k)))
    actors = res.num_actors or fit
    return Plan(actors, cpus, per, threads, res.batch_size or 64, "cuda", min(actors, fit))


def _cpu_plan(res: ResourceConfig, nodes: list[dict[str, float]]) -> Plan:
    with_cpus = [n for n in nodes if n.get("CPU", 0) >= 1]
    if not with_cpus:
        raise RaydetectError("no node of the cluster has a CPU (an autoscaling cluster with no worker yet?)")
    total = sum(int(n["CPU"]) for n in with_cpus)
    # The head schedules (GCS, job drivers): its CPUs count for actors only when it is the only node.
    sizes = [int(n["CPU"]) for n in with_cpus if not n.get(HEAD)] or [int(n["CPU"]) for n in with_cpus]
    if res.num_actors:  # share each host's CPUs among the actors it will hold
        share = math.ceil(res.num_actors / len(sizes))
        threads = min(max(1, s // share) for s in sizes)
    else:
        threads = min(s // max(1, s // 8) for s in sizes)
    if res.cpus_per_actor:
        cpus = res.cpus_per_actor
        threads = max(threads, math.ceil(cpus))
        slots = [int(s / cpus + _EPS) for s in sizes]
        if not any(slots):
            raise RaydetectError(f"{cpus:g} CPUs per actor: no node has that many (the largest has {max(sizes)})")
    else:
        cpus = float(max(1, threads - 1))
        slots = [s // threads for s in sizes]
    actors = res.num_actors or sum(slots)
    # Keep a CPU for reading: count only the actors that can run at once.
    running = min(actors, sum(slots))
    while running and running * cpus >= total:
        running -= 1
    if not running:
        raise RaydetectError(f"{cpus:g} CPUs per actor leaves none of the cluster's {total} CPUs for reading data")
    return Plan(res.num_actors or running, cpus, 0.0, threads, res.batch_size or 16, "cpu", running)


def map_actors(ds: Any, stage: type, args: tuple[Any, ...], plan: Plan, **kwargs: Any) -> Any:
    """``ds.map_batches`` with a stage class on an actor pool sized and resourced by ``plan``."""
    return ds.map_batches(
        stage,
        fn_constructor_args=args,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=plan.compute(),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        runtime_env=actor_runtime_env(plan.pass_memory_mb),
        **kwargs,
    )
