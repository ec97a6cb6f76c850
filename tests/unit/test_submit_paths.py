"""`raydetect submit` refuses, before sending, every local path the cluster will not see (no job server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from raydetect.cli import app
from raydetect.errors import RaydetectError
from raydetect.submit import check_paths


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A working dir as Ray would ship it: ignore files at two levels, data that ships and data that does not."""
    root = tmp_path / "repo"
    for rel in ("data/imgs/a.png", "data/imgs/b.png", "runs/demo/images/c.png", "runs/demo/detector/manifest.json",
                "data/cache/x.png", "data/table.parquet", "data/extra/keep.png", "data/extra/scratch.tmp"):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / ".gitignore").write_text("runs/\n/data/cache/\n")
    (root / "data" / "extra" / ".gitignore").write_text("*.tmp\n")
    return root


def test_relative_paths_that_ship_pass_and_others_are_refused(checkout: Path) -> None:
    assert check_paths("audit", {"input": "data/imgs", "detector": "s3://b/det", "out": "gs://b/out"}, str(checkout)) == []
    refused = {
        "runs/demo/images": "git-ignored or excluded",  # the case: runs/ is git-ignored
        "data/cache": "git-ignored or excluded",  # an anchored pattern
        "data/table.parquet": "git-ignored or excluded",  # submit's own EXCLUDES (*.parquet)
        "data/extra": "data/extra/scratch.tmp is",  # a nested .gitignore drops one file inside
        "../elsewhere": "outside the working dir",
        "data/nope": "not in the working dir",
    }
    for rel, reason in refused.items():
        with pytest.raises(RaydetectError, match=reason) as exc:
            check_paths("audit", {"input": rel, "out": "s3://b/out"}, str(checkout))
        assert "s3://" in str(exc.value) and "\n" not in str(exc.value)


def test_outputs_must_not_be_relative_and_absolute_paths_get_a_note(checkout: Path) -> None:
    with pytest.raises(RaydetectError, match="--out runs/x: relative"):
        check_paths("audit", {"input": "data/imgs", "out": "runs/x"}, str(checkout))
    notes = check_paths("train", {"features_dir": "/mnt/shared/f", "out": "/mnt/shared/t"}, str(checkout))
    assert len(notes) == 2 and all("every node mounts" in n for n in notes)
    assert check_paths("reproduce", {"data": "digits", "out": "s3://b/r"}, str(checkout)) == []
    # --adversarial NAME=PATH: the path is checked
    with pytest.raises(RaydetectError, match="--adversarial runs/demo/images"):
        check_paths("features", {"clean": "data/imgs", "adversarial": ["pgd=runs/demo/images"], "out": "s3://b/f"}, str(checkout))


def test_submit_refuses_before_sending(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(checkout)
    args = ["submit", "--address", "http://127.0.0.1:9", "--", "audit", "runs/demo/images", "--detector",
            "runs/demo/detector", "--out", "runs/x"]  # fmt: skip
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    err = r.stderr if r.stderr_bytes is not None else r.output
    assert r.exit_code == 2
    assert err.count("\n") == 1 and "runs/demo/images" in err and "runs/demo/detector" in err and "--out runs/x" in err
    assert "absolute path on storage every node mounts, or an s3:// or gs:// URI" in err
    assert "cannot reach" not in err  # refused here, before any connection
