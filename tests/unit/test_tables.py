"""The docs' results tables are what the committed result files say (scripts/tables.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("raydetect_tables", ROOT / "scripts" / "tables.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_generated_block_matches_its_result_file() -> None:
    tables = _tables()
    cache: dict[str, str] = {}
    blocks = 0
    for doc in tables.DOCS:
        text = (ROOT / doc).read_text()
        blocks += len(tables.BLOCK.findall(text))
        assert tables.render(text, cache) == text, f"{doc} is out of date: run python scripts/tables.py"
    assert blocks >= 5, "the docs lost their generated tables"


def test_a_changed_result_changes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure edited by hand in a result file (or in a doc) no longer matches: the check catches it."""
    tables = _tables()
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
