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


def test_a_peer_detector_trains_through_the_jobs_and_compares_beside_the_bundle(ray_cluster, digits_bundle, tmp_path) -> None:
    """attack -> features --peer (no explanation) -> train -> evaluate --compare, all through the CLI."""
    attacks, feats, trained, out = (tmp_path / n for n in ("a", "f", "t", "eval"))
    steps = [
        ["attack", "digits", "--model", "digits_cnn", "--eps", "0.3", "--steps", "5", "--limit", "160", "--out", str(attacks)],
        ["features", str(attacks), "--model", "digits_cnn", "--peer", "lid", "--peer", "squeeze", "--no-explanation",
         "--peer-layer", "early", "--peer-layer", "logits", "--lid-k", "5", "--squeezer", "bits:1", "--out", str(feats)],
        ["train", str(feats), "--out", str(trained)],
    ]  # fmt: skip
    for args in steps:
        r = runner.invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, (args[0], r.output)
    peer = trained / "detector"
    manifest = json.loads((peer / "manifest.json").read_text())
    assert manifest["feature_names"] == ["lid_early", "lid_logits", "squeeze_max_l1"]
    assert manifest["references_file"] == "references.npy"  # LID's neighbours travel with the bundle
    args = ["evaluate", "digits", "--detector", str(digits_bundle), "--compare", str(peer), "--out", str(out), "--eps", "0.3",
            "--offset", "300", "--limit", "12", "--adaptive-steps", "4"]  # fmt: skip
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "results.json").read_text())["robustness"]
    by = {(row["detector"], row["attack"]): row for row in rows}
    labels = {row["detector"] for row in rows}
    assert labels == {"ig", "lid+squeeze"}
    for attack in {row["attack"] for row in rows}:
        a, b = by[("ig", attack)], by[("lid+squeeze", attack)]
        assert a["n_clean"] == b["n_clean"] > 0
        if a["method"] not in ("adaptive", "squeeze_eot"):  # blind attacks: the very same adversarials for both
            assert (a["n_attacked"], a["n_success"]) == (b["n_attacked"], b["n_success"])
    assert by[("lid+squeeze", "bim-untargeted-0.3")]["audit_passes"] == 1 + 1 + 2
    assert "Detectors compared" in (out / "report.md").read_text()
    assert "[lid+squeeze] adaptive" in r.output
