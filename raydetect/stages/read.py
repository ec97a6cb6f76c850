"""Reading any source into one row schema, as Ray Data tasks.

Rows: id (str, stable across runs: the resume key), path (str), label (int64, -1 if unknown),
image (float32 (C, H, W) in [0,1]; zeros on error rows), status ("ok" | "error"), error (str).
Every input becomes exactly one row: a file that cannot be read or decoded is an error row
with its reason, never a silent gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydetect.config import Source
from raydetect.errors import RaydetectError
from raydetect.images import ImageError, Preprocess, decode_image, digits_split, imagenet_label, wnid_to_index
from raydetect.stages.rows import rows_to_batch
from raydetect.store import display_path, fs_path, list_files, open_filesystem

# Kinds whose row ids are known only once a work item is read: resume skips rows, not items.
PER_ROW_SKIP = ("parquet",)


def _is_parquet(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


def detect_kind(source: Source, files: list[str]) -> str:
    if source.kind != "auto":
        return source.kind
    if source.uri == "digits":
        return "digits"
    if files and all(_is_parquet(f) for f in files):
        return "parquet"
    labelled = sum(1 for f in files if Path(f).parent.name in wnid_to_index())
    return "imagenet" if files and labelled == len(files) else "folder"


def plan_inputs(source: Source) -> tuple[str, list[dict[str, Any]]]:
    """List the work items of a source in the driver (cheap: names and metadata only).

    Folders give one item per file (every file, image extension or not: a stray file becomes an
    error row rather than silently vanishing); Parquet gives one item per row group.
    """
    source.validate()
    if source.kind == "digits" or (source.kind == "auto" and source.uri == "digits"):
        (_, _), (x_te, _) = digits_split()
        stop = len(x_te) if source.limit is None else min(source.offset + source.limit, len(x_te))
        return "digits", [
            {"item": f"digits-test-{i}", "path": "sklearn:digits/test", "index": i} for i in range(source.offset, stop)
        ]
    fs, files = list_files(source.uri)
    kind = detect_kind(source, files)
    if kind == "parquet":
        return kind, _parquet_items(fs, [f for f in files if _is_parquet(f)])
    _, root = open_filesystem(source.uri)
    rel_base = root if fs.get_file_info(root).type.name == "Directory" else str(Path(root).parent)
    items = [{"item": _relative_id(f, rel_base), "path": display_path(source.uri, f), "index": 0} for f in files]
    stop = None if source.limit is None else source.offset + source.limit
    return kind, items[source.offset : stop]


def _parquet_items(fs: Any, files: list[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    items: list[dict[str, Any]] = []
    for f in files:
        try:
            meta = pq.ParquetFile(fs.open_input_file(f)).metadata
            offset = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                items.append({"item": f"{f}#rg{g}", "path": f, "index": g, "offset": offset, "rows": rows})
                offset += rows
        except Exception as exc:  # unreadable footer: one error row for the whole file
            items.append({"item": f, "path": f, "index": -1, "offset": 0, "rows": 1, "error": f"unreadable Parquet file: {exc}"})
    return items


def _relative_id(path: str, base: str) -> str:
    rel = path[len(base) :].lstrip("/") if path.startswith(base) else path
    return rel or Path(path).name


class ReadImages:
    """Ray Data stage: work items -> decoded image rows (one per image, errors included)."""

    def __init__(self, uri: str, kind: str, pre: Preprocess, image_column: str = "image", id_column: str = "id",
                 label_column: str = "label") -> None:  # fmt: skip
        self.uri = uri
        self.kind = kind
        self.pre = pre
        self.image_column = image_column
        self.id_column = id_column
        self.label_column = label_column
        self._fs: Any = None
        self._digits: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = open_filesystem(self.uri)[0]
        return self._fs

    def _error_row(self, rid: str, path: str, label: int, reason: str) -> dict[str, Any]:
        empty = np.zeros((self.pre.channels, self.pre.crop, self.pre.crop), np.float32)
        return {"id": rid, "path": path, "label": label, "image": empty, "status": "error", "error": reason}

    def _decoded_row(self, rid: str, path: str, label: int, data: bytes | None) -> dict[str, Any]:
        try:
            return {"id": rid, "path": path, "label": label, "image": decode_image(data, self.pre), "status": "ok", "error": ""}
        except ImageError as exc:
            return self._error_row(rid, path, label, str(exc))

    def _file_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        path = item["path"]
        label = imagenet_label(path) if self.kind == "imagenet" else -1
        try:
            with self.fs.open_input_stream(fs_path(path)) as f:
                data = f.read()
        except OSError as exc:
            return [self._error_row(item["item"], path, label, f"cannot read file: {exc}")]
        return [self._decoded_row(item["item"], path, label, data)]

    def _parquet_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        if item.get("error"):
            return [self._error_row(item["item"], item["path"], -1, item["error"])]
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(item["path"]))
            names = set(pf.schema_arrow.names)
            if self.image_column not in names:
                raise ValueError(f"no column {self.image_column!r} (columns: {', '.join(sorted(names))}); set --image-column")
            cols = [c for c in (self.image_column, self.id_column, self.label_column) if c in names]
            table = pf.read_row_group(item["index"], columns=cols)
        except Exception as exc:
            return [self._error_row(item["item"], item["path"], -1, f"unreadable row group: {exc}")]
        data = table.column(self.image_column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column in cols else None
        labels = table.column(self.label_column).to_pylist() if self.label_column in cols else None
        rows = []
        for i, blob in enumerate(data):
            rid = str(ids[i]) if ids is not None else f"{item['path']}#{item['offset'] + i}"
            label = int(labels[i]) if labels is not None and labels[i] is not None else -1
            if isinstance(blob, dict):  # Hugging Face's image cells: {"bytes": ..., "path": ...}
                blob = blob.get("bytes")
            rows.append(self._decoded_row(rid, item["path"], label, blob))
        return rows

    def _digit_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        if self._digits is None:
            self._digits = digits_split()[1]
        x, y = self._digits
        i = item["index"]
        return [{"id": item["item"], "path": item["path"], "label": int(y[i]), "image": x[i], "status": "ok", "error": ""}]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        read = {"parquet": self._parquet_rows, "digits": self._digit_rows}.get(self.kind, self._file_rows)
        rows: list[dict[str, Any]] = []
        for j in range(len(batch["item"])):
            rows += read({k: v[j] for k, v in batch.items()})
        return rows_to_batch(rows)


def read_source(source: Source, pre: Preprocess, skip_ids: set[str] | None = None, parallelism: int | None = None) -> Any:
    """A Ray Dataset of decoded image rows for ``source`` (schema at the top of this module).

    ``skip_ids`` drops work items already done (resume); for Parquet the skip happens per row
    after reading, since row ids are only known then. None when nothing is left to read.
    """
    return read_inputs(source, pre, skip_ids, parallelism)[0]


def read_inputs(
    source: Source, pre: Preprocess, skip_ids: set[str] | None = None, parallelism: int | None = None
) -> tuple[Any, int | None]:
    """:func:`read_source`, and how many inputs it will yield (None where only reading tells)."""
    kind, items = plan_inputs(source)
    if not items:
        raise RaydetectError(f"no input files under {source.uri}")
    if skip_ids and kind not in PER_ROW_SKIP:
        items = [it for it in items if it["item"] not in skip_ids]
    if not items:
        return None, 0
    # Small blocks: decoding is cheap, but images are big; keep blocks near 32 images.
    blocks = parallelism or max(1, min(len(items) // 32 + 1, 4096))
    ds = ray.data.from_items(items, override_num_blocks=min(blocks, len(items)))
    # An instance (not the class) runs as stateless tasks: reading needs no warm-up.
    reader = ReadImages(source.uri, kind, pre, source.image_column, source.id_column, source.label_column)
    ds = ds.map_batches(reader, batch_size=8, batch_format="numpy")
    if skip_ids and kind in PER_ROW_SKIP:
        ds = ds.filter(lambda r: r["id"] not in skip_ids)
    return ds, _count(kind, items, skip_ids)


def _count(kind: str, items: list[dict[str, Any]], skip_ids: set[str] | None) -> int | None:
    if kind == "parquet":
        rows = sum(int(it.get("rows", 1)) for it in items)
        return max(rows - len(skip_ids or ()), 0)
    return None if kind in PER_ROW_SKIP else len(items)
