"""Reading any source into one row schema, as Ray Data tasks, through the reader its kind names.

Rows: id (str, stable across runs: the resume key), path (str), label (int64, -1 if unknown),
image (float32 (C, H, W) in [0,1]; zeros on error rows), status ("ok" | "error"), error (str).
Every input becomes exactly one row: a file that cannot be read or decoded is an error row
with its reason, never a silent gap.

Formats are ``raydetect.registry.READERS``, one class each under ``stages/readers/`` (folders of
image files, ImageNet folders, Parquet with encoded bytes or Hugging Face image cells, WebDataset
shards, sklearn's digits), locally or on s3:// and gs://; a ``ray.data.Dataset`` handed over from
Python goes through ``readers.dataset``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import ray

from raydetect import registry
from raydetect.config import Source
from raydetect.errors import RaydetectError
from raydetect.images import ImageError, Preprocess, decode_image
from raydetect.stages.readers import Reader, decode_cell, encoded_bytes
from raydetect.stages.readers.dataset import DatasetSource, read_dataset
from raydetect.stages.readers.parquet import is_parquet
from raydetect.stages.rows import rows_to_batch
from raydetect.store import list_files

ROWS_PER_BATCH = 32  # rows a reader yields at once: a shard or row group is never held decoded whole


def detect_kind(source: Source, files: list[str]) -> str:
    """The reader --kind auto picks: the first in the registry's order whose ``detects`` says yes."""
    if source.kind != "auto":
        return source.kind
    for name, spec in registry.READERS.items():
        if spec.auto and spec.load().detects(source, files):
            return name
    return "folder"


def plan_inputs(source: Source) -> tuple[str, list[dict[str, Any]]]:
    """The source's kind and work items, listed in the driver (cheap: names and metadata only)."""
    source.validate()
    for name, spec in registry.READERS.items():  # readers that need no listing (digits) decide on the URI alone
        cls = spec.load()
        if not cls.lists_files and (source.kind == name or (source.kind == "auto" and cls.detects(source, []))):
            return name, cls.plan(source, None, [])
    fs, files = list_files(source.uri)
    kind = detect_kind(source, files)
    return kind, registry.READERS[kind].load().plan(source, fs, files)


def make_reader(source: Source, kind: str, pre: Preprocess, decode: bool = True) -> Reader:
    """The reader of ``kind`` for ``source``'s files and columns."""
    cls = registry.READERS[kind].load()
    return cls(source.uri, pre, source.image_column, source.id_column, source.label_column, decode)


class ReadImages:
    """Ray Data stage: work items -> decoded image rows (one per image, errors included), by its reader."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        items = ({k: v[j] for k, v in batch.items()} for j in range(len(batch["item"])))
        yield from batched((row for item in items for row in self.reader.rows(item)), ROWS_PER_BATCH)


def batched(rows: Iterable[dict[str, Any]], n: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows as numpy batches of ``n`` (the last one shorter): a shard is never held decoded whole."""
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == n:
            yield rows_to_batch(chunk)
            chunk = []
    if chunk:
        yield rows_to_batch(chunk)


def decode_rows(batch: dict[str, np.ndarray], pre: Preprocess) -> dict[str, np.ndarray]:
    """A batch read with ``decode=False`` -> the reader's decoded rows (a decode failure becomes an
    error row, as in the reader); a batch already decoded is returned as it is.

    CPU jobs decode in the model actor, between its batches: decoding in read tasks ran beside
    the actor's torch threads on the same cores and slowed them, and moved float images (12x
    the JPEG) through the object store (see BENCHMARKS.md).
    """
    images = batch["image"]
    if images.dtype != object:
        return batch
    status, error = batch["status"].copy(), batch["error"].copy()
    out = np.zeros((len(images), pre.channels, pre.crop, pre.crop), np.float32)
    for i, cell in enumerate(images):
        if status[i] != "ok":
            continue
        try:
            out[i] = decode_image(cell, pre)
        except ImageError as exc:
            status[i], error[i] = "error", str(exc)
    return {**batch, "image": out, "status": status, "error": error}


def read_source(
    source: Source,
    pre: Preprocess,
    skip_ids: set[str] | None = None,
    parallelism: int | None = None,
    keep_ids: set[str] | None = None,
) -> Any:
    """A Ray Dataset of decoded image rows for ``source`` (schema at the top of this module).

    ``skip_ids`` drops work items already done (resume); for Parquet the skip happens per row
    after reading, since row ids are only known then. ``keep_ids`` reads only those files (not
    for Parquet). None when nothing is left to read.
    """
    return read_inputs(source, pre, skip_ids, parallelism, keep_ids)[0]


def _work_items(
    source: Source, skip_ids: set[str] | None, keep_ids: set[str] | None
) -> tuple[str, type[Reader], list[dict[str, Any]]]:
    """The source's kind, reader class and the work items left to read (``keep_ids`` only; not ``skip_ids``)."""
    kind, items = plan_inputs(source)
    if not items:
        raise RaydetectError(f"no input files under {source.uri}")
    cls = registry.READERS[kind].load()
    if keep_ids is not None:
        if cls.per_row_skip:
            raise RaydetectError(f"selecting images by id needs a folder input, not {kind}")
        items = [it for it in items if it["item"] in keep_ids]
    if skip_ids and not cls.per_row_skip:
        items = [it for it in items if it["item"] not in skip_ids]
    return kind, cls, items


def read_inputs(
    source: Source,
    pre: Preprocess,
    skip_ids: set[str] | None = None,
    parallelism: int | None = None,
    keep_ids: set[str] | None = None,
    decode: bool = True,
) -> tuple[Any, int | None]:
    """:func:`read_source`, and how many inputs it will yield (None where only reading tells).

    ``decode=False``: image rows carry encoded bytes, for a stage that calls :func:`decode_rows`
    (sklearn's digits are arrays and stay decoded)."""
    kind, cls, items = _work_items(source, skip_ids, keep_ids)
    if not items:
        return None, 0
    # Small blocks: decoding is cheap, but images are big; keep blocks near 32 images.
    blocks = parallelism or max(1, min(len(items) // 32 + 1, 4096))
    ds = ray.data.from_items(items, override_num_blocks=min(blocks, len(items)))
    # An instance (not the class) runs as stateless tasks: reading needs no warm-up.
    reader = ReadImages(make_reader(source, kind, pre, decode))
    ds = ds.map_batches(reader, batch_size=8, batch_format="numpy")
    if skip_ids and cls.per_row_skip:
        ds = ds.filter(lambda r: r["id"] not in skip_ids)
    return ds, cls.count(items, skip_ids)


def read_here(
    source: Source, pre: Preprocess, batch_size: int, skip_ids: set[str] | None = None
) -> tuple[Iterator[dict[str, np.ndarray]], int | None]:
    """The rows :func:`read_inputs` yields, read in this process (no Ray) in batches of ``batch_size``,
    and how many inputs that is: the same readers, the same error rows, the same resume."""
    kind, cls, items = _work_items(source, skip_ids, None)
    reader = make_reader(source, kind, pre)

    rows = (row for item in items for row in reader.rows(item) if not skip_ids or row["id"] not in skip_ids)
    return batched(rows, batch_size), cls.count(items, skip_ids) if items else 0


__all__ = [
    "DatasetSource", "ReadImages", "decode_cell", "decode_rows", "detect_kind", "encoded_bytes", "is_parquet", "make_reader",
    "plan_inputs", "read_dataset", "read_here", "read_inputs", "read_source",
]  # fmt: skip
