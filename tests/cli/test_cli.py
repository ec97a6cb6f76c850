"""Every command through Typer's runner: happy paths on real data, and each bad input's message and code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from raydetect.cli import app
from tests.helpers import write_digit_folder

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def attack_digits(out: Path, *extra: str):
    """`raydetect attack` of sklearn digits with digits_cnn, plain BIM untargeted at eps 0.3 (no training mix:
    these tests are about the pipeline; test_reproduce_local_engine runs the defaults)."""
    return run("attack", "digits", "--out", str(out), "--model", "digits_cnn", "--eps", "0.3", "--mode", "untargeted",
               "--strengths", "bim", *extra)  # fmt: skip


def err(result) -> str:
    return result.stderr if result.stderr_bytes is not None else result.output


def assert_figures(out: Path, names: list[str]) -> None:
    """Each figure is a valid PNG of a readable size, linked from report.md and embedded in report.html."""
    from PIL import Image

    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name in names:
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 250, (name, img.size)
        assert f"]({name})" in md
    assert page.count("<img src='data:image/png;base64,") == len(names)


# Happy paths ---------------------------------------------------------------------------------------


def test_attack_features_train_pipeline(ray_cluster, tmp_path) -> None:
    a = attack_digits(tmp_path / "a", "--steps", "5", "--limit", "60", "--batch-size", "32")
    assert a.exit_code == 0, err(a)
    assert "attack: " in a.output and "duplicate ids" in a.output
    f = run(
        "features",
        str(tmp_path / "a"),
        "--out",
        str(tmp_path / "f"),
        "--model",
        "digits_cnn",
        "--ig-steps",
        "4",
        "--quantiles",
        "8",
    )
    assert f.exit_code == 0, err(f)
    e = run("export", str(tmp_path / "a"), "--out", str(tmp_path / "png"))
    assert e.exit_code == 0, err(e)
    assert len(list((tmp_path / "png" / "clean").glob("*.png"))) == 60
    assert list((tmp_path / "png" / "adversarial").glob("*.png"))
    k = run("keygen", "--out", str(tmp_path / "keys" / "team"))
    assert k.exit_code == 0, err(k)
    assert (tmp_path / "keys" / "team.pub").exists()
    t = run("train", str(tmp_path / "f"), "--out", str(tmp_path / "t"), "--detector", "lr", "--no-ray", "--bootstrap", "50",
            "--sign-key", str(tmp_path / "keys" / "team"))  # fmt: skip
    assert t.exit_code == 0, err(t)
    assert (tmp_path / "t" / "detector" / "manifest.json").exists()
    md = (tmp_path / "t" / "report.md").read_text()
    assert "Table 2" in md
    # The paper's figures; Figure 1's images come from the attack job's stored PNGs.
    assert_figures(tmp_path / "t", ["figure1_pairs.png", "figure2_distribution.png", "roc.png"])
    assert "Figure 1 is not drawn" not in md
    assert "signed by key" in t.output and "95% range" in t.output
    bundle = tmp_path / "t" / "detector"
    assert (bundle / "manifest.json").exists() and (bundle / "SIGNATURE").exists()
    assert "out-of-fold scores of clean training images" in md  # the default crossfit threshold
    # The signed bundle audits under its key; altered (checksums rewritten to match) it is refused in one line.
    write_digit_folder(tmp_path / "imgs", n=4, broken=False)
    trust = ("--trust-key", str(tmp_path / "keys" / "team.pub"))
    a = run("audit", str(tmp_path / "imgs"), "--detector", str(bundle), "--out", str(tmp_path / "audit"), *trust)
    assert a.exit_code == 0, err(a)
    assert "signed by trusted key" in (tmp_path / "audit" / "rows" / "_job.json").read_text()
    import hashlib
    import shutil

    bad = tmp_path / "altered"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["threshold"] = 1.0
    (bad / "manifest.json").write_text(json.dumps(manifest))
    sums = [line.split("  ", 1)[1] for line in (bad / "SHA256SUMS").read_text().splitlines()]
    (bad / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((bad / n).read_bytes()).hexdigest()}  {n}\n" for n in sums))
    r = run("audit", str(tmp_path / "imgs"), "--detector", str(bad), "--out", str(tmp_path / "o"), *trust)
    assert_clean_error(r, "signature does not verify")
    assert len(err(r).strip().splitlines()) == 1


def test_audit_refuses_an_unsigned_bundle_under_a_trust_key(digits_bundle, tmp_path) -> None:
    k = run("keygen", "--out", str(tmp_path / "k"))
    assert k.exit_code == 0, err(k)
    assert_clean_error(run("keygen", "--out", str(tmp_path / "k")), "refusing to overwrite")
    write_digit_folder(tmp_path / "imgs", n=3, broken=False)
    r = run("audit", str(tmp_path / "imgs"), "--detector", str(digits_bundle), "--out", str(tmp_path / "o"),
            "--trust-key", str(tmp_path / "k.pub"))  # fmt: skip
    assert_clean_error(r, "is not signed")
    r = run("audit", str(tmp_path / "imgs"), "--detector", str(digits_bundle), "--out", str(tmp_path / "o"),
            "--trust-key", str(tmp_path / "k"))  # fmt: skip
    assert_clean_error(r, "no valid Ed25519 public key")
    r = run("train", str(tmp_path), "--out", str(tmp_path / "t"), "--sign-key", str(tmp_path / "k.pub"))
    assert_clean_error(r, "not an unencrypted PEM private key")


def test_gradient_shap_with_the_train_baseline_through_the_cli(ray_cluster, tmp_path) -> None:
    """References come from the attack output's clean images, stay out of every split, and travel in the bundle."""
    a = attack_digits(tmp_path / "a", "--steps", "3", "--limit", "80", "--batch-size", "32")
    assert a.exit_code == 0, err(a)
    f = run("features", str(tmp_path / "a"), "--out", str(tmp_path / "f"), "--model", "digits_cnn", "--explainer",
            "gradient_shap", "--baseline", "train", "--quantiles", "8")  # fmt: skip
    assert f.exit_code == 0, err(f)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "f").to_pylist()
    refs = {r["pair_id"] for r in rows if "reference image" in r["error"]}
    assert 1 <= len(refs) <= 8 and all(r["status"] == "skipped" for r in rows if r["pair_id"] in refs)
    t = run("train", str(tmp_path / "f"), "--out", str(tmp_path / "t"), "--no-ray", "--bootstrap", "20")
    assert t.exit_code == 0, err(t)
    manifest = json.loads((tmp_path / "t" / "detector" / "manifest.json").read_text())
    assert manifest["references_file"] == "references.npy"
    assert len(np.load(tmp_path / "t" / "detector" / "references.npy")) == len(refs)
    assert "references.npy" in (tmp_path / "t" / "detector" / "SHA256SUMS").read_text()
    write_digit_folder(tmp_path / "imgs", n=3, broken=False)
    r = run("audit", str(tmp_path / "imgs"), "--detector", str(tmp_path / "t" / "detector"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, err(r)
    scored = pq.read_table(tmp_path / "o" / "rows").to_pylist()
    assert len(scored) == 3 and all(x["status"] == "ok" for x in scored)
    # The fused job (and reproduce) have no attack output to draw references from: a clear refusal.
    r = run("reproduce", "--model", "digits_cnn", "--limit", "20", "--explainer", "gradient_shap", "--baseline", "train",
            "--protocol", "corrected", "--strengths", "bim", "--out", str(tmp_path / "r"))  # fmt: skip
    assert_clean_error(r, "baseline 'train'")


def test_audit_writes_rows_and_report(ray_cluster, digits_bundle, tmp_path) -> None:
    expected = write_digit_folder(tmp_path / "imgs", n=12)
    r = run("audit", str(tmp_path / "imgs"), "--detector", str(digits_bundle), "--out", str(tmp_path / "audit"), "--top", "5")
    assert r.exit_code == 0, err(r)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "audit" / "rows").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all((r["status"] == "ok") == (expected[r["id"]] == "ok") for r in rows)
    assert all(r["error"] for r in rows if r["status"] != "ok")
    report = (tmp_path / "audit" / "report.md").read_text()
    assert "most suspicious" in report and "Inputs not scored" in report
    assert (tmp_path / "audit" / "score_histogram.png").stat().st_size > 1000
    assert (tmp_path / "audit" / "report.html").read_text().startswith("<!doctype html>")
    assert len((tmp_path / "audit" / "rows.csv").read_text().splitlines()) == len(expected) + 1  # header + one per input


def test_reproduce_local_engine(tmp_path) -> None:
    r = run(
        "reproduce",
        "--model",
        "digits_cnn",
        "--engine",
        "local",
        "--limit",
        "80",
        "--eps",
        "0.3",
        "--ig-steps",
        "4",
        "--quantiles",
        "8",
        "--out",
        str(tmp_path / "r"),
    )
    assert r.exit_code == 0, err(r)
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [x["protocol"] for x in results["results"]] == ["paper", "corrected"]
    assert "Paper protocol" in (tmp_path / "r" / "report.md").read_text()
    names = [f"{p}_{f}" for p in ("paper", "corrected") for f in ("figure1_pairs.png", "figure2_distribution.png", "roc.png")]
    assert_figures(tmp_path / "r", names)


@pytest.mark.parametrize(
    "command", ["attack", "features", "train", "audit", "reproduce", "export", "submit", "status", "logs", "stop", "keygen"]
)
def test_every_command_has_help(command) -> None:
    r = run(command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output) > 200


@pytest.mark.parametrize("command", ["attack", "features", "audit", "evaluate", "reproduce"])
def test_every_model_command_takes_the_jobs_device(command) -> None:
    r = run(command, "--help")
    assert r.exit_code == 0 and "--device" in r.output


def test_a_gpu_ray_cannot_give_an_actor_is_a_clear_error(tmp_path) -> None:
    r = run("attack", "digits", "--model", "digits_cnn", "--device", "cuda:1", "--out", str(tmp_path / "a"))
    assert r.exit_code != 0 and "--device cuda" in err(r) and "Traceback" not in err(r)


# Bad input: one line, no traceback, non-zero exit -----------------------------------------------


def assert_clean_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    text = err(result)
    assert "Traceback" not in text
    assert text.startswith("error: "), text
    for n in needles:
        assert n in text, text


def test_missing_input_path(tmp_path) -> None:
    assert_clean_error(run("attack", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")
    assert_clean_error(
        run("features", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--model", "digits_cnn"), "no attack output"
    )
    assert_clean_error(run("train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")
    assert_clean_error(run("reproduce", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")


def test_unknown_model(tmp_path) -> None:
    assert_clean_error(
        run("attack", "digits", "--out", str(tmp_path / "o"), "--model", "resnet9000"), "unknown model", "resnet9000"
    )


def test_bad_option_values(tmp_path) -> None:
    assert_clean_error(run("attack", "digits", "--out", str(tmp_path / "o"), "--model", "digits_cnn", "--eps", "lots"), "eps")
    assert_clean_error(
        run("attack", "digits", "--out", str(tmp_path / "o"), "--model", "digits_cnn", "--mode", "sideways"), "mode"
    )
    assert_clean_error(run("reproduce", "--model", "digits_cnn", "--detector", "svm", "--out", str(tmp_path / "o")), "detector")
    assert_clean_error(run("train", str(tmp_path), "--out", str(tmp_path / "o"), "--param", "oops"), "key=value")
    assert_clean_error(run("train", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"), "--workers")
    assert_clean_error(run("train", str(tmp_path), "--out", str(tmp_path / "o"), "--adversarial-rounds", "-1"), "rounds")
    assert_clean_error(run("train", str(tmp_path), "--out", str(tmp_path / "o"), "--adversarial-rounds", "1",
                           "--round-eps", "2"), "round eps")  # fmt: skip
    write_digit_folder(tmp_path / "imgs", n=2, broken=False)
    clean = ("--clean", str(tmp_path / "imgs"), "--adversarial", str(tmp_path / "imgs"))
    assert_clean_error(run("train", *clean, "--out", str(tmp_path / "o"), "--adversarial-rounds", "1"), "none to attack")
    assert not (tmp_path / "o").exists()


def test_strengths_mix_is_refused_where_it_cannot_apply(tmp_path) -> None:
    base = ("attack", "digits", "--out", str(tmp_path / "o"), "--model", "digits_cnn")
    assert_clean_error(run(*base, "--strengths", "all"), "--strengths must be one of bim, mix")
    assert_clean_error(run(*base, "--strengths", "mix", "--method", "deepfool"), "--strengths mix", "--method bim")
    assert_clean_error(run(*base, "--strengths", "mix", "--stop-margin", "0"), "--strengths mix")
    assert_clean_error(run("reproduce", "--model", "digits_cnn", "--strengths", "x", "--out", str(tmp_path / "r")), "--strengths")
    assert_clean_error(run("reproduce", "--model", "digits_cnn", "--offset", "-1", "--out", str(tmp_path / "r")), "offset")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()  # refused before any work


def test_strengths_mix_adds_early_stopped_attacks_per_eps() -> None:
    from raydetect.attacks.suite import mixed_strengths

    assert mixed_strengths("bim", [0.1], 0) == []
    names = [a.name for a in mixed_strengths("mix", [0.1, 4 / 255], 3)]
    assert names == ["bim-second-0.1-stop", "bim-random-0.1-stop", "bim-untargeted-0.1-k2",
                     "bim-second-4/255-stop", "bim-random-4/255-stop", "bim-untargeted-4/255-k2"]  # fmt: skip
    # The evaluation's unseen strengths stay out of the mix: untargeted early-stopped BIM and DeepFool.
    assert all(a.method == "bim" and a.seed == 3 for a in mixed_strengths("mix", [0.1], 3))


def test_audit_with_a_bundle_from_another_model(digits_bundle, tmp_path) -> None:
    write_digit_folder(tmp_path / "imgs", n=3, broken=False)
    r = run(
        "audit",
        str(tmp_path / "imgs"),
        "--detector",
        str(digits_bundle),
        "--out",
        str(tmp_path / "o"),
        "--model",
        "efficientnet_lite0",
    )
    assert_clean_error(r, "trained on model digits_cnn")


def test_audit_with_a_tampered_or_missing_bundle(digits_bundle, tmp_path) -> None:
    import shutil

    write_digit_folder(tmp_path / "imgs", n=3, broken=False)
    bad = tmp_path / "bundle"
    shutil.copytree(digits_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["threshold"] = 0.0
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run("audit", str(tmp_path / "imgs"), "--detector", str(bad), "--out", str(tmp_path / "o")), "checksum")
    assert_clean_error(
        run("audit", str(tmp_path / "imgs"), "--detector", str(tmp_path / "none"), "--out", str(tmp_path / "o")), "not found"
    )


def test_submit_rejects_bad_commands_before_sending(tmp_path) -> None:
    assert_clean_error(run("submit", "--", "explode"), "submit runs one of")
    assert_clean_error(run("submit", "--", "audit", "x", "--no-such-option"), "not valid")


def test_job_server_unreachable_is_a_clear_error() -> None:
    dead = "http://127.0.0.1:9"
    assert_clean_error(run("status", "raysubmit_x", "--address", dead), "cannot reach the Ray job server")
    args = ["audit", "s3://b/imgs", "--detector", "s3://b/d", "--out", "s3://b/o"]  # paths the cluster sees
    assert_clean_error(run("submit", "--address", dead, "--", *args), "cannot reach")


def test_features_refuse_another_model(ray_cluster, tmp_path) -> None:
    a = attack_digits(tmp_path / "a", "--steps", "2", "--limit", "8")
    assert a.exit_code == 0, err(a)
    assert_clean_error(
        run("features", str(tmp_path / "a"), "--out", str(tmp_path / "f"), "--model", "efficientnet_lite0"),
        "attacked with model digits_cnn",
    )


def test_digits_reproduce_needs_no_data_but_imagenet_models_do(tmp_path) -> None:
    assert_clean_error(run("reproduce", "--out", str(tmp_path / "o")), "--data is required")


def test_paths_in_this_repo_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    for job in ("attack", "features", "train", "audit", "reproduce"):
        assert (root / "jobs" / f"{job}.py").is_file()


def test_train_with_adversarial_rounds(ray_cluster, digits_bundle, tmp_path, monkeypatch) -> None:
    """The CLI wiring of `train --adversarial-rounds`: the round's attack, features and first bundle under
    rounds/, the final bundle trained on the round's attack, the rounds in the report and results.json."""
    monkeypatch.delenv("RAYDETECT_SECRET", raising=False)
    out = tmp_path / "t"
    r = run("train", str(digits_bundle.parents[1] / "f"), "--out", str(out), "--no-ray", "--bootstrap", "10",
            "--adversarial-rounds", "1", "--round-steps", "3", "--batch-size", "64")  # fmt: skip
    assert r.exit_code == 0, err(r)
    (record,) = json.loads((out / "results.json").read_text())["adversarial_rounds"]
    assert record["attacked_detector"] == str(out / "rounds" / "0" / "detector") and record["fooled"] > 0
    assert (out / "rounds" / "1" / "attack").is_dir() and (out / "rounds" / "1" / "features").is_dir()
    manifest = json.loads((out / "detector" / "manifest.json").read_text())
    assert "adaptive-untargeted-0.3-3x1-round1" in manifest["trained_on"]
    assert "Adversarial training rounds" in (out / "report.md").read_text()
    assert (out / "figure1_pairs.png").stat().st_size > 10_000  # drawn from the features' own attacks
