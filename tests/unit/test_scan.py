"""Reading outputs of any size in bounded memory: every id once (first part wins), the audit's
counts and rows.csv order as an in-memory read gives them, and a driver whose peak memory does
not grow with the number of audited rows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydetect.report.audit import TABLE_ROWS, scan_audit
from raydetect.store import count_distinct, count_rows, make_dir, read_output, scan_output, write_part

ROOT = Path(__file__).resolve().parents[2]


def audit_part(start: int, n: int, path_len: int = 40, seed: int = 0) -> pa.Table:
    """``n`` audit rows shaped like ``AuditStage``'s: every 10th an error (no score), ids from ``start``."""
    rng = np.random.default_rng(seed + start)
    ids = [f"img-{i:08d}.jpg" for i in range(start, start + n)]
    error = np.arange(start, start + n) % 10 == 7
    score = np.where(error, np.nan, np.round(rng.random(n), 2))  # rounded: ties, broken by id
    pred = rng.integers(0, 30, n)
    return pa.table({
        "id": ids, "path": [f"/data/{'x' * path_len}/{i}" for i in ids], "label": np.full(n, -1),
        "pred": np.where(error, -1, pred), "pred_name": [f"class {p}" for p in pred], "conf": rng.random(n),
        "score": score, "adversarial": ~error & (score > 0.8), "status": np.where(error, "error", "ok"),
        "error": np.where(error, "corrupt or truncated image: bad data", ""),
    })  # fmt: skip


def write_audit(out: Path, parts: int, rows: int, path_len: int = 40) -> None:
    make_dir(str(out / "rows"))
    for p in range(parts):
        write_part(str(out / "rows"), audit_part(p * rows, rows, path_len))


def test_scan_output_reads_every_id_once_first_part_winning(tmp_path) -> None:
    out = str(tmp_path / "o")
    make_dir(out)
    for p in range(6):
        write_part(out, audit_part(p * 50, 50).append_column("part", pa.array([p] * 50)))
    files = sorted(Path(out).glob("*.parquet"))
    dup = pq.read_table(files[4]).slice(10, 30).set_column(10, "part", pa.array([99] * 30))  # a retried write's copy
    write_part(out, dup)  # named after or before the original: whichever file sorts first must win, as in read_output
    whole = read_output(out)
    assert whole.num_rows == 300 and count_rows(out) == 330
    for max_rows in (1000, 64, 7):  # one table in file order; several buckets spilled to disk
        tables = list(scan_output(out, max_rows=max_rows))
        assert (len(tables) == 1) == (max_rows >= 330)
        got, want = pa.concat_tables(tables).sort_by("id"), whole.sort_by("id")
        assert got.drop_columns(["score"]).equals(want.drop_columns(["score"])), max_rows  # NaN != NaN in equals
        np.testing.assert_array_equal(got.column("score").to_numpy(), want.column("score").to_numpy())
        assert count_distinct(out) == 300


def test_scan_audit_counts_and_orders_rows_as_an_in_memory_read(tmp_path) -> None:
    out = tmp_path / "audit"
    write_audit(out, parts=9, rows=100)
    whole = read_output(str(out / "rows")).sort_by([("score", "descending"), ("id", "ascending")])
    ok = [r for r in whole.to_pylist() if r["status"] == "ok"]
    flagged = [r for r in ok if r["adversarial"]]
    runs = {}
    for max_rows in (10_000, 128):  # one bucket; 8 buckets merged
        acc = scan_audit(str(out), "/data", top=7, max_rows=max_rows)
        assert (acc.inputs, acc.scored, acc.flagged) == (900, len(ok), len(flagged))
        assert acc.reasons == {"corrupt or truncated image": 90}
        assert acc.histogram.sum() == len(ok)
        assert [r["id"] for r in acc.top] == [r["id"] for r in ok[:7]]
        assert [r["id"] for r in acc.flagged_rows] == [r["id"] for r in flagged[:TABLE_ROWS]]
        assert sum(n for n, _ in acc.per_class.values()) == len(ok)
        assert sum(f for _, f in acc.per_class.values()) == len(flagged)
        with open(acc.csv_path, newline="") as f:
            runs[max_rows] = list(csv.DictReader(f))
    assert runs[128] == runs[10_000]
    assert [r["id"] for r in runs[128]] == whole.column("id").to_pylist()  # errors (no score) last


# VmHWM, not getrusage's ru_maxrss: a spawned child's ru_maxrss starts at its parent's peak.
PROBE = """
import json, re, sys
from raydetect.report.audit import scan_audit
acc = scan_audit(sys.argv[1], "/data", top=20, table_rows=100, max_rows=int(sys.argv[2]))
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"rows": acc.inputs, "peak_kib": peak}))
"""


def _peak_mib(out: Path, max_rows: int) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), str(max_rows)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])["peak_kib"] / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc")
def test_the_audit_report_reads_rows_in_memory_bounded_whatever_the_audit_size(tmp_path) -> None:
    """Peak RSS of a process that scans an audit and writes rows.csv, for 15,000 and 75,000 rows
    of about 1 KiB: in buckets of 5,000 rows it stays level; read whole (one bucket, as the
    report did before) it is far higher, which shows the probe would catch a regression."""
    small, big = tmp_path / "small", tmp_path / "big"
    write_audit(small, parts=3, rows=5000, path_len=400)
    write_audit(big, parts=15, rows=5000, path_len=400)
    bounded_small, bounded_big, whole_big = _peak_mib(small, 5000), _peak_mib(big, 5000), _peak_mib(big, 10**9)
    print(f"peak RSS: bounded {bounded_small:.0f} -> {bounded_big:.0f} MiB; whole {whole_big:.0f} MiB")
    held = whole_big - bounded_small  # what reading the 75,000 rows whole costs over the small scan
    assert held > 80, held  # 60,000 more rows held at once
    assert bounded_big - bounded_small < 0.35 * held  # five times the rows, a fraction of that (allocator noise)
