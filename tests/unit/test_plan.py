from __future__ import annotations

import pytest

from raydetect.config import ResourceConfig
from raydetect.detect.ray_fit import cpus_per_worker
from raydetect.errors import RaydetectError
from raydetect.stages.plan import HEAD, Plan, plan_resources


def head(cpus: float, **other: float) -> dict[str, float]:
    return {"CPU": cpus, HEAD: 1.0, **other}


def place(plan: Plan, nodes: list[dict[str, float]]) -> list[int]:
    """Place the plan's initial actors as Ray Data's SPREAD scheduling does (each on the node with
    the most free CPUs that fits it, the head included); check that a CPU is left for reading and
    that the threads of a node's actors fit its CPUs. Returns the actors per node."""
    free = [dict(n) for n in nodes]
    where = [0] * len(nodes)
    for _ in range(plan.initial_actors):
        fits = [
            i for i, n in enumerate(free) if n.get("CPU", 0) + 1e-9 >= plan.num_cpus and n.get("GPU", 0) + 1e-9 >= plan.num_gpus
        ]
        assert fits, f"actor {sum(where) + 1} of {plan.initial_actors} fits on no node: {free}"
        i = max(fits, key=lambda i: free[i].get("CPU", 0))
        free[i]["CPU"] = free[i].get("CPU", 0) - plan.num_cpus
        free[i]["GPU"] = free[i].get("GPU", 0) - plan.num_gpus
        where[i] += 1
    assert sum(n.get("CPU", 0) for n in free) >= 1, "no CPU left for reading"
    if plan.device == "cpu":
        for n, k in zip(nodes, where, strict=True):
            assert plan.threads * k <= n["CPU"] or not k, f"{k} actors x {plan.threads} threads on {n}"
    return where


def test_a_two_core_laptop_keeps_a_cpu_for_reads() -> None:
    plan = plan_resources(ResourceConfig(), [head(2)])
    assert (plan.num_actors, plan.threads, plan.num_cpus, plan.num_gpus, plan.device) == (1, 2, 1.0, 0.0, "cpu")
    assert plan.batch_size == 16 and plan.initial_actors == 1


def test_big_cpu_nodes_get_several_actors_that_leave_cpus_free() -> None:
    plan = plan_resources(ResourceConfig(), [head(32)])
    assert plan.num_actors == 4 and plan.threads == 8
    assert plan.num_actors * plan.num_cpus < 32


