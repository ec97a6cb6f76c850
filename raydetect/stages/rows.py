"""Row dicts <-> the batch formats Ray Data moves between stages."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """A pyarrow Table from row dicts; 1-D float arrays become fixed-size lists (plain Parquet, no
    Ray extension types), so outputs read back with pyarrow or pandas alone."""
    import pyarrow as pa

    if not rows:
        return pa.table({})
    cols: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            flat = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in values])
            cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), values[0].size)
        else:
            cols[key] = pa.array(values)
    return pa.table(cols)


def cell(batch: dict[str, np.ndarray], col: str, i: int, default: Any) -> Any:
    """``batch[col][i]`` as a Python value, or ``default`` when the column is absent."""
    if col not in batch:
        return default
    value = batch[col][i]
    return value.item() if isinstance(value, np.generic) else value
