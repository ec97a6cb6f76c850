"""Writing a job's rows: each block becomes one atomic Parquet part (``store.write_part``).

A map stage rather than a Ray Data sink, so the driver streams back one tiny row per part
(rows written, inputs it completes) and can show progress while the job runs.
"""

from __future__ import annotations

from typing import Any

from raydetect.store import resolve, write_part


class WriteParts:
    """Ray Data stage: a pyarrow block in, written as one part under ``uri``; out: its counts.

    ``key``: "clean" counts a part's clean images (however many adversarial twins follow them);
    a column name counts that column's distinct values.
    """

    def __init__(self, uri: str, key: str) -> None:
        self.uri = resolve(uri)  # in the driver: write tasks run where the working directory differs
        self.key = key

    def __call__(self, table: Any) -> dict[str, list[int]]:
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return {"rows": [0], "inputs": [0]}
        if self.key == "clean" and "kind" in table.column_names:
            clean = table.filter(pc.equal(table.column("kind"), "clean"))
            # The paper protocol writes a clean row per attack: count images, by pair.
            inputs = len(pc.unique(clean.column("pair_id"))) if "pair_id" in clean.column_names else clean.num_rows
        elif self.key in table.column_names:
            inputs = len(pc.unique(table.column(self.key)))
        else:
            inputs = table.num_rows
        return {"rows": [write_part(self.uri, table)], "inputs": [inputs]}
