"""What the size of an output's Parquet parts costs when the rows are read back.

    python bench/parts.py [--rows 100000] [--sizes 32 256 2048] [--repeats 3]

A job writes one part per block (about 32 rows for an audit today), so a million-image audit
leaves about 31,000 parts, and everything after the job reads them all: the accounting
(``count_rows``, ``count_distinct``), the report (``report.audit.scan_audit``, which also writes
rows.csv) and a resume (``done_ids``). This writes ``--rows`` audit rows shaped like
``AuditStage``'s (random scores, real-length paths) as parts of each size, on the local disk,
and times each read. Object stores add a request per part (and one per footer) on top; they are
not reachable here. Appends one JSON line per repeat and size to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raydetect.report.audit import scan_audit
from raydetect.store import count_distinct, count_rows, done_ids, make_dir, output_files, write_part

ROOT = Path(__file__).resolve().parents[1]


def rows(start: int, n: int, rng: np.random.Generator) -> pa.Table:
    """``n`` audit rows (ids from ``start``), 1 in 50 an unreadable file."""
    idx = np.arange(start, start + n)
    wnid = [f"n{1440764 + i % 1000:08d}" for i in idx]
    ids = [f"{w}/{w}_{i}.JPEG" for w, i in zip(wnid, idx, strict=True)]
    error = idx % 50 == 7
    score = np.where(error, np.nan, rng.random(n))
    pred = rng.integers(0, 1000, n)
    return pa.table({
        "id": ids, "path": [f"/data/imagenet/train/{i}" for i in ids], "label": np.full(n, -1),
        "pred": np.where(error, -1, pred), "pred_name": [f"class {p}" for p in pred], "conf": rng.random(n),
        "score": score, "adversarial": ~error & (score > 0.95), "status": np.where(error, "error", "ok"),
        "error": np.where(error, "corrupt or truncated image: image file is truncated", ""),
    })  # fmt: skip


def measure(total: int, part_rows: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/audit"
        make_dir(f"{out}/rows")
        t0 = time.perf_counter()
        for start in range(0, total, part_rows):
            write_part(f"{out}/rows", rows(start, min(part_rows, total - start), rng))
        times = {"write_s": time.perf_counter() - t0}
        for name, fn in (
            ("count_rows_s", lambda: count_rows(f"{out}/rows")),
            ("count_distinct_s", lambda: count_distinct(f"{out}/rows")),
            ("done_ids_s", lambda: done_ids(f"{out}/rows")),
            ("scan_audit_s", lambda: scan_audit(out, "/data/imagenet/train")),
        ):
            t = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t
        parts = len(output_files(f"{out}/rows"))
    return {"rows": total, "part_rows": part_rows, "parts": parts, **times}


NAMES = {"write_s": "write the parts", "count_rows_s": "count rows (footers)", "count_distinct_s": "count distinct ids",
         "done_ids_s": "resume: done ids", "scan_audit_s": "report: scan + rows.csv"}  # fmt: skip


def parts_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's table of the newest run in ``records``."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import median_range as med
    from raydetect.report.tables import newest_run

    run = newest_run(records)
    key = (run[0]["command"], run[0]["commit"])
    sizes = sorted({r["part_rows"] for r in run})
    by = {s: [r for r in run if r["part_rows"] == s] for s in sizes}
    head = ["rows per part", "parts", *NAMES.values()]
    body = [[s, by[s][0]["parts"], *(med([r[k] for r in by[s]], 2) + " s" for k in NAMES)] for s in sizes]
    reps = len(by[sizes[0]])
    return (
        f"`{key[0]}` at commit {key[1]}: {run[0]['rows']} audit rows on the local disk; medians of {reps} repeats (range).\n\n"
        + markdown_table(head, body)
        + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "parts.jsonl")
    args = ap.parse_args()
    command = "python bench/parts.py " + shlex.join(sys.argv[1:])
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    records = []
    for rep in range(args.repeats):
        for size in args.sizes:  # interleaved: drift in the machine's load hits every size alike
            rec = {"command": command.strip(), "commit": commit, "repeat": rep, **measure(args.rows, size, seed=rep)}
            records.append(rec)
            print(json.dumps(rec), flush=True)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(rec) + "\n")
    print(parts_markdown(records))


if __name__ == "__main__":
    main()
