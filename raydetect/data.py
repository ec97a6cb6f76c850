"""Image decoding and dataset readers.

Every reader yields images as float32 arrays (C, H, W) in [0, 1], already resized and
center-cropped for the model (``Preprocess``). Decoding never raises on a bad file: callers get
an :class:`ImageError` with a one-line reason, which the Ray stages turn into ``status=error`` rows.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from raydetect.errors import RaydetectError
from raydetect.models import Preprocess

# Truncated files must fail loudly rather than decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Signatures of common formats: a file that starts like one but does not decode is damaged.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
MIN_SIDE = 16  # smaller images carry too little signal to classify; digits (8x8) are exempt via crop


class ImageError(ValueError):
    """An input image that cannot be used; the message is the reason written to the error row."""


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The standard 1000-class table (PyTorch index order = sorted wnids), shipped with the package."""
    text = resources.files("raydetect.resources").joinpath("imagenet_classes.tsv").read_text()
    rows = csv.DictReader(io.StringIO(text), delimiter="\t")
    return tuple(ImageNetClass(int(r["index"]), r["wnid"], r["name"]) for r in rows)


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {c.wnid: c.index for c in imagenet_classes()}


def class_name(index: int, num_classes: int = 1000) -> str:
    """A readable class name for ImageNet models; the index itself for others (digits)."""
    if num_classes == 1000 and 0 <= index < 1000:
        return imagenet_classes()[index].name
    return str(index)


# --------------------------------------------------------------------------------------------
# Decoding


def _to_rgb_or_l(img: Image.Image, channels: int) -> Image.Image:
    """Normalise any PIL mode (CMYK, RGBA, P, 16-bit, float) to RGB or L."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels have arbitrary colour underneath; show them on white as viewers do.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    target = "RGB" if channels == 3 else "L"
    return img.convert(target) if img.mode != target else img


def preprocess_pil(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize the short side, center-crop, scale to [0,1]: returns float32 (C, crop, crop)."""
    import torchvision.transforms.functional as TF

    img = _to_rgb_or_l(ImageOps.exif_transpose(img), pre.channels)
    w, h = img.size
    if min(w, h) < min(MIN_SIDE, pre.crop):
        raise ImageError(f"image too small ({w}x{h}); need at least {min(MIN_SIDE, pre.crop)} px per side")
    mode = TF.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    # An image already at the model's input size (e.g. an adversarial crop) is used as it is:
    # resizing it would blur exactly the pixels an attacker placed.
    if (w, h) != (pre.crop, pre.crop):
        if min(w, h) != pre.resize:
            img = TF.resize(img, pre.resize, interpolation=mode, antialias=True)
        img = TF.center_crop(img, [pre.crop, pre.crop])
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def decode_image(data: bytes | None, pre: Preprocess) -> np.ndarray:
    """Decode encoded image bytes into a model-ready array, or raise :class:`ImageError`."""
    if data is None or len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)  # first frame of animations
            img.load()
            return preprocess_pil(img, pre)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except Image.UnidentifiedImageError:
        if data.startswith(IMAGE_MAGIC):
            raise ImageError("corrupt or truncated image: header of a known format, body unreadable") from None
        raise ImageError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated and corrupt files as OSError/SyntaxError with a useful message.
        raise ImageError(f"corrupt or truncated image: {str(exc).splitlines()[0][:200]}") from exc


