"""The docs' results tables are what the committed result files say (scripts/tables.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import tables_script

ROOT = Path(__file__).resolve().parents[2]


def test_every_generated_block_matches_its_result_file() -> None:
    tables = tables_script()
    cache: dict[str, str] = {}
    blocks = 0
    for doc in tables.DOCS:
        text = (ROOT / doc).read_text()
        blocks += len(tables.BLOCK.findall(text))
        assert tables.render(text, cache) == text, f"{doc} is out of date: run python scripts/tables.py"
    assert blocks >= 5, "the docs lost their generated tables"


def test_a_changed_result_changes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure edited by hand in a result file (or in a doc) no longer matches: the check catches it."""
    tables = tables_script()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    path = results / "evaluate-digits.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["auc"] = 0.123456
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(tables, "RESULTS", results)
    text = next((ROOT / d).read_text() for d in tables.DOCS if "<!-- tables:evaluate-digits -->" in (ROOT / d).read_text())
    new = tables.render(text, {})
    assert new != text and "0.123" in new


def test_audit_benchmark_tables_split_fixed_and_per_image_costs() -> None:
    """Two sizes give t = fixed + n * per_image for each side; the marginal ratio compares the slopes."""
    audit = tables_script()._bench("audit")
    base = {"command": "c", "commit": "x", "ray_start_s": 1.0, "kind": "throughput", "load_start": [1.0], "load_end": [2.0],
            "driver_mib": 100.0, "actor_mib": 200.0}  # fmt: skip
    # plain: 0 s + 100 ms/image; Ray: 10 s + 125 ms/image (wall adds 5 s of report)
    recs = [
        {**base, "side": side, "size": n, "repeat": 0, "seconds": s, "wall_seconds": s + 5}
        for side, n, s in (("plain", 100, 10.0), ("ray", 100, 22.5), ("plain", 500, 50.0), ("ray", 500, 72.5))
    ]
    md = audit.throughput_markdown(audit.latest_run([{**recs[0], "command": "older"}, *recs], "throughput"))
    assert "| Ray, job | 10.0 (10.0-10.0) s | 125 (125-125) ms |" in md
    assert "| plain loop | 0.0 (0.0-0.0) s | 100 (100-100) ms |" in md
    assert "ratio Ray / plain: 0.80 (0.80-0.80)" in md  # 100 ms / 125 ms
    mem = [{**base, "kind": "memory", "dataset": d, "size": n, "seconds": 1.0, "driver_mib": m, "actor_mib": m,
            "ray_workers_mib": m} for d, n, m in (("sample", 500, 1000.0), ("variants", 5000, 1100.0))]  # fmt: skip
    assert "1100 MiB (+10.0%)" in audit.memory_markdown(mem)


def test_steady_table_compares_each_side_with_the_plain_loop_of_its_repeat() -> None:
    """Throughput vs plain is plain ms / side ms per repeat, then the median: a side twice as slow reads 0.50."""
    audit = tables_script()._bench("audit")
    base = {"command": "c", "commit": "x", "kind": "steady", "images": 144, "cpu_seconds": 18.0, "seconds": 10.0}
    recs = [
        {**base, "side": side, "repeat": rep, "ms_per_image": ms * (1 + rep)}  # repeat 1: the machine twice as slow
        for rep in (0, 1)
        for side, ms in (("plain loop, fresh process", 100.0), ("AuditStage, fresh process", 100.0),
                         ("AuditStage, Ray actor", 200.0))
    ]  # fmt: skip
    md = audit.steady_markdown(recs)
    assert "| AuditStage, Ray actor | 300 (200-400) ms | 0.50 (0.50-0.50) | 1.80 (1.80-1.80) | 144 |" in md
    assert "| AuditStage, fresh process | 150 (100-200) ms | 1.00 (1.00-1.00) |" in md
    assert "medians of 2 repeats" in md
