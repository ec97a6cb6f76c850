"""The row layout of every output: one typed schema each, which the actors write and its readers read.

* ``ATTACK_ROWS``: ``raydetect attack``, one clean row per input and one adversarial row per attack
  of each correctly classified image, the image as lossless 8-bit PNG.
* ``FEATURE_ROWS``: ``raydetect features`` and the fused attack+feature job, one descriptor vector
  per explained row (rows that were not explained pass through with a status and zeros).
* ``AUDIT_ROWS``: ``raydetect audit``, one score and verdict per input.
* ``EVALUATION_ROWS``: ``raydetect evaluate``, clean and adversarial rows scored by each detector.

Every input is one row whatever happens to it: ``status`` is ``ok``, ``skipped`` or ``error`` and
``error`` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

FEATURES = "features"  # the descriptor column: a fixed-size float32 list, its size the descriptor's


@dataclass(frozen=True)
class Output:
    """One output's columns: name, Arrow type and the value a new row starts with."""

    name: str
    columns: tuple[tuple[str, pa.DataType, Any], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _, _ in self.columns)

    def schema(self, dim: int | None = None) -> pa.Schema:
        """The Arrow schema; ``dim``: the descriptor's size, for outputs with a ``features`` column."""
        return pa.schema([(c, pa.list_(pa.float32(), dim or -1) if c == FEATURES else t) for c, t, _ in self.columns])

    def row(self, **values: Any) -> dict[str, Any]:
        """A row with every column: the defaults, then ``values`` (a column this output lacks is a bug)."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"{self.name} rows have no column {', '.join(sorted(unknown))}")
        return {c: values.get(c, default) for c, _, default in self.columns}

    def table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        """Rows (made by :meth:`row`) as a table of this schema; an empty list gives an empty table."""
        if not rows:
            return pa.table({})
        cols: dict[str, Any] = {}
        for c, t, _ in self.columns:
            values = [r[c] for r in rows]
            if c == FEATURES:  # plain Parquet, no Ray extension types: outputs read back with pyarrow alone
                dim = max(np.asarray(v).size for v in values)
                flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in values])
                cols[c] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
            else:
                cols[c] = pa.array(values, t)
        return pa.table(cols)


_STR, _I64, _F64, _BOOL, _BIN = pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.binary()
_INPUT = (("id", _STR, ""), ("pair_id", _STR, ""), ("kind", _STR, "clean"), ("path", _STR, ""), ("label", _I64, -1))
_ATTACK = (("attack", _STR, ""), ("method", _STR, ""), ("mode", _STR, ""), ("eps", _F64, 0.0))
_STATUS = (("status", _STR, "ok"), ("error", _STR, ""))

ATTACK_ROWS = Output("attack", (
    *_INPUT, *_STATUS, *_ATTACK, ("alpha", _F64, 0.0), ("steps", _I64, 0), ("target", _I64, -1),
    ("clean_pred", _I64, -1), ("clean_conf", _F64, 0.0), ("pred", _I64, -1), ("conf", _F64, 0.0),
    ("correct", _BOOL, False), ("success", _BOOL, False), ("success_float", _BOOL, False), ("linf", _F64, 0.0),
    ("passes", _F64, 0.0), ("png", _BIN, b""),
))  # fmt: skip
FEATURE_ROWS = Output("feature", (
    *_INPUT, *_ATTACK, ("steps", _I64, 0), *_STATUS, ("pred", _I64, -1), ("conf", _F64, 0.0),
    ("correct", _BOOL, False), ("success", _BOOL, False), (FEATURES, pa.list_(pa.float32()), None), ("map", _BIN, b""),
))  # fmt: skip
AUDIT_ROWS = Output("audit", (
    ("id", _STR, ""), ("path", _STR, ""), ("label", _I64, -1), ("pred", _I64, -1), ("pred_name", _STR, ""),
    ("conf", _F64, 0.0), ("score", _F64, float("nan")), ("adversarial", _BOOL, False), *_STATUS,
))  # fmt: skip
EVALUATION_ROWS = Output("evaluation", (
    ("id", _STR, ""), ("pair_id", _STR, ""), ("kind", _STR, "clean"), *_ATTACK, *_STATUS, ("label", _I64, -1),
    ("pred", _I64, -1), ("correct", _BOOL, False), ("success", _BOOL, False), ("score", _F64, float("nan")),
    ("flagged", _BOOL, False), ("passes", _F64, 0.0), ("linf", _F64, 0.0), ("detector", _STR, ""),
))  # fmt: skip
