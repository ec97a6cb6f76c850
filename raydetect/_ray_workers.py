"""Setup hook for the worker processes of a local Ray (see ``stages.plan.init_ray``).

A module of its own because every worker imports it at start-up: it must not pull in torch.
"""

from __future__ import annotations

import logging


def quiet_local_workers() -> None:
    """Without the dashboard a local Ray has no state API, and Ray Train's placement-group
    cleaner warns that it cannot query it about once a second while a fit runs.

    (Ray Train's and Ray Data's routine INFO lines cannot be lowered here: both libraries set
    their loggers up when they are imported, after this hook.)
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
