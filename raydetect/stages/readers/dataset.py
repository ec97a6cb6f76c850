"""A ``ray.data.Dataset`` handed over from Python: one image per row, in ``image_column`` (encoded
bytes, Hugging Face ``{"bytes", "path"}`` structs, or uint8 arrays), with a stable ``id_column``
(the resume key), and optionally ``label_column`` and a ``path`` column. Not a --kind: it has no URI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from raydetect.errors import RaydetectError
from raydetect.images import Preprocess
from raydetect.stages.readers import Reader
from raydetect.stages.rows import rows_to_batch


@dataclass(frozen=True)
class DatasetSource:
    dataset: Any
    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"

    def describe(self) -> dict[str, Any]:
        return {"dataset": "ray.data.Dataset", "image_column": self.image_column, "id_column": self.id_column,
                "label_column": self.label_column}  # fmt: skip


class DatasetReader(Reader):
    """Ray Data stage: a Dataset's rows -> the reader's rows (one per input, errors included),
    leaving out ids in ``done`` (resume)."""

    name = "dataset"

    def __init__(self, src: DatasetSource, pre: Preprocess, done_ref: Any = None) -> None:
        super().__init__("", pre, src.image_column, src.id_column, src.label_column)
        self.done_ref = done_ref

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = ray.get(self.done_ref) if self.done_ref is not None else set()
        rows = []
        for i in range(len(batch[self.id_column])):
            rid = str(batch[self.id_column][i])
            if rid in done:
                continue
            path = str(batch["path"][i]) if "path" in batch else ""
            label = batch[self.label_column][i] if self.label_column in batch else None
            label = -1 if label is None or (isinstance(label, float) and np.isnan(label)) else int(label)
            rows.append(self.decoded_row(rid, path, label, batch[self.image_column][i]))
        if rows:
            return rows_to_batch(rows)
        pre = self.pre  # every row done already: no rows, the reader's columns
        return {"id": np.array([], object), "path": np.array([], object), "label": np.array([], np.int64),
                "image": np.zeros((0, pre.channels, pre.crop, pre.crop), np.float32), "status": np.array([], object),
                "error": np.array([], object)}  # fmt: skip


def read_dataset(src: DatasetSource, pre: Preprocess, skip_ids: set[str] | None = None) -> Any:
    """The reader's rows for a ``ray.data.Dataset`` (see :class:`DatasetSource`)."""
    columns = src.dataset.columns()
    for role, col in (("image", src.image_column), ("id", src.id_column)):
        if col not in columns:
            raise RaydetectError(
                f"the dataset has no {role} column {col!r} (columns: {', '.join(columns)}); "
                + ("name it with image_column=" if role == "image" else "give each row a stable id (the resume key): id_column=")
            )
    done_ref = ray.put(skip_ids) if skip_ids else None
    return src.dataset.map_batches(DatasetReader(src, pre, done_ref), batch_size=8, batch_format="numpy")