def encode_png(image: np.ndarray) -> bytes:
    """Lossless 8-bit PNG of a (C, H, W) [0,1] array: what an auditor would receive."""
    arr = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # level 1: ~3x faster than default, ~10% bigger
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png` (no resizing): float32 (C, H, W) in [0,1]."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def quantize(images: np.ndarray, clean: np.ndarray | None = None, eps: float | None = None) -> np.ndarray:
    """Round [0,1] images to the 8-bit grid, as saving to PNG does.

    With ``clean`` and ``eps``, levels that rounding pushed outside the eps-ball are moved to the
    nearest grid level inside it, so the saved image still honours the attack's budget.
    """
    q = np.clip(np.rint(images * 255.0), 0, 255)
    if clean is not None and eps is not None:
        hi = np.floor((clean + eps) * 255.0 + 1e-4)
        lo = np.ceil((clean - eps) * 255.0 - 1e-4)
        q = np.clip(np.minimum(np.maximum(q, lo), hi), 0, 255)
    return (q / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Local (single-process) readers


def list_image_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``root`` with an image extension, sorted (stable ids across runs)."""
    base = Path(root).expanduser()
    if not base.exists():
        raise RaydetectError(f"input path does not exist: {base}")
    if base.is_file():
        return [base]
    return sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def imagenet_label(path: str | os.PathLike[str]) -> int:
    """Label index from an ImageNet-style path ``.../<wnid>/<file>``; -1 when the folder is no wnid."""
    return wnid_to_index().get(Path(path).parent.name, -1)


@dataclass
class LocalImages:
    """Decoded images held in memory: the single-process counterpart of a Ray dataset."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64, -1 when unknown
    ids: list[str]
    errors: dict[str, str]  # id -> reason, for files that could not be decoded


def load_image_folder(root: str | os.PathLike[str], pre: Preprocess, limit: int | None = None) -> LocalImages:
    """Read an ImageNet-style folder (labels from wnid folder names) into memory."""
    files = list_image_files(root)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise RaydetectError(f"no image files under {root}")
    images, labels, ids, errors = [], [], [], {}
    for f in files:
        try:
            images.append(decode_image(f.read_bytes(), pre))
        except ImageError as exc:
            errors[str(f)] = str(exc)
            continue
        labels.append(imagenet_label(f))
        ids.append(str(f))
    if not images:
        raise RaydetectError(f"none of the {len(files)} files under {root} could be decoded")
    return LocalImages(np.stack(images), np.asarray(labels, dtype=np.int64), ids, errors)


def digits_split(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """sklearn's 1,797 real 8x8 digits as (N, 1, 8, 8) float32 in [0,1], split once and for all."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


def load_digits_images(split: str = "test", limit: int | None = None) -> LocalImages:
    """The digits train or test split as :class:`LocalImages` (ids ``digits-<split>-<i>``)."""
    (x_tr, y_tr), (x_te, y_te) = digits_split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return LocalImages(x, y, [f"digits-{split}-{i}" for i in range(len(x))], {})


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------------------------
# Ray Data readers: one schema for every source
#
# Rows: id (str, stable across runs: the resume key), path (str), label (int64, -1 if unknown),
# image (float32 (C, H, W) in [0,1]; zeros on error rows), status ("ok" | "error"), error (str).

SOURCE_KINDS = ("auto", "imagenet", "folder", "parquet", "digits")


@dataclass(frozen=True)
class Source:
    """Where inputs come from. ``uri`` is a local path or any pyarrow filesystem URI (s3://, gs://)."""

    uri: str
    kind: str = "auto"
    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"
    limit: int | None = None
    offset: int = 0

    def validate(self) -> Source:
        if self.kind not in SOURCE_KINDS:
            raise RaydetectError(f"source kind must be one of {', '.join(SOURCE_KINDS)}; got {self.kind!r}")
        if self.limit is not None and self.limit < 1:
            raise RaydetectError(f"limit must be >= 1; got {self.limit}")
        if self.offset < 0:
            raise RaydetectError(f"offset must be >= 0; got {self.offset}")
        return self


def open_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local path or a URI such as s3://bucket/prefix."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for unknown schemes or credentials
        raise RaydetectError(f"cannot open {uri}: {exc}") from exc


def _is_parquet(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


def _list_files(fs: Any, root: str) -> list[str]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise RaydetectError(f"input path does not exist: {root}")
    if info.type == pafs.FileType.File:
        return [root]
    selector = pafs.FileSelector(root, recursive=True)
    files = [f.path for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    # Hidden files and in-progress writes are not inputs.
    return sorted(f for f in files if not Path(f).name.startswith((".", "_")) and not f.endswith(".tmp"))


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
    fs, root = open_filesystem(source.uri)
    files = _list_files(fs, root)
    kind = detect_kind(source, files)
    if kind == "parquet":
        import pyarrow.parquet as pq

        items: list[dict[str, Any]] = []
        for f in (f for f in files if _is_parquet(f)):
            try:
                meta = pq.ParquetFile(fs.open_input_file(f)).metadata
                offset = 0
                for g in range(meta.num_row_groups):
                    items.append({"item": f"{f}#rg{g}", "path": f, "index": g, "offset": offset})
                    offset += meta.row_group(g).num_rows
            except Exception as exc:  # unreadable footer: one error row for the whole file
                items.append({"item": f, "path": f, "index": -1, "offset": 0, "error": f"unreadable Parquet file: {exc}"})
        return kind, items
    rel_base = root if fs.get_file_info(root).type.name == "Directory" else str(Path(root).parent)
    items = [{"item": _relative_id(f, rel_base), "path": _display_path(source.uri, f, fs), "index": 0} for f in files]
    stop = None if source.limit is None else source.offset + source.limit
    return kind, items[source.offset : stop]


def _relative_id(path: str, base: str) -> str:
    rel = path[len(base) :].lstrip("/") if path.startswith(base) else path
    return rel or Path(path).name


def _display_path(uri: str, path: str, fs: Any) -> str:
    """The path as the user would write it (keeps the s3:// scheme)."""
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        return f"{scheme}://{path}"
    return path


class ReadImages:
    """Ray Data stage: work items -> decoded image rows (one per image, errors included)."""

    def __init__(
        self,
        uri: str,
        kind: str,
        pre: Preprocess,
        image_column: str = "image",
        id_column: str = "id",
        label_column: str = "label",
    ) -> None:
        self.uri = uri
        self.kind = kind
        self.pre = pre
        self.image_column = image_column
        self.id_column = id_column
        self.label_column = label_column
        self._fs: Any = None
        self._digits: np.ndarray | None = None

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = open_filesystem(self.uri)[0] if self.uri != "digits" else None
        return self._fs

    def _empty(self) -> np.ndarray:
        return np.zeros((self.pre.channels, self.pre.crop, self.pre.crop), np.float32)

    def _error_row(self, rid: str, path: str, label: int, reason: str) -> dict[str, Any]:
        return {"id": rid, "path": path, "label": label, "image": self._empty(), "status": "error", "error": reason}

    def _decoded_row(self, rid: str, path: str, label: int, data: bytes | None) -> dict[str, Any]:
        try:
            return {"id": rid, "path": path, "label": label, "image": decode_image(data, self.pre), "status": "ok", "error": ""}
        except ImageError as exc:
            return self._error_row(rid, path, label, str(exc))

    def _file_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        path = item["path"]
        label = imagenet_label(path) if self.kind == "imagenet" else -1
        try:
            fs_path = path.split("://", 1)[1] if "://" in path else path
            with self.fs.open_input_stream(fs_path) as f:
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
            if isinstance(blob, dict):  # HuggingFace-style {"bytes": ..., "path": ...}
                blob = blob.get("bytes")
            rows.append(self._decoded_row(rid, item["path"], label, blob))
        return rows

    def _digit_rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        if self._digits is None:
            (_, _), (x_te, y_te) = digits_split()
            self._digits, self._digit_labels = x_te, y_te
        i = item["index"]
        return [
            {
                "id": item["item"],
                "path": item["path"],
                "label": int(self._digit_labels[i]),
                "image": self._digits[i],
                "status": "ok",
                "error": "",
            }
        ]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict[str, Any]] = []
        for j in range(len(batch["item"])):
            item = {k: v[j] for k, v in batch.items()}
            if self.kind == "parquet":
                rows += self._parquet_rows(item)
            elif self.kind == "digits":
                rows += self._digit_rows(item)
            else:
                rows += self._file_rows(item)
        return rows_to_batch(rows)


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


def read_source(source: Source, pre: Preprocess, skip_ids: set[str] | None = None, parallelism: int | None = None) -> Any:
    """A Ray Dataset of decoded image rows for ``source`` (schema at the top of this section).

    ``skip_ids`` drops work items already done (resume); for Parquet the skip happens per row
    after reading, since row ids are only known then.
    """
    import ray

    kind, items = plan_inputs(source)
    if not items:
        raise RaydetectError(f"no input files under {source.uri}")
    if skip_ids and kind != "parquet":
        items = [it for it in items if it["item"] not in skip_ids]
    if not items:
        return None
    # Small blocks: decoding is cheap, but images are big; keep blocks near 32 images.
    blocks = parallelism or max(1, min(len(items) // 32 + 1, 4096))
    ds = ray.data.from_items(items, override_num_blocks=min(blocks, len(items)))
    # An instance (not the class) runs as stateless tasks: reading needs no warm-up.
    reader = ReadImages(source.uri, kind, pre, source.image_column, source.id_column, source.label_column)
    ds = ds.map_batches(reader, batch_size=8, batch_format="numpy")
    if skip_ids and kind == "parquet":
        ds = ds.filter(lambda r: r["id"] not in skip_ids)
    return ds


# --------------------------------------------------------------------------------------------
# Parquet outputs: atomic part files, resume, exactly-once reads


def output_files(uri: str, clean_partial: bool = False) -> list[str]:
    """Complete part files of an output directory (``[]`` when it does not exist yet)."""
    import pyarrow.fs as pafs

    fs, root = open_filesystem(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    if clean_partial:
        for i in infos:
            if i.path.endswith(".parquet.tmp"):
                fs.delete_file(i.path)
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def read_output(uri: str, columns: list[str] | None = None, dedupe_on: str | None = "id") -> Any:
    """All complete part files of an output as one pyarrow Table.

    Rows are de-duplicated on ``dedupe_on`` (first wins): a task retried after its write
    succeeded may have written its rows twice; readers see each id once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = open_filesystem(uri)
    files = output_files(uri)
    if not files:
        return None
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, filesystem=fs, columns=columns))
        except Exception as exc:  # a foreign or damaged file: say which, keep the rest
            raise RaydetectError(f"cannot read output part {f}: {exc}") from exc
    table = pa.concat_tables(tables, promote_options="default")
    if dedupe_on and dedupe_on in table.column_names:
        ids = table.column(dedupe_on).to_pylist()
        seen: set[str] = set()
        keep = []
        for i, v in enumerate(ids):
            if v not in seen:
                seen.add(v)
                keep.append(i)
        if len(keep) != len(ids):
            table = table.take(pa.array(keep))
    return table


def done_ids(uri: str, column: str = "id") -> set[str]:
    """Ids already written to an output (for resume); removes partial files of a killed run."""
    output_files(uri, clean_partial=True)
    table = read_output(uri, columns=[column], dedupe_on=None)
    return set() if table is None else set(table.column(column).to_pylist())


def export_images(
    attacks_dir: str, out: str, kinds: tuple[str, ...] = ("clean", "adversarial"), only_success: bool = True
) -> dict[str, int]:
    """Write the attack job's PNGs as files: ``<out>/<kind>/<id>.png`` (ids made filesystem-safe).

    Useful to look at adversarial examples, or to build an audit test set that mixes both kinds.
    Returns counts per kind.
    """
    import re

    table = read_output(attacks_dir, columns=["id", "kind", "status", "success", "png"])
    if table is None:
        raise RaydetectError(f"no attack output under {attacks_dir}")
    counts = dict.fromkeys(kinds, 0)
    base = Path(out)
    for row in table.to_pylist():
        if row["kind"] not in kinds or row["status"] != "ok" or not row["png"]:
            continue
        if row["kind"] == "adversarial" and only_success and not row["success"]:
            continue
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", row["id"]).strip("_")
        path = base / row["kind"] / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["png"])
        counts[row["kind"]] += 1
    return counts
