"""Input readers, one file per format; ``raydetect.registry.READERS`` names them in --kind auto's order.

A reader owns its format end to end: whether a listing looks like it (``detects``), the work items
it plans in the driver (``plan``: names and metadata only), how a work item becomes rows
(``rows``: one per image, a file or cell that cannot be read becomes an error row with its
reason), and how many rows a plan will yield (``count``). ``stages.read`` dispatches through them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from raydetect.config import Source
from raydetect.images import ImageError, Preprocess, decode_image, preprocess_pil
from raydetect.store import display_path, open_filesystem

Item = dict[str, Any]
Row = dict[str, Any]


def _relative_id(path: str, base: str) -> str:
    rel = path[len(base) :].lstrip("/") if path.startswith(base) else path
    return rel or Path(path).name


def file_items(source: Source, fs: Any, files: list[str]) -> list[Item]:
    """One item per file, ids relative to the folder (the resume key), ``--offset``/``--limit`` applied."""
    _, root = open_filesystem(source.uri)
    rel_base = root if fs.get_file_info(root).type.name == "Directory" else str(Path(root).parent)
    items = [{"item": _relative_id(f, rel_base), "path": display_path(source.uri, f), "index": 0} for f in files]
    stop = None if source.limit is None else source.offset + source.limit
    return items[source.offset : stop]


class Reader:
    """Base class: error and decoded rows, the filesystem, and the default plan (one item per file)."""

    name = ""
    per_row_skip = False  # row ids are known only once an item is read: resume skips rows, not items
    lists_files = True  # whether planning needs the source's file listing

    def __init__(self, uri: str, pre: Preprocess, image_column: str = "image", id_column: str = "id",
                 label_column: str = "label", decode: bool = True) -> None:  # fmt: skip
        self.uri = uri
        self.pre = pre
        self.image_column, self.id_column, self.label_column = image_column, id_column, label_column
        self.decode = decode  # False: rows carry the encoded bytes; the model actor decodes (read.decode_rows)
        self._fs: Any = None

    # -- the driver's side -------------------------------------------------------------------
    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        return False

    @classmethod
    def plan(cls, source: Source, fs: Any, files: list[str]) -> list[Item]:
        return file_items(source, fs, files)

    @classmethod
    def count(cls, items: list[Item], skip_ids: set[str] | None) -> int | None:
        return None if cls.per_row_skip else len(items)

    # -- the workers' side -------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = open_filesystem(self.uri)[0]
        return self._fs

    def rows(self, item: Item) -> Iterable[Row]:
        raise NotImplementedError

    def error_row(self, rid: str, path: str, label: int, reason: str) -> Row:
        empty = np.zeros((self.pre.channels, self.pre.crop, self.pre.crop), np.float32) if self.decode else b""
        return {"id": rid, "path": path, "label": label, "image": empty, "status": "error", "error": reason}

    def decoded_row(self, rid: str, path: str, label: int, data: Any) -> Row:
        try:
            image = decode_cell(data, self.pre) if self.decode else encoded_bytes(data)
            return {"id": rid, "path": path, "label": label, "image": image, "status": "ok", "error": ""}
        except ImageError as exc:
            return self.error_row(rid, path, label, str(exc))


def _hf_bytes(cell: dict[str, Any]) -> bytes:
    """Hugging Face's ``{"bytes", "path"}`` image cell -> its bytes, or why there are none."""
    if not cell.get("bytes"):
        where = f" (path {cell['path']!r} only; the bytes are not in the file)" if cell.get("path") else ""
        raise ImageError(f"image cell holds no bytes{where}")
    return cell["bytes"]


def encoded_bytes(cell: Any) -> bytes:
    """The encoded bytes of an image cell (bytes or a Hugging Face ``{"bytes", "path"}`` struct), or
    :class:`ImageError`; the cell is decoded later, by ``read.decode_rows``."""
    if isinstance(cell, dict):
        cell = _hf_bytes(cell)
    if cell is None or (isinstance(cell, (bytes, bytearray)) and not cell):
        raise ImageError("empty file (0 bytes)")  # decode_image's reason
    if not isinstance(cell, (bytes, bytearray)):
        raise ImageError(f"image cell must be encoded bytes or a {{'bytes', 'path'}} struct; got {type(cell).__name__}")
    return bytes(cell)


def decode_cell(cell: Any, pre: Preprocess) -> np.ndarray:
    """One image cell -> a model-ready (C, H, W) array in [0,1], or :class:`ImageError`.

    Cells: encoded bytes; Hugging Face's ``{"bytes", "path"}`` struct; or a decoded uint8 array
    (H, W) or (H, W, C), as ``ray.data.read_images`` and most Python code hold images.
    """
    if isinstance(cell, dict):
        cell = _hf_bytes(cell)
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


__all__ = ["Item", "Reader", "Row", "decode_cell", "encoded_bytes"]
