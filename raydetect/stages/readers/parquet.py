"""Parquet files with encoded image bytes (Hugging Face's ``{"bytes", "path"}`` image cells included).

One work item per row group, so a file is never held decoded whole; an unreadable footer is one
error row for the file, an unreadable row group one for the group.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from raydetect.config import Source
from raydetect.stages.readers import Item, Reader, Row


def is_parquet(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


class ParquetReader(Reader):
    name = "parquet"
    per_row_skip = True

    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        return bool(files) and all(is_parquet(f) for f in files)

    @classmethod
    def plan(cls, source: Source, fs: Any, files: list[str]) -> list[Item]:
        import pyarrow.parquet as pq

        items: list[Item] = []
        for f in (f for f in files if is_parquet(f)):
            try:
                meta = pq.ParquetFile(fs.open_input_file(f)).metadata
                offset = 0
                for g in range(meta.num_row_groups):
                    rows = meta.row_group(g).num_rows
                    items.append({"item": f"{f}#rg{g}", "path": f, "index": g, "offset": offset, "rows": rows})
                    offset += rows
            except Exception as exc:  # unreadable footer: one error row for the whole file
                items.append({"item": f, "path": f, "index": -1, "offset": 0, "rows": 1,
                              "error": f"unreadable Parquet file: {exc}"})  # fmt: skip
        return items

    @classmethod
    def count(cls, items: list[Item], skip_ids: set[str] | None) -> int | None:
        rows = sum(int(it.get("rows", 1)) for it in items)
        return max(rows - len(skip_ids or ()), 0)

    def rows(self, item: Item) -> Iterator[Row]:
        import pyarrow.parquet as pq

        if item.get("error"):
            yield self.error_row(item["item"], item["path"], -1, item["error"])
            return
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(item["path"]))
            names = set(pf.schema_arrow.names)
            if self.image_column not in names:
                raise ValueError(f"no column {self.image_column!r} (columns: {', '.join(sorted(names))}); set --image-column")
            cols = [c for c in (self.image_column, self.id_column, self.label_column) if c in names]
            table = pf.read_row_group(item["index"], columns=cols)
        except Exception as exc:
            yield self.error_row(item["item"], item["path"], -1, f"unreadable row group: {exc}")
            return
        data = table.column(self.image_column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column in cols else None
        labels = table.column(self.label_column).to_pylist() if self.label_column in cols else None
        for i, blob in enumerate(data):
            rid = str(ids[i]) if ids is not None else f"{item['path']}#{item['offset'] + i}"
            label = int(labels[i]) if labels is not None and labels[i] is not None else -1
            yield self.decoded_row(rid, item["path"], label, blob)