def test_gpu_clusters_get_one_actor_per_gpu_and_bigger_batches() -> None:
    plan = plan_resources(ResourceConfig(), [head(16, GPU=4)])
    assert (plan.num_actors, plan.num_gpus, plan.device, plan.batch_size) == (4, 1.0, "cuda", 64)
    half = plan_resources(ResourceConfig(gpus_per_actor=0.5, batch_size=32), [head(16, GPU=2)])
    assert half.num_actors == 4 and half.batch_size == 32


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(RaydetectError, match="GPU"):
        plan_resources(ResourceConfig(gpus_per_actor=1), [head(8)])
    with pytest.raises(RaydetectError, match="reading data"):
        plan_resources(ResourceConfig(cpus_per_actor=2), [head(2)])
    with pytest.raises(RaydetectError, match="no node has that many"):  # 4 CPUs in all, but 2 per node
        plan_resources(ResourceConfig(cpus_per_actor=3), [head(0), {"CPU": 2}, {"CPU": 2}])
    with pytest.raises(RaydetectError, match="no node has that many"):  # 2 GPUs in all, but 1 per node
        plan_resources(ResourceConfig(gpus_per_actor=2), [head(0), {"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 1}])
    with pytest.raises(RaydetectError, match="no node of the cluster has a CPU"):
        plan_resources(ResourceConfig(), [head(0)])


def test_actors_are_sized_to_one_node_not_to_the_cluster_totals() -> None:
    """A head with 0 CPUs and two 2-CPU workers: 4 CPUs in all. Planned from the totals, one actor
    would reserve 3 CPUs, which no node has (the job would wait forever); per node, each worker
    holds one 2-thread actor that reserves 1 CPU."""
    nodes = [head(0), {"CPU": 2, "node_a": 1}, {"CPU": 2, "node_b": 1}]
    plan = plan_resources(ResourceConfig(), nodes)
    assert (plan.num_actors, plan.initial_actors, plan.num_cpus, plan.threads) == (2, 2, 1.0, 2)
    assert place(plan, nodes) == [0, 1, 1]


def test_heterogeneous_workers_each_host_actors_that_fit_them() -> None:
    nodes = [head(0), {"CPU": 2}, {"CPU": 4}]
    plan = plan_resources(ResourceConfig(), nodes)
    assert (plan.num_actors, plan.threads, plan.num_cpus) == (3, 2, 1.0)  # one on the 2-CPU node, two on the 4
    assert place(plan, nodes) == [0, 1, 2]

    big = [head(1), {"CPU": 16}, {"CPU": 16}]  # a small head does not shrink the workers' actors
    plan = plan_resources(ResourceConfig(), big)
    assert (plan.num_actors, plan.threads, plan.num_cpus) == (4, 8, 7.0)
    place(plan, big)


def test_cpus_per_actor_that_fit_one_per_node_give_one_actor_per_worker() -> None:
    nodes = [head(1), {"CPU": 2}, {"CPU": 2}]  # 5 CPUs: two 2-CPU actors leave the head's CPU for reads
    plan = plan_resources(ResourceConfig(cpus_per_actor=2), nodes)
    assert (plan.num_actors, plan.num_cpus, plan.threads) == (2, 2.0, 2)
    assert place(plan, nodes) == [0, 1, 1]
    # Without the head's CPU two such actors would take every CPU: one runs, the other node reads.
    plan = plan_resources(ResourceConfig(cpus_per_actor=2), [head(0), {"CPU": 2}, {"CPU": 2}])
    assert plan.num_actors == plan.initial_actors == 1


def test_explicit_actor_counts_share_the_nodes() -> None:
    plan = plan_resources(ResourceConfig(num_actors=4), [head(2)])
    assert (plan.num_actors, plan.initial_actors, plan.threads, plan.num_cpus) == (4, 1, 1, 1.0)
    nodes = [head(0), {"CPU": 8}, {"CPU": 8}]
    plan = plan_resources(ResourceConfig(num_actors=4), nodes)
    assert (plan.num_actors, plan.initial_actors, plan.threads, plan.num_cpus) == (4, 4, 4, 3.0)
    assert place(plan, nodes) == [0, 2, 2]


def test_gpu_nodes_among_cpu_nodes() -> None:
    nodes = [head(0), {"CPU": 8}, {"CPU": 4, "GPU": 1}, {"CPU": 16, "GPU": 2}]
    plan = plan_resources(ResourceConfig(), nodes)
    assert (plan.num_actors, plan.num_gpus, plan.num_cpus, plan.device) == (3, 1.0, 1.0, "cuda")
    assert plan.threads == 4  # 4 CPUs per GPU on the smaller node
    assert place(plan, nodes)[2:] == [1, 2]
    # A node with more GPUs than CPUs: each actor gets its share of the node's CPUs, not a whole one.
    dense = [head(0), {"CPU": 4, "GPU": 8}]
    plan = plan_resources(ResourceConfig(), dense)
    assert (plan.num_actors, plan.num_cpus, plan.threads) == (8, 0.5, 1)
    with pytest.raises(RaydetectError, match="CPUs per GPU actor"):
        plan_resources(ResourceConfig(cpus_per_actor=8), dense)
    plan = plan_resources(ResourceConfig(cpus_per_actor=2), dense)
    assert (plan.num_actors, plan.initial_actors) == (2, 2)


def test_ray_train_workers_get_cpus_that_one_node_has() -> None:
    nodes = [head(1), {"CPU": 2}, {"CPU": 2}]  # 5 CPUs, at most 2 per node
    assert cpus_per_worker(nodes, 1) == 2  # from the totals it was 4: no node has 4, the fit waited forever
    assert cpus_per_worker(nodes, 2) == 2  # one worker per node, the head's CPU left for data
    assert cpus_per_worker([head(0), {"CPU": 2}, {"CPU": 2}], 2) == 1  # 2 each would leave no CPU for data
    assert cpus_per_worker([head(2)], 1) == 1  # a laptop
    gpu = [head(0), {"CPU": 8}, {"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 1}]
    assert cpus_per_worker(gpu, 2, use_gpu=True) == 4  # GPU workers on GPU nodes, the CPU node feeds them
    with pytest.raises(RaydetectError, match="Ray Train needs 3"):
        cpus_per_worker(gpu, 3, use_gpu=True)
    with pytest.raises(RaydetectError, match="Ray Train needs"):
        cpus_per_worker([head(0), {"CPU": 1}], 1)
