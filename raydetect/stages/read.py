"""Reading any source into one row schema, as Ray Data tasks.

Rows: id (str, stable across runs: the resume key), path (str), label (int64, -1 if unknown),
image (float32 (C, H, W) in [0,1]; zeros on error rows), status ("ok" | "error"), error (str).
Every input becomes exactly one row: a file that cannot be read or decoded is an error row
with its reason, never a silent gap.

Sources: folders of image files (ImageNet's ``<wnid>/<file>`` gives labels), Parquet with encoded
image bytes (Hugging Face's ``{"bytes", "path"}`` image cells included), WebDataset ``.tar``
shards, sklearn's digits, and a ``ray.data.Dataset`` handed over from Python
(:func:`read_dataset`); locally or on s3:// and gs://.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydetect.config import Source
from raydetect.errors import RaydetectError
from raydetect.images import (
    ImageError,
    Preprocess,
    decode_image,
    digits_split,
    imagenet_label,
    preprocess_pil,
    wnid_to_index,
)
from raydetect.stages.rows import rows_to_batch
from raydetect.store import display_path, fs_path, list_files, open_filesystem

# Kinds whose row ids are known only once a work item is read: resume skips rows, not items.
PER_ROW_SKIP = ("parquet", "webdataset")
# A WebDataset sample's image member, by extension, in order of preference.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif", "img")
WDS_LABEL_EXTS = ("cls", "label")
ROWS_PER_BATCH = 32  # rows a reader yields at once: a shard or row group is never held decoded whole


def is_parquet(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


def _is_tar(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def detect_kind(source: Source, files: list[str]) -> str:
    if source.kind != "auto":
        return source.kind
    if source.uri == "digits":
        return "digits"
    if files and all(is_parquet(f) for f in files):
        return "parquet"
    if files and all(_is_tar(f) for f in files):
        return "webdataset"
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
        return kind, _parquet_items(fs, [f for f in files if is_parquet(f)])
    _, root = open_filesystem(source.uri)
    rel_base = root if fs.get_file_info(root).type.name == "Directory" else str(Path(root).parent)
    items = [{"item": _relative_id(f, rel_base), "path": display_path(source.uri, f), "index": 0} for f in files]
    stop = None if source.limit is None else source.offset + source.limit
    return kind, items[source.offset : stop]


def _wds_split(name: str) -> tuple[str, str]:
    """WebDataset's rule: a member's key is its path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


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
                 label_column: str = "label", decode: bool = True) -> None:  # fmt: skip
        self.uri = uri
        self.decode = decode  # False: rows carry the encoded bytes; the model actor decodes (decode_rows)
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
        empty = np.zeros((self.pre.channels, self.pre.crop, self.pre.crop), np.float32) if self.decode else b""
        return {"id": rid, "path": path, "label": label, "image": empty, "status": "error", "error": reason}

    def _decoded_row(self, rid: str, path: str, label: int, data: Any) -> dict[str, Any]:
        try:
            image = decode_cell(data, self.pre) if self.decode else encoded_bytes(data)
            return {"id": rid, "path": path, "label": label, "image": image, "status": "ok", "error": ""}
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

    def _parquet_rows(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        if item.get("error"):
            yield self._error_row(item["item"], item["path"], -1, item["error"])
            return
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(item["path"]))
            names = set(pf.schema_arrow.names)
            if self.image_column not in names:
                raise ValueError(f"no column {self.image_column!r} (columns: {', '.join(sorted(names))}); set --image-column")
            cols = [c for c in (self.image_column, self.id_column, self.label_column) if c in names]
            table = pf.read_row_group(item["index"], columns=cols)
        except Exception as exc:
            yield self._error_row(item["item"], item["path"], -1, f"unreadable row group: {exc}")
            return
        data = table.column(self.image_column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column in cols else None
        labels = table.column(self.label_column).to_pylist() if self.label_column in cols else None
        for i, blob in enumerate(data):
            rid = str(ids[i]) if ids is not None else f"{item['path']}#{item['offset'] + i}"
            label = int(labels[i]) if labels is not None and labels[i] is not None else -1
            yield self._decoded_row(rid, item["path"], label, blob)

    def _tar_rows(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """WebDataset shard: one row per sample (members sharing a key), in the order stored.

        A shard that cannot be opened is one error row; a shard that breaks off midway keeps the
        samples read so far, and the sample it broke in becomes an error row.
        """
        shard, path = item["item"], item["path"]
        key: str | None = None
        members: dict[str, bytes] = {}
        seen: set[str] = set()
        try:
            with self.fs.open_input_stream(fs_path(path)) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _wds_split(member.name)
                    if k != key:
                        if key is not None:
                            yield self._sample_row(shard, path, key, members, seen)
                        key, members = k, {}
                    members[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            reason = f"unreadable tar shard: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            if key is None:
                yield self._error_row(shard, path, -1, reason)
            else:  # the sample being read when the shard broke
                yield self._error_row(self._sample_id(shard, key, seen), path, -1, reason)
            return
        if key is not None:
            yield self._sample_row(shard, path, key, members, seen)
        elif not seen:
            yield self._error_row(shard, path, -1, "tar shard holds no files")

    @staticmethod
    def _sample_id(shard: str, key: str, seen: set[str]) -> str:
        rid = f"{shard}#{key}"
        n = 1
        while rid in seen:  # a key split across the shard (not WebDataset order): keep ids unique
            n += 1
            rid = f"{shard}#{key}~{n}"
        seen.add(rid)
        return rid

    def _sample_row(self, shard: str, path: str, key: str, members: dict[str, bytes], seen: set[str]) -> dict[str, Any]:
        rid = self._sample_id(shard, key, seen)
        # Fields are named by what follows the key ("png", "cls", "b.png"); the last part says the format.
        by_last = {ext.rsplit(".", 1)[-1]: ext for ext in sorted(members, reverse=True)}
        label = -1
        for ext in WDS_LABEL_EXTS:
            if ext in members or ext in by_last:
                field = ext if ext in members else by_last[ext]
                try:
                    label = int(members[field].decode().strip())
                except ValueError:
                    return self._error_row(rid, path, -1, f"label member .{field} is not an integer")
                break
        image = next((members[by_last[e]] for e in WDS_IMAGE_EXTS if e in by_last), None)
        if image is None:
            found = ", ".join(sorted(members)) or "none"
            return self._error_row(rid, path, label, f"sample has no image member (.jpg, .png, ...); found: {found}")
        return self._decoded_row(rid, path, label, image)

    def _digit_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        if self._digits is None:
            self._digits = digits_split()[1]
        x, y = self._digits
        i = item["index"]
        return [{"id": item["item"], "path": item["path"], "label": int(y[i]), "image": x[i], "status": "ok", "error": ""}]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        read = {"parquet": self._parquet_rows, "digits": self._digit_rows, "webdataset": self._tar_rows}.get(
            self.kind, self._file_rows
        )
        rows: list[dict[str, Any]] = []
        for j in range(len(batch["item"])):
            for row in read({k: v[j] for k, v in batch.items()}):
                rows.append(row)
                if len(rows) == ROWS_PER_BATCH:
                    yield rows_to_batch(rows)
                    rows = []
        if rows:
            yield rows_to_batch(rows)


def encoded_bytes(cell: Any) -> bytes:
    """The encoded bytes of an image cell (bytes or a Hugging Face ``{"bytes", "path"}`` struct), or
    :class:`ImageError`; the cell is decoded later, by :func:`decode_rows`."""
    if isinstance(cell, dict):
        if not cell.get("bytes"):
            where = f" (path {cell['path']!r} only; the bytes are not in the file)" if cell.get("path") else ""
            raise ImageError(f"image cell holds no bytes{where}")
        cell = cell["bytes"]
    if cell is None or (isinstance(cell, (bytes, bytearray)) and not cell):
        raise ImageError("empty file (0 bytes)")  # decode_image's reason
    if not isinstance(cell, (bytes, bytearray)):
        raise ImageError(f"image cell must be encoded bytes or a {{'bytes', 'path'}} struct; got {type(cell).__name__}")
    return bytes(cell)


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


def decode_cell(cell: Any, pre: Preprocess) -> np.ndarray:
    """One image cell -> a model-ready (C, H, W) array in [0,1], or :class:`ImageError`.

    Cells: encoded bytes; Hugging Face's ``{"bytes", "path"}`` struct; or a decoded uint8 array
    (H, W) or (H, W, C), as ``ray.data.read_images`` and most Python code hold images.
    """
    if isinstance(cell, dict):  # Hugging Face's image cells
        if not cell.get("bytes"):
            where = f" (path {cell['path']!r} only; the bytes are not in the file)" if cell.get("path") else ""
            raise ImageError(f"image cell holds no bytes{where}")
        cell = cell["bytes"]
    if isinstance(cell, np.ndarray) and cell.dtype != np.uint8 and cell.dtype != object:
        raise ImageError(f"image array must be uint8 (H, W[, C]); got {cell.dtype} {cell.shape}")
    if isinstance(cell, np.ndarray) and cell.dtype == np.uint8:
        from PIL import Image  # only for decoded arrays

        if cell.ndim not in (2, 3) or (cell.ndim == 3 and cell.shape[2] not in (1, 3, 4)):
            raise ImageError(f"image array must be (H, W) or (H, W, C) with C in 1, 3, 4; got {cell.shape}")
        arr = cell[..., 0] if cell.ndim == 3 and cell.shape[2] == 1 else cell
        return preprocess_pil(Image.fromarray(np.ascontiguousarray(arr)), pre)
    if cell is not None and not isinstance(cell, (bytes, bytearray)):
        raise ImageError(
            f"image cell must be encoded bytes, a {{'bytes', 'path'}} struct or a uint8 array; got {type(cell).__name__}"
        )
    return decode_image(cell, pre)


@dataclass(frozen=True)
class DatasetSource:
    """A ``ray.data.Dataset`` as an input: one image per row, in ``image_column`` (encoded bytes,
    Hugging Face ``{"bytes", "path"}`` structs, or uint8 arrays), with a stable ``id_column`` (the
    resume key), and optionally ``label_column`` and a ``path`` column."""

    dataset: Any
    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"

    def describe(self) -> dict[str, Any]:
        return {"dataset": "ray.data.Dataset", "image_column": self.image_column, "id_column": self.id_column,
                "label_column": self.label_column}  # fmt: skip


class DecodeRows:
    """Ray Data stage: a Dataset's rows -> the reader's rows (one per input, errors included),
    leaving out ids in ``done`` (resume)."""

    def __init__(self, src: DatasetSource, pre: Preprocess, done_ref: Any = None) -> None:
        self.image_column, self.id_column, self.label_column = src.image_column, src.id_column, src.label_column
        self.reader = ReadImages("", "dataset", pre)
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
            rows.append(self.reader._decoded_row(rid, path, label, batch[self.image_column][i]))
        if rows:
            return rows_to_batch(rows)
        pre = self.reader.pre  # every row done already: no rows, the reader's columns
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
    return src.dataset.map_batches(DecodeRows(src, pre, done_ref), batch_size=8, batch_format="numpy")


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
    kind, items = plan_inputs(source)
    if not items:
        raise RaydetectError(f"no input files under {source.uri}")
    if keep_ids is not None:
        if kind in PER_ROW_SKIP:
            raise RaydetectError(f"selecting images by id needs a folder input, not {kind}")
        items = [it for it in items if it["item"] in keep_ids]
    if skip_ids and kind not in PER_ROW_SKIP:
        items = [it for it in items if it["item"] not in skip_ids]
    if not items:
        return None, 0
    # Small blocks: decoding is cheap, but images are big; keep blocks near 32 images.
    blocks = parallelism or max(1, min(len(items) // 32 + 1, 4096))
    ds = ray.data.from_items(items, override_num_blocks=min(blocks, len(items)))
    # An instance (not the class) runs as stateless tasks: reading needs no warm-up.
    reader = ReadImages(source.uri, kind, pre, source.image_column, source.id_column, source.label_column,
                        decode or kind == "digits")  # fmt: skip
    ds = ds.map_batches(reader, batch_size=8, batch_format="numpy")
    if skip_ids and kind in PER_ROW_SKIP:
        ds = ds.filter(lambda r: r["id"] not in skip_ids)
    return ds, _count(kind, items, skip_ids)


def _count(kind: str, items: list[dict[str, Any]], skip_ids: set[str] | None) -> int | None:
    if kind == "parquet":
        rows = sum(int(it.get("rows", 1)) for it in items)
        return max(rows - len(skip_ids or ()), 0)
    return None if kind in PER_ROW_SKIP else len(items)
