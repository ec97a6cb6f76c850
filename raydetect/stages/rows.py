"""The actors' base class, and row dicts <-> the batch formats Ray Data moves between stages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from raydetect.models import ImageClassifier
from raydetect.models.runtime import set_threads, trim_heap
from raydetect.outputs import Output


class Stage:
    """A Ray Data actor (or, called directly, a stage run in this process): loads the model once, then
    maps each numpy batch to rows of its ``output`` (``raydetect.outputs``). Each call runs on the
    plan's torch threads (set per call: Ray may run ``__init__`` on another thread) and trims the
    heap after (glibc keeps the freed image buffers of a batch otherwise)."""

    output: Output

    def __init__(self, model_loader: Callable[[], ImageClassifier], threads: int | None = None) -> None:
        self.threads = threads
        self.model = model_loader()

    def rows(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def table(self, rows: list[dict[str, Any]]) -> Any:
        """The batch's rows as a pyarrow table of ``output`` (keys it lacks are left out)."""
        return self.output.table(rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        set_threads(self.threads)
        try:
            return self.table(self.rows(batch))
        finally:
            trim_heap()


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Column-major numpy batch from row dicts; 'image'-like array columns are stacked."""
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            out[key] = np.stack(values)
        elif isinstance(values[0], (bytes, str)) or values[0] is None:
            out[key] = np.array(values, dtype=object)
        else:
            out[key] = np.asarray(values)
    return out


def cell(batch: dict[str, np.ndarray], col: str, i: int, default: Any) -> Any:
    """``batch[col][i]`` as a Python value, or ``default`` when the column is absent."""
    if col not in batch:
        return default
    value = batch[col][i]
    return value.item() if isinstance(value, np.generic) else value


def table_to_batch(table: Any) -> dict[str, np.ndarray]:
    """A pyarrow Table as the numpy batch Ray Data hands the next stage (strings and bytes as objects)."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
