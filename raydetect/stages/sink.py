"""The Ray Data sink: each write task's rows become one atomic Parquet part (``store.write_part``)."""

from __future__ import annotations

from typing import Any

from ray.data.datasource import Datasink

from raydetect.store import make_dir, resolve, write_part


class ParquetSink(Datasink):
    """Writes each write task's blocks to one Parquet part file under ``uri``, atomically."""

    def __init__(self, uri: str) -> None:
        self.uri = resolve(uri)  # in the driver: write tasks run where the working directory differs
        self.rows_written = 0

    def on_write_start(self, schema: Any = None) -> None:
        make_dir(self.uri)

    def on_write_complete(self, write_result: Any) -> None:
        self.rows_written = int(sum(write_result.write_returns))

    def write(self, blocks: Any, ctx: Any) -> int:
        import pyarrow as pa

        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b, preserve_index=False) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        return write_part(self.uri, pa.concat_tables(tables, promote_options="default")) if tables else 0
