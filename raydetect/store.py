"""Where outputs live: one filesystem abstraction for local paths and s3:// / gs:// URIs.

A job's output is a directory of Parquet part files, each written atomically, plus two small
JSON files: ``_job.json`` (the configuration, written when the job starts) and ``_summary.json``
(its accounting, written when it ends). Resume reads which ids are already there; readers see
every id once. Nothing here imports Ray: the Ray Data sink in ``stages`` calls :func:`write_part`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raydetect.config import json_default
from raydetect.errors import RaydetectError

JOB_FILE = "_job.json"  # the config, written when a job starts
SUMMARY_FILE = "_summary.json"  # the accounting, written when it ends


# --------------------------------------------------------------------------------------------
# Filesystems


def is_remote(uri: str) -> bool:
    """True for URIs a pyarrow filesystem resolves (s3://, gs://, ...), False for local paths."""
    return "://" in uri


def open_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local path or a URI such as s3://bucket/prefix."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for unknown schemes or credentials
        raise RaydetectError(f"cannot open {uri}: {exc}") from exc


def resolve(uri: str) -> str:
    """A location any process can use: local paths made absolute (workers' cwd differs), URIs as given."""
    return uri if is_remote(uri) else open_filesystem(uri)[1]


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = open_filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def make_dir(uri: str) -> None:
    fs, path = open_filesystem(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = open_filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file (parent folders created), locally or to object storage."""
    fs, path = open_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, (json.dumps(payload, indent=2, default=json_default) + "\n").encode())


def list_files(uri: str) -> tuple[Any, list[str]]:
    """(filesystem, every file under ``uri``, sorted); hidden files and in-progress writes are left out."""
    import pyarrow.fs as pafs

    fs, root = open_filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise RaydetectError(f"input path does not exist: {uri}")
    if info.type == pafs.FileType.File:
        return fs, [root]
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File]
    return fs, sorted(f for f in files if not Path(f).name.startswith((".", "_")) and not f.endswith(".tmp"))


def display_path(uri: str, path: str) -> str:
    """A path inside ``uri``'s filesystem as the user would write it (keeps the s3:// scheme)."""
    return f"{uri.split('://', 1)[0]}://{path}" if is_remote(uri) else path


def fs_path(path: str) -> str:
    """Inverse of :func:`display_path`: the path inside its filesystem."""
    return path.split("://", 1)[1] if is_remote(path) else path


# --------------------------------------------------------------------------------------------
# Parquet outputs: atomic part files, resume, exactly-once reads


def write_part(uri: str, table: Any) -> int:
    """Write one Parquet part file under ``uri`` atomically; returns its row count.

    Locally, rows land in ``part-<uuid>.parquet.tmp`` and are renamed into place once complete;
    object stores write whole objects, so the final name is safe there. A job killed mid-write
    leaves at most ``.tmp`` files, which readers ignore and the next run deletes.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = open_filesystem(uri)
    final = f"{root}/part-{uuid.uuid4().hex}.parquet"
    local = isinstance(fs, pafs.LocalFileSystem)
    target = final + ".tmp" if local else final
    with fs.open_output_stream(target) as f:
        pq.write_table(table, f, compression="zstd")
    if local:
        fs.move(target, final)
    return table.num_rows


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


SCAN_ROWS = 200_000  # rows :func:`scan_output` holds at once (a few tens of MiB of audit rows)


def _read_part(fs: Any, path: str, columns: list[str] | None) -> Any:
    """A part file as a pyarrow Table."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except Exception as exc:
        raise _part_error(path, exc) from exc


def _part_error(path: str, exc: Exception) -> RaydetectError:
    """A foreign or damaged part file: the error names it."""
    return RaydetectError(f"cannot read output part {path}: {exc}")


def _count_files(fs: Any, files: list[str]) -> int:
    """Rows in these part files, from their Parquet footers."""
    import pyarrow.parquet as pq

    total = 0
    for path in files:
        try:
            total += pq.ParquetFile(path, filesystem=fs).metadata.num_rows
        except Exception as exc:
            raise _part_error(path, exc) from exc
    return total


def _first_of_each(table: Any, key: str, order: str) -> Any:
    """Rows of ``table`` with the lowest ``order`` per ``key`` value, in ``order`` (vectorized)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows < 2:
        return table
    table = table.take(pc.sort_indices(table, sort_keys=[(key, "ascending"), (order, "ascending")]))
    ids = table.column(key)
    changed = pc.not_equal(ids.slice(1), ids.slice(0, table.num_rows - 1))
    keep = pa.concat_arrays([pa.array([True]), *pc.fill_null(changed, True).chunks])
    return table.filter(keep).sort_by(order)


def read_output(uri: str, columns: list[str] | None = None, dedupe_on: str | None = "id") -> Any:
    """All complete part files of an output as one pyarrow Table (None when there are none).

    Rows are de-duplicated on ``dedupe_on`` (first wins): a task retried after its write
    succeeded may have written its rows twice; readers see each id once. This holds the whole
    output in memory; :func:`scan_output` reads any size in bounded memory.
    """
    fs, _ = open_filesystem(uri)
    files = output_files(uri)
    return _read_files(fs, files, columns, dedupe_on) if files else None


def _read_files(fs: Any, files: list[str], columns: list[str] | None, dedupe_on: str | None) -> Any:
    import pyarrow as pa

    table = pa.concat_tables([_read_part(fs, f, columns) for f in files], promote_options="default")
    if dedupe_on and dedupe_on in table.column_names:
        ordered = table.append_column("__order", pa.array(range(table.num_rows), pa.int64()))
        deduped = _first_of_each(ordered, dedupe_on, "__order")
        if deduped.num_rows != table.num_rows:
            table = deduped.drop_columns(["__order"])
    return table


def count_rows(uri: str) -> int:
    """Rows in an output's part files, duplicates included (from the Parquet footers)."""
    fs, _ = open_filesystem(uri)
    return _count_files(fs, output_files(uri))


def scan_output(uri: str, columns: list[str] | None = None, dedupe_on: str = "id", max_rows: int = SCAN_ROWS) -> Iterator[Any]:
    """Every row of an output once (first part file wins, as in :func:`read_output`), as pyarrow
    Tables of about ``max_rows`` rows or fewer, so memory stays bounded whatever the output's size.

    An output of at most ``max_rows`` rows comes as one table in file order. A larger one is
    spilled to a temporary directory in buckets by a hash of ``dedupe_on`` (every copy of an id
    lands in the same bucket, where duplicates are dropped) and comes bucket by bucket, in no
    particular order. ``columns`` must include ``dedupe_on``.
    """
    import tempfile
    import zlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.feather as feather

    if columns is not None and dedupe_on not in columns:
        raise RaydetectError(f"scan_output needs the {dedupe_on!r} column to de-duplicate on")
    fs, _ = open_filesystem(uri)
    files = output_files(uri)  # listed once: the footers and the parts are read from this list
    if not files:
        return
    total = _count_files(fs, files)
    if total <= max_rows:
        yield _read_files(fs, files, columns, dedupe_on)
        return
    buckets = -(-total // max_rows)
    seen = 0  # rows before this part, in file order: "first wins" across buckets
    with tempfile.TemporaryDirectory(prefix="raydetect-scan-") as spill:
        pending: list[Any] = []
        spilled: dict[int, list[str]] = {}

        def flush() -> None:
            chunk = pa.concat_tables(pending, promote_options="default")
            pending.clear()
            keys = chunk.column(dedupe_on).to_pylist()
            bucket = np.fromiter((zlib.crc32(str(k).encode()) % buckets for k in keys), np.int64, len(keys))
            order = np.argsort(bucket, kind="stable")
            edges = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in range(buckets):
                if edges[b + 1] > edges[b]:
                    path = f"{spill}/{b}-{len(spilled.get(b, []))}.arrow"
                    feather.write_feather(chunk.take(pa.array(order[edges[b] : edges[b + 1]])), path, compression="lz4")
                    spilled.setdefault(b, []).append(path)

        held = 0
        for f in files:
            part = _read_part(fs, f, columns)
            pending.append(part.append_column("__order", pa.array(range(seen, seen + part.num_rows), pa.int64())))
            seen += part.num_rows
            held += part.num_rows
            if held >= max_rows:
                flush()
                held = 0
        if pending:
            flush()
        for paths in spilled.values():
            table = pa.concat_tables([feather.read_table(p) for p in paths], promote_options="default")
            yield _first_of_each(table, dedupe_on, "__order").drop_columns(["__order"])


def count_distinct(uri: str, column: str = "id") -> int:
    """Distinct values of ``column`` in an output, in bounded memory."""
    return sum(t.num_rows for t in scan_output(uri, [column], dedupe_on=column))


def done_ids(uri: str, column: str = "id") -> set[str]:
    """Ids already written to an output (for resume); removes partial files of a killed run."""
    output_files(uri, clean_partial=True)
    table = read_output(uri, columns=[column], dedupe_on=None)
    return set() if table is None else set(table.column(column).to_pylist())


# --------------------------------------------------------------------------------------------
# Job configuration: what made an output, so a resume never mixes two experiments


def job_config(out: str) -> dict[str, Any] | None:
    """The config a previous job recorded in ``out`` (None if absent)."""
    for name in (SUMMARY_FILE, JOB_FILE):
        try:
            return json.loads(read_bytes(join(out, name)).decode()).get("config")
        except (OSError, ValueError, RaydetectError):
            continue
    return None


# What decides a job's rows. Device, batch size and source limit do not: resuming on another
# machine, or with more images, is what resume is for.
_RESULT_KEYS = ("attacks", "attribution", "features", "external")
_MODEL_KEYS = ("name", "weights", "random_weights")


def claim_output(out: str, config: dict[str, Any]) -> None:
    """Refuse to resume into ``out`` if its rows were made with another configuration.

    Resume skips images already in ``out``; rows of two configurations mixed in one output
    would train and report a detector on attacks nobody asked for. Records the config at the
    start, so a killed job is checked too.
    """
    previous = job_config(out)
    if previous is not None and output_files(out):
        diffs = [k for k in _RESULT_KEYS if k in previous and k in config and previous[k] != config[k]]
        old_model, new_model = previous.get("model", {}), config.get("model", {})
        diffs += [f"model {k}" for k in _MODEL_KEYS if k in old_model and old_model.get(k) != new_model.get(k)]
        if diffs:
            raise RaydetectError(
                f"{out} holds rows made with a different {', '.join(diffs)}; "
                "resuming would mix them. Use a new output directory, or delete this one"
            )
    write_json(join(out, JOB_FILE), {"config": config})


def check_same_model(attacks_dir: str, model: str) -> None:
    """Refuse to explain images with another model than the one that attacked them."""
    cfg = job_config(attacks_dir)
    if cfg and cfg.get("model", {}).get("name") not in (None, model):
        raise RaydetectError(f"{attacks_dir} was attacked with model {cfg['model']['name']}; pass --model {cfg['model']['name']}")


def export_images(
    attacks_dir: str, out: str, kinds: tuple[str, ...] = ("clean", "adversarial"), only_success: bool = True
) -> dict[str, int]:
    """Write the attack job's PNGs as files: ``<out>/<kind>/<id>.png`` (ids made filesystem-safe).

    Useful to look at adversarial examples, or to build an audit test set that mixes both kinds.
    Returns counts per kind.
    """
    table = read_output(attacks_dir, columns=["id", "kind", "status", "success", "png"])
    if table is None:
        raise RaydetectError(f"no attack output under {attacks_dir}")
    counts = dict.fromkeys(kinds, 0)
    for row in table.to_pylist():
        if row["kind"] not in kinds or row["status"] != "ok" or not row["png"]:
            continue
        if row["kind"] == "adversarial" and only_success and not row["success"]:
            continue
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", row["id"]).strip("_")
        write_bytes(join(out, row["kind"], f"{name}.png"), row["png"])
        counts[row["kind"]] += 1
    return counts
