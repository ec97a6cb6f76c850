"""One local Ray cluster shared by every test in tests/ray."""

from __future__ import annotations

import logging
import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.data import DataContext

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False
    yield ctx
    ray.shutdown()
