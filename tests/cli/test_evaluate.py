"""`raydetect evaluate` and `raydetect attack --method adaptive`: attacks of every strength, and
attackers who know the detector, against a real bundle, through Ray."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from raydetect.cli import app

runner = CliRunner()


def test_evaluate_reports_every_attack_against_the_bundle(ray_cluster, digits_bundle, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    out = tmp_path / "eval"
    args = ["evaluate", "digits", "--detector", str(digits_bundle), "--out", str(out), "--eps", "0.3", "--offset", "300",
            "--limit", "16", "--adaptive-steps", "8", "--smooth", "10"]  # fmt: skip
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    methods = {row["method"] for row in results["robustness"]}
    # no second digits model: no transfer
    assert methods == {"bim", "pgd", "deepfool", "cw_l2", "square", "squeeze_eot", "adaptive"}
    assert {row["attack"] for row in results["robustness"]} >= {"pgd-untargeted-0.3-jpeg90", "bim-untargeted-0.3-stop-jpeg90"}
    stop = [row for row in results["robustness"] if row["attack"].endswith("-stop")]
    assert len(stop) == 1
    for row in results["robustness"]:
        assert row["n_attacked"] > 0 and 0 <= row["evaded"] <= row["success_rate"] <= 1
        assert row["passes"] > 0
    adaptive = next(row for row in results["robustness"] if row["method"] == "adaptive")
    assert adaptive["passes"] > 8  # it went through the detector's explanation at every step
    report = (out / "report.md").read_text()
    assert "Evaded" in report and "white box" in report
    assert "public key" in report and "computed every draw" in results["views_key"]  # no RAYDETECT_SECRET here
    assert "evaded" in r.output


def test_attack_adaptive_needs_and_uses_the_bundle(ray_cluster, digits_bundle, tmp_path) -> None:
    args = ["attack", "digits", "--model", "digits_cnn", "--method", "adaptive", "--eps", "0.3", "--steps", "5",
            "--mode", "untargeted", "--limit", "8", "--offset", "320"]  # fmt: skip
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a0")])
    assert refused.exit_code == 2 and "--detector" in (refused.stderr if refused.stderr_bytes is not None else refused.output)
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--detector", str(digits_bundle)], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    rows = pq.read_table(tmp_path / "a").to_pylist()
    adv = [row for row in rows if row["kind"] == "adversarial"]
    assert adv and all(row["linf"] <= 0.3 + 1e-6 and row["passes"] > 5 for row in adv)
    config = json.loads((tmp_path / "a" / "_job.json").read_text())["config"]
    assert config["bundle"] == str(digits_bundle)
    # The default bundle draws its views' strengths at random: the attack takes EOT over them unasked.
    assert [a["eot"] for a in config["attacks"]] == [2]
