"""Adversarial images made elsewhere (torchattacks, ART, AutoAttack, a patch, your own generator)
as the rows the feature job explains, so ``features`` and ``train`` run on them unchanged.

Two forms:

* paired: every adversarial image names its clean original, by relative path (folders: the same
  path under the clean root, any extension) or by id (Parquet: the adversarial row's pair column
  holds the clean row's id). Splits keep each pair on one side, as for raydetect's own attacks.
* unpaired (``pairing="none"``): clean images beside adversarial ones, with no link. Splits keep
  images whose ids say they are near-duplicates on one side: the same relative path once common
  attack suffixes (``_adv``, ``-pgd``, ``.cw``...) are stripped, or the same ``group_regex`` match.
  What the ids cannot tell, no split can; the training report says which grouping was used.

Every file or row becomes exactly one row, errors included: an adversarial image whose clean
original is missing, a second adversarial image for the same original and attack, an unreadable
image. Images already at the model's input size are used as they are (an attack's pixels are not
resized away); others get the model's usual resize and crop. Every adversarial image counts as a
successful attack: raydetect does not re-judge images it did not make.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raydetect.errors import RaydetectError
from raydetect.images import ImageError, Preprocess
from raydetect.stages.read import decode_cell, is_parquet
from raydetect.stages.rows import rows_to_batch
from raydetect.store import display_path, fs_path, list_files, open_filesystem

PAIRINGS = ("auto", "path", "id", "none")
METHOD = "external"  # the ``method`` of every imported adversarial row
# Trailing name parts that say how an image was made rather than which image it is.
SUFFIXES = re.compile(
    r"([._-](adv|adversarial|attacked|perturbed|clean|orig|original|benign|pgd|pgdl2|pgdl1|fgsm|fgm|bim|ifgsm|mifgsm|"
    r"cw|cwl2|deepfool|autoattack|apgd|apgdt|fab|square|patch|jsma|spsa|eps\d+(p\d+)?))+$",
    re.IGNORECASE,
)
DEFAULT_GROUPING = "relative path without extension, attack suffixes (_adv, -pgd, .cw, ...) stripped"


@dataclass(frozen=True)
class ExternalImages:
    """Where a user's clean and adversarial images are, and how they pair.

    ``adversarial``: (attack name, uri) per set. ``pairing``: ``path`` (folders), ``id`` (Parquet;
    ``pair_column`` of an adversarial row names its clean row's ``id_column``), ``none``
    (unpaired), or ``auto`` (``id`` for Parquet, else ``path``).
    """

    clean: str
    adversarial: tuple[tuple[str, str], ...]
    pairing: str = "auto"
    group_regex: str | None = None
    image_column: str = "image"
    id_column: str = "id"
    pair_column: str = "pair_id"
    label_column: str = "label"

    def validate(self) -> ExternalImages:
        if self.pairing not in PAIRINGS:
            raise RaydetectError(f"pairing must be one of {', '.join(PAIRINGS)}; got {self.pairing!r}")
        if not self.adversarial:
            raise RaydetectError("give at least one set of adversarial images (--adversarial [NAME=]PATH)")
        names = [n for n, _ in self.adversarial]
        for n in names:
            if not n or not re.fullmatch(r"[A-Za-z0-9_.+-]+", n):
                raise RaydetectError(f"attack names use letters, digits and _.+-; got {n!r}")
        if len(set(names)) != len(names):
            raise RaydetectError(f"each set of adversarial images needs its own name (NAME=PATH); got {', '.join(names)}")
        if self.group_regex is not None:
            if self.pairing != "none":
                raise RaydetectError("--group-regex groups unpaired images; it needs --pairing none")
            try:
                re.compile(self.group_regex)
            except re.error as exc:
                raise RaydetectError(f"--group-regex {self.group_regex!r} is not a regular expression: {exc}") from exc
        return self

    def resolved(self) -> ExternalImages:
        """``auto`` pairing made concrete: ``id`` when the clean images are Parquet, else ``path``."""
        if self.pairing != "auto":
            return self
        _, files = list_files(self.clean)
        return replace(self, pairing="id" if files and all(is_parquet(f) for f in files) else "path")

    @property
    def paired(self) -> bool:
        return self.pairing != "none"

    def grouping(self) -> str:
        """How splits group images, in words (the training report quotes it)."""
        if self.pairing == "none":
            regex = f"the match of --group-regex {self.group_regex!r} on each id" if self.group_regex else DEFAULT_GROUPING
            return f"unpaired; near-duplicates grouped by {regex}"
        how = {"path": "relative path (any extension)", "id": f"id (adversarial {self.pair_column} = clean {self.id_column})"}
        return f"paired with the clean original by {how.get(self.pairing, 'relative path, or id for Parquet')}"

    def describe(self) -> dict[str, Any]:
        return {"clean": self.clean, "adversarial": {n: u for n, u in self.adversarial}, "pairing": self.pairing,
                "group_regex": self.group_regex, "grouping": self.grouping()}  # fmt: skip


def parse_adversarial(values: Sequence[str], default_name: str = "external") -> tuple[tuple[str, str], ...]:
    """``[NAME=]PATH`` options -> (name, path); a single unnamed set is called ``default_name``."""
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if sep and "/" not in name and "://" not in name and name:
            out.append((name, path))
        else:
            out.append((default_name if len(values) == 1 else Path(v.rstrip("/")).name, v))
    return tuple(out)


def group_key(image_id: str, regex: str | None) -> str:
    """The near-duplicate group of an unpaired image, from its id."""
    if regex:
        m = re.search(regex, image_id)
        if m is None:
            return image_id
        return m.group(1) if m.groups() else m.group(0)
    folder, _, name = image_id.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    stem = SUFFIXES.sub("", stem) or stem
    return f"{folder}/{stem}".lower() if folder else stem.lower()


# --------------------------------------------------------------------------------------------
# Planning in the driver: names and ids only


@dataclass
class _Entry:
    """One image of a user's source, before pairing."""

    id: str
    key: str  # what paired matching compares
    path: str
    rg: int = -1  # Parquet row group and row in it; -1 for files
    row: int = -1
    label: int = -1
    error: str = ""


def _entries(uri: str, spec: ExternalImages, adversarial: bool) -> tuple[str, list[_Entry]]:
    """(kind, entries) of one source: every file of a folder, every row of Parquet."""
    _, files = list_files(uri)
    if files and all(is_parquet(f) for f in files):
        return "parquet", _parquet_entries(uri, files, spec, adversarial)
    _, root = open_filesystem(uri)
    fs = open_filesystem(uri)[0]
    base = root if fs.get_file_info(root).type.name == "Directory" else str(Path(root).parent)
    out = []
    for f in files:
        rel = f[len(base) :].lstrip("/") if f.startswith(base) else Path(f).name
        out.append(_Entry(rel, rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel, display_path(uri, f)))
    return "folder", out


def _parquet_entries(uri: str, files: list[str], spec: ExternalImages, adversarial: bool) -> list[_Entry]:
    import pyarrow.parquet as pq

    fs = open_filesystem(uri)[0]
    out: list[_Entry] = []
    for f in files:
        try:
            pf = pq.ParquetFile(fs.open_input_file(f))
            names = set(pf.schema_arrow.names)
            if spec.image_column not in names:
                raise ValueError(f"no column {spec.image_column!r} (columns: {', '.join(sorted(names))}); set --image-column")
            key_col = spec.pair_column if adversarial and spec.pair_column in names else spec.id_column
            cols = [c for c in dict.fromkeys((spec.id_column, key_col, spec.label_column)) if c in names]
            offset = 0
            for g in range(pf.metadata.num_row_groups):
                t = pf.read_row_group(g, columns=cols)
                n = pf.metadata.row_group(g).num_rows
                ids = t.column(spec.id_column).to_pylist() if spec.id_column in cols else [f"{f}#{offset + i}" for i in range(n)]
                keys = t.column(key_col).to_pylist() if key_col in cols else ids
                labels = t.column(spec.label_column).to_pylist() if spec.label_column in cols else [None] * n
                for i in range(n):
                    label = -1 if labels[i] is None else int(labels[i])
                    out.append(_Entry(str(ids[i]), str(keys[i]), display_path(uri, f), g, i, label))
                offset += n
        except Exception as exc:  # an unreadable file: one error row for it
            where = display_path(uri, f)
            out.append(_Entry(where, where, where, error=f"unreadable Parquet file: {exc}"))
    return out


def _item(e: _Entry, source: int, rid: str, pair: str, kind: str, attack: str, error: str = "") -> dict[str, Any]:
    return {"item": rid, "pair_id": pair, "kind": kind, "attack": attack, "path": e.path, "source": source, "rg": e.rg,
            "row": e.row, "label": e.label, "error": error or e.error}  # fmt: skip


def plan_external(spec: ExternalImages) -> list[dict[str, Any]]:
    """One work item per image (clean and adversarial), paired or grouped, errors included."""
    spec = spec.resolved()
    pairing = spec.pairing
    _, clean = _entries(spec.clean, spec, adversarial=False)
    items: list[dict[str, Any]] = []
    by_key: dict[str, str] = {}
    for e in clean:
        if not spec.paired:
            items.append(_item(e, 0, e.id, group_key(e.id, spec.group_regex), "clean", ""))
            continue
        key = e.key if pairing == "path" else e.id
        if key in by_key:
            items.append(_item(e, 0, e.id, e.id, "clean", "", f"another clean image has the same key {key!r} ({by_key[key]})"))
            continue
        by_key.setdefault(key, e.id)
        items.append(_item(e, 0, e.id, e.id, "clean", ""))
    taken: dict[str, int] = defaultdict(int)
    for source, (name, uri) in enumerate(spec.adversarial, start=1):
        _, adv = _entries(uri, spec, adversarial=True)
        for e in adv:
            if not spec.paired:
                items.append(_item(e, source, f"{e.id}|{name}", group_key(e.id, spec.group_regex), "adversarial", name))
                continue
            pair = by_key.get(e.key)
            if pair is None:
                what = f"relative path {e.key}.*" if pairing == "path" else f"id {e.key!r}"
                items.append(_item(e, source, f"{e.id}|{name}", e.id, "adversarial", name,
                                   e.error or f"no clean original with {what} under {spec.clean}"))  # fmt: skip
                continue
            rid = f"{pair}|{name}"
            taken[rid] += 1
            if taken[rid] > 1:
                items.append(_item(e, source, f"{rid}~{taken[rid]}", pair, "adversarial", name,
                                   f"a second {name} image for clean image {pair!r}; one per original and attack"))  # fmt: skip
                continue
            items.append(_item(e, source, rid, pair, "adversarial", name))
    if not any(i["kind"] == "adversarial" for i in items):
        raise RaydetectError(f"no adversarial images under {', '.join(u for _, u in spec.adversarial)}")
    return items


# --------------------------------------------------------------------------------------------
# Reading in Ray tasks


@dataclass
class ReadExternal:
    """Ray Data stage: planned items -> rows of the attack job's schema (image as an array)."""

    uris: list[str]  # source index -> uri (0: clean, then each adversarial set)
    pre: Preprocess
    image_column: str = "image"
    _fs: dict[int, Any] = field(default_factory=dict)

    def _fs_of(self, source: int) -> Any:
        if source not in self._fs:
            self._fs[source] = open_filesystem(self.uris[source])[0]
        return self._fs[source]

    def _row(self, item: dict[str, Any], image: np.ndarray | None, error: str) -> dict[str, Any]:
        ok = image is not None and not error
        if image is None:
            image = np.zeros((self.pre.channels, self.pre.crop, self.pre.crop), np.float32)
        return {"id": item["item"], "pair_id": item["pair_id"], "kind": item["kind"], "path": item["path"],
                "label": int(item["label"]), "attack": item["attack"], "method": METHOD if item["attack"] else "",
                "status": "ok" if ok else "error", "error": error, "success": item["kind"] == "adversarial",
                # Imported images are not re-judged: every clean one counts (FeatureSet.correct).
                "correct": True,
                "image": image}  # fmt: skip

    def _decode(self, item: dict[str, Any], data: Any) -> dict[str, Any]:
        try:
            return self._row(item, decode_cell(data, self.pre), "")
        except ImageError as exc:
            return self._row(item, None, str(exc))

    def _rows(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        groups: dict[tuple[int, str, int], list[dict[str, Any]]] = defaultdict(list)
        for it in items:
            if it["error"]:
                yield self._row(it, None, it["error"])
            elif it["rg"] < 0:
                try:
                    with self._fs_of(it["source"]).open_input_stream(fs_path(it["path"])) as f:
                        data = f.read()
                except OSError as exc:
                    yield self._row(it, None, f"cannot read file: {exc}")
                    continue
                yield self._decode(it, data)
            else:
                groups[(it["source"], it["path"], it["rg"])].append(it)
        for (source, path, rg), members in groups.items():  # each row group read once per batch
            try:
                pf = pq.ParquetFile(self._fs_of(source).open_input_file(fs_path(path)))
                cells = pf.read_row_group(rg, columns=[self.image_column]).column(0)
            except Exception as exc:
                for it in members:
                    yield self._row(it, None, f"unreadable row group: {exc}")
                continue
            for it in members:
                yield self._decode(it, cells[it["row"]].as_py())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["item"])
        items = [{k: (v[j].item() if isinstance(v[j], np.generic) else v[j]) for k, v in batch.items()} for j in range(n)]
        return rows_to_batch(list(self._rows(items)))


def read_external(spec: ExternalImages, pre: Preprocess, skip: set[str] | None = None, key: str = "item") -> tuple[Any, int, int]:
    """(dataset of attack-schema rows for the items not yet done (``skip`` on ``key``), how many
    that is, how many items there are in all)."""
    items = plan_external(spec)
    total = len(items)
    if skip:
        items = [it for it in items if it[key] not in skip]
    if not items:
        return None, 0, total
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 64 + 1, 4096)))
    uris = [spec.clean, *(u for _, u in spec.adversarial)]
    return ds.map_batches(ReadExternal(uris, pre, spec.image_column), batch_size=64, batch_format="numpy"), len(items), total
