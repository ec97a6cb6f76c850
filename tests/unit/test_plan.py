from __future__ import annotations

import pytest

from raydetect.config import ResourceConfig
from raydetect.errors import RaydetectError
from raydetect.stages.plan import plan_resources


def test_a_two_core_laptop_keeps_a_cpu_for_reads() -> None:
    plan = plan_resources(ResourceConfig(), {"CPU": 2})
    assert (plan.num_actors, plan.threads, plan.num_cpus, plan.num_gpus, plan.device) == (1, 2, 1.0, 0.0, "cpu")
    assert plan.batch_size == 16


def test_big_cpu_nodes_get_several_actors_that_leave_cpus_free() -> None:
    plan = plan_resources(ResourceConfig(), {"CPU": 32})
    assert plan.num_actors == 4 and plan.threads == 8
    assert plan.num_actors * plan.num_cpus < 32


def test_gpu_clusters_get_one_actor_per_gpu_and_bigger_batches() -> None:
    plan = plan_resources(ResourceConfig(), {"CPU": 16, "GPU": 4})
    assert (plan.num_actors, plan.num_gpus, plan.device, plan.batch_size) == (4, 1.0, "cuda", 64)
    half = plan_resources(ResourceConfig(gpus_per_actor=0.5, batch_size=32), {"CPU": 16, "GPU": 2})
    assert half.num_actors == 4 and half.batch_size == 32


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(RaydetectError, match="GPU"):
        plan_resources(ResourceConfig(gpus_per_actor=1), {"CPU": 8})
    with pytest.raises(RaydetectError, match="reading data"):
        plan_resources(ResourceConfig(cpus_per_actor=2), {"CPU": 2})
